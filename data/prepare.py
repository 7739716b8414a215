"""Prepare a corpus: `python data/prepare.py SOURCE [--tokenizer=char|gpt2|NAME|FILE.json] [--out=DIR] ...`.

The pipeline is minigpt/prepare.py; `--help` lists the settings, docs/prepare.md explains them.
"""

from minigpt.errors import run_cli


def main(argv: list[str]) -> int:
    from minigpt.prepare import main as prepare  # imported under run_cli: Ctrl-C while loading is one line

    return prepare(argv)


if __name__ == "__main__":
    run_cli(main)
