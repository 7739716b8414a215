"""The on-disk format of a prepared dataset: shard files, and a folder of them described by meta.json.

A dataset is a folder of shard files plus `meta.json`:

    train_000000.bin, train_000001.bin, ..., val_000000.bin, ...
    meta.json   tokenizer spec, dtype, source, how the split was made, and per split its shards
                (file, token count, sha256), tokens, bytes of text and documents

Each shard is a 32-byte header (magic, format version, bytes per token, token count) followed by
the token ids (uint16 when the vocabulary fits, else uint32). A split is one long token stream cut
into shards of `shard_size` tokens (the last one shorter), so a window may run from one shard into
the next; `Tokens` shows it as one array. `ShardWriter` writes a split as its tokens arrive (see
minigpt.prepare for the pipeline that feeds it). `python -m minigpt verify DIR` checks a dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import opt, parse_cli
from .errors import UserError, run_cli

FORMAT = "minigpt-shards"
OLD_FORMAT = "minigpt-tokens"  # train.bin / val.bin written by minigpt before the shards: refused, replaced
MAGIC = b"MGPTSHRD"
VERSION = 1
HEADER = struct.Struct("<8sIIQ8x")  # magic, version, bytes per token, token count, padding: 32 bytes
DTYPES = {2: np.dtype(np.uint16), 4: np.dtype(np.uint32)}
SPLITS = ("train", "val")
VERIFY_LIMIT = 1 << 30  # datasets up to this many bytes are sha256-checked whenever they are opened


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (GPT-2's 50257 do), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


# ---- one shard file ------------------------------------------------------------------------------

def header(dtype: np.dtype, count: int) -> bytes:
    return HEADER.pack(MAGIC, VERSION, np.dtype(dtype).itemsize, count)


def read_header(path: Path) -> tuple[np.dtype, int]:
    """(dtype, token count) of a shard, after checking its header against the file."""
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER.size)
        size = path.stat().st_size
    except OSError as e:
        raise UserError(f"shard {path} cannot be read ({e.strerror}); prepare the dataset again") from None
    if len(raw) < HEADER.size or raw[:8] != MAGIC:
        raise UserError(f"{path} is not a minigpt shard (bad magic bytes); prepare the dataset again")
    magic, version, itemsize, count = HEADER.unpack(raw)
    if version != VERSION:
        raise UserError(f"shard {path} has format version {version}, this minigpt reads version {VERSION}; "
                        f"prepare the dataset again")
    if itemsize not in DTYPES:
        raise UserError(f"shard {path} has {itemsize} bytes per token in its header (2 or 4 expected); "
                        f"the file is corrupt, prepare the dataset again")
    if size != HEADER.size + count * itemsize:
        raise UserError(f"shard {path} is {size} bytes but its header promises {count} tokens "
                        f"({HEADER.size + count * itemsize} bytes); it is truncated or corrupt, prepare it again")
    return DTYPES[itemsize], count


def open_shard(path: Path) -> np.ndarray:
    """The tokens of a shard, memory-mapped (nothing is read until used)."""
    dtype, count = read_header(path)
    if count == 0:
        return np.zeros(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER.size, shape=(count,))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


class Tokens:
    """The shards of one split seen as one long array: len(), slices and integer-array indexing."""

    def __init__(self, arrays: list[np.ndarray], dtype: np.dtype):
        self.arrays = arrays
        self.dtype = dtype
        self.starts = np.cumsum([0] + [len(a) for a in arrays])  # global index of each shard's first token

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, idx) -> np.ndarray:
        if isinstance(idx, slice):
            start, stop, step = idx.indices(len(self))
            parts = [a[max(start - s, 0):max(stop - s, 0)] for a, s in zip(self.arrays, self.starts)
                     if start < s + len(a) and stop > s]
            out = np.concatenate(parts) if parts else np.zeros(0, self.dtype)
            return out[::step] if step != 1 else out
        idx = np.asarray(idx)
        if len(self.arrays) == 1:
            return np.asarray(self.arrays[0][idx])
        which = np.searchsorted(self.starts, idx, side="right") - 1  # the shard holding each index
        out = np.empty(idx.shape, self.dtype)
        for i in np.unique(which):
            m = which == i
            out[m] = self.arrays[i][idx[m] - self.starts[i]]
        return out


def shard_file(folder: Path, name) -> Path:
    """The shard `name` listed in meta.json (or prepare's state): a plain file name inside `folder`, never
    an absolute path or one with `..` that would take a file from elsewhere."""
    if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name:
        raise UserError(f"{folder} lists the shard {name!r}, which is not a file name inside {folder}; its "
                        f"meta.json was edited or is corrupt, prepare the dataset again")
    return folder / name


def load_split(path: Path, meta: dict, split: str, verify: bool) -> Tokens:
    """Open the shards of one split listed in meta.json, checking headers and token counts against meta.json
    (and sha256 if `verify`)."""
    info = meta["splits"][split]
    dtype = np.dtype(meta["dtype"])
    arrays = []
    for entry in info["shards"]:
        f = shard_file(path, entry["file"])
        arr = open_shard(f)
        if arr.dtype != dtype or len(arr) != entry["tokens"]:
            raise UserError(f"shard {f} holds {len(arr)} {arr.dtype} tokens but meta.json lists {entry['tokens']} "
                            f"{dtype}; prepare the dataset again")
        if verify and file_sha256(f) != entry["sha256"]:
            raise UserError(f"shard {f} does not match the sha256 in meta.json (changed or corrupt); "
                            f"prepare the dataset again")
        arrays.append(arr)
    total = sum(map(len, arrays))
    for where, said in ((f"splits.{split}.tokens", info.get("tokens")),
                        (f"{split}_tokens", meta.get(f"{split}_tokens"))):
        if said is not None and said != total:
            raise UserError(f"meta.json of {path} says the {split} split holds {said} tokens ({where}) but its shards "
                            f"hold {total}; the dataset is inconsistent, prepare it again")
    size = meta.get("shard_size")
    if size is not None and (any(len(a) != size for a in arrays[:-1]) or any(len(a) > size for a in arrays)):
        raise UserError(f"the {split} shards of {path} do not follow meta.json's shard_size={size} (every shard but "
                        f"the last holds exactly that many tokens); the dataset is inconsistent, prepare it again")
    return Tokens(arrays, dtype)


def dataset_bytes(meta: dict) -> int:
    return sum(HEADER.size + e["tokens"] * np.dtype(meta["dtype"]).itemsize
               for s in SPLITS for e in meta["splits"][s]["shards"])


# ---- writing shards as tokens arrive ---------------------------------------------------------------

SHARD_NAME = re.compile(r"(?P<split>train|val)_(?P<index>\d{6})\.bin(?:\.partial)?")


def _is_shard(path: Path) -> bool:
    """A file this module wrote: it starts with the magic bytes (or is a `.partial` cut before its header)."""
    with open(path, "rb") as f:
        head = f.read(len(MAGIC))
    return head == MAGIC or (path.name.endswith(".partial") and MAGIC.startswith(head)
                             and path.stat().st_size < HEADER.size)


def shard_files(folder: Path, split: str | None = None) -> list[tuple[int, Path]]:
    """(index, path) of the files in `folder` named like shards (of `split`), finished or `.partial`; a file
    with such a name that is not a shard is refused rather than overwritten or deleted."""
    found = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        m = SHARD_NAME.fullmatch(path.name)
        if m and (split is None or m["split"] == split):
            if not (path.is_file() and _is_shard(path)):
                raise UserError(f"{path} has the name of a minigpt shard but is not one; move it out of {folder} "
                                f"or choose another --out")
            found.append((int(m["index"]), path))
    return found


class ShardWriter:
    """Appends one split's tokens to `.partial` shard files, finishing a shard every `shard_size` tokens.

    `state()` is all a resume needs: the finished shards, the tokens in the partial one and the counts.
    A writer made from a state rolls the folder back to it, so a crash anywhere after that state was
    recorded costs nothing but the work since: the partial shard is cut back to its recorded length
    (taken back first if it was finished since) and shards begun since are deleted. Without a state
    the same holds for an empty one.
    """

    def __init__(self, out: Path, split: str, dtype: np.dtype, shard_size: int, state: dict | None = None):
        self.out, self.split, self.dtype, self.shard_size = out, split, np.dtype(dtype), shard_size
        state = state or {"shards": [], "partial": 0, "tokens": 0, "bytes": 0, "documents": 0, "pieces": 0}
        self.shards: list[dict] = list(state["shards"])
        self.counts = {k: state[k] for k in ("tokens", "bytes", "documents", "pieces")}
        for entry in self.shards:  # finished shards are kept, not redone; check they are still whole
            read_header(shard_file(out, entry["file"]))
        self._roll_back(state["partial"])

    def _path(self, index: int, partial: bool = True) -> Path:
        return self.out / f"{self.split}_{index:06d}.bin{'.partial' * partial}"

    def _roll_back(self, n: int) -> None:
        k = len(self.shards)
        partial = self._path(k)
        for index, path in shard_files(self.out, self.split):
            if index > k or (index < k and path.name.endswith(".partial")):
                path.unlink()  # written after the state was recorded
            elif index == k and path != partial:
                os.replace(path, partial)  # finished after the state was recorded: its start is the partial shard
        need = HEADER.size + n * self.dtype.itemsize
        if n and not (partial.is_file() and partial.stat().st_size >= need):
            raise UserError(f"the unfinished preparation in {self.out} lost part of {partial.name}; start over "
                            f"with --overwrite")
        self.f = open(partial, "r+b" if n else "wb")
        if n:  # drop whatever was written after the recorded state
            self.f.truncate(need)
            self.f.seek(0, os.SEEK_END)
        else:
            self.f.write(header(self.dtype, 0))  # the count is filled in when the shard is finished
        self.n = n

    def write(self, tokens: np.ndarray) -> bool:
        """Append tokens; True if a shard was finished on the way."""
        finished = False
        while tokens.size:
            head, tokens = tokens[:self.shard_size - self.n], tokens[self.shard_size - self.n:]
            self.f.write(head.astype(self.dtype, copy=False).tobytes())
            self.n += head.size
            if self.n == self.shard_size:
                self._finish_shard()
                self.f = open(self._path(len(self.shards)), "wb")
                self.f.write(header(self.dtype, 0))
                self.n = 0
                finished = True
        return finished

    def _finish_shard(self) -> None:
        self.f.seek(0)
        self.f.write(header(self.dtype, self.n))
        self.sync()
        self.f.close()
        final = self._path(len(self.shards), partial=False)
        os.replace(self._path(len(self.shards)), final)
        self.shards.append({"file": final.name, "tokens": self.n, "sha256": file_sha256(final)})

    def sync(self) -> None:
        """Make what was written durable (the partial file; finished shards were synced when finished)."""
        if not self.f.closed:
            self.f.flush()
            os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()

    def finish(self) -> None:
        """Close the last shard (if it holds tokens)."""
        if self.n:
            self._finish_shard()
        else:
            self.f.close()
            self._path(len(self.shards)).unlink()

    def discard(self) -> None:
        self.f.close()
        self._path(len(self.shards)).unlink(missing_ok=True)

    def state(self) -> dict:
        return {"shards": list(self.shards), "partial": self.n, **self.counts}


def verify(path: str | Path) -> dict:
    """Check every shard of a prepared dataset against meta.json (headers, sizes, sha256)."""
    path = Path(path)
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path / 'meta.json'} cannot be read ({e}); prepare the dataset again") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{path} is not a sharded minigpt dataset (meta.json has no format '{FORMAT}')")
    for split in SPLITS:
        load_split(path, meta, split, verify=True)
    return meta


@dataclass
class VerifyConfig:
    dataset: str = opt("", "folder of a prepared dataset (with meta.json)")


def main(argv: list[str]) -> int:
    cfg = parse_cli(argv, {"verify": VerifyConfig}, "python -m minigpt verify",
                    "Check every shard of a prepared dataset against its meta.json (headers, sizes, sha256).",
                    positional="dataset").verify
    if not cfg.dataset:
        raise UserError("name the dataset folder to check: python -m minigpt verify DIR")
    meta = verify(cfg.dataset)
    n = sum(len(meta["splits"][s]["shards"]) for s in SPLITS)
    print(f"{cfg.dataset}: {n} shards, {meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens, all intact")
    return 0


if __name__ == "__main__":
    run_cli(main)
