"""Training your own byte-level BPE: Hugging Face `tokenizers` learns the merges, tiktoken runs them.

`python -m minigpt bpe --input=SOURCE --vocab_size=N --out=FILE.json` trains on a sample of any source
data/prepare.py reads, then converts HF's merges to tiktoken's "mergeable ranks" (token bytes -> rank,
rank = merge order) and saves a minigpt.tokenizer.BPETokenizer, so encoding runs at tiktoken's speed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Iterable, Iterator

from .config import opt, parse_cli
from .errors import UserError, run_cli
from .tokenizer import BPETokenizer

# Split patterns: text is cut into pieces by one of these regexes before BPE merges within each piece.
PATTERNS = {
    "gpt2": r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
    "gpt4": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""",
}
MIN_VOCAB = 256 + 1  # every byte + <|endoftext|>


@dataclass
class BPEConfig:
    input: list[str] = opt([], "a source as data/prepare.py takes it (text/JSONL/parquet file or folder, "
                               "hf:NAME[:CONFIG], shakespeare, tinyshakespeare); repeat for several")
    vocab_size: int = opt(0, "tokens in total, <|endoftext|> included (at least 257)")
    out: str = opt("", "where to write the tokenizer (.json)")
    pattern: str = opt("gpt4", "split pattern: gpt4 or gpt2")
    sample_mb: float = opt(100.0, "train on at most this many MB of text", range="(0, inf)")
    text_field: str = opt("text", "column holding the text (JSONL, parquet, hf:)")


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


def _check(vocab_size: int, pattern: str) -> None:
    if vocab_size < MIN_VOCAB:
        raise UserError(f"--vocab_size={vocab_size} is too small: a byte-level BPE needs at least 256 byte tokens "
                        f"+ 1 special token (<|endoftext|>) = {MIN_VOCAB}")
    if pattern not in PATTERNS:
        raise UserError(f"unknown split pattern '{pattern}'; use one of {', '.join(PATTERNS)}")


def train_bpe(texts: Iterable[str], vocab_size: int, pattern: str = "gpt4", name: str = "bpe") -> BPETokenizer:
    """Train a byte-level BPE of `vocab_size` tokens (256 bytes + merges + <|endoftext|>) on `texts`."""
    return from_hf(train_hf(texts, vocab_size, pattern), PATTERNS[pattern], name)


def train_hf(texts: Iterable[str], vocab_size: int, pattern: str = "gpt4"):
    """The Hugging Face `tokenizers` BPE training, pre-tokenizing exactly as tiktoken will."""
    from tokenizers import Regex, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

    _check(vocab_size, pattern)
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

    def as_bytes(s: str) -> bytes:
        return bytes(to_byte[c] for c in s)

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
        for doc in corpus.open_source(source, text_field=text_field).documents():
            for piece in doc.pieces():
                if left <= 0:
                    return
                yield piece[:left]
                left -= len(piece)


def main(argv: list[str]) -> int:
    cfg = parse_cli(argv, {"bpe": BPEConfig}, "python -m minigpt bpe",
                    "Train your own byte-level BPE on a sample of a corpus.").bpe
    if not cfg.input or not cfg.out:
        raise UserError("give at least one --input=SOURCE and --out=FILE.json (and --vocab_size=N); "
                        "see python -m minigpt bpe --help")
    _check(cfg.vocab_size, cfg.pattern)  # before reading any text
    name = Path(cfg.out).stem
    texts = sample_texts(cfg.input, max(1, int(cfg.sample_mb * 1e6)), cfg.text_field)
    first = next((t for t in texts if t), None)  # an empty corpus would give a tokenizer of bytes alone
    if first is None:
        raise UserError(f"--input {', '.join(cfg.input)} holds no text; give a source with some text in it")
    tok = train_bpe(chain([first], texts), cfg.vocab_size, cfg.pattern, name)
    tok.save(cfg.out)
    print(f"BPE tokenizer '{name}': {tok.vocab_size:,} tokens ({cfg.pattern} split pattern) written to {cfg.out}; "
          f"use it with `python data/prepare.py SOURCE --tokenizer={cfg.out}`")
    return 0


if __name__ == "__main__":
    run_cli(main)
