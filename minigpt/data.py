"""A prepared dataset opened for training and evaluation, and the batches drawn from it.

`TokenDataset(path)` opens a folder written by data/prepare.py (format: minigpt.shards): its meta.json,
its tokenizer and, per split, one long memory-mapped token stream (`.splits[split]`, never loaded).
`Batches` draws random windows from it: `get("train")` is the training stream, from a seeded generator
whose state is saved in checkpoints so a resumed run sees the same stream; `eval_batches(split, n)`
draws evaluation windows from a generator of their own, the same windows at every evaluation, so how
often and how much a run evaluates changes nothing in what it trains on. `iter_windows` covers a whole
split for exact evaluation.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from . import shards
from . import tokenizer as tokenizers
from .errors import UserError

SPLITS = ("train", "val")


def resolve_dataset(dataset: str, data_root: str | Path = "data") -> Path:
    """A dataset name under data/ or a path to a prepared folder."""
    for cand in (Path(dataset), Path(data_root) / dataset):
        if (cand / "meta.json").is_file():
            return cand
    hint = f"python data/prepare.py {dataset}" if "/" not in dataset else f"python data/prepare.py SOURCE --out={dataset}"
    raise UserError(f"dataset '{dataset}' is not prepared (no meta.json under data/{dataset} or {dataset}); run `{hint}`")


class TokenDataset:
    """A prepared dataset: its meta.json, tokenizer and memory-mapped splits.

    Shards are sha256-checked on opening when the dataset is at most shards.VERIFY_LIMIT bytes (or
    `verify=True`); check bigger ones with `python -m minigpt verify DIR`.
    """

    def __init__(self, path: str | Path, verify: bool | None = None):
        self.path = Path(path)
        try:
            self.meta = json.loads((self.path / "meta.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{self.path / 'meta.json'} cannot be read ({e}); prepare the dataset again") from None
        if self.meta.get("format") == shards.OLD_FORMAT:
            raise UserError(f"{self.path} holds train.bin/val.bin from an older minigpt; prepare it again with "
                            f"`python data/prepare.py SOURCE --out={self.path} --overwrite`")
        if self.meta.get("format") != shards.FORMAT:
            raise UserError(f"{self.path} is not a minigpt dataset (meta.json has no format '{shards.FORMAT}'); "
                            f"prepare it with `python data/prepare.py SOURCE --out={self.path}`")
        self.tokenizer = tokenizers.from_spec(self.meta["tokenizer"])
        self.vocab_size = int(self.meta["vocab_size"])
        if verify is None:
            verify = shards.dataset_bytes(self.meta) <= shards.VERIFY_LIMIT
        self.splits: dict[str, shards.Tokens] = {s: shards.load_split(self.path, self.meta, s, verify) for s in SPLITS}

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
    """Random (input, target) windows of `block_size` tokens from one dataset, from seeded generators.

    A window may start anywhere, so a shard contributes in proportion to its size; with `align_to_doc`
    it starts at a document boundary instead (each document equally likely).
    """

    def __init__(self, dataset: TokenDataset, block_size: int, batch_size: int, seed: int,
                 align_to_doc: bool = False):
        dataset.check_block_size(block_size)
        self.dataset = dataset
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)  # the training stream; its state is checkpointed
        self._offsets = np.arange(block_size + 1)
        self.align_to_doc = align_to_doc
        self._doc_starts: dict[str, np.ndarray] = {}  # per split, found on first use
        if align_to_doc and dataset.tokenizer.eot_id is None:
            raise UserError(f"align_to_doc needs documents separated by an end-of-text token, and the tokenizer "
                            f"of {dataset.path} ({dataset.meta['tokenizer'].get('kind')}, one text) has none; "
                            f"drop --align_to_doc")

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

    def _draw(self, split: str, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        data = self.dataset.splits[split]
        B = self.batch_size
        if self.align_to_doc:
            docs = self._starts(split)
            starts = docs[torch.randint(len(docs), (B,), generator=generator).numpy()]
        else:
            starts = torch.randint(len(data) - self.block_size, (B,), generator=generator).numpy()
        windows = torch.from_numpy(data[starts[:, None] + self._offsets].astype(np.int64))  # (B, T+1)
        return windows[:, :-1], windows[:, 1:]

    def get(self, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch of the training stream (of `split`)."""
        return self._draw(split, self.generator)

    def eval_batches(self, split: str, n: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """`n` batches of `split` from a generator seeded afresh from (seed, split): the same windows at
        every call, and the training stream is left untouched."""
        generator = torch.Generator().manual_seed(zlib.crc32(f"eval:{self.seed}:{split}".encode()))
        for _ in range(n):
            yield self._draw(split, generator)

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
