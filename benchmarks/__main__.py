"""`python -m benchmarks [WORKLOAD ...]` from the checkout: the same as `python -m minigpt bench`."""

import sys

from minigpt.errors import run_cli

from .cli import main

if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
