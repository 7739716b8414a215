"""Every fast path in minigpt.kernels against the simple reference its docstring names, and that it is
the path taken: attention vs naive_attention, the sparse tied lookup vs F.embedding, the blockwise loss
vs F.cross_entropy, the decode products vs F.linear."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT
from minigpt import kernels
from minigpt.kernels import BlockwiseCrossEntropy, DecodeLinear, attention, gemv, lm_loss, naive_attention
from minigpt.model import GPT, GPTConfig

CFG = GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=32)


def _native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def qkv(T, S, hs=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, n, hs, generator=g).to(dtype) for n in (T, S, S)]  # (B, nh, T|S, hs)


def sdpa_calls(monkeypatch) -> list:
    """Record the dtype of every SDPA call kernels.attention makes."""
    calls, real = [], F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda q, *a, **k: calls.append(q.dtype) or real(q, *a, **k))
    return calls


@pytest.mark.parametrize("T,S", [(7, 7), (1, 9), (4, 9), (1, 1)])  # training/prefill, one query, a chunk after a cache
def test_attention_equals_the_naive_reference(monkeypatch, T, S):
    calls = sdpa_calls(monkeypatch)
    q, k, v = qkv(T, S)
    # both in fp32, summing in another order: measured 6e-7 at most over these shapes (values ~1)
    torch.testing.assert_close(attention(q, k, v), naive_attention(q, k, v), atol=2e-6, rtol=1e-5)
    assert calls == [torch.float32]
    if T > 1:  # the reference itself is causal: the first query sees S - T + 1 keys, the last all S
        k2 = k.clone()
        k2[..., S - T + 1 :, :] += 1.0
        assert torch.equal(naive_attention(q, k2, v)[..., 0, :], naive_attention(q, k, v)[..., 0, :])
        assert not torch.equal(naive_attention(q, k2, v)[..., -1, :], naive_attention(q, k, v)[..., -1, :])


@pytest.mark.skipif(not _native_bf16(), reason="no native bf16 on this CPU: emulated bf16 is ~100x slower")
def test_small_bf16_heads_train_attending_in_fp32(monkeypatch):
    calls = sdpa_calls(monkeypatch)
    T = kernels.EXPLICIT_MAX_T["small_heads"] + 1  # past the short windows' explicit path
    q, k, v = (t.requires_grad_() for t in qkv(T, T, hs=16, dtype=torch.bfloat16))
    y = attention(q, k, v)
    assert calls == [torch.float32] and y.dtype == torch.bfloat16  # the fp32 path, cast back
    ref = naive_attention(q, k, v)  # in fp32 too: the two differ only by the final rounding to bf16
    torch.testing.assert_close(y, ref, atol=0, rtol=2**-7)  # at most one bf16 step (measured: bit-identical)
    g = torch.autograd.grad(y.float().square().sum(), (q, k, v))
    g_ref = torch.autograd.grad(ref.float().square().sum(), (q, k, v))
    for a, b in zip(g, g_ref):  # gradients in fp32, rounded to bf16 once each: one bf16 step at their scale
        torch.testing.assert_close(a, b, atol=2**-7 * b.abs().max().item(), rtol=2**-7)
    with torch.no_grad():  # inference keeps the model's dtype
        attention(q, k, v)
    assert calls[-1] == torch.bfloat16


@pytest.mark.skipif(not _native_bf16(), reason="no native bf16 on this CPU: emulated bf16 is ~100x slower")
@pytest.mark.parametrize("seed,block", [(0, 128), (1, 128), (2, 5), (3, 5), (4, 16)])  # one block; uneven blocks
def test_short_bf16_windows_train_with_explicit_attention_within_bf16_rounding(monkeypatch, seed, block):
    calls = sdpa_calls(monkeypatch)
    monkeypatch.setattr(kernels, "EXPLICIT_BLOCK", block)
    q, k, v = (t.requires_grad_() for t in qkv(16, 16, hs=16, dtype=torch.bfloat16, seed=seed))
    y = attention(q, k, v)
    assert calls == [] and y.dtype == torch.bfloat16  # no SDPA: the two products around an fp32 softmax
    ref = naive_attention(q, k, v)  # fp32 throughout, rounded to bf16 at the end
    # Worst case of rounding the scores s (to bf16: |ds| <= 2^-8 |s|, moving each softmax weight by at most
    # 2 max|ds| of itself), the weights P (2^-8 of each) and the output (2^-8 of it): measured 0.14 of it.
    # (hs = 16: the 1/sqrt(hs) scaling of q is exact.)
    s = (q.float() @ k.float().mT) * 16**-0.5
    bound = 2**-8 * (v.float().abs().max() * (1 + 2 * s.abs().max()) + ref.float().abs().max())
    assert (y.float() - ref.float()).abs().max() <= bound
    g = torch.autograd.grad(y.float().square().sum(), (q, k, v))
    g_ref = torch.autograd.grad(ref.float().square().sum(), (q, k, v))
    for a, b in zip(g, g_ref):  # the backward rounds the scores, P and dP once each: within 4 bf16 steps of the
        # gradient's scale (measured 2.9 at most over 50 seeds)
        assert (a.float() - b.float()).abs().max() <= 4 * 2**-8 * b.float().abs().max()
    with torch.no_grad():  # inference (and a cache's chunk, S > T) keeps SDPA in the model's dtype
        attention(q, k, v)
    assert calls == [torch.bfloat16]


@pytest.mark.skipif(not _native_bf16(), reason="no native bf16 on this CPU: emulated bf16 is ~100x slower")
def test_heads_of_64_train_explicitly_up_to_their_limit_then_in_bf16_flash(monkeypatch):
    calls = sdpa_calls(monkeypatch)
    limit = kernels.EXPLICIT_MAX_T["heads"]
    for T in (limit, limit + 1):
        q, k, v = (t.requires_grad_() for t in qkv(T, T, hs=64, dtype=torch.bfloat16))
        assert attention(q, k, v).dtype == torch.bfloat16
    assert calls == [torch.bfloat16]  # only the longer window called SDPA, in bf16


def test_explicit_attention_drops_attention_weights_as_sdpa_does():
    q, k, v = (t.to(torch.bfloat16) for t in qkv(16, 16, hs=16))
    torch.manual_seed(0)
    dropped = kernels.explicit_attention(q, k, v, dropout_p=0.5)
    torch.manual_seed(0)
    assert torch.equal(kernels.explicit_attention(q, k, v, dropout_p=0.5), dropped)  # the seed decides
    y = kernels.explicit_attention(q, k, v)
    assert not torch.equal(dropped, y)
    # dropout keeps the expected output: the mean over 400 draws is within 4 standard errors of y
    draws = torch.stack([kernels.explicit_attention(q, k, v, dropout_p=0.5).float() for _ in range(400)])
    se = draws.std(0) / 400**0.5
    assert ((draws.mean(0) - y.float()).abs() <= 4 * se + 2**-7 * y.float().abs()).float().mean() > 0.99


def test_one_query_in_compiled_code_is_two_fused_sums(monkeypatch):
    calls = sdpa_calls(monkeypatch)
    q, k, v = qkv(1, 9)
    torch._dynamo.reset()
    got = torch.compile(attention, backend="eager", fullgraph=True)(q, k, v)  # traced: is_compiling() is True
    assert calls == []  # no SDPA: the sums
    torch.testing.assert_close(got, naive_attention(q, k, v), atol=2e-6, rtol=1e-5)


def test_sparse_tied_lookup_gives_the_dense_gradient(monkeypatch):
    torch.manual_seed(0)
    model = GPT(CFG)
    x, y = torch.randint(0, 50, (2, 16)), torch.randint(0, 50, (2, 16))
    sparse_flags, real = [], F.embedding
    monkeypatch.setattr(F, "embedding", lambda *a, sparse=False, **k: sparse_flags.append(sparse) or real(*a, **k))
    lm_loss(model(x), y).backward()
    fast = model.transformer.wte.weight.grad.clone()
    assert sparse_flags[0] and fast.layout == torch.strided  # the sparse rows joined the head's dense gradient
    model.zero_grad()
    monkeypatch.setattr(F, "embedding", lambda *a, sparse=False, **k: real(*a, **k))  # the reference: dense
    lm_loss(model(x), y).backward()
    # the lookup's rows join the head's gradient in another order: fp32 rounding at the largest entry's
    # scale (max |grad| 0.14 x 2^-24 = 8e-9); measured 1.5e-8 at most over 40 seeds, all within this
    torch.testing.assert_close(fast, model.transformer.wte.weight.grad, rtol=1e-6, atol=1e-8)


def test_untied_or_inference_lookup_is_dense():
    table = torch.randn(10, 4, requires_grad=True)
    idx = torch.tensor([[1, 2, 2]])
    kernels.embedding(idx, table, tied_head=False).sum().backward()
    assert table.grad.layout == torch.strided  # alone, a sparse gradient would reach the optimizer
    torch.testing.assert_close(kernels.embedding(idx, table, tied_head=True), F.embedding(idx, table))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_blockwise_lm_loss_equals_cross_entropy_in_value_and_gradient(monkeypatch, dtype):
    monkeypatch.setattr(BlockwiseCrossEntropy, "ELEMENTS", 4 * 33)  # 3 blocks of 4 rows and one of 2
    torch.manual_seed(0)
    logits = (3 * torch.randn(2, 7, 33)).to(dtype).requires_grad_()
    targets = torch.randint(0, 33, (2, 7))
    loss = lm_loss(logits, targets)
    (grad,) = torch.autograd.grad(2 * loss, logits)
    ref = F.cross_entropy(logits.reshape(-1, 33).float(), targets.reshape(-1))
    (ref_grad,) = torch.autograd.grad(2 * ref, logits)
    assert grad.dtype == dtype
    # Both sides compute in fp32 in another order. Measured over 50 seeds: the loss within 3.1e-7 relative
    # (a few fp32 steps); fp32 gradients within 2.7e-6 relative, where the largest differences sit on
    # entries of ~1e-3 and are 1.5e-8 absolute; bf16 gradients within one bf16 step (<= 2^-7 relative),
    # since each side rounds its own fp32 value to bf16 once.
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=0.0)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5 if dtype == torch.float32 else 2**-7, atol=1e-7)
    assert logits.grad is None  # and the backward left the logits as they were
    torch.testing.assert_close(lm_loss(logits, targets), ref)


def _ignored_case():
    torch.manual_seed(1)
    logits = (3 * torch.randn(3, 5, 11)).requires_grad_()
    targets = torch.randint(0, 11, (3, 5))
    targets[0, :2] = targets[2, 4] = kernels.IGNORE_INDEX  # 3 of 15 targets count for nothing
    return logits, targets


@pytest.mark.parametrize("path", ["eager", "compiled"])
def test_targets_of_minus_100_are_ignored_in_both_paths(monkeypatch, path):
    # the eager blockwise loss raised on them ("index -100 is out of bounds") while compiled code ignored them
    monkeypatch.setattr(BlockwiseCrossEntropy, "ELEMENTS", 2 * 11)  # blocks of 2 rows: the ignored ones straddle
    logits, targets = _ignored_case()
    loss_fn = lm_loss if path == "eager" else torch.compile(lm_loss, backend="eager", fullgraph=True)
    torch._dynamo.reset()
    loss = loss_fn(logits, targets)
    (grad,) = torch.autograd.grad(loss, logits)
    keep = targets != -100
    ref = F.cross_entropy(logits[keep].float(), targets[keep])  # the mean over the 12 counted targets only
    (ref_grad,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=0.0)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-7)
    assert (grad[~keep] == 0).all() and (grad[keep] != 0).any()


def test_the_compiled_loss_equals_the_reference(monkeypatch):
    # inductor's fused loss, as a compiled training step calls it (outside the model's graph), on bf16
    # logits with ignored targets; lm_loss, the eager path, never calls the compiler
    calls, real = [], kernels.compiled_cross_entropy
    monkeypatch.setattr(kernels, "compiled_cross_entropy", lambda: calls.append(1) or real())
    logits, targets = _ignored_case()
    logits = logits.detach().bfloat16().requires_grad_()
    lm_loss(logits, targets)
    assert calls == []
    loss = kernels.compiled_lm_loss(logits, targets)
    assert calls == [1]
    (grad,) = torch.autograd.grad(loss, logits)
    keep = targets != -100
    ref = F.cross_entropy(logits[keep].float(), targets[keep])
    (ref_grad,) = torch.autograd.grad(ref, logits)
    assert grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=0.0)  # fp32 sums in another order
    torch.testing.assert_close(grad, ref_grad, rtol=2**-7, atol=1e-7)  # each side rounds its fp32 value once
    assert (grad[~keep] == 0).all()


@pytest.mark.skipif(not _native_bf16(), reason="no native bf16 on this CPU: emulated bf16 is ~100x slower")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_bf16_step_loss_equals_the_fp32_loss_within_bf16_rounding(seed):
    # the training step's forward under bf16 autocast (the fast paths: flash attention, the blockwise loss
    # on bf16 logits) against the same weights and batch in fp32. The weights are scaled up so the logits
    # are far from zero and the loss depends on every product (at init it is ln V whatever the model does).
    # Bound: one bf16 step of the loss (2^-8 relative); over 100 seeds the largest gap was 9e-4 (EPYC Zen 4).
    torch.manual_seed(seed)
    model = GPT(CFG)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(10)
    x, y = torch.randint(0, CFG.vocab_size, (2, 2, CFG.block_size))
    ref = lm_loss(model(x), y)
    assert abs(ref.item() - math.log(CFG.vocab_size)) > 0.5  # not the loss of uniform logits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        loss = lm_loss(logits, y)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref, rtol=2**-8, atol=0.0)


def test_all_targets_ignored_is_nan_like_cross_entropy():
    logits = torch.randn(1, 3, 5)
    targets = torch.full((1, 3), -100)
    assert lm_loss(logits, targets).isnan() and F.cross_entropy(logits[0], targets[0]).isnan()


def test_single_row_bf16_linear_matches_the_matrix_path():
    lin = DecodeLinear(64, 96).to(torch.bfloat16)
    x = torch.randn(1, 1, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        fast = lin(x)  # the matrix-vector path
    assert fast.shape == (1, 1, 96)
    # Both sum in fp32 and round to bf16 once: measured bit-identical over 200 seeds on an AVX-512 CPU;
    # one bf16 step (2^-7 relative) allows kernels that sum in another order (it was 2e-2 before).
    torch.testing.assert_close(fast, F.linear(x, lin.weight, lin.bias), atol=1e-6, rtol=2**-7)


def test_gemv_dispatch_and_compiled_multiply_and_sum(monkeypatch):
    w, b = torch.randn(96, 64), torch.randn(96)
    x = torch.randn(1, 1, 64)
    mv = []
    real_mv = torch.mv
    monkeypatch.setattr(torch, "mv", lambda *a: mv.append(1) or real_mv(*a))
    lin = DecodeLinear(64, 96, bias=False).to(torch.bfloat16)
    with torch.no_grad():
        lin(x.bfloat16())  # one row, no autograd, eager: torch.mv
        assert mv == [1]
        lin(torch.randn(2, 1, 64, dtype=torch.bfloat16))  # two rows: F.linear
    lin(x.bfloat16())  # autograd on: F.linear
    assert mv == [1]
    torch._dynamo.reset()
    got = torch.compile(gemv, backend="eager", fullgraph=True)(w, x, b)  # traced: the multiply-and-sum
    torch.testing.assert_close(got, F.linear(x, w, b), atol=1e-5, rtol=1e-5)  # fp32, summed in another order


def test_use_decode_linears_keeps_weights_tying_and_state_dict():
    torch.manual_seed(0)
    model = GPT(CFG).eval()
    before = copy.deepcopy(model.state_dict())
    x = torch.randint(0, 50, (1, 1))
    with torch.no_grad():
        ref = model(x)
    assert kernels.use_decode_linears(model) is model
    assert all(type(m) is not torch.nn.Linear for m in model.modules())
    assert isinstance(model.lm_head, DecodeLinear) and model.lm_head.weight is model.transformer.wte.weight
    assert model.state_dict().keys() == before.keys() and all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, atol=0, rtol=0)  # fp32 one row: F.linear either way


def test_the_model_has_no_device_or_compile_branch():
    # the fast paths and their dispatch live in kernels.py; model.py is the lectures' model
    source = (ROOT / "minigpt" / "model.py").read_text()
    for word in ("is_compiling", "device.type", "is_grad_enabled", "autocast", "scaled_dot_product_attention"):
        assert word not in source, word
    assert "from .kernels import" in source


@pytest.mark.parametrize("rows,fused", [(1, True), (3, True), (kernels.FUSED_ROWS, True), (kernels.FUSED_ROWS + 1, False)])
def test_int8_linear_in_compiled_code_equals_the_reference(monkeypatch, rows, fused):
    torch.manual_seed(rows)
    q = torch.randint(-127, 128, (96, 64), dtype=torch.int8)
    scale, bias = torch.rand(96) / 100, torch.randn(96)
    x = torch.randn(rows, 1, 64)  # a decode step's batch: one new token per row
    products, real = [], F.linear
    monkeypatch.setattr(F, "linear", lambda *a, **k: products.append(1) or real(*a, **k))
    torch._dynamo.reset()
    got = torch.compile(kernels.int8_linear, backend="eager", fullgraph=True)(x, q, scale, bias)  # traced
    assert (products == []) == fused  # a multiply-and-sum, or the converted weight's product past FUSED_ROWS
    # fp32 both, summed in another order: measured 4e-7 relative at most at these sizes
    torch.testing.assert_close(got, kernels.int8_linear_reference(x, q, scale, bias), atol=1e-5, rtol=1e-5)
