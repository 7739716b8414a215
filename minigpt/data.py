"""Token files on disk and the batches drawn from them.

A prepared dataset is a folder with `train.bin` and `val.bin` (token ids as raw uint16 when the
vocabulary fits, else uint32, like nanoGPT) and `meta.json` (tokenizer spec, dtype, token and byte
counts, source and its sha256). `Batches` draws random windows from the memory-mapped files with
its own seeded generator, whose state is saved in checkpoints so a resumed run sees the same stream.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import tokenizer as tokenizers
from .corpus import Corpus
from .errors import UserError
from .fileio import atomic_open, atomic_write_json

FORMAT = "minigpt-tokens"
SPLITS = ("train", "val")
_CHUNK = 1 << 20  # characters encoded per progress-bar step


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def encode_text(tok, text: str, desc: str = "encoding") -> np.ndarray:
    """Encode `text` in newline-aligned chunks with a progress bar; same ids as one encode() call."""
    dtype = token_dtype(tok.vocab_size)
    parts, start = [], 0
    with tqdm(total=len(text), desc=desc, unit="char", unit_scale=True, disable=len(text) < 4 * _CHUNK) as bar:
        while start < len(text):
            end = min(start + _CHUNK, len(text))
            if end < len(text):
                # cut after a lone newline between two non-space characters: BPE's pre-tokenizer makes
                # that newline a piece of its own, so the cut changes no token
                cut = end
                while cut < len(text) and not (text[cut - 1] == "\n" and not text[cut].isspace()
                                               and not text[cut - 2].isspace()):
                    cut += 1
                end = cut
            parts.append(np.asarray(tok.encode(text[start:end]), dtype=dtype))
            bar.update(end - start)
            start = end
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def prepare(corpus: Corpus, tokenizer_name: str, out_dir: str | Path, val_fraction: float = 0.1) -> dict:
    """Split the text (first 1 - val_fraction for training, the rest for validation), encode, write, return meta."""
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"--val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    text = corpus.text
    if not text:
        raise UserError(f"{corpus.source} holds no text")
    tok = tokenizers.build(tokenizer_name, text)
    n = len(text)
    split_at = int(n * (1.0 - val_fraction))  # nanoGPT's split: by characters of the source text
    pieces = {"train": text[:split_at], "val": text[split_at:]}
    out = Path(out_dir)
    meta = {
        "format": FORMAT,
        "version": 1,
        "tokenizer": tok.spec(),
        "vocab_size": tok.vocab_size,
        "dtype": token_dtype(tok.vocab_size).name,
        "source": corpus.source,
        "source_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "val_fraction": val_fraction,
    }
    for split, piece in pieces.items():
        ids = encode_text(tok, piece, desc=f"encoding {split}")
        with atomic_open(out / f"{split}.bin") as f:
            ids.tofile(f)
        meta[f"{split}_tokens"] = int(ids.size)
        meta[f"{split}_bytes"] = len(piece.encode("utf-8"))  # for bits per byte
    atomic_write_json(out / "meta.json", meta)  # written last: a dataset with meta.json is complete
    return meta


def resolve_dataset(dataset: str, data_root: str | Path = "data") -> Path:
    """A dataset name under data/ or a path to a prepared folder."""
    for cand in (Path(dataset), Path(data_root) / dataset):
        if (cand / "meta.json").is_file():
            return cand
    hint = f"python data/prepare.py {dataset}" if "/" not in dataset else "python data/prepare.py SOURCE --out DIR"
    raise UserError(f"dataset '{dataset}' is not prepared (no meta.json under data/{dataset} or {dataset}); run `{hint}`")


class TokenDataset:
    """A prepared dataset: its meta.json, tokenizer and memory-mapped splits."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.meta = json.loads((self.path / "meta.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{self.path / 'meta.json'} cannot be read ({e}); prepare the dataset again") from None
        if self.meta.get("format") != FORMAT:
            raise UserError(f"{self.path} is not a minigpt dataset (meta.json has no format '{FORMAT}'); "
                            f"prepare it with data/prepare.py")
        self.tokenizer = tokenizers.from_spec(self.meta["tokenizer"])
        self.vocab_size = int(self.meta["vocab_size"])
        self.splits: dict[str, np.memmap] = {}
        dtype = np.dtype(self.meta["dtype"])
        for split in SPLITS:
            f = self.path / f"{split}.bin"
            want = int(self.meta[f"{split}_tokens"])
            size = f.stat().st_size if f.is_file() else -1
            if size != want * dtype.itemsize:
                raise UserError(f"{f} is missing or does not hold the {want} tokens meta.json records; "
                                f"prepare the dataset again")
            self.splits[split] = np.memmap(f, dtype=dtype, mode="r") if want else np.zeros(0, dtype)

    def check_block_size(self, block_size: int) -> None:
        for split, data in self.splits.items():
            if len(data) < block_size + 1:
                raise UserError(
                    f"the {split} split of {self.path} has {len(data)} tokens, fewer than block_size + 1 = "
                    f"{block_size + 1}; use more text or a smaller --block_size"
                )


class Batches:
    """Random (input, target) windows of `block_size` tokens from one dataset, from a seeded generator."""

    def __init__(self, dataset: TokenDataset, block_size: int, batch_size: int, seed: int, rank: int = 0):
        dataset.check_block_size(block_size)
        self.dataset = dataset
        self.block_size = block_size
        self.batch_size = batch_size
        # One generator per rank: each rank of a distributed run draws its own stream
        self.generator = torch.Generator().manual_seed(seed + 1000 * rank)
        self._offsets = np.arange(block_size + 1)

    def get(self, split: str, batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        data = self.dataset.splits[split]
        B = batch_size or self.batch_size
        starts = torch.randint(len(data) - self.block_size, (B,), generator=self.generator).numpy()
        windows = torch.from_numpy(data[starts[:, None] + self._offsets].astype(np.int64))  # (B, T+1)
        return windows[:, :-1], windows[:, 1:]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def iter_windows(data: np.ndarray, block_size: int, batch_size: int):
    """Non-overlapping windows covering a whole split, for exact evaluation; the last one may be shorter."""
    n = len(data) - 1  # every position but the last has a next-token target
    starts = list(range(0, n, block_size))
    for i in range(0, len(starts), batch_size):
        group = starts[i:i + batch_size]
        full = [s for s in group if s + block_size <= n]
        if full:
            w = torch.from_numpy(data[np.asarray(full)[:, None] + np.arange(block_size + 1)].astype(np.int64))
            yield w[:, :-1], w[:, 1:]
        for s in group:
            if s + block_size > n:  # the tail, shorter than block_size
                w = torch.from_numpy(np.asarray(data[s:n + 1], dtype=np.int64))[None]
                yield w[:, :-1], w[:, 1:]
