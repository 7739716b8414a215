"""Generating tokens: a KV-cached decode loop, the plain recompute-everything reference, and the sampling rules.

`stream()` yields one new token per row at a time (sample.py prints them as they come); `generate()`
collects them. With `use_cache=True` (the default) the prompt goes through the model once (prefill)
and then each step feeds only the newest token, reading the keys and values of earlier ones from a
`KVCache`. With `use_cache=False` every step runs the whole context again: slow, simple, the reference
that tests hold the cache to.

Past `block_size` both paths see the same thing: the last `block_size` tokens, at positions
0..block_size-1. Positions are learned absolute embeddings, so a cached key belongs to the position
it was computed at and cannot be shifted; once the cache is full, each step re-runs the last
`block_size` tokens from position 0 (a prefill per token, like the reference), which keeps the two
paths equal.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch

from .model import GPT, KVCache


@torch.inference_mode()
def stream(model: GPT, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, repetition_penalty: float = 1.0, generator: torch.Generator | None = None,
           use_cache: bool = True, step=None) -> Iterator[torch.Tensor]:
    """Yield `max_new_tokens` next-token ids (B, 1) for the rows of `idx` (B, T), one step at a time.

    `step` optionally replaces `model` for the one-token decode steps (e.g. a compiled version of it).
    """
    block = model.config.block_size
    B, T = idx.shape
    tokens = idx  # all tokens so far; the reference path and the sliding window read it
    cache = None
    if use_cache:
        max_len = min(block, min(T, block) + max_new_tokens)
        cache = KVCache(model.config, B, max_len, idx.device, model.lm_head.weight.dtype)
    step = step if step is not None else model
    seen = None  # (B, V) which tokens are in each row's text, for the repetition penalty
    if repetition_penalty != 1.0:
        seen = torch.zeros(B, model.config.vocab_size, dtype=torch.bool, device=idx.device).scatter_(1, idx, True)
    new = idx[:, -block:]  # tokens the model has not seen yet: first the (cropped) prompt
    for _ in range(max_new_tokens):
        if cache is None:
            logits = model(tokens[:, -block:])  # the reference: the whole (cropped) context, every step
        elif cache.pos + new.size(1) > cache.max_len:
            cache.pos = 0  # the window slides: re-run the last block_size tokens from position 0
            logits = model(tokens[:, -block:], cache)
        else:
            logits = (step if new.size(1) == 1 else model)(new, cache)  # prefill, then one token per step
        next_id = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator, seen, repetition_penalty)
        if seen is not None:
            seen.scatter_(1, next_id, True)
        tokens = torch.cat([tokens, next_id], dim=1)
        new = next_id
        yield next_id


def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
             generator: torch.Generator | None = None, *, top_p: float = 1.0, repetition_penalty: float = 1.0,
             eot_id: int | None = None, use_cache: bool = True) -> torch.Tensor:
    """Extend each row of `idx` (B, T) by up to `max_new_tokens` tokens; returns (B, T + n).

    With `eot_id`, a row that produced it is padded with it from then on, and generation ends early
    once every row has.
    """
    out = [idx]
    done = torch.zeros(idx.size(0), 1, dtype=torch.bool, device=idx.device)
    for next_id in stream(model, idx, max_new_tokens, temperature, top_k, top_p, repetition_penalty, generator,
                          use_cache):
        if eot_id is not None:
            next_id = next_id.masked_fill(done, eot_id)
            done |= next_id == eot_id
        out.append(next_id)
        if eot_id is not None and bool(done.all()):
            break
    return torch.cat(out, dim=1)


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                generator: torch.Generator | None = None, seen: torch.Tensor | None = None,
                repetition_penalty: float = 1.0) -> torch.Tensor:
    """One token id per row (B, 1) from (B, V) logits; temperature 0 is greedy.

    Order: repetition penalty, then temperature, top-k, top-p. Safe for any temperature and for rows
    holding -inf or NaN: no NaN ever reaches the sampler.
    """
    if not math.isfinite(temperature):
        raise ValueError(f"temperature must be finite, got {temperature}")
    logits = torch.nan_to_num(logits.float(), nan=-math.inf, posinf=torch.finfo(torch.float32).max, neginf=-math.inf)
    if seen is not None and repetition_penalty != 1.0:
        # CTRL's penalty on tokens already in the text: shrink positive logits, push negative ones further down
        penalized = torch.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty)
        logits = torch.where(seen, penalized, logits)
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    top = logits.max(dim=-1, keepdim=True).values  # (B, 1)
    logits = torch.where(torch.isfinite(top), logits, 0.0)  # a row with no finite logit: sample uniformly
    # Shift each row's maximum to 0 before dividing: a tiny temperature then sends the others to -inf
    # (a one-hot softmax) instead of sending the maximum to +inf (NaN)
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / temperature
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k).values[:, -1:]  # (B, 1) the k-th largest logit
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p < 1.0:
        probs, order = torch.sort(torch.softmax(logits, dim=-1), dim=-1, descending=True)  # (B, V) each
        # drop a token once the more likely ones already cover top_p; the most likely always stays
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop = torch.zeros_like(drop_sorted).scatter_(1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, -math.inf)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)
