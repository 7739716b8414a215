"""The one data preparation pipeline: a corpus.Source in, a sharded token dataset (minigpt.shards) out.

    python data/prepare.py SOURCE [--tokenizer=char|gpt2|NAME|FILE.json] [--out=DIR] [--num_proc=N] ...

The split: a document that is long (at least LONG_DOC characters) or the only one of its source is
cut once, its first `1 - val_fraction` of characters to train and the rest to val (nanoGPT's split of
tinyshakespeare, to the character); shorter documents go whole, document i to val when
floor((i+1)*f) > floor(i*f) (every 10th with f = 0.1). So each split is a sequence of contiguous
ranges of the source, and every range ends with the tokenizer's end-of-text token, which marks each
place where text that was not adjacent meets. (A char vocabulary gets an end-of-text id only for a
source of several documents; a single text needs none, and its ids stay nanoGPT's.)

The units of work are pieces of text (corpus.PIECE_CHARS, cut where no BPE token changes).
Batches of them are tokenized in `num_proc` worker processes and the ids appended to the current
shard of their split as results come back in order, so memory stays flat and the output does not
depend on `num_proc`. Progress is committed a whole batch at a time; after every finished shard (and
on Ctrl-C or an error) the last committed batch is recorded in `prepare_state.json`. Running the same
command again rolls the shard files back to that record and continues, writing the same files as an
uninterrupted run, wherever the interrupt fell. meta.json is written last: a folder with meta.json
holds a whole dataset.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import re
import signal
import sys
import time
from collections import deque
from contextlib import contextmanager
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from . import corpus
from . import tokenizer as tokenizers
from .config import opt, parse_cli
from .errors import UserError, run_cli
from .fileio import atomic_write_json
from .shards import FORMAT, OLD_FORMAT, SPLITS, VERSION, ShardWriter, shard_files, token_dtype

STATE = "prepare_state.json"
LONG_DOC = 1 << 16  # characters from which a document is split within itself rather than sent whole
BUILTIN = ("shakespeare", "tinyshakespeare")


@dataclass
class PrepareConfig:
    source: str = opt("", "shakespeare, tinyshakespeare, a .txt/.jsonl/.parquet file or folder, or hf:NAME[:CONFIG]")
    tokenizer: str = opt("char", "char, gpt2, any tiktoken encoding name, or a BPE file from `python -m minigpt bpe`")
    out: str = opt("", "output folder (default: data/<name>)")
    input: str = opt("", "local copy of the source file (tinyshakespeare)")
    val_fraction: float = opt(0.1, "share held out for validation: of the characters of a long document, else "
                                    "of the documents", range="(0, 1)")
    split: str = opt("train", "split of the Hugging Face dataset to read (hf: sources)")
    revision: str = opt("", "branch, tag or commit of the Hugging Face dataset (hf: sources)")
    text_field: str = opt("text", "column holding the text (hf:, .jsonl, .parquet)")
    num_proc: int = opt(1, "tokenizer processes", range="[1, inf)")
    shard_size: int = opt(100_000_000, "tokens per shard", range="[1, inf)")
    overwrite: bool = opt(False, "replace a dataset already prepared (or half prepared) in --out; other files "
                                 "there are left alone")


# ---- the split: which text goes where ---------------------------------------------------------------

Unit = tuple[str, str, bool]  # text, split, whether it ends a contiguous range (an end-of-text follows)


def is_val(index: int, val_fraction: float) -> bool:
    """Short document `index` goes to val when the running count floor(i * fraction) steps up: exactly a
    `val_fraction` share of them, spread evenly, decided by the index alone."""
    return math.floor((index + 1) * val_fraction) > math.floor(index * val_fraction)


def _cut_within(doc: corpus.Document, val_fraction: float) -> Iterator[tuple[str, str]]:
    cut = int(doc.chars * (1 - val_fraction))  # nanoGPT's text[:int(n * 0.9)], by characters
    pos = 0
    for piece in doc.pieces():
        if pos < cut < pos + len(piece):
            yield piece[:cut - pos], "train"
            yield piece[cut - pos:], "val"
        else:
            yield piece, "train" if pos < cut else "val"
        pos += len(piece)


def units(source: corpus.Source, val_fraction: float) -> Iterator[Unit]:
    """The pieces of the source, each with its split and whether it ends a contiguous range of text."""
    def parts() -> Iterator[tuple[str, str]]:
        docs = source.documents()
        doc, i = next(docs, None), 0
        while doc is not None:
            following = next(docs, None)
            if doc.chars >= LONG_DOC or (i == 0 and following is None):
                yield from _cut_within(doc, val_fraction)
            else:
                split = "val" if is_val(i, val_fraction) else "train"
                yield from ((piece, split) for piece in doc.pieces())
            yield "", "end"  # a document ends
            doc, i = following, i + 1

    held = None  # one piece of lookahead: a range ends at a document end or where the split changes
    for text, split in parts():
        if held is not None and (split == "end" or split != held[1]):
            yield held[0], held[1], True
            held = None
        elif held is not None:
            yield held[0], held[1], False
            held = None
        if split != "end" and text:
            held = (text, split)
    if held is not None:
        yield held[0], held[1], True


def char_tokenizer(source: corpus.Source) -> tokenizers.CharTokenizer:
    """The character vocabulary of a source (a first pass over it), with an end-of-text id for several documents."""
    chars: set[str] = set()
    docs = 0
    for doc in tqdm(source.documents(), desc="reading the characters", unit=" docs", mininterval=1.0):
        docs += doc.chars > 0
        for piece in doc.pieces():
            chars.update(piece)
    if not chars:
        raise UserError(f"{source.description} holds no text; give a source with some text in it")
    return tokenizers.CharTokenizer(chars, eot=docs > 1)


# ---- tokenizing in worker processes ----------------------------------------------------------------

_TOK = None  # the tokenizer of a worker process


def _init_worker(spec: dict, quiet_sigint: bool) -> None:
    global _TOK
    if quiet_sigint:  # Ctrl-C is handled by the main process, which saves the progress
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    _TOK = tokenizers.from_spec(spec)


def _encode(texts: list[str], splits: list[str], ends: list[bool], dtype: str) -> dict:
    """Tokenize a batch of pieces; end-of-text after each range; ids grouped by split, in order."""
    ids = _TOK.encode_batch(texts)
    eot = [] if _TOK.eot_id is None else [_TOK.eot_id]
    out = {}
    for split in SPLITS:
        pick = [i for i, s in enumerate(splits) if s == split]
        parts = [ids[i] + eot if ends[i] else ids[i] for i in pick]
        out[split] = {
            "ids": np.fromiter(chain.from_iterable(parts), dtype=dtype, count=sum(map(len, parts))),
            "bytes": sum(len(texts[i].encode("utf-8")) for i in pick),
            "documents": sum(ends[i] for i in pick),
            "pieces": len(pick),
        }
    return out


def _batches(stream: Iterator[Unit], start: int, batch_chars: int) -> Iterator[tuple]:
    """Group units into batches of about `batch_chars` characters: (index after the batch, texts, splits, ends)."""
    texts, splits, ends, n, i = [], [], [], 0, start
    for text, split, end in stream:
        texts.append(text)
        splits.append(split)
        ends.append(end)
        n += len(text)
        i += 1
        if n >= batch_chars or len(texts) >= 4096:
            yield i, texts, splits, ends
            texts, splits, ends, n = [], [], [], 0
    if texts:
        yield i, texts, splits, ends


# ---- the pipeline ----------------------------------------------------------------------------------

def _check(out: Path, val_fraction: float, shard_size: int, num_proc: int, overwrite: bool) -> None:
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"--val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if shard_size < 1 or num_proc < 1:
        raise UserError(f"--shard_size and --num_proc must be positive, got {shard_size} and {num_proc}")
    meta = out / "meta.json"
    if meta.is_file() and _meta_format(meta) not in (FORMAT, OLD_FORMAT):
        raise UserError(f"{meta} is not the meta.json of a minigpt dataset, and preparing would replace it; "
                        f"choose another --out=DIR")
    if meta.is_file() and not overwrite:
        (out / STATE).unlink(missing_ok=True)  # left by an interrupt after meta.json was written: nothing to resume
        raise UserError(f"{out} already holds a prepared dataset; pass --overwrite to prepare it again, or choose "
                        f"another --out=DIR")


def _meta_format(meta: Path) -> str | None:
    try:
        return json.loads(meta.read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        return None


def _clear(out: Path) -> list[str]:
    """--overwrite: delete what a preparation writes (shards, meta.json, its progress record and their
    temporaries; train.bin/val.bin of an old-format dataset) and nothing else. Returns what was left alone."""
    old_format = (out / "meta.json").is_file() and _meta_format(out / "meta.json") == OLD_FORMAT
    ours = {p for _, p in shard_files(out)}  # refuses a file with a shard's name that is not one
    kept = []
    for path in sorted(out.iterdir()):
        if path.is_file() and (path in ours or path.name in ("meta.json", STATE)
                               or re.fullmatch(rf"\.({re.escape(STATE)}|meta\.json)\.\w+\.tmp", path.name)
                               or (old_format and path.name in ("train.bin", "val.bin"))):
            path.unlink()
        else:
            kept.append(path.name)
    return kept


def prepare_dataset(source: corpus.Source, tok, out_dir: str | Path, shard_size: int = 100_000_000,
                    val_fraction: float = 0.1, num_proc: int = 1, overwrite: bool = False,
                    batch_chars: int = 1 << 20) -> dict:
    """Tokenize a source into a sharded dataset under `out_dir` (resuming an unfinished one); return its meta.

    Progress is committed a whole batch at a time: `committed` is the state after the last batch both
    splits hold, and it is what `prepare_state.json` records (after every finished shard and on any
    interrupt, once the files hold it). A resume rolls the shard files back to it (ShardWriter), so an
    interrupt at any point, even between a batch's train and val writes, resumes to the same dataset."""
    out = Path(out_dir)
    _check(out, val_fraction, shard_size, num_proc, overwrite)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    settings = {"tokenizer": tok.spec(), "source": source.description, "shard_size": shard_size,
                "val_fraction": val_fraction}
    state_path = out / STATE
    if overwrite and (kept := _clear(out)):
        print(f"--overwrite: left alone {len(kept)} file(s) in {out} that a preparation does not write: "
              f"{', '.join(kept[:5])}{', ...' * (len(kept) > 5)}", file=sys.stderr)
    try:
        state = json.loads(state_path.read_text()) if state_path.is_file() else None
    except ValueError:
        raise UserError(f"{state_path} is corrupt; start over with --overwrite") from None
    if state is not None and state["settings"] != settings:
        raise UserError(f"{out} holds an unfinished preparation with other settings (source, tokenizer, "
                        f"shard_size or val_fraction); repeat those to resume it, or pass --overwrite")
    dtype = token_dtype(tok.vocab_size)
    writers = {s: ShardWriter(out, s, dtype, shard_size, state and state["splits"][s]) for s in SPLITS}
    done = state["pieces"] if state else 0
    committed = {"settings": settings, "pieces": done, "splits": {s: w.state() for s, w in writers.items()}}

    def save_state() -> None:
        for w in writers.values():
            w.sync()  # the files hold at least what the state says before the state says it
        atomic_write_json(state_path, committed)

    @contextmanager
    def resumable():
        """On an interrupt or error, record the last whole batch, so the same command resumes from it."""
        try:
            yield
        except BaseException as e:
            bar.close()
            try:
                save_state()
            except Exception:  # e.g. the disk is full: the state recorded before still holds
                pass
            for w in writers.values():
                w.close()
            if isinstance(e, KeyboardInterrupt):
                raise UserError(f"interrupted after {committed['pieces']:,} pieces; run the same command again "
                                f"to resume") from None
            raise

    def discard() -> None:
        for w in writers.values():
            w.discard()
        state_path.unlink(missing_ok=True)
        if created and not any(out.iterdir()):
            out.rmdir()

    if done:
        print(f"resuming: {done:,} pieces already prepared, "
              f"{sum(len(w.shards) for w in writers.values())} shards finished", file=sys.stderr)
    batches = _batches(islice(units(source, val_fraction), done, None), done, batch_chars)
    bar = tqdm(desc="preparing", unit=" docs", dynamic_ncols=True, mininterval=1.0)
    t0, n_bytes = time.time(), 0

    def consume(end: int, result: dict) -> None:
        nonlocal committed, n_bytes
        finished = False
        for split, r in result.items():
            finished |= writers[split].write(r["ids"])
            for k in ("bytes", "documents", "pieces"):
                writers[split].counts[k] += r[k]
            writers[split].counts["tokens"] += int(r["ids"].size)
            bar.update(r["documents"])
            n_bytes += r["bytes"]
        committed = {"settings": settings, "pieces": end, "splits": {s: w.state() for s, w in writers.items()}}
        if finished:
            save_state()
        bar.set_postfix(tokens=f"{sum(w.counts['tokens'] for w in writers.values()):,}",
                        MBps=f"{n_bytes / 1e6 / max(time.time() - t0, 1e-9):.1f}", refresh=False)

    with resumable():
        _encode_in_order(batches, tok.spec(), dtype.name, num_proc, consume)
    bar.close()

    counts = {s: w.counts for s, w in writers.items()}
    if counts["train"]["bytes"] + counts["val"]["bytes"] == 0:
        discard()
        raise UserError(f"{source.description} holds no text; give a source with some text in it")
    if counts["val"]["bytes"] == 0 or counts["train"]["bytes"] == 0:
        discard()
        empty = "validation" if counts["val"]["bytes"] == 0 else "training"
        raise UserError(f"{source.description} has too little text for a {empty} split with --val_fraction="
                        f"{val_fraction} ({counts['train']['documents'] + counts['val']['documents']} short "
                        f"document(s)); change --val_fraction or add text")
    with resumable():
        for w in writers.values():
            w.finish()
        meta = _meta(tok, dtype, source, writers, shard_size, val_fraction)
        atomic_write_json(out / "meta.json", meta)  # written last: a dataset with meta.json is complete
    state_path.unlink(missing_ok=True)
    return meta


def _encode_in_order(batches, spec: dict, dtype_name: str, num_proc: int, consume) -> None:
    """Tokenize every batch, in this process or `num_proc` workers, handing results to `consume` in order."""
    if num_proc == 1:  # in this process: the single-core reference
        _init_worker(spec, quiet_sigint=False)
        for end, texts, splits, ends in batches:
            consume(end, _encode(texts, splits, ends, dtype_name))
        return
    # Not multiprocessing.Pool: its terminate(), which leaving a `with` block on Ctrl-C calls, hung here for
    # 15 minutes joining its worker-handler thread. The executor ends by letting the few batches in flight
    # finish (the workers ignore SIGINT) and cancelling the rest; a worker that dies raises, never hangs.
    pool = ProcessPoolExecutor(num_proc, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                               initargs=(spec, True))
    try:
        pending: deque = deque()  # at most 2 batches per worker in flight: memory stays flat
        for end, texts, splits, ends in batches:
            pending.append((end, pool.submit(_encode, texts, splits, ends, dtype_name)))
            if len(pending) >= 2 * num_proc:
                consume(pending[0][0], pending.popleft()[1].result())
        while pending:
            consume(pending[0][0], pending.popleft()[1].result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _meta(tok, dtype: np.dtype, source: corpus.Source, writers: dict, shard_size: int, val_fraction: float) -> dict:
    """meta.json of a finished dataset: tokenizer, source, how it was split, and per split its shards."""
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "tokenizer": tok.spec(),
        "vocab_size": tok.vocab_size,
        "dtype": dtype.name,
        "source": source.description,
        "split": {"val_fraction": val_fraction,
                  "rule": f"a document of >= {LONG_DOC} characters, or the only one, is cut once: its first "
                          f"int(chars * (1 - f)) characters train, the rest val; shorter document i is val iff "
                          f"floor((i+1)*f) > floor(i*f); every range ends with end-of-text (if the vocabulary "
                          f"has one)"},
        "shard_size": shard_size,
        "splits": {s: {"shards": w.shards, **w.counts} for s, w in writers.items()},
        "val_fraction": val_fraction,
    }
    for s, w in writers.items():  # flat keys for the callers that need only these
        meta[f"{s}_tokens"] = w.counts["tokens"]
        meta[f"{s}_bytes"] = w.counts["bytes"]
    return meta


# ---- the command -----------------------------------------------------------------------------------

def default_name(source: str, tokenizer: str) -> str:
    if source.startswith("hf:"):
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", source[3:].split("/")[-1])
    else:
        name = source if source in BUILTIN else Path(source).stem
    if tokenizer != "char":
        name += f"_{Path(tokenizer).stem if tokenizer.endswith('.json') else tokenizer}"
    return name


def prepare(cfg: PrepareConfig) -> tuple[Path, dict]:
    """Prepare the dataset `cfg` describes; returns its folder and meta."""
    if not cfg.source:
        raise UserError("name a SOURCE, e.g. `python data/prepare.py shakespeare`; see --help")
    out = Path(cfg.out) if cfg.out else Path("data") / default_name(cfg.source, cfg.tokenizer)
    _check(out, cfg.val_fraction, cfg.shard_size, cfg.num_proc, cfg.overwrite)  # before a first pass
    source = corpus.open_source(cfg.source, text_field=cfg.text_field, split=cfg.split,
                                input_file=cfg.input or None, revision=cfg.revision or None)
    tok = char_tokenizer(source) if cfg.tokenizer == "char" else tokenizers.build(cfg.tokenizer)
    print(f"preparing {source.description} with {cfg.tokenizer} (vocabulary {tok.vocab_size:,}) into {out}, "
          f"{cfg.num_proc} process{'es' * (cfg.num_proc != 1)}")
    meta = prepare_dataset(source, tok, out, shard_size=cfg.shard_size, val_fraction=cfg.val_fraction,
                           num_proc=cfg.num_proc, overwrite=cfg.overwrite)
    return out, meta


def main(argv: list[str]) -> int:
    cfg = parse_cli(argv, {"prepare": PrepareConfig}, "python data/prepare.py",
                    "Tokenize a corpus into a sharded dataset (see docs/prepare.md).", positional="source").prepare
    out, meta = prepare(cfg)
    n = {s: len(meta["splits"][s]["shards"]) for s in SPLITS}
    print(f"vocabulary {meta['vocab_size']:,}: {meta['train_tokens']:,} train tokens in {n['train']} shard(s) and "
          f"{meta['val_tokens']:,} val tokens in {n['val']} shard(s) ({meta['dtype']}) written to {out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
