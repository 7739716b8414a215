import math

import pytest
import torch

from minigpt.config import PRESETS
from minigpt.kernels import lm_loss
from minigpt.model import GPT, GPTConfig


def tiny(**kw) -> GPTConfig:
    return GPTConfig(**{**PRESETS["tiny"], "vocab_size": 50, **kw})


def test_causal_changing_a_future_token_leaves_earlier_logits_unchanged():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    x = torch.randint(0, 50, (2, 16))
    t = 7
    y = x.clone()
    y[:, t + 1] = (y[:, t + 1] + 1) % 50
    a, b = model(x), model(y)
    assert torch.allclose(a[:, : t + 1], b[:, : t + 1], atol=1e-6)
    assert not torch.allclose(a[:, t + 1], b[:, t + 1])


def test_initial_loss_is_close_to_uniform():
    torch.manual_seed(0)
    model = GPT(tiny(vocab_size=500))
    x = torch.randint(0, 500, (8, 32))
    loss = lm_loss(model(x), torch.randint(0, 500, (8, 32))).item()
    assert abs(loss - math.log(500)) < 0.1


def test_tiny_preset_overfits_one_batch():
    torch.manual_seed(0)
    model = GPT(tiny())
    x = torch.randint(0, 50, (4, 32))
    y = torch.roll(x, -1, dims=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = lm_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1


def test_forward_shape_and_tied_head():
    model = GPT(tiny())
    assert model(torch.zeros(3, 5, dtype=torch.long)).shape == (3, 5, 50)
    assert model.lm_head.weight is model.transformer.wte.weight


def test_input_longer_than_block_size_is_a_clear_error():
    model = GPT(tiny())
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_n_embd_must_divide_by_n_head():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=100, n_head=3)


def test_residual_projections_use_scaled_init():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=8, n_head=4, n_embd=256, vocab_size=100))
    proj = model.transformer.h[0].mlp.c_proj.weight.std().item()
    fc = model.transformer.h[0].mlp.c_fc.weight.std().item()
    assert abs(fc - 0.02) < 0.002
    assert abs(proj - 0.02 / math.sqrt(16)) < 0.001
