import pytest

from minigpt.model import GPT, GPTConfig
from minigpt.optim import lr_at, param_groups


def test_lr_schedule_warmup_cosine_floor():
    kw = dict(lr=1.0, min_lr=0.1, warmup_iters=10, decay_iters=110)
    assert lr_at(0, **kw) < lr_at(5, **kw) < lr_at(9, **kw) <= 1.0
    assert lr_at(10, **kw) == pytest.approx(1.0)
    assert lr_at(60, **kw) == pytest.approx(0.55)
    assert lr_at(110, **kw) == pytest.approx(0.1) and lr_at(500, **kw) == 0.1
    assert lr_at(3, **kw, decay=False) == 1.0


def test_decay_only_on_matrices_and_tied_weight_once():
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=20, bias=True))
    decay, no_decay = param_groups(model, 0.1)
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    ids = [id(p) for g in (decay, no_decay) for p in g["params"]]
    assert model.lm_head.weight is model.transformer.wte.weight
    assert ids.count(id(model.lm_head.weight)) == 1 and len(ids) == len(set(ids))  # the tied pair: once
    named = dict(model.named_parameters(remove_duplicate=False))  # lists the head and the embedding both
    assert len(named) == len(ids) + 1
