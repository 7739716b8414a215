"""`python -m minigpt COMMAND [SETTINGS]`: every tool of the package behind one entry point.

Each command parses its settings with the one parser (`--key=value`, `--help`), like train.py,
sample.py and data/prepare.py do.
"""

from __future__ import annotations

import importlib
import sys

from .errors import run_cli

COMMANDS = {  # name: (module with main(argv), what it does)
    "params": ("minigpt.tools.params", "parameter, memory and FLOP tables of a preset, config file or checkpoint"),
    "evaluate": ("minigpt.tools.evaluate", "loss, perplexity and bits per byte of a checkpoint over a whole split"),
    "attention": ("minigpt.tools.attention_maps", "what every head of a checkpoint or GPT-2 attends to, as a PNG"),
    "export": ("minigpt.tools.export", "a checkpoint as a Hugging Face GPT-2 folder"),
    "bench": ("minigpt.tools.bench", "training, generation and preparation speed, against the machine's limits"),
    "bpe": ("minigpt.bpe", "train your own byte-level BPE tokenizer"),
    "verify": ("minigpt.shards", "check every shard of a prepared dataset against its sha256"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    rows = [f"  {name.ljust(width)}  {about}" for name, (_, about) in COMMANDS.items()]
    return "\n".join(["usage: python -m minigpt COMMAND [--key=value ...]   (COMMAND --help for its settings)", "",
                      *rows, "", "Also: python train.py, python sample.py, python data/prepare.py"])


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(usage())
        raise SystemExit(0 if len(sys.argv) >= 2 else 2)
    name = sys.argv[1]
    if name not in COMMANDS:
        print(f"error: unknown command '{name}'; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        raise SystemExit(2)
    run_cli(importlib.import_module(COMMANDS[name][0]).main, sys.argv[2:])


if __name__ == "__main__":
    main()
