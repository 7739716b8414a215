"""Prepare a corpus: `python data/prepare.py SOURCE [--tokenizer=char|gpt2|NAME|FILE.json] [--out=DIR] ...`.

The pipeline is minigpt/prepare.py; `--help` lists the settings, docs/prepare.md explains them.
"""

from minigpt.errors import run_cli
from minigpt.prepare import main

if __name__ == "__main__":
    run_cli(main)
