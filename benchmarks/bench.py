"""Benchmark minimaskrcnn against torchvision: `python benchmarks/bench.py [--threads 2] [--repeats 5]`.

The same as `minimaskrcnn bench`; see minimaskrcnn/bench.py for the method.
"""
import sys

from minimaskrcnn.bench import main

if __name__ == "__main__":
    sys.exit(main())
