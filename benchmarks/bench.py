"""The benchmark of `minimaskrcnn bench`, runnable from a checkout: python benchmarks/bench.py [bench options]."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from minimaskrcnn.cli.main import main  # noqa: E402  (after the path set-up, to run from a checkout)

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
