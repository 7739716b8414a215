"""Sharded token files and the streaming preparation that writes them, for corpora of any size.

A sharded dataset is a folder of shard files plus `meta.json`:

    train_000000.bin, train_000001.bin, ..., val_000000.bin, ...
    meta.json   tokenizer spec, dtype, source, how the split was made, and per split its shards
                (file, token count, sha256), tokens, bytes of text and documents

Each shard is a 32-byte header (magic, format version, bytes per token, token count) followed by
the token ids. A split is one long token stream cut into shards of `shard_size` tokens (the last
one shorter), so a window may run from one shard into the next. Every document ends with the
tokenizer's end-of-text token.

`prepare` streams pieces of text from a source (minigpt.corpus.stream), tokenizes batches of them in
`num_proc` worker processes with tiktoken's batch encoder, and appends the ids to the current shard of
their split as results come back in order, so memory stays flat and the output does not depend on
`num_proc`. Each piece goes to val or train by its index alone. After every finished shard (and on
Ctrl-C) it records how far it got in `prepare_state.json`; running it again continues from there
and produces the same files as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import os
import signal
import struct
import sys
import time
from collections import deque
from itertools import chain, islice
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from .errors import UserError, run_cli
from .fileio import atomic_write_json

FORMAT = "minigpt-shards"
MAGIC = b"MGPTSHRD"
VERSION = 1
HEADER = struct.Struct("<8sIIQ8x")  # magic, version, bytes per token, token count, padding: 32 bytes
DTYPES = {2: np.dtype(np.uint16), 4: np.dtype(np.uint32)}
SPLITS = ("train", "val")
STATE = "prepare_state.json"
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

    def tolist(self) -> list[int]:
        return self[:].tolist()


def load_split(path: Path, meta: dict, split: str, verify: bool) -> Tokens:
    """Open the shards of one split listed in meta.json, checking headers (and sha256 if `verify`)."""
    info = meta["splits"][split]
    dtype = np.dtype(meta["dtype"])
    arrays = []
    for entry in info["shards"]:
        f = path / entry["file"]
        arr = open_shard(f)
        if arr.dtype != dtype or len(arr) != entry["tokens"]:
            raise UserError(f"shard {f} holds {len(arr)} {arr.dtype} tokens but meta.json lists {entry['tokens']} "
                            f"{dtype}; prepare the dataset again")
        if verify and file_sha256(f) != entry["sha256"]:
            raise UserError(f"shard {f} does not match the sha256 in meta.json (changed or corrupt); "
                            f"prepare the dataset again")
        arrays.append(arr)
    return Tokens(arrays, dtype)


def dataset_bytes(meta: dict) -> int:
    return sum(HEADER.size + e["tokens"] * np.dtype(meta["dtype"]).itemsize
               for s in SPLITS for e in meta["splits"][s]["shards"])


# ---- writing shards as tokens arrive ---------------------------------------------------------------

class ShardWriter:
    """Appends one split's tokens to `.partial` shard files, finishing a shard every `shard_size` tokens."""

    def __init__(self, out: Path, split: str, dtype: np.dtype, shard_size: int, state: dict | None = None):
        self.out, self.split, self.dtype, self.shard_size = out, split, np.dtype(dtype), shard_size
        state = state or {"shards": [], "partial": 0, "tokens": 0, "bytes": 0, "documents": 0, "pieces": 0}
        self.shards: list[dict] = list(state["shards"])
        self.counts = {k: state[k] for k in ("tokens", "bytes", "documents", "pieces")}
        for entry in self.shards:  # finished shards are kept, not redone; check they are still whole
            read_header(out / entry["file"])
        self._open(state["partial"])

    def _partial_path(self) -> Path:
        return self.out / f"{self.split}_{len(self.shards):06d}.bin.partial"

    def _open(self, n: int) -> None:
        path = self._partial_path()
        if n and not path.is_file():
            raise UserError(f"the unfinished preparation in {self.out} lost {path.name}; start over with --overwrite")
        self.f = open(path, "r+b" if n else "wb")
        if n:  # resume: drop whatever was written after the last recorded state
            self.f.truncate(HEADER.size + n * self.dtype.itemsize)
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
                self._open(0)
                finished = True
        return finished

    def _finish_shard(self) -> None:
        self.f.seek(0)
        self.f.write(header(self.dtype, self.n))
        self.sync()
        self.f.close()
        final = self.out / f"{self.split}_{len(self.shards):06d}.bin"
        os.replace(self._partial_path(), final)
        self.shards.append({"file": final.name, "tokens": self.n, "sha256": file_sha256(final)})

    def sync(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())

    def finish(self) -> None:
        """Close the last shard (if it holds tokens)."""
        if self.n:
            self._finish_shard()
        else:
            self.f.close()
            self._partial_path().unlink()

    def discard(self) -> None:
        self.f.close()
        self._partial_path().unlink(missing_ok=True)

    def state(self) -> dict:
        return {"shards": self.shards, "partial": self.n, **self.counts}


# ---- the streaming pipeline -----------------------------------------------------------------------

def is_val(index: int, val_fraction: float) -> bool:
    """Piece `index` goes to val when the running count floor(i * fraction) steps up: exactly a
    `val_fraction` share of the pieces, spread evenly, decided by the index alone."""
    return math.floor((index + 1) * val_fraction) > math.floor(index * val_fraction)


_TOK = None  # the tokenizer of a worker process


def _init_worker(spec: dict, quiet_sigint: bool) -> None:
    global _TOK
    from .tokenizer import from_spec

    if quiet_sigint:  # Ctrl-C is handled by the main process, which saves the progress
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    _TOK = from_spec(spec)


def _encode(texts: list[str], ends: list[bool], val: list[bool], dtype: str) -> dict:
    """Tokenize a batch of pieces; end-of-text after each document; ids grouped by split, in order."""
    ids = _TOK.enc.encode_ordinary_batch(texts, num_threads=1)  # one thread: --num_proc is the parallelism
    out = {}
    for split, want in (("train", False), ("val", True)):
        pick = [i for i, v in enumerate(val) if v == want]
        parts = [ids[i] + [_TOK.eot_id] if ends[i] else ids[i] for i in pick]
        out[split] = {
            "ids": np.fromiter(chain.from_iterable(parts), dtype=dtype, count=sum(map(len, parts))),
            "bytes": sum(len(texts[i].encode("utf-8")) for i in pick),
            "documents": sum(ends[i] for i in pick),
            "pieces": len(pick),
        }
    return out


def _batches(pieces: Iterator, start: int, val_fraction: float, batch_chars: int) -> Iterator[tuple]:
    """Group pieces into batches of about `batch_chars` characters: (index after the batch, texts, ends, val)."""
    texts, ends, val, n, i = [], [], [], 0, start
    for text, end in pieces:
        texts.append(text)
        ends.append(end)
        val.append(is_val(i, val_fraction))
        n += len(text)
        i += 1
        if n >= batch_chars or len(texts) >= 4096:
            yield i, texts, ends, val
            texts, ends, val, n = [], [], [], 0
    if texts:
        yield i, texts, ends, val


def _settings(tok, stream_source: str, shard_size: int, val_fraction: float) -> dict:
    return {"tokenizer": tok.spec(), "source": stream_source, "shard_size": shard_size, "val_fraction": val_fraction}


def prepare(stream, tok, out_dir: str | Path, shard_size: int = 100_000_000, val_fraction: float = 0.1,
            num_proc: int = 1, overwrite: bool = False, batch_chars: int = 1 << 20) -> dict:
    """Tokenize a corpus.Stream into a sharded dataset under `out_dir` (resuming an unfinished one); return meta."""
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"--val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if shard_size < 1 or num_proc < 1:
        raise UserError(f"--shard_size and --num_proc must be positive, got {shard_size} and {num_proc}")
    if getattr(tok, "eot_id", None) is None or not hasattr(tok, "enc"):
        raise UserError("sharded preparation needs a BPE tokenizer with an end-of-text token (gpt2, a tiktoken "
                        "name or your own --tokenizer FILE); the char tokenizer writes single-file datasets "
                        "(data.prepare)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = _settings(tok, stream.source, shard_size, val_fraction)
    state_path = out / STATE
    if overwrite:
        for f in [*out.glob("*.bin"), *out.glob("*.bin.partial"), out / STATE, out / "meta.json"]:
            f.unlink(missing_ok=True)
    if (out / "meta.json").is_file():
        raise UserError(f"{out} already holds a prepared dataset; pass --overwrite to prepare it again, or choose "
                        f"another --out")
    state = json.loads(state_path.read_text()) if state_path.is_file() else None
    if state is not None and state["settings"] != settings:
        raise UserError(f"{out} holds an unfinished preparation with other settings (source, tokenizer, "
                        f"shard_size or val_fraction); repeat those to resume it, or pass --overwrite")
    dtype = token_dtype(tok.vocab_size)
    writers = {s: ShardWriter(out, s, dtype, shard_size, state and state["splits"][s]) for s in SPLITS}
    done = state["pieces"] if state else 0

    def save_state(pieces: int) -> None:
        for w in writers.values():
            w.sync()  # the partial files hold at least what the state says before the state says it
        atomic_write_json(state_path, {"settings": settings, "pieces": pieces,
                                       "splits": {s: w.state() for s, w in writers.items()}})

    if done:
        print(f"resuming: {done:,} pieces already prepared, "
              f"{sum(len(w.shards) for w in writers.values())} shards finished", file=sys.stderr)
    batches = _batches(islice(stream.pieces(), done, None), done, val_fraction, batch_chars)
    bar = tqdm(desc="preparing", unit=" docs", dynamic_ncols=True, mininterval=1.0)
    t0, n_bytes = time.time(), 0

    def consume(end: int, result: dict) -> None:
        nonlocal done, n_bytes
        finished = False
        for split, r in result.items():
            finished |= writers[split].write(r["ids"])
            for k in ("bytes", "documents", "pieces"):
                writers[split].counts[k] += r[k]
            writers[split].counts["tokens"] += int(r["ids"].size)
            bar.update(r["documents"])
            n_bytes += r["bytes"]
        done = end
        if finished:
            save_state(done)
        bar.set_postfix(tokens=f"{sum(w.counts['tokens'] for w in writers.values()):,}",
                        MBps=f"{n_bytes / 1e6 / max(time.time() - t0, 1e-9):.1f}", refresh=False)

    try:
        if num_proc == 1:  # in this process: the single-core reference
            _init_worker(tok.spec(), quiet_sigint=False)
            for end, texts, ends, val in batches:
                consume(end, _encode(texts, ends, val, dtype.name))
        else:
            with mp.get_context("spawn").Pool(num_proc, _init_worker, (tok.spec(), True)) as pool:
                pending: deque = deque()  # at most 2 batches per worker in flight: memory stays flat
                for end, texts, ends, val in batches:
                    pending.append((end, pool.apply_async(_encode, (texts, ends, val, dtype.name))))
                    if len(pending) >= 2 * num_proc:
                        consume(pending[0][0], pending.popleft()[1].get())
                while pending:
                    consume(pending[0][0], pending.popleft()[1].get())
    except KeyboardInterrupt:
        save_state(done)
        bar.close()
        raise UserError(f"interrupted after {done:,} pieces; run the same command again to resume") from None
    except BaseException:
        bar.close()
        for w in writers.values():
            w.f.close()
        raise
    bar.close()

    counts = {s: w.counts for s, w in writers.items()}
    if counts["train"]["bytes"] + counts["val"]["bytes"] == 0:
        for w in writers.values():
            w.discard()
        state_path.unlink(missing_ok=True)
        raise UserError(f"{stream.source} holds no text; give a source with some text in it")
    if counts["val"]["pieces"] == 0:
        save_state(done)
        raise UserError(f"{stream.source} has only {counts['train']['pieces']} pieces of text, too few for a "
                        f"{val_fraction} validation share; raise --val_fraction or add text")
    for w in writers.values():
        w.finish()
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "tokenizer": tok.spec(),
        "vocab_size": tok.vocab_size,
        "dtype": dtype.name,
        "source": stream.source,
        "split": {"by": "piece (a document, or a ~32k-character part of a long text file)",
                  "val_fraction": val_fraction, "rule": "piece i is val iff floor((i+1)*f) > floor(i*f)"},
        "shard_size": shard_size,
        "splits": {s: {"shards": w.shards, **w.counts} for s, w in writers.items()},
        "val_fraction": val_fraction,
    }
    for s, w in writers.items():  # the flat keys the single-file format has too
        meta[f"{s}_tokens"] = w.counts["tokens"]
        meta[f"{s}_bytes"] = w.counts["bytes"]
    atomic_write_json(out / "meta.json", meta)  # written last: a dataset with meta.json is complete
    state_path.unlink(missing_ok=True)
    return meta


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


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "verify":
        raise UserError("usage: python -m minigpt.shards verify DATASET_DIR")
    meta = verify(argv[1])
    n = sum(len(meta["splits"][s]["shards"]) for s in SPLITS)
    print(f"{argv[1]}: {n} shards, {meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens, all intact")
    return 0


if __name__ == "__main__":
    run_cli(main)
