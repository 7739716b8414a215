"""Evaluation: bytes per token for bits per byte, and the whole-split loss against a direct computation."""

import math

import pytest
import torch

from conftest import needs_gpt2
from minigpt import checkpoint
from minigpt.config import RuntimeConfig
from minigpt.tools.evaluate import EvalConfig, evaluate, token_bytes
from minigpt.model import GPT, GPTConfig
from minigpt.tokenizer import CharTokenizer, TiktokenTokenizer


@needs_gpt2
def test_token_bytes_add_up_to_the_text_even_for_split_characters():
    tok = TiktokenTokenizer("gpt2")
    text = "naïve café → 世界 🎉"
    ids = tok.encode(text)
    assert any("\ufffd" in tok.decode([i]) for i in ids)  # some tokens hold part of a character
    assert sum(token_bytes(tok, i) for i in ids) == len(text.encode("utf-8"))
    assert token_bytes(tok, tok.eot_id) == 0  # a document separator, not text


def test_bits_per_byte_leaves_out_the_first_tokens_bytes(char_dataset, tmp_path):
    from minigpt.data import TokenDataset

    ds = TokenDataset(char_dataset)
    tok = CharTokenizer(ds.meta["tokenizer"]["chars"])
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=tok.vocab_size, n_layer=1, n_head=1, n_embd=16))
    checkpoint.save(tmp_path / "ckpt.pt", model, tok.spec(), dataset=str(char_dataset))
    r = evaluate(EvalConfig(model=str(tmp_path), batch_size=4), RuntimeConfig(device="cpu", dtype="float32", threads=1))
    val = ds.splits["val"]
    assert r.tokens == len(val) - 1
    assert r.bytes == len(tok.decode([int(t) for t in val[1:]]).encode("utf-8"))
    assert r.bits_per_byte == pytest.approx(r.loss * r.tokens / math.log(2) / r.bytes)


def test_the_command_checks_its_settings_where_they_are_declared():
    from minigpt.errors import UserError
    from minigpt.tools.evaluate import main

    for argv, msg in [(["--split=test"], "--split must be one of train, val, got 'test'"),
                      (["--batch_size=0"], r"--batch_size must be in \[1, inf\)"),
                      (["--quantize=int4"], "--quantize must be one of none, int8"),
                      (["--out_dir=out"], "--out_dir is now --model, as --model=out")]:
        with pytest.raises(UserError, match=msg):
            main(argv)
