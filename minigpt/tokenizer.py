"""Tokenizers behind one small interface: encode, decode, vocab_size, eot_id, and a JSON spec round trip.

`CharTokenizer` maps each character of a corpus to an id; `TiktokenTokenizer` wraps any tiktoken
encoding (GPT-2's BPE by default). `spec()` is a JSON-compatible dict that travels in `meta.json` and
in every checkpoint; `from_spec(spec)` rebuilds the same tokenizer from it.
"""

from __future__ import annotations

from typing import Protocol

from .errors import UserError


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


class TiktokenTokenizer:
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

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)  # plain text: special-token strings are not special here

    def decode(self, ids: list[int]) -> str:
        return self.enc.decode(ids)

    def spec(self) -> dict:
        return {"kind": "tiktoken", "name": self.name}


def from_spec(spec: dict) -> Tokenizer:
    """Rebuild a tokenizer from the spec stored in meta.json or a checkpoint."""
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind == "char":
        return CharTokenizer(spec["chars"])
    if kind == "tiktoken":
        return TiktokenTokenizer(spec.get("name", "gpt2"))
    raise UserError(f"unknown tokenizer spec {spec!r}; expected kind 'char' or 'tiktoken'")


def build(kind: str, text: str | None = None) -> Tokenizer:
    """The tokenizer named on the command line: 'char' (vocabulary from `text`) or a tiktoken encoding name."""
    if kind == "char":
        if text is None:
            raise ValueError("a char tokenizer needs the corpus text to build its vocabulary")
        return CharTokenizer.from_text(text)
    return TiktokenTokenizer(kind)
