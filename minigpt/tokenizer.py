"""Tokenizers behind one small interface: encode, decode, vocab_size, eot_id, and a JSON spec round trip.

`CharTokenizer` maps each character of a corpus to an id; `TiktokenTokenizer` wraps any tiktoken
encoding (GPT-2's BPE by default); `BPETokenizer` is your own byte-level BPE, trained with
`python -m minigpt.tokenizer train` and run by tiktoken. `spec()` is a JSON-compatible dict that
travels in `meta.json` and in every checkpoint; `from_spec(spec)` rebuilds the same tokenizer from it.

Training (`train_bpe`) uses Hugging Face `tokenizers`, then converts its merges to tiktoken's
"mergeable ranks" (token bytes -> rank, rank = merge order), so encoding runs at tiktoken's speed.
"""

from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol

from .errors import UserError, run_cli


class Tokenizer(Protocol):
    vocab_size: int
    eot_id: int | None  # end-of-text token id, None where the vocabulary has none

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def spec(self) -> dict: ...


class CharTokenizer:
    """Character-level tokenizer: the vocabulary is the sorted set of characters of the corpus."""

    kind = "char"

    def __init__(self, chars: str | list[str]):
        self.chars = "".join(sorted(set(chars)))
        if not self.chars:
            raise UserError("cannot build a character vocabulary from empty text")
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}
        self.vocab_size = len(self.chars)
        self.eot_id = None

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(set(text))

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[ch] for ch in text]
        except KeyError as e:
            raise UserError(
                f"character {e.args[0]!r} is not in this model's character vocabulary "
                f"({self.vocab_size} characters seen in its training text); remove it from the text"
            ) from None

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def spec(self) -> dict:
        return {"kind": "char", "chars": self.chars}


class _Tiktoken:
    """Encoding and decoding through a tiktoken Encoding `self.enc`, shared by the two BPE tokenizers."""

    enc: Any  # tiktoken.Encoding (tiktoken is imported only when a tokenizer is built)

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)  # plain text: special-token strings are not special here

    def decode(self, ids: list[int]) -> str:
        return self.enc.decode(ids)


class TiktokenTokenizer(_Tiktoken):
    """Byte-level BPE through tiktoken (`gpt2` by default, or any tiktoken encoding name)."""

    kind = "tiktoken"

    def __init__(self, name: str = "gpt2"):
        import tiktoken

        try:
            self.enc = tiktoken.get_encoding(name)
        except ValueError:
            raise UserError(
                f"unknown tiktoken encoding '{name}'; use one of {', '.join(tiktoken.list_encoding_names())}"
            ) from None
        except Exception as e:  # the encoding's files could not be downloaded
            raise UserError(
                f"could not load the tiktoken encoding '{name}' ({type(e).__name__}); without network, point "
                f"TIKTOKEN_CACHE_DIR at a folder holding its cached files"
            ) from None
        self.name = name
        self.vocab_size = self.enc.n_vocab
        self.eot_id = self.enc.eot_token

    def spec(self) -> dict:
        return {"kind": "tiktoken", "name": self.name}


# Split patterns: text is cut into pieces by one of these regexes before BPE merges within each piece.
PATTERNS = {
    "gpt2": r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
    "gpt4": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""",
}
EOT = "<|endoftext|>"


class BPETokenizer(_Tiktoken):
    """A byte-level BPE given as tiktoken mergeable ranks (token bytes, in rank order) + split pattern + <|endoftext|>."""

    kind = "bpe"

    def __init__(self, tokens: list[bytes], pat_str: str, name: str = "bpe"):
        import tiktoken

        self.tokens = tokens
        self.pat_str = pat_str
        self.name = name
        self.eot_id = len(tokens)  # the one special token comes right after the merged vocabulary
        self.vocab_size = len(tokens) + 1
        try:
            self.enc = tiktoken.Encoding(name, pat_str=pat_str, mergeable_ranks={t: i for i, t in enumerate(tokens)},
                                         special_tokens={EOT: self.eot_id})
        except ValueError as e:
            raise UserError(f"tokenizer '{name}' is not a valid byte-level BPE ({e}); train it again") from None

    def spec(self) -> dict:
        # self-contained: the ranks travel with the spec, so a checkpoint needs no tokenizer file
        return {"kind": "bpe", "name": self.name, "pat_str": self.pat_str,
                "tokens": [base64.b64encode(t).decode("ascii") for t in self.tokens]}

    @classmethod
    def from_dict(cls, spec: dict) -> "BPETokenizer":
        return cls([base64.b64decode(t) for t in spec["tokens"]], spec["pat_str"], spec.get("name", "bpe"))

    def save(self, path: str | Path) -> None:
        from .fileio import atomic_write_json

        atomic_write_json(path, self.spec())


def load_file(path: str | Path) -> BPETokenizer:
    """A tokenizer file written by `python -m minigpt.tokenizer train`."""
    try:
        spec = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"tokenizer file {path} cannot be read ({e}); train one with "
                        f"`python -m minigpt.tokenizer train`") from None
    if not isinstance(spec, dict) or spec.get("kind") != "bpe" or "tokens" not in spec:
        raise UserError(f"{path} is not a minigpt BPE tokenizer file; train one with `python -m minigpt.tokenizer train`")
    return BPETokenizer.from_dict(spec)


def from_spec(spec: dict) -> Tokenizer:
    """Rebuild a tokenizer from the spec stored in meta.json or a checkpoint."""
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind == "char":
        return CharTokenizer(spec["chars"])
    if kind == "tiktoken":
        return TiktokenTokenizer(spec.get("name", "gpt2"))
    if kind == "bpe":
        return BPETokenizer.from_dict(spec)
    raise UserError(f"unknown tokenizer spec {str(spec)[:80]!r}; expected kind 'char', 'tiktoken' or 'bpe'")


def build(kind: str, text: str | None = None) -> Tokenizer:
    """The tokenizer named on the command line: 'char' (vocabulary from `text`), a BPE file, or a tiktoken name."""
    if kind == "char":
        if text is None:
            raise ValueError("a char tokenizer needs the corpus text to build its vocabulary")
        return CharTokenizer.from_text(text)
    if kind.endswith(".json") or Path(kind).is_file():
        if not Path(kind).is_file():
            raise UserError(f"tokenizer file {kind} does not exist; train one with `python -m minigpt.tokenizer train`")
        return load_file(kind)
    return TiktokenTokenizer(kind)


# ---- training your own BPE -------------------------------------------------------------------------

def _unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: Hugging Face's ByteLevel writes each byte as a printable character."""
    from tokenizers import pre_tokenizers

    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, n = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + n)] = b  # bytes without a printable form are shifted past 255, in order
            n += 1
    assert set(chars) == set(pre_tokenizers.ByteLevel.alphabet())
    return chars


def train_bpe(texts: Iterable[str], vocab_size: int, pattern: str = "gpt4", name: str = "bpe") -> BPETokenizer:
    """Train a byte-level BPE of `vocab_size` tokens (256 bytes + merges + <|endoftext|>) on `texts`."""
    return from_hf(train_hf(texts, vocab_size, pattern), PATTERNS[pattern], name)


def train_hf(texts: Iterable[str], vocab_size: int, pattern: str = "gpt4"):
    """The Hugging Face `tokenizers` BPE training, pre-tokenizing exactly as tiktoken will."""
    from tokenizers import Regex, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 256 + 1:
        raise UserError(f"--vocab_size={vocab_size} is too small: a byte-level BPE needs at least 256 byte tokens "
                        f"+ 1 special token (<|endoftext|>) = 257")
    if pattern not in PATTERNS:
        raise UserError(f"unknown split pattern '{pattern}'; use one of {', '.join(PATTERNS)}")
    hf = HFTokenizer(models.BPE())
    # the same pieces tiktoken will see: split with the pattern, then map bytes to ByteLevel's characters
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PATTERNS[pattern]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[], show_progress=False)
    hf.train_from_iterator(texts, trainer=trainer)
    return hf


def from_hf(hf, pat_str: str, name: str = "bpe") -> BPETokenizer:
    """Convert a trained HF byte-level BPE to tiktoken's ranks: the 256 bytes, then each merge's result in order."""
    merges = json.loads(hf.to_str())["model"]["merges"]
    to_byte = _unicode_to_byte()
    as_bytes = lambda s: bytes(to_byte[c] for c in s)  # noqa: E731
    tokens = [bytes([b]) for b in range(256)]
    seen = set(tokens)
    for m in merges:
        left, right = m if isinstance(m, list) else m.split(" ")
        tok = as_bytes(left) + as_bytes(right)
        if tok not in seen:
            seen.add(tok)
            tokens.append(tok)
    return BPETokenizer(tokens, pat_str, name)


def sample_texts(sources: list[str], max_chars: int, text_field: str = "text") -> Iterator[str]:
    """Up to `max_chars` characters of text from the sources, piece by piece (the training sample)."""
    from . import corpus

    left = max_chars
    for source in sources:
        for text, _ in corpus.stream(source, text_field=text_field).pieces():
            if left <= 0:
                return
            yield text[:left]
            left -= len(text)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m minigpt.tokenizer", description="Train your own byte-level BPE.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a byte-level BPE on a sample of a corpus")
    t.add_argument("--input", action="append", required=True,
                   help="a source as data/prepare.py takes it (text/JSONL/parquet file or folder, hf:NAME[:CONFIG], "
                        "shakespeare); repeat for several")
    t.add_argument("--vocab_size", type=int, required=True, help="tokens in total, <|endoftext|> included")
    t.add_argument("--out", required=True, help="where to write the tokenizer (.json)")
    t.add_argument("--pattern", default="gpt4", choices=sorted(PATTERNS), help="split pattern (default: gpt4)")
    t.add_argument("--sample_mb", type=float, default=100.0, help="train on at most this many MB of text")
    t.add_argument("--text_field", default="text", help="column holding the text (JSONL, parquet, hf:)")
    args = p.parse_args(argv)
    if args.vocab_size < 257:  # before reading any text
        raise UserError(f"--vocab_size={args.vocab_size} is too small: a byte-level BPE needs at least 256 byte "
                        f"tokens + 1 special token (<|endoftext|>) = 257")
    name = Path(args.out).stem
    tok = train_bpe(sample_texts(args.input, int(args.sample_mb * 1e6), args.text_field), args.vocab_size,
                    args.pattern, name)
    tok.save(args.out)
    print(f"BPE tokenizer '{name}': {tok.vocab_size:,} tokens ({args.pattern} split pattern) written to {args.out}; "
          f"use it with `python data/prepare.py SOURCE --tokenizer {args.out}`")
    return 0


if __name__ == "__main__":
    run_cli(main)
