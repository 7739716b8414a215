"""The fast paths: each computes what a simple reference computes, faster on some device, dtype or compiler.

This is the one file where devices, dtypes and `torch.compile` choose the code; the model calls the
functions below and stays the lectures' model. Each fast path names its reference, and
tests/test_kernels.py holds it to that reference:

    attention(q, k, v)          causal attention               reference: naive_attention
    explicit_attention(...)     the same, short bf16 windows   reference: naive_attention
    embedding(idx, table, ...)  token lookup                   reference: F.embedding
    lm_loss(logits, targets)    mean next-token cross-entropy  reference: cross_entropy (fp32 logits)
    compiled_lm_loss(...)       the same, compiled by inductor reference: cross_entropy
    DecodeLinear, gemv          one row times a weight         reference: F.linear
    int8_linear(x, q, scale)    x times an int8 weight         reference: int8_linear_reference

Shape letters as in model.py: B batch, nh heads, T query positions, S key positions, hs head size,
V vocabulary size, N = B*T rows of logits.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

IGNORE_INDEX = -100  # a target that counts for nothing in lm_loss, as in F.cross_entropy


# ----------------------------------------------------------------------------------------------------
# Attention


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The reference: softmax(q k^T / sqrt(hs) + causal mask) v, written out, in fp32.

    q (B, nh, T, hs) holds the last T of the S positions in k and v (B, nh, S, hs): query i sees keys
    0..S-T+i. Returns (B, nh, T, hs) in q's dtype.
    """
    T, S = q.size(-2), k.size(-2)
    att = q.float() @ k.float().transpose(-2, -1) * q.size(-1) ** -0.5  # (B, nh, T, S)
    seen = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
    att = att.masked_fill(~seen, float("-inf")).softmax(-1)
    return (att @ v.float()).to(q.dtype)  # (B, nh, T, hs)


# Training in bf16/fp16 on a CPU, windows (T == S) up to these lengths take `explicit_attention`: measured
# against SDPA's CPU flash kernel, forward and backward, on an AMD EPYC Zen 4 (AVX512-BF16), 2 threads:
# heads of 32 (where the flash kernel's bf16 backward is so slow that it runs in fp32) 2x faster at T = 64,
# 1.2x at 128, tied at 256-512; heads of 64 (bf16 flash) 3x at 128, 1.8x at 256, 1.3x at 512, slower at 1024.
EXPLICIT_MAX_T = {"small_heads": 128, "heads": 512}
EXPLICIT_BLOCK = 128  # query rows per block: a (T, T) block of scores past ~128 rows fell off a cliff (2x slower)


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0,
                       block: int | None = None) -> torch.Tensor:
    """`naive_attention` for training windows (T == S): two batched products in q's dtype around a softmax
    in fp32, the scores rounded to q's dtype once (as GPUs' non-flash attention rounds them). Queries go
    `block` rows (default EXPLICIT_BLOCK) at a time, each block against only the keys it can see: the
    causal half of the products above the diagonal is skipped, and each block's scores stay small enough
    for the caches. Autograd differentiates it as written.
    """
    T, block = q.size(-2), block or EXPLICIT_BLOCK
    q = q * q.size(-1) ** -0.5
    out = []
    for s in range(0, T, block):
        e = min(s + block, T)  # queries s..e-1 see keys 0..e-1, query s+i the first s+i+1 of them
        mask = torch.full((e - s, e), float("-inf"), dtype=q.dtype, device=q.device).triu(s + 1)
        att = (q[..., s:e, :] @ k[..., :e, :].mT + mask).softmax(-1, dtype=torch.float32)  # (B, nh, e-s, e)
        if dropout_p:
            att = F.dropout(att, dropout_p)
        out.append(att.to(v.dtype) @ v[..., :e, :])  # (B, nh, e-s, hs)
    return out[0] if len(out) == 1 else torch.cat(out, dim=-2)  # (B, nh, T, hs)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """`naive_attention` (same arguments), with dropout on the attention weights; picks the kernel:

    - SDPA (flash / memory-efficient kernels where available), the causal flag when T == S (training,
      a prefill), no mask for one query (it sees every key), an explicit mask for a chunk after cached keys;
    - training in bf16/fp16 on a CPU: windows up to EXPLICIT_MAX_T take `explicit_attention`, whose
      products in bf16 beat the flash kernel there; longer windows of small heads attend in fp32 flash
      (torch's CPU flash kernel runs its bf16 backward ~4x slower than fp32's below head size 64);
    - one query in compiled code on a CPU (the compiled decode step): two sums inductor fuses with the
      KV cache reads, instead of the flash kernel's per-call overhead.
    """
    T, S, hs = q.size(-2), k.size(-2), q.size(-1)
    dtype, cpu = q.dtype, q.device.type == "cpu"
    if T == 1 and cpu and torch.compiler.is_compiling():
        att = (q * k).sum(-1, dtype=torch.float32).mul(hs**-0.5).softmax(-1)  # (B, nh, S)
        return (att[..., None] * v).sum(-2, keepdim=True, dtype=torch.float32).to(dtype)  # (B, nh, 1, hs)
    mask, causal = None, T == S and T > 1
    if T > 1 and S > T:  # a chunk after cached keys: query i sees the cached keys and chunk keys <= i
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
    low_training = cpu and dtype != torch.float32 and torch.is_grad_enabled()
    if low_training and causal and T <= EXPLICIT_MAX_T["small_heads" if hs < 64 else "heads"]:
        return explicit_attention(q, k, v, dropout_p)
    small_low = low_training and hs < 64
    if small_low:
        q, k, v = q.float(), k.float(), v.float()
    with torch.autocast("cpu", enabled=False) if small_low else contextlib.nullcontext():  # autocast would cast back
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal)
    return y.to(dtype)  # (B, nh, T, hs)


# ----------------------------------------------------------------------------------------------------
# Token embedding


def embedding(idx: torch.Tensor, table: torch.Tensor, tied_head: bool) -> torch.Tensor:
    """`F.embedding(idx, table)` (the reference): (B, T) ids -> (B, T, C) rows of `table`.

    With the head tied to the table (`tied_head`), the table already gets a dense (V, C) gradient from
    the head; the lookup's gradient is then added to it as B*T sparse rows instead of a second zero-filled
    (V, C) table, which is written and summed every step. The sum autograd hands the optimizer stays dense.
    Compiled code takes the dense lookup (inductor fuses its gradient itself).
    """
    sparse = tied_head and torch.is_grad_enabled() and not torch.compiler.is_compiling()
    return F.embedding(idx, table, sparse=sparse)


# ----------------------------------------------------------------------------------------------------
# Loss


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The reference: `F.cross_entropy` of logits (N, V), upcast to fp32, against ids (N,)."""
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX)


@functools.cache
def compiled_cross_entropy():
    """`cross_entropy` compiled: inductor fuses the upcast, the softmax and the loss into passes over the
    logits that keep no fp32 copy, and its backward into one pass writing the gradient."""
    return torch.compile(cross_entropy)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of logits (B, T, V) against target ids (B, T), in fp32 whatever the
    logits' dtype. Targets equal to -100 (`IGNORE_INDEX`) count for nothing: the mean is over the others
    (NaN if there are none), as in `cross_entropy`, the reference, which compiled code runs as is
    (inductor fuses it); eager code takes `BlockwiseCrossEntropy` and never starts the compiler.
    """
    logits, targets = logits.reshape(-1, logits.size(-1)), targets.reshape(-1)  # (N, V), (N,)
    if torch.compiler.is_compiling():
        return cross_entropy(logits, targets)
    return BlockwiseCrossEntropy.apply(logits, targets)


def compiled_lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """`lm_loss` for a run that compiles its model anyway: the loss is computed outside the model's graph,
    and `compiled_cross_entropy` computes it about 3x faster than the blockwise loss at GPT-2's vocabulary."""
    return compiled_cross_entropy()(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


class BlockwiseCrossEntropy(torch.autograd.Function):
    """`F.cross_entropy(logits.float(), targets)` over a block of rows of logits (N, V) at a time, each
    block upcast to fp32 by the softmax itself.

    The plain version makes a full fp32 copy of the logits, a log-softmax, a zero-filled gradient, the
    softmax backward and a cast back: ~40 bytes moved per logit (V = 50257 makes the logits the largest
    tensor of a GPT-2 step). Here the forward keeps only each row's loss, and the backward recomputes the
    softmax and writes (softmax - onehot) / count straight into a gradient of the logits' dtype: ~18 bytes
    per logit.
    """

    ELEMENTS = 1 << 23  # logits per block: 166 rows of GPT-2's 50257 (32 MB in fp32); a char model's in one block

    @staticmethod
    def rows(logits: torch.Tensor) -> int:
        return max(1, BlockwiseCrossEntropy.ELEMENTS // logits.size(-1))

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        counted = targets != IGNORE_INDEX  # (N,)
        ids = targets.masked_fill(~counted, 0)  # an ignored row reads logit 0, then counts for nothing
        nll = torch.empty(logits.size(0), dtype=torch.float32, device=logits.device)  # (N,)
        rows = BlockwiseCrossEntropy.rows(logits)
        for s in range(0, logits.size(0), rows):
            e = s + rows
            logp = torch.log_softmax(logits[s:e], -1, dtype=torch.float32)  # (rows, V)
            nll[s:e] = -logp.gather(1, ids[s:e, None]).squeeze(1)
        count = counted.sum()
        ctx.save_for_backward(logits, ids, counted, count)
        return nll.masked_fill(~counted, 0.0).sum() / count

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        logits, ids, counted, count = ctx.saved_tensors
        grad = torch.empty_like(logits)
        row_scale = counted.float() * (grad_loss.float() / count)  # (N,): d loss / d row's nll; 0 if ignored
        rows = BlockwiseCrossEntropy.rows(logits)
        for s in range(0, logits.size(0), rows):
            e = min(s + rows, logits.size(0))
            p = torch.softmax(logits[s:e], -1, dtype=torch.float32)  # (rows, V), a fresh tensor
            p[torch.arange(e - s, device=p.device), ids[s:e]] -= 1.0  # minus the one-hot target
            torch.mul(p, row_scale[s:e, None], out=grad[s:e])  # scaled and cast to the logits' dtype in one pass
        return grad, None


# ----------------------------------------------------------------------------------------------------
# One row times a weight: decoding


def one_cpu_row(x: torch.Tensor) -> bool:
    """A single input row on the CPU: a batch-1 decode step's product, which `gemv` computes."""
    return x.numel() == x.size(-1) and x.device.type == "cpu"


def gemv(weight: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` (the reference) for one row of x (..., in): (..., out).

    Under torch.compile (the int8 decode step) it is written as a multiply-and-sum, which inductor turns
    into one fused, vectorised pass over the weight (fp32 accumulation, whatever the weight dtype);
    eager, fp32 stays F.linear and bf16/fp16 take torch.mv, since torch's own CPU matrix kernels for one
    low-precision row reach only a fraction of the memory bandwidth.
    """
    if torch.compiler.is_compiling():
        y = (weight * x.reshape(-1)).sum(-1)  # (out,)
        y = y if bias is None else y + bias
    elif x.dtype == torch.float32:
        return F.linear(x, weight, bias)
    else:
        y = torch.addmv(bias, weight, x.reshape(-1)) if bias is not None else torch.mv(weight, x.reshape(-1))
    return y.view(*x.shape[:-1], -1)


class DecodeLinear(nn.Linear):
    """nn.Linear (the reference), except that one input row without autograd on a CPU, eager, takes
    `gemv`: the batch-1 decode step, where every weight is read once per token. Compiled, it stays
    F.linear (`generate.compile_step` has inductor pack the weight for that product). No state of its own:
    `use_decode_linears` turns a model's Linears into DecodeLinears in place."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or not one_cpu_row(x) or torch.compiler.is_compiling():
            return super().forward(x)  # training, every multi-row input and compiled code: the usual path
        return gemv(self.weight, x, self.bias)


def use_decode_linears(model: nn.Module) -> nn.Module:
    """`model` with each plain nn.Linear's class set to DecodeLinear, in place: same parameters (weight
    tying kept), same state_dict, same results up to rounding; only eager one-row products change path.
    `generate` calls it before decoding; idempotent."""
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = DecodeLinear
    return model


# ----------------------------------------------------------------------------------------------------
# Int8 weights (minigpt.quant): an int8 weight q (out, in) with one fp32 scale per output row

FUSED_ROWS = 8  # compiled decode steps of up to this many rows (the batch) take the fused multiply-and-sum


def int8_linear_reference(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor,
                          bias: torch.Tensor | None = None) -> torch.Tensor:
    """The reference: x (..., in) times q converted to x's dtype, then each output scaled: (..., out)."""
    y = (F.linear(x, q.to(x.dtype)) * scale).to(x.dtype)  # the scale in fp32: in bf16 it would bias a row by up to 0.4%
    return y if bias is None else y + bias


def int8_linear(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`int8_linear_reference` (same arguments); in compiled code on a CPU, few rows (a decode step's
    batch) are a multiply-and-sum per row (`gemv`), which inductor fuses with the int8 -> float conversion
    as it reads the weight (one multiply-and-sum over all rows at once, (out, rows, in) summed over in,
    measured slower than fp32 weights). Compiled, the reference's conversion would write the whole weight
    out in x's dtype every call: one int8 byte read, four written and read back per weight, slower than
    fp32 weights themselves. Eager, each call converts the whole weight (smaller than fp32, not faster).
    """
    w = q.to(x.dtype)
    rows = x.numel() // x.size(-1)
    if one_cpu_row(x):
        y = gemv(w, x)
    elif torch.compiler.is_compiling() and x.device.type == "cpu" and rows <= FUSED_ROWS:
        # a gemv per row (the batch size is then fixed in the compiled code), each a pass over the int8 weight
        y = torch.stack([gemv(w, row) for row in x.reshape(rows, -1)]).view(*x.shape[:-1], -1)  # (..., out)
    else:
        y = F.linear(x, w)
    y = (y * scale).to(x.dtype)
    return y if bias is None else y + bias
