"""`python -m minigpt COMMAND [SETTINGS]`: every command of the package behind one entry point.

Each command parses its settings with the one parser (`--key=value` or `--key value`, `--help`).
train.py, sample.py and data/prepare.py are aliases of `train`, `sample` and `prepare`.
"""

from __future__ import annotations

import importlib
import sys

from .errors import run_cli

COMMANDS = {  # name: (module with main(argv), what it does)
    "train": ("minigpt.trainer", "pretrain a GPT, or fine-tune one with --model (also: python train.py)"),
    "sample": ("minigpt.sample", "sample text from a checkpoint or GPT-2 (also: python sample.py)"),
    "prepare": ("minigpt.prepare", "tokenize a corpus into a sharded dataset (also: python data/prepare.py)"),
    "params": ("minigpt.tools.params", "parameter, memory and FLOP tables of a preset, config file or checkpoint"),
    "evaluate": ("minigpt.tools.evaluate", "loss, perplexity and bits per byte of a checkpoint over a whole split"),
    "attention": ("minigpt.tools.attention_maps", "what every head of a checkpoint or GPT-2 attends to, as a PNG"),
    "export": ("minigpt.tools.export", "a checkpoint as a Hugging Face GPT-2 folder"),
    "bench": ("minigpt.tools.bench", "training, generation and preparation speed, against the machine's limits"),
    "bpe": ("minigpt.bpe", "train your own byte-level BPE tokenizer"),
    "verify": ("minigpt.shards", "check every shard of a prepared dataset against its sha256"),
    "plan": ("minigpt.plan", "the best model this machine trains on a dataset in N minutes, predicted first"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    rows = [f"  {name.ljust(width)}  {about}" for name, (_, about) in COMMANDS.items()]
    return "\n".join(["usage: python -m minigpt COMMAND [--key=value ...]   (COMMAND --help for its settings)", "",
                      *rows])


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
