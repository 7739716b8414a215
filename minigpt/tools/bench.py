"""`python -m minigpt bench [WORKLOAD ...]`: runs the benchmarks of a checkout (the top-level benchmarks/
folder beside this package; see docs/bench.md). They are checkout tools, not part of the installed package:
outside a checkout this says so in one line and exits 2."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from ..errors import UserError, run_cli

CHECKOUT = Path(__file__).resolve().parents[2]  # minigpt/tools/bench.py -> the folder holding minigpt/


def find_benchmarks(root: Path | None = None) -> Path:
    """The checkout holding benchmarks/ beside the package (CHECKOUT, unless `root` is given)."""
    root = CHECKOUT if root is None else root
    if not (root / "benchmarks" / "cli.py").is_file():
        raise UserError(f"the benchmarks live in a checkout of minigpt (benchmarks/ beside the package) and there is "
                        f"none beside {root / 'minigpt'}; run `python -m minigpt bench` from a clone of the project")
    return root


def main(argv: list[str]) -> int:
    root = str(find_benchmarks())
    if root not in sys.path:
        sys.path.insert(0, root)  # so `benchmarks` imports, here and in the fresh processes it spawns
    return importlib.import_module("benchmarks.cli").main(argv)


if __name__ == "__main__":
    run_cli(main)
