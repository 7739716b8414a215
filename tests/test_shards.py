"""Shard files and sharded datasets: round trip, header and sha256 checks, the loader over shards."""

import json
import re

import numpy as np
import pytest
import torch

from conftest import needs_gpt2, run
from minigpt import corpus, prepare, shards
from minigpt.data import Batches, TokenDataset, doc_starts, iter_windows
from minigpt.errors import UserError
from minigpt.shards import HEADER, ShardWriter, Tokens, open_shard, read_header


def write(tmp_path, tokens, shard_size, dtype=np.uint16):
    w = ShardWriter(tmp_path, "train", np.dtype(dtype), shard_size)
    for part in np.array_split(tokens, 7):  # arriving in uneven pieces
        w.write(part)
    w.finish()
    return w.shards


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_shard_round_trip(tmp_path, dtype):
    tokens = np.random.default_rng(0).integers(0, 60000, 1000).astype(dtype)
    entries = write(tmp_path, tokens, 300, dtype)
    assert [e["tokens"] for e in entries] == [300, 300, 300, 100]
    arrays = [open_shard(tmp_path / e["file"]) for e in entries]
    assert all(a.dtype == dtype for a in arrays)
    whole = Tokens(arrays, np.dtype(dtype))
    assert len(whole) == 1000 and np.array_equal(whole[:], tokens)
    assert np.array_equal(whole[250:650], tokens[250:650])  # a slice across three shards
    idx = np.array([[0, 299, 300], [599, 600, 999]])
    assert np.array_equal(whole[idx], tokens[idx])  # fancy indexing across shards
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize("damage, match", [
    (lambda b: b"NOTASHRD" + b[8:], "bad magic"),
    (lambda b: b[:8] + (7).to_bytes(4, "little") + b[12:], "version 7"),
    (lambda b: b[:12] + (3).to_bytes(4, "little") + b[16:], "bytes per token"),
    (lambda b: b[:-2], "truncated"),
    (lambda b: b[:10], "bad magic|truncated"),
])
def test_corrupt_header_is_named(tmp_path, damage, match):
    (entry,) = write(tmp_path, np.arange(50, dtype=np.uint16), 100)
    f = tmp_path / entry["file"]
    f.write_bytes(damage(f.read_bytes()))
    with pytest.raises(UserError, match=match):
        read_header(f)


@needs_gpt2
def test_sharded_dataset_opens_and_checks_sha256(tmp_path):
    from minigpt.tokenizer import TiktokenTokenizer

    src = tmp_path / "docs"
    src.mkdir()
    for i in range(20):
        (src / f"{i:02d}.txt").write_text(f"Document number {i}.\n" * 30)
    out = tmp_path / "ds"
    meta = prepare.prepare_dataset(corpus.open_source(str(src)), TiktokenTokenizer("gpt2"), out, shard_size=500)
    assert meta["splits"]["val"]["documents"] == 2 and len(meta["splits"]["train"]["shards"]) > 2
    ds = TokenDataset(out)
    tok = ds.tokenizer
    train = ds.splits["train"]
    assert len(train) == meta["train_tokens"]
    # documents are separated by end-of-text; 0, 10 are train, 9, 19 are val (every 10th)
    text = tok.decode(train[:].tolist())
    assert text.count("<|endoftext|>") == 18 and "number 9." not in text
    assert tok.decode(ds.splits["val"][:].tolist()).startswith("Document number 9.")
    shards.verify(out)
    proc = run("-m", "minigpt", "verify", str(out))
    assert "all intact" in proc.stdout and f"{meta['train_tokens']:,} train" in proc.stdout
    # a changed token leaves the header intact but not the sha256
    f = out / meta["splits"]["train"]["shards"][1]["file"]
    raw = bytearray(f.read_bytes())
    raw[HEADER.size] ^= 1
    f.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="sha256"):
        TokenDataset(out)
    with pytest.raises(UserError, match="sha256"):
        shards.verify(out)
    bad = run("-m", "minigpt", "verify", str(out), check=False)
    assert bad.returncode == 2 and "sha256" in bad.stderr and "Traceback" not in bad.stderr
    TokenDataset(out, verify=False)  # big datasets skip the check on opening


def char_dataset_meta(tmp_path):
    """A small char dataset of several shards per split; returns (folder, its meta.json as a dict)."""
    src = tmp_path / "docs"
    src.mkdir()
    for i in range(20):
        (src / f"{i:02d}.txt").write_text(f"Document number {i}.\n" * 30)
    source = corpus.open_source(str(src))
    out = tmp_path / "ds"
    prepare.prepare_dataset(source, prepare.char_tokenizer(source), out, shard_size=500)
    return out, json.loads((out / "meta.json").read_text())


def check_refused(out, meta, match, cli=False):
    """The dataset with this meta.json is refused by verify (and its command, with `cli`) and when opened."""
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=match):
        shards.verify(out)
    with pytest.raises(UserError, match=match):
        TokenDataset(out)
    if cli:
        bad = run("-m", "minigpt", "verify", str(out), check=False)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr and "all intact" not in bad.stdout
        (line,) = bad.stderr.strip().splitlines()
        assert line.startswith("error: ") and re.search(match, line)


def test_a_shard_entry_may_not_leave_the_dataset_folder(tmp_path):
    """Bug 11: meta.json's `file` was joined as given, so `verify` passed a val shard taken from elsewhere."""
    out, meta = char_dataset_meta(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    first = meta["splits"]["val"]["shards"][0]
    (elsewhere / first["file"]).write_bytes((out / first["file"]).read_bytes())  # a whole, valid shard
    for name in (f"../elsewhere/{first['file']}", str(elsewhere / first["file"]), "..", "", 7):
        first["file"] = name
        check_refused(out, meta, "not a file name inside", cli=name == "..")


def test_verify_checks_the_token_counts_of_meta(tmp_path):
    """Bug 1: a dataset whose meta.json totals disagree with its shards passed `verify`."""
    out, meta = char_dataset_meta(tmp_path)
    shards.verify(out)
    for edit, match in [(lambda m: m.update(train_tokens=m["train_tokens"] + 1), "train split"),
                        (lambda m: m["splits"]["val"].update(tokens=m["splits"]["val"]["tokens"] - 1), "val split"),
                        (lambda m: m.update(shard_size=400), "shard_size")]:
        changed = json.loads(json.dumps(meta))
        edit(changed)
        check_refused(out, changed, match, cli=match == "train split")


def fake_dataset(tmp_path, docs: list[list[int]], shard_size: int, eot: int = 50256):
    """A sharded gpt2-token dataset written directly from token lists (no tokenizer run)."""
    stream = np.concatenate([np.array(d + [eot], np.uint16) for d in docs])
    meta = {"format": shards.FORMAT, "version": 1, "tokenizer": {"kind": "tiktoken", "name": "gpt2"},
            "vocab_size": 50257, "dtype": "uint16", "splits": {}}
    for split in ("train", "val"):
        w = ShardWriter(tmp_path, split, np.dtype(np.uint16), shard_size)
        w.write(stream)
        w.finish()
        meta["splits"][split] = {"shards": w.shards, "tokens": len(stream)}
        meta[f"{split}_tokens"] = len(stream)
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    return stream


@needs_gpt2
def test_loader_state_round_trip_and_windows_across_shards(tmp_path):
    stream = fake_dataset(tmp_path, [list(range(i * 100, i * 100 + 40)) for i in range(1, 30)], shard_size=97)
    ds = TokenDataset(tmp_path)
    assert len(ds.splits["train"].arrays) > 10
    b = Batches(ds, block_size=16, batch_size=64, seed=3)
    b.get("train")
    state = b.state_dict()
    x, y = b.get("train")
    assert torch.equal(x[:, 1:], y[:, :-1])
    # every window is a real slice of the stream, whichever shards it spans
    s = np.lib.stride_tricks.sliding_window_view(stream, 17)
    rows = {tuple(r) for r in s.tolist()}
    assert all(tuple(torch.cat([xi, yi[-1:]]).tolist()) in rows for xi, yi in zip(x, y))
    again = Batches(ds, block_size=16, batch_size=64, seed=999)
    again.load_state_dict(state)
    assert torch.equal(again.get("train")[0], x)  # resume continues the same stream
    # exact evaluation windows cover the split across shard borders, inputs and targets
    pairs = list(iter_windows(ds.splits["val"], 16, 4))
    assert torch.cat([xx.reshape(-1) for xx, _ in pairs]).tolist() == stream[:-1].tolist()
    assert torch.cat([yy.reshape(-1) for _, yy in pairs]).tolist() == stream[1:].tolist()


@needs_gpt2
def test_align_to_doc_starts_windows_at_documents(tmp_path):
    docs = [list(range(i * 100, i * 100 + 30 + i)) for i in range(1, 30)]
    stream = fake_dataset(tmp_path, docs, shard_size=50)
    ds = TokenDataset(tmp_path)
    starts = doc_starts(ds.splits["train"], 50256, chunk=64)
    assert starts.tolist() == [0] + (np.flatnonzero(stream == 50256) + 1).tolist()
    x, _ = Batches(ds, block_size=16, batch_size=64, seed=0, align_to_doc=True).get("train")
    firsts = {d[0] for d in docs}
    assert all(int(v) in firsts for v in x[:, 0])


def test_align_to_doc_needs_an_end_of_text_token(char_dataset):
    with pytest.raises(UserError, match="end-of-text"):
        Batches(TokenDataset(char_dataset), 16, 4, seed=0, align_to_doc=True)


def test_token_dtype_is_the_smallest_that_holds_every_id():
    assert shards.token_dtype(50257) == shards.token_dtype(1 << 16) == np.uint16  # ids up to 65535
    assert shards.token_dtype((1 << 16) + 1) == shards.token_dtype(100277) == np.uint32
