"""The GPT model: token + position embeddings, stacked pre-LayerNorm blocks of causal attention and MLP.

Shape letters used in the comments:
    B batch size, T sequence length, C embedding width (n_embd),
    nh number of heads, hs head size (C // nh), V vocabulary size.

The model is pure: no printing, files, devices or optimizers. The kernels it calls for attention and
the token lookup, the loss (`lm_loss`) and the decode products live in `minigpt.kernels`, each beside
its simple reference; parameter counting, optimizer groups and checkpoints live in their own modules.
For generation, `forward(idx, cache)` also takes a `KVCache`: the keys and values of the tokens seen
so far, so each new token costs one position's worth of compute instead of the whole context's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from .kernels import attention, embedding
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


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: one fused q/k/v projection, heads split, attention, output projection."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # W_q, W_k, W_v side by side
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)  # W_o
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor] | None = None, pos: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # 3 x (B, T, C)
        hs = C // self.n_head
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        if kv is not None:  # generation: store the new keys/values, attend over everything cached so far
            k_cache, v_cache = kv  # (B, nh, max_len + 1, hs) each
            k_cache[:, :, pos : pos + T] = k
            v_cache[:, :, pos : pos + T] = v
            k, v = k_cache[:, :, : pos + T], v_cache[:, :, : pos + T]  # (B, nh, pos+T, hs)
        # softmax(q k^T / sqrt(hs) + causal mask) v: each query sees the keys up to its own position
        y = attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads side by side: (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward: expand 4x, GELU, project back."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh" if config.activation == "gelu_tanh" else "none")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
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
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
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
        tok = embedding(idx, wte, tied_head=wte is self.lm_head.weight)  # (B, T, C)
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
