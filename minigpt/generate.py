"""Sampling text from a model: temperature, top-k, a seeded generator, the context cropped from the left."""

from __future__ import annotations

import torch

from .model import GPT


@torch.no_grad()
def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Extend each row of `idx` (B, T) by `max_new_tokens` sampled tokens; returns (B, T + max_new_tokens).

    The reference path: every step runs the whole (cropped) context through the model again.
    """
    block_size = model.config.block_size
    for _ in range(max_new_tokens):
        context = idx[:, -block_size:]  # the model sees at most block_size tokens: keep the most recent
        logits = model(context)[:, -1, :].float()  # (B, V) next-token logits
        next_id = sample_next(logits, temperature, top_k, generator)  # (B, 1)
        idx = torch.cat([idx, next_id], dim=1)
    return idx


def sample_next(logits: torch.Tensor, temperature: float, top_k: int, generator: torch.Generator | None) -> torch.Tensor:
    """One token id per row from (B, V) logits; temperature 0 is greedy."""
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k).values[:, -1:]  # (B, 1) the k-th largest logit
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)
