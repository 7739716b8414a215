"""Opening a prepared dataset, the nanoGPT char split, training and evaluation windows."""

import json

import numpy as np
import pytest
import torch

from conftest import TEXT, TINYSHAKESPEARE, prepare_text
from minigpt import corpus, prepare, shards
from minigpt.data import Batches, TokenDataset, iter_windows, resolve_dataset
from minigpt.errors import UserError


def nanogpt_split(text: str) -> tuple[list[int], list[int], int]:
    """nanoGPT's data/shakespeare_char/prepare.py: sorted characters, text[:int(n*0.9)] train, the rest val."""
    stoi = {c: i for i, c in enumerate(sorted(set(text)))}
    n = len(text)
    return [stoi[c] for c in text[:int(n * 0.9)]], [stoi[c] for c in text[int(n * 0.9):]], len(stoi)


def test_char_dataset_is_nanogpts_split(char_dataset):
    meta = json.loads((char_dataset / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["tokenizer"] == {"kind": "char", "chars": "".join(sorted(set(TEXT)))}
    ds = TokenDataset(char_dataset)
    train, val, vocab = nanogpt_split(TEXT)
    assert ds.vocab_size == vocab and ds.tokenizer.eot_id is None  # one text: no end-of-text id
    assert ds.splits["train"][:].tolist() == train and ds.splits["val"][:].tolist() == val
    assert meta["train_bytes"] + meta["val_bytes"] == len(TEXT.encode())


@pytest.mark.skipif(not TINYSHAKESPEARE.is_file(), reason="../shared/data/tinyshakespeare/input.txt is absent")
def test_tinyshakespeare_matches_nanogpt(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "PIECE_CHARS", 5000)  # many pieces: the cut falls inside one of them
    text = TINYSHAKESPEARE.read_text()
    source = corpus.open_source("tinyshakespeare", input_file=str(TINYSHAKESPEARE))
    meta = prepare.prepare_dataset(source, prepare.char_tokenizer(source), tmp_path / "ts", shard_size=300_000)
    ds = TokenDataset(tmp_path / "ts")
    train, val, vocab = nanogpt_split(text)
    assert (ds.vocab_size, meta["train_tokens"], meta["val_tokens"]) == (65, 1_003_854, 111_540) == \
        (vocab, len(train), len(val))
    assert ds.splits["train"][:].tolist() == train and ds.splits["val"][:].tolist() == val


def test_batches_are_windows_of_the_split_and_resumable(char_dataset):
    ds = TokenDataset(char_dataset)
    data = ds.splits["train"][:]
    b = Batches(ds, block_size=16, batch_size=4, seed=0)
    state = b.state_dict()
    x, y = b.get("train")
    assert x.shape == y.shape == (4, 16)
    windows = {tuple(w) for w in np.lib.stride_tricks.sliding_window_view(data, 17).tolist()}
    for xi, yi in zip(x.tolist(), y.tolist()):  # the input is a real slice and the target is it shifted by one
        assert tuple(xi + yi[-1:]) in windows and xi[1:] == yi[:-1]
    b.load_state_dict(state)
    assert torch.equal(b.get("train")[0], x)
    assert not torch.equal(Batches(ds, 16, 4, seed=1).get("train")[0], x)


def test_evaluation_leaves_the_training_stream_alone(char_dataset):
    ds = TokenDataset(char_dataset)
    streams = []
    for eval_iters in (0, 1, 7):
        b = Batches(ds, block_size=16, batch_size=4, seed=0)
        b.get("train")
        evals = [list(b.eval_batches(split, eval_iters)) for split in ("train", "val")]
        streams.append(b.get("train")[0])
        if eval_iters:  # the same evaluation windows every time, drawn from the split asked for
            again = list(b.eval_batches("val", eval_iters))
            assert all(torch.equal(a[0], e[0]) for a, e in zip(again, evals[1]))
            val = ds.splits["val"][:].tolist()
            row = evals[1][0][0][0].tolist()
            assert any(val[i:i + 16] == row for i in range(len(val) - 15))
    assert all(torch.equal(s, streams[0]) for s in streams)


def test_dataset_smaller_than_block_size_is_refused(tmp_path):
    prepare_text("abcdefghij" * 3, tmp_path / "d", val_fraction=0.5)
    with pytest.raises(UserError, match="fewer than block_size"):
        Batches(TokenDataset(tmp_path / "d"), block_size=32, batch_size=2, seed=0)


def test_truncated_shard_is_detected(char_dataset):
    with open(char_dataset / "train_000000.bin", "r+b") as f:
        f.truncate(shards.HEADER.size + 10)
    with pytest.raises(UserError, match="prepare it again"):
        TokenDataset(char_dataset)


def test_old_single_file_dataset_is_refused_in_one_line(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps({"format": "minigpt-tokens", "dtype": "uint16"}))
    with pytest.raises(UserError, match=r"python data/prepare.py SOURCE --out=.* --overwrite"):
        TokenDataset(tmp_path)


def test_missing_dataset_names_the_command(tmp_path):
    with pytest.raises(UserError, match="data/prepare.py"):
        resolve_dataset("nothing_here", tmp_path)


def test_eval_windows_cover_every_position_once():
    arr = np.arange(103, dtype=np.uint16)
    pairs = list(iter_windows(arr, 10, 3))
    inputs = torch.cat([x.reshape(-1) for x, _ in pairs])
    targets = torch.cat([y.reshape(-1) for _, y in pairs])
    assert inputs.tolist() == list(range(0, 102)) and targets.tolist() == list(range(1, 103))
    assert all(x.shape == y.shape and x.shape[1] <= 10 for x, y in pairs)
