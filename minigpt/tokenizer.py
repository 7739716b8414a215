"""Tokenizers behind one small interface: encode, decode, vocab_size, eot_id, and a JSON spec round trip.

`CharTokenizer` maps each character of a corpus to an id; `TiktokenTokenizer` wraps any tiktoken
encoding (GPT-2's BPE by default); `BPETokenizer` is your own byte-level BPE (trained by
`python -m minigpt bpe`, see minigpt/bpe.py) run by tiktoken. `spec()` is a JSON-compatible dict that
travels in `meta.json` and in every checkpoint; `from_spec(spec)` rebuilds the same tokenizer from it.
`encode_batch` is what the data preparation calls, one batch of texts per worker task.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import UserError

EOT = "<|endoftext|>"


class Tokenizer(Protocol):
    vocab_size: int
    eot_id: int | None  # end-of-text token id, None where the vocabulary has none

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...

    def spec(self) -> dict: ...


class CharTokenizer:
    """Character-level tokenizer: the vocabulary is the sorted set of characters of the corpus.

    With `eot` (a corpus of several documents) one more id, after the characters, is the end-of-text
    token that separates documents; a single text (tinyshakespeare) needs none, so its ids are nanoGPT's.
    """

    kind = "char"

    def __init__(self, chars: str | list[str] | set[str], eot: bool = False):
        self.chars = "".join(sorted(set(chars)))
        if not self.chars:
            raise UserError("cannot build a character vocabulary from empty text")
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}
        self._codes = np.array([ord(c) for c in self.chars], dtype=np.uint32)  # sorted: searchsorted maps them
        self.vocab_size = len(self.chars) + eot
        self.eot_id = len(self.chars) if eot else None

    @classmethod
    def from_text(cls, text: str, eot: bool = False) -> "CharTokenizer":
        return cls(set(text), eot)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[ch] for ch in text]
        except KeyError as e:
            raise UserError(
                f"character {e.args[0]!r} is not in this model's character vocabulary "
                f"({len(self.chars)} characters seen in its training text); remove it from the text"
            ) from None

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        out = []
        for text in texts:  # vectorised: one code point per character, looked up in the sorted vocabulary
            codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
            ids = np.minimum(np.searchsorted(self._codes, codes), len(self._codes) - 1)
            if not np.array_equal(self._codes[ids], codes):
                self.encode(text)  # raises, naming the unknown character
            out.append(ids.tolist())
        return out

    def decode(self, ids: list[int]) -> str:
        return "".join(EOT if i == self.eot_id else self.chars[i] for i in ids)

    def spec(self) -> dict:
        # "eot" only when present: a single text's spec stays what it always was
        return {"kind": "char", "chars": self.chars, **({"eot": True} if self.eot_id is not None else {})}


class _Tiktoken:
    """Encoding and decoding through a tiktoken Encoding `self.enc`, shared by the two BPE tokenizers."""

    enc: Any  # tiktoken.Encoding (tiktoken is imported only when a tokenizer is built)

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)  # plain text: special-token strings are not special here

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(texts, num_threads=1)  # one thread: the workers are the parallelism

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
    """A tokenizer file written by `python -m minigpt bpe`."""
    try:
        spec = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"tokenizer file {path} cannot be read ({e}); train one with "
                        f"`python -m minigpt bpe`") from None
    if not isinstance(spec, dict) or spec.get("kind") != "bpe" or "tokens" not in spec:
        raise UserError(f"{path} is not a minigpt BPE tokenizer file; train one with `python -m minigpt bpe`")
    return BPETokenizer.from_dict(spec)


def from_spec(spec: dict) -> Tokenizer:
    """Rebuild a tokenizer from the spec stored in meta.json or a checkpoint."""
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind == "char":
        return CharTokenizer(spec["chars"], bool(spec.get("eot", False)))
    if kind == "tiktoken":
        return TiktokenTokenizer(spec.get("name", "gpt2"))
    if kind == "bpe":
        return BPETokenizer.from_dict(spec)
    raise UserError(f"unknown tokenizer spec {str(spec)[:80]!r}; expected kind 'char', 'tiktoken' or 'bpe'")


def build(name: str) -> Tokenizer:
    """The BPE tokenizer named on the command line: a tokenizer file (.json) or a tiktoken encoding name.
    (A char vocabulary comes from the corpus: minigpt.prepare builds it.)"""
    if name.endswith(".json") or Path(name).is_file():
        if not Path(name).is_file():
            raise UserError(f"tokenizer file {name} does not exist; train one with `python -m minigpt bpe`")
        return load_file(name)
    return TiktokenTokenizer(name)
