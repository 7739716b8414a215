"""The GPT model: token + position embeddings, stacked pre-LayerNorm blocks of causal attention and MLP.

Shape letters used in the comments:
    B batch size, T sequence length, C embedding width (n_embd),
    nh number of heads, hs head size (C // nh), V vocabulary size.

The model is pure: no printing, files, devices or optimizers. Parameter counting lives in
`minigpt.tools.params`, optimizer groups in `minigpt.optim`, checkpoints in `minigpt.checkpoint`.
For generation, `forward(idx, cache)` also takes a `KVCache`: the keys and values of the tokens seen
so far, so each new token costs one position's worth of compute instead of the whole context's.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .settings import check, opt


@dataclass
class GPTConfig:
    block_size: int = opt(128, "longest sequence the model sees (context length)", range="[1, inf)")
    vocab_size: int = opt(50257, "set from the tokenizer when training on a dataset", range="[1, inf)")
    n_layer: int = opt(4, "number of transformer blocks", range="[1, inf)")
    n_head: int = opt(4, "attention heads per block", range="[1, inf)")
    n_embd: int = opt(192, "embedding width C (a multiple of n_head)", range="[1, inf)")
    dropout: float = opt(0.0, "dropout on attention weights, residual branches and embeddings", range="[0, 1)")
    bias: bool = opt(False, "biases in Linear layers and LayerNorms (GPT-2 has them)")
    activation: str = opt("gelu", "MLP nonlinearity: 'gelu' (exact) or 'gelu_tanh' (the tanh approximation "
                                  "OpenAI's GPT-2 uses)", choices=("gelu", "gelu_tanh"))

    def __post_init__(self):
        check(self)  # each field against its declaration (minigpt.settings)
        if self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                f"pick n_embd as a multiple of n_head"
            )


class KVCache:
    """Keys and values of the tokens seen so far, preallocated for every layer: (B, nh, max_len, hs) each.

    `pos` counts the positions filled; a forward pass with a cache writes its T new positions in place
    at pos..pos+T-1, attends over positions 0..pos+T-1, then advances pos by T.

    The tensors hold one spare position past `max_len`, never written: the positions attended over are then
    always a strict slice of them, never the whole tensor, which a compiled decode step would otherwise
    treat as a separate case and compile again (~30 s for GPT-2) at the step that fills the cache.
    """

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int, device=None, dtype=None):
        if max_len > config.block_size:
            raise ValueError(f"max_len ({max_len}) is longer than the model's context ({config.block_size})")
        shape = (batch_size, config.n_head, max_len + 1, config.n_embd // config.n_head)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.max_len = max_len
        self.pos = 0


class Linear(nn.Linear):
    """nn.Linear, but a single input row without autograd (one-token decoding) on a CPU takes a
    matrix-vector path, where decode spends its time: every weight is read once per token. Compiled,
    it stays F.linear: `generate.compile_step` has inductor pack the weight for that product."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or not one_cpu_row(x) or torch.compiler.is_compiling():
            return super().forward(x)  # training, every multi-row input and compiled code: the usual path
        return gemv(self.weight, x, self.bias)


def one_cpu_row(x: torch.Tensor) -> bool:
    """A single input row on the CPU: a decode step's product, which `gemv` computes."""
    return x.numel() == x.size(-1) and x.device.type == "cpu"


def gemv(weight: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., in) times weight (out, in)^T for one row of x: (..., out).

    Under torch.compile (the int8 decode step) it is written as a multiply-and-sum, which inductor turns
    into one fused, vectorised pass over the weight (fp32 accumulation, whatever the weight dtype);
    torch's own CPU kernels for one row reach only half the memory bandwidth (the 50257-wide head, a third).
    """
    if torch.compiler.is_compiling():
        y = (weight * x.reshape(-1)).sum(-1)  # (out,)
        y = y if bias is None else y + bias
    elif x.dtype == torch.float32:
        return F.linear(x, weight, bias)
    else:
        y = torch.addmv(bias, weight, x.reshape(-1)) if bias is not None else torch.mv(weight, x.reshape(-1))
    return y.view(*x.shape[:-1], -1)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: one fused q/k/v projection, heads split, SDPA, output projection."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # W_q, W_k, W_v side by side
        self.c_proj = Linear(config.n_embd, config.n_embd, bias=config.bias)  # W_o
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor] | None = None, pos: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # 3 x (B, T, C)
        hs = C // self.n_head
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        mask, causal = None, True
        if kv is not None:  # generation: store the new keys/values, attend over everything cached so far
            k_cache, v_cache = kv  # (B, nh, max_len + 1, hs) each
            k_cache[:, :, pos : pos + T] = k
            v_cache[:, :, pos : pos + T] = v
            k, v = k_cache[:, :, : pos + T], v_cache[:, :, : pos + T]  # (B, nh, pos+T, hs)
            if T == 1:
                causal = False  # one new token may see every cached position: no mask at all
            elif pos > 0:  # a chunk after cached tokens: query i sees cached positions and chunk tokens <= i
                causal = False
                mask = torch.ones(T, pos + T, dtype=torch.bool, device=x.device).tril(diagonal=pos)
        # softmax(q k^T / sqrt(hs) + causal mask) v; flash / memory-efficient kernels where available
        dtype, fp32 = q.dtype, False
        if q.device.type == "cpu" and dtype != torch.float32 and hs < 64 and torch.is_grad_enabled():
            # torch's CPU flash kernel runs its bf16 backward ~4x slower than fp32's below head size 64
            # (6.9 vs 1.5 ms for 24 x 4 heads x 64 x 32): small heads train faster attending in fp32
            q, k, v, fp32 = q.float(), k.float(), v.float(), True
        if T == 1 and kv is not None and q.device.type == "cpu" and torch.compiler.is_compiling():
            # one new token in the compiled decode step: as sums inductor fuses with the cache reads; torch's
            # flash kernel took 95 us a layer for GPT-2's bf16 step (9.97 -> 9.24 ms a token; fp32 unchanged)
            att = (q * k).sum(-1, dtype=torch.float32).mul(hs**-0.5).softmax(-1)  # (B, nh, pos+1)
            y = (att[..., None] * v).sum(-2, keepdim=True, dtype=torch.float32).to(dtype)  # (B, nh, 1, hs)
        else:
            with torch.autocast("cpu", enabled=False) if fp32 else contextlib.nullcontext():  # would cast back
                y = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=causal
                ).to(dtype)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads side by side: (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward: expand 4x, GELU, project back."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh" if config.activation == "gelu_tanh" else "none")
        self.c_proj = Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, C) -> (B, T, 4C) -> (B, T, C)


class Block(nn.Module):
    """A transformer block: attention then MLP, each on a LayerNorm'd input and added to the residual stream."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor] | None = None, pos: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), kv, pos)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    """Decoder-only transformer language model; `forward(idx)` returns next-token logits at every position.

    With a `KVCache`, `idx` holds only the tokens not yet seen (the prompt, then one token per step); they
    take the positions after those already cached.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embedding
                wpe=nn.Embedding(config.block_size, config.n_embd),  # learned position embedding
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying: the unembedding is the token embedding (saves V*C parameters, helps small models)
        self.lm_head.weight = self.transformer.wte.weight
        init_weights(self)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T = idx.shape
        start = cache.pos if cache is not None else 0  # position of idx's first token
        if cache is None and T > self.config.block_size:
            raise ValueError(
                f"input has {T} tokens but the model's context (block_size) is {self.config.block_size}; "
                f"crop the input to its last {self.config.block_size} tokens"
            )
        if cache is not None and start + T > cache.max_len:
            raise ValueError(f"the KV cache holds {cache.max_len} positions, input would fill {start + T}; "
                             f"reset it (cache.pos = 0) and feed the last {cache.max_len} tokens")
        pos = torch.arange(start, start + T, device=idx.device)  # (T,)
        wte = self.transformer.wte.weight
        # With the head tied to it, the table already gets a dense (V, C) gradient from the head; the lookup's
        # gradient is added to it as B*T sparse rows instead of a second zero-filled table (~95 ms per GPT-2
        # step). The sum autograd hands the optimizer stays dense.
        sparse = wte is self.lm_head.weight and torch.is_grad_enabled() and not torch.compiler.is_compiling()
        tok = F.embedding(idx, wte, sparse=sparse)  # (B, T, C)
        x = self.transformer.drop(tok + self.transformer.wpe(pos))  # (B, T, C)
        for i, block in enumerate(self.transformer.h):
            x = block(x, None if cache is None else (cache.k[i], cache.v[i]), start)
        if cache is not None:
            cache.pos += T
        x = self.transformer.ln_f(x)
        return self.lm_head(x)  # (B, T, V)


def init_weights(model: GPT) -> None:
    """Initialise every parameter of a fresh GPT; the one place where initialisation rules live."""
    std = 0.02
    # Residual projections are summed into the stream 2 * n_layer times; scale them down so the
    # stream's variance does not grow with depth (GPT-2 paper, section 2.3).
    resid_std = std / math.sqrt(2 * model.config.n_layer)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            is_resid = name.endswith("attn.c_proj") or name.endswith("mlp.c_proj")
            nn.init.normal_(module.weight, mean=0.0, std=resid_std if is_resid else std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)  # biases start at zero
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)  # wte (= lm_head) and wpe: N(0, 0.02)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)  # LayerNorm starts as the identity
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy: logits (B, T, V) against target ids (B, T), in fp32 whatever the
    logits' dtype. `F.cross_entropy` on `.float()` logits is the reference (and what compiled code runs)."""
    logits, targets = logits.reshape(-1, logits.size(-1)), targets.reshape(-1)  # (B*T, V), (B*T,)
    if torch.compiler.is_compiling():  # inductor fuses the plain version itself
        return F.cross_entropy(logits.float(), targets)
    return _ChunkedCrossEntropy.apply(logits, targets)


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Cross-entropy over a block of rows of logits at a time, each block upcast to fp32 by the softmax itself.

    The plain version makes a full fp32 copy of the (B*T, V) logits, a log-softmax, a zero-filled gradient,
    the softmax backward and a cast back: ~40 bytes moved per logit, 1.3 s of a 1024-token GPT-2 step on
    2 cores. Here the forward keeps only each row's loss, and the backward recomputes the softmax and writes
    (softmax - onehot) / N straight into a gradient of the logits' dtype: ~18 bytes per logit."""

    ELEMENTS = 1 << 23  # logits per block: 166 rows of GPT-2's 50257 (32 MB in fp32); a char model's in one block

    @staticmethod
    def rows(logits: torch.Tensor) -> int:
        return max(1, _ChunkedCrossEntropy.ELEMENTS // logits.size(-1))

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        nll = torch.empty(logits.size(0), dtype=torch.float32, device=logits.device)  # (N,)
        rows = _ChunkedCrossEntropy.rows(logits)
        for s in range(0, logits.size(0), rows):
            e = s + rows
            logp = torch.log_softmax(logits[s:e], -1, dtype=torch.float32)  # (rows, V)
            nll[s:e] = -logp.gather(1, targets[s:e, None]).squeeze(1)
        ctx.save_for_backward(logits, targets)
        return nll.mean()

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        logits, targets = ctx.saved_tensors
        grad = torch.empty_like(logits)
        scale = grad_loss.float() / logits.size(0)  # d mean / d row
        rows = _ChunkedCrossEntropy.rows(logits)
        for s in range(0, logits.size(0), rows):
            e = min(s + rows, logits.size(0))
            p = torch.softmax(logits[s:e], -1, dtype=torch.float32)  # (rows, V), a fresh tensor
            p[torch.arange(e - s, device=p.device), targets[s:e]] -= 1.0  # minus the one-hot target
            torch.mul(p, scale, out=grad[s:e])  # scaled and cast to the logits' dtype in one pass
        return grad, None
