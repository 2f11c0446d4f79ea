"""`python -m minimaskrcnn ...`: the command line (see `minimaskrcnn.cli`)."""
import sys

from minimaskrcnn.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
