import pytest
import torch

from minigpt.config import PRESETS
from minigpt.model import GPT, GPTConfig, lm_loss
from minigpt.optim import clip_and_step, lr_at, param_groups


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


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("max_norm", [1e-3, 1e3])  # clipping active, and not
def test_clip_and_step_equals_clip_grad_norm_then_step(fused, max_norm):
    torch.manual_seed(0)
    models = [GPT(GPTConfig(**{**PRESETS["tiny"], "vocab_size": 50})) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    start = models[0].transformer.wte.weight.detach().clone()
    opts = [torch.optim.AdamW(param_groups(m, 0.1), lr=1e-2, fused=fused) for m in models]
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    x = torch.randint(0, 50, (2, 16))
    for step in range(3):
        for m in models:
            lm_loss(m(x), x).backward()
        torch.nn.utils.clip_grad_norm_(models[0].parameters(), max_norm)
        opts[0].step()
        clip_and_step(opts[1], scaler, models[1].parameters(), max_norm)
        assert not hasattr(opts[1], "grad_scale")  # the clip factor does not outlive the step
        for o in opts:
            o.zero_grad(set_to_none=True)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert not torch.equal(models[0].transformer.wte.weight, start)  # the steps did move the weights
