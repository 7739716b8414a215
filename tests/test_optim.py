import copy

import pytest
import torch

from minigpt.config import PRESETS
from minigpt.kernels import lm_loss
from minigpt.model import GPT, GPTConfig
from minigpt.optim import (AdamW, MuonAdamW, clip_and_step, hidden_matrices, lr_at, make_optimizer, orthogonalize,
                           param_groups)
from minigpt.runtime import cpu_bf16_native


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


def test_wsd_schedule_holds_then_cools_down_linearly():
    kw = dict(lr=1.0, min_lr=0.1, warmup_iters=10, decay_iters=110, schedule="wsd", cooldown_iters=40)
    assert lr_at(5, **kw) < 1.0
    assert lr_at(10, **kw) == lr_at(50, **kw) == lr_at(70, **kw) == 1.0  # stable until 110 - 40
    assert lr_at(90, **kw) == pytest.approx(0.55)  # halfway down the cooldown
    assert lr_at(110, **kw) == 0.1 and lr_at(200, **kw) == 0.1


def test_orthogonalize_pushes_every_singular_value_towards_one():
    torch.manual_seed(0)
    for shape in [(3, 48, 16), (2, 16, 48), (32, 32)]:  # tall, wide (batched) and square
        *batch, m, n = shape
        u, _ = torch.linalg.qr(torch.randn(*batch, m, m))
        v, _ = torch.linalg.qr(torch.randn(*batch, n, n))
        k = min(m, n)
        s_in = torch.logspace(-2, 0, k)  # singular values over two decades
        g = u[..., :k] @ torch.diag(s_in) @ v[..., :k].mT
        s = torch.linalg.svdvals(orthogonalize(g))
        # 5 quintic steps bring every singular value within 100x of the largest into about [0.68, 1.2]
        # (Jordan 2024); the update keeps G's singular vectors, only its scales change
        assert s.min() > 0.6 and s.max() < 1.25, (shape, s.min(), s.max())
        d = u[..., :k].mT @ orthogonalize(g) @ v[..., :k]  # in G's singular basis: diagonal, if only scales changed
        assert (d - torch.diag_embed(torch.diagonal(d, dim1=-2, dim2=-1))).abs().max() < 1e-4


def _newton_schulz5(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Keller Jordan's zeropower_via_newtonschulz5 (github.com/KellerJordan/Muon), one matrix at a time, in
    fp32: written here independently of minigpt.optim.orthogonalize, which the optimizer batches."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.float()
    if g.size(0) > g.size(1):
        x = x.T
    x = x / (x.norm() + eps)
    for _ in range(steps):
        A = x @ x.T
        B = b * A + c * A @ A
        x = a * x + B @ x
    if g.size(0) > g.size(1):
        x = x.T
    return x


def _muon_reference(p, g, buf, lr, mu, wd):
    """One Muon step on one matrix, written out plainly (what the batched optimizer must match)."""
    buf = mu * buf + (1 - mu) * g
    update = _newton_schulz5((1 - mu) * g + mu * buf)
    return p * (1 - lr * wd) - lr * max(1.0, p.shape[0] / p.shape[1]) ** 0.5 * update, buf


def test_muon_adamw_matches_plain_muon_on_matrices_and_adamw_on_the_rest():
    torch.manual_seed(0)
    # no biases: the key bias's gradient is zero up to rounding (softmax ignores a shift shared by all keys),
    # and Adam's normalisation would blow that rounding noise up to full-size steps in both copies
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=20, bias=False))
    ref = copy.deepcopy(model)
    opt = make_optimizer(model, 1e-2, 0.1, (0.9, 0.95), torch.device("cpu"), muon_lr=0.05, muon_weight_decay=0.01)
    assert isinstance(opt, MuonAdamW)
    assert opt.ns_dtype == (torch.bfloat16 if cpu_bf16_native() else torch.float32)  # bf16 only where native
    opt.ns_dtype = torch.float32  # the reference below iterates in fp32
    muon_ids = {id(p) for p in hidden_matrices(model)}
    assert len(muon_ids) == 8 and id(model.transformer.wte.weight) not in muon_ids  # 4 matrices a block
    in_muon = {id(p) for p in hidden_matrices(ref)}
    rest = [p for p in {id(p): p for p in ref.parameters()}.values() if id(p) not in in_muon]
    adamw = torch.optim.AdamW([{"params": [p for p in rest if p.dim() >= 2], "weight_decay": 0.1},
                               {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}],
                              lr=1e-2, betas=(0.9, 0.95))
    bufs = {n: torch.zeros_like(p) for n, p in ref.named_parameters() if p.dim() == 2 and n.startswith("transformer.h")}
    x = torch.randint(0, 20, (4, 8))
    for _ in range(3):
        for m in (model, ref):
            m.zero_grad()
            lm_loss(m(x), torch.roll(x, 1, 1)).backward()
        opt.step()
        adamw.step()
        with torch.no_grad():
            for n, p in ref.named_parameters():
                if n in bufs:
                    new, bufs[n] = _muon_reference(p, p.grad, bufs[n], 0.05, 0.95, 0.01)
                    p.copy_(new)
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=n)  # fp32 sums in another order, nothing more


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


def _tiny_pair(seed=0):
    torch.manual_seed(seed)
    models = [GPT(GPTConfig(**{**PRESETS["tiny"], "vocab_size": 50})) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    return models


@pytest.mark.parametrize("max_norm", [1e-3, 0.0])
def test_clip_and_step_with_the_scaler_on_clips_the_true_gradients(max_norm):
    # fp16 training scales the loss by 2^k: the clip must see the unscaled gradients, and the step be
    # the one of an unscaled run
    models = _tiny_pair()
    opts = [torch.optim.AdamW(param_groups(m, 0.1), lr=1e-2) for m in models]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12, enabled=True)
    x = torch.randint(0, 50, (2, 16))
    for _ in range(3):
        lm_loss(models[0](x), x).backward()
        if max_norm:
            torch.nn.utils.clip_grad_norm_(models[0].parameters(), max_norm)
        opts[0].step()
        scaler.scale(lm_loss(models[1](x), x)).backward()
        assert clip_and_step(opts[1], scaler, models[1].parameters(), max_norm) is True
        for o in opts:
            o.zero_grad(set_to_none=True)
    assert scaler.get_scale() == 2.0 ** 12  # no overflow, no change
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["fused", "foreach", "muon"])
@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_a_non_finite_gradient_changes_no_weight_and_no_state(kind, scaled, bad):
    """One NaN/inf gradient with a finite loss: no step (it used to write NaN into every weight)."""
    model = _tiny_pair()[0]
    if kind == "muon":
        opt = make_optimizer(model, 1e-2, 0.1, (0.9, 0.95), torch.device("cpu"), muon_lr=0.02)
    else:
        opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-2, fused=kind == "fused", foreach=kind == "foreach")
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12, enabled=scaled)
    x = torch.randint(0, 50, (2, 16))

    def backward(poison: bool):
        scaler.scale(lm_loss(model(x), x)).backward()
        if poison:
            model.transformer.h[0].mlp.c_fc.weight.grad[3, 5] = bad

    backward(False)
    assert clip_and_step(opt, scaler, model.parameters(), 1.0)  # one good step: the state is not empty
    opt.zero_grad(set_to_none=True)
    weights, state = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    for max_norm in (1.0, 0.0):  # the check does not depend on clipping being on
        backward(True)
        assert clip_and_step(opt, scaler, model.parameters(), max_norm) is False
        opt.zero_grad(set_to_none=True)
        for k, v in model.state_dict().items():
            assert torch.equal(v, weights[k]), k
        assert str(opt.state_dict()) == str(state)
    assert scaler.get_scale() == (2.0 ** 10 if scaled else 1.0)  # halved at each skipped step, as GradScaler does
    backward(False)
    assert clip_and_step(opt, scaler, model.parameters(), 1.0)  # and training goes on
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    assert not torch.equal(model.transformer.h[0].mlp.c_fc.weight, weights["transformer.h.0.mlp.c_fc.weight"])


@pytest.mark.parametrize("muon_lr", [None, 0.02])
def test_optimizers_do_not_import_dynamo(muon_lr):
    # torch.optim's own methods import torch._dynamo on first use (~1 s of every run's start-up)
    import subprocess
    import sys
    from pathlib import Path

    code = f"""
import sys, torch
from minigpt.kernels import lm_loss
from minigpt.model import GPT, GPTConfig
from minigpt.optim import clip_and_step, make_optimizer
model = GPT(GPTConfig(block_size=8, vocab_size=16, n_layer=1, n_head=2, n_embd=16))
opt = make_optimizer(model, 1e-3, 0.1, (0.9, 0.95), torch.device("cpu"), muon_lr={muon_lr})
x = torch.randint(0, 16, (2, 8))
lm_loss(model(x), x).backward()
clip_and_step(opt, torch.amp.GradScaler("cpu", enabled=False), model.parameters(), 1.0)
opt.zero_grad(); opt.load_state_dict(opt.state_dict())
assert opt.state_dict()["state"], "the step kept no state"
print("torch._dynamo" in sys.modules)
"""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("fused", [False, True])
def test_our_adamw_is_torchs_adamw(fused):
    torch.manual_seed(0)
    models = [GPT(GPTConfig(block_size=8, vocab_size=16, n_layer=1, n_head=2, n_embd=16)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    ours = AdamW(param_groups(models[0], 0.1), lr=1e-2, fused=fused)
    theirs = torch.optim.AdamW(param_groups(models[1], 0.1), lr=1e-2, fused=fused)
    for _ in range(3):
        x = torch.randint(0, 16, (2, 8))
        for m, opt in zip(models, (ours, theirs)):
            lm_loss(m(x), x).backward()
            opt.step()
            opt.zero_grad()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(a, b)
    theirs.load_state_dict(ours.state_dict())  # checkpoints move between the two unchanged
    assert str(theirs.state_dict()) == str(ours.state_dict())
