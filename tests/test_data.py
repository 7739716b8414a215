import json

import numpy as np
import pytest
import torch

from conftest import TEXT, needs_gpt2
from minigpt import corpus, data
from minigpt.data import Batches, TokenDataset, iter_windows
from minigpt.errors import UserError


def test_prepare_writes_splits_and_meta(char_dataset):
    meta = json.loads((char_dataset / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["tokenizer"]["kind"] == "char"
    assert meta["train_tokens"] + meta["val_tokens"] == len(TEXT)
    ds = TokenDataset(char_dataset)
    assert ds.tokenizer.decode(ds.splits["val"].tolist()) == TEXT[int(len(TEXT) * 0.9):]


@needs_gpt2
def test_prepare_gpt2_chunked_encoding_equals_whole(tmp_path, monkeypatch):
    from minigpt.tokenizer import TiktokenTokenizer

    monkeypatch.setattr(data, "_CHUNK", 100)  # force many chunks
    tok = TiktokenTokenizer("gpt2")
    assert data.encode_text(tok, TEXT).tolist() == tok.encode(TEXT)


def test_vocab_over_65536_uses_uint32():
    assert data.token_dtype(50257) == np.uint16 and data.token_dtype(100277) == np.uint32


def test_batches_are_shifted_windows_and_resumable(char_dataset):
    ds = TokenDataset(char_dataset)
    b = Batches(ds, block_size=16, batch_size=4, seed=0)
    state = b.state_dict()
    x, y = b.get("train")
    assert x.shape == (4, 16) and torch.equal(x[:, 1:], y[:, :-1])
    b.load_state_dict(state)
    x2, _ = b.get("train")
    assert torch.equal(x, x2)
    assert not torch.equal(Batches(ds, 16, 4, seed=0, rank=1).get("train")[0], x)


def test_dataset_smaller_than_block_size_is_refused(tmp_path):
    data.prepare(corpus.Corpus("abcdefghij" * 3, "tiny"), "char", tmp_path / "d", 0.5)
    with pytest.raises(UserError, match="fewer than block_size"):
        Batches(TokenDataset(tmp_path / "d"), block_size=32, batch_size=2, seed=0)


def test_truncated_split_file_is_detected(char_dataset):
    with open(char_dataset / "train.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(UserError, match="prepare the dataset again"):
        TokenDataset(char_dataset)


def test_missing_dataset_names_the_command(tmp_path):
    with pytest.raises(UserError, match="data/prepare.py"):
        data.resolve_dataset("nothing_here", tmp_path)


def test_eval_windows_cover_every_position_once():
    arr = np.arange(103, dtype=np.uint16)
    targets = torch.cat([y.reshape(-1) for _, y in iter_windows(arr, 10, 3)])
    assert targets.tolist() == list(range(1, 103))
