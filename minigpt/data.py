"""Token files on disk and the batches drawn from them.

A prepared dataset is a folder with `meta.json` and either
- `train.bin` and `val.bin`: token ids as raw uint16 when the vocabulary fits, else uint32, like
  nanoGPT (written by `prepare` below, for whole texts that fit in memory), or
- shards `train_000000.bin, ...`: headered token files written by the streaming preparation of
  minigpt.shards, for corpora of any size.
Either way `TokenDataset.splits[split]` is one long memory-mapped token array. `Batches` draws random
windows from it with its own seeded generator, whose state is saved in checkpoints so a resumed run
sees the same stream; with `align_to_doc` windows start right after an end-of-text token.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import shards
from . import tokenizer as tokenizers
from .corpus import Corpus
from .errors import UserError
from .fileio import atomic_open, atomic_write_json
from .shards import token_dtype

FORMAT = "minigpt-tokens"
SPLITS = ("train", "val")
_CHUNK = 1 << 20  # characters encoded per progress-bar step


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
    """A prepared dataset (single files or shards): its meta.json, tokenizer and memory-mapped splits.

    Shards are sha256-checked on opening when the dataset is at most shards.VERIFY_LIMIT bytes (or
    `verify=True`); check bigger ones with `python -m minigpt.shards verify DIR`.
    """

    def __init__(self, path: str | Path, verify: bool | None = None):
        self.path = Path(path)
        try:
            self.meta = json.loads((self.path / "meta.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{self.path / 'meta.json'} cannot be read ({e}); prepare the dataset again") from None
        if self.meta.get("format") not in (FORMAT, shards.FORMAT):
            raise UserError(f"{self.path} is not a minigpt dataset (meta.json has no format '{FORMAT}' or "
                            f"'{shards.FORMAT}'); prepare it with data/prepare.py")
        self.tokenizer = tokenizers.from_spec(self.meta["tokenizer"])
        self.vocab_size = int(self.meta["vocab_size"])
        self.splits: dict[str, np.ndarray | shards.Tokens] = {}
        if self.meta["format"] == shards.FORMAT:
            if verify is None:
                verify = shards.dataset_bytes(self.meta) <= shards.VERIFY_LIMIT
            for split in SPLITS:
                self.splits[split] = shards.load_split(self.path, self.meta, split, verify)
            return
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


def doc_starts(data, eot_id: int, chunk: int = 1 << 24) -> np.ndarray:
    """Positions where a document starts: 0 and right after every end-of-text token (read in chunks)."""
    found = [np.zeros(1, np.int64)]
    for lo in range(0, len(data), chunk):
        block = np.asarray(data[lo:lo + chunk])
        found.append(np.flatnonzero(block == eot_id).astype(np.int64) + lo + 1)
    return np.concatenate(found)


class Batches:
    """Random (input, target) windows of `block_size` tokens from one dataset, from a seeded generator.

    A window may start anywhere, so a shard contributes in proportion to its size; with `align_to_doc`
    it starts at a document boundary instead (each document equally likely).
    """

    def __init__(self, dataset: TokenDataset, block_size: int, batch_size: int, seed: int, rank: int = 0,
                 align_to_doc: bool = False):
        dataset.check_block_size(block_size)
        self.dataset = dataset
        self.block_size = block_size
        self.batch_size = batch_size
        # One generator per rank: each rank of a distributed run draws its own stream
        self.generator = torch.Generator().manual_seed(seed + 1000 * rank)
        self._offsets = np.arange(block_size + 1)
        self.align_to_doc = align_to_doc
        self._doc_starts: dict[str, np.ndarray] = {}  # per split, found on first use
        if align_to_doc and dataset.tokenizer.eot_id is None:
            raise UserError(f"align_to_doc needs documents separated by an end-of-text token, and the tokenizer "
                            f"of {dataset.path} ({dataset.meta['tokenizer'].get('kind')}) has none; prepare the "
                            f"data with a BPE tokenizer or drop --align_to_doc")

    def _starts(self, split: str) -> np.ndarray:
        if split not in self._doc_starts:
            data = self.dataset.splits[split]
            starts = doc_starts(data, self.dataset.tokenizer.eot_id)
            starts = starts[starts < len(data) - self.block_size]  # room for a whole window
            if not len(starts):
                raise UserError(f"no document of the {split} split of {self.dataset.path} starts early enough for "
                                f"a window of {self.block_size} tokens; drop --align_to_doc or use more text")
            self._doc_starts[split] = starts
        return self._doc_starts[split]

    def get(self, split: str, batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        data = self.dataset.splits[split]
        B = batch_size or self.batch_size
        if self.align_to_doc:
            docs = self._starts(split)
            starts = docs[torch.randint(len(docs), (B,), generator=self.generator).numpy()]
        else:
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
