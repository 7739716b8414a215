"""Generating tokens: the sampling rules, a KV-cached decode loop, and the recompute-everything reference.

`Sampling` holds the four settings that shape the next-token distribution; `next_token_probs` is
that distribution and `sample_next` draws from it. `decode_steps()` yields one new token per row at
a time (sample.py turns them into text as they come); `generate()` collects them.

With `use_cache=True` (the default) the prompt goes through the model once (prefill) and then each
step feeds only the newest token, reading the keys and values of earlier ones from a `KVCache`. With
`use_cache=False` every step runs the whole context again: slow, simple, the reference that tests
hold the cache to.

Past `block_size` both paths see the same thing: the last `block_size` tokens, at positions
0..block_size-1. Positions are learned absolute embeddings, so a cached key belongs to the position
it was computed at and cannot be shifted; once the cache is full, each step re-runs the last
`block_size` tokens from position 0 (a prefill per token, like the reference), which keeps the two
paths equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch

from .kernels import use_decode_linears
from .model import GPT, KVCache

# Probabilities are float32: each carries a relative rounding error of ~1e-7, so a cumulative sum
# that lands within this of top_p counts as reaching it ([0.5, 0.3, 0.2] at top_p=0.8 keeps two
# tokens, however softmax rounded 0.5 + 0.3).
TOP_P_SLACK = 1e-6


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen from the logits; applied in this order:

    vocab_size          only ids below it can be drawn (a model whose vocabulary is padded past its
                        tokenizer's, e.g. to 50304, has logits for ids no tokenizer decodes); 0: all
    repetition_penalty  CTRL's rule on tokens already in the text: positive logits divided by it,
                        negative ones multiplied (> 1 discourages repeats; 1 disables)
    temperature         logits divided by it: < 1 sharpens, > 1 flattens; 0 is greedy (argmax)
    top_k               keep exactly the k most likely tokens (ties: the lowest ids); 0 disables
    top_p               keep the smallest set of most likely tokens whose probability reaches top_p; 1 disables
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    vocab_size: int = 0

    def __post_init__(self):
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0 (0 is greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1 disables it), got {self.top_p}")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            raise ValueError(f"repetition_penalty must be a positive number (1 disables it), got {self.repetition_penalty}")
        if self.vocab_size < 0:
            raise ValueError(f"vocab_size must be >= 0 (0 allows every id), got {self.vocab_size}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


GREEDY = Sampling(temperature=0.0)


def _penalized(logits: torch.Tensor, sampling: Sampling, seen: torch.Tensor | None) -> torch.Tensor:
    """Float32 logits with NaN/inf made safe and the repetition penalty applied to `seen` tokens."""
    logits = torch.nan_to_num(logits.float(), nan=-math.inf, posinf=torch.finfo(torch.float32).max, neginf=-math.inf)
    if 0 < sampling.vocab_size < logits.size(-1):
        logits[..., sampling.vocab_size:] = -math.inf  # padding ids: never drawn (nan_to_num made a fresh tensor)
    if seen is not None and sampling.repetition_penalty != 1.0:
        # shrink positive logits, push negative ones further down
        p = sampling.repetition_penalty
        logits = torch.where(seen, torch.where(logits > 0, logits / p, logits * p), logits)
    return logits


def next_token_probs(logits: torch.Tensor, sampling: Sampling, seen: torch.Tensor | None = None) -> torch.Tensor:
    """The distribution (B, V) the next token is drawn from, for (B, V) logits; `seen` (B, V) marks the
    tokens already in each row's text (for the repetition penalty). Greedy is one-hot on the argmax.

    Safe for any temperature and for rows holding -inf or NaN: no NaN ever comes out.
    """
    logits = _penalized(logits, sampling, seen)
    if sampling.greedy:
        return torch.zeros_like(logits).scatter_(1, logits.argmax(dim=-1, keepdim=True), 1.0)
    top = logits.max(dim=-1, keepdim=True).values  # (B, 1)
    logits = torch.where(torch.isfinite(top), logits, 0.0)  # a row with no finite logit: sample uniformly
    # Shift each row's maximum to 0 before dividing: a tiny temperature then sends the others to -inf
    # (a one-hot softmax) instead of sending the maximum to +inf (NaN)
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / sampling.temperature
    V = logits.size(-1)
    k = sampling.top_k if 0 < sampling.top_k < V else V
    if k < V:
        # exactly k: every token above the k-th largest logit, then as many tied with it as still fit,
        # lowest ids first (torch.topk alone would pick among the tied ones in no promised order)
        kth = torch.topk(logits, k).values[:, -1:]  # (B, 1)
        above, tied = logits > kth, logits == kth
        room = k - above.sum(dim=-1, keepdim=True)
        if bool((tied.sum(dim=-1, keepdim=True) > room).any()):  # rare with real logits: skip the cumsum otherwise
            tied &= tied.cumsum(dim=-1) <= room
        logits = logits.masked_fill(~(above | tied), -math.inf)
    if sampling.top_p < 1.0:
        probs = torch.softmax(logits, dim=-1)
        # most likely first; with top_k only its k candidates need sorting (topk: ~40x cheaper than a
        # full sort of GPT-2's 50257 logits)
        ranked, order = torch.topk(probs, k) if k < V else torch.sort(probs, dim=-1, descending=True)  # (B, k)
        # token i stays while the more likely ones fall short of top_p: the running sum shifted by one,
        # not cumsum - probs, whose rounding moves boundaries
        total = ranked.double().cumsum(dim=-1)
        before = torch.cat([torch.zeros_like(total[:, :1]), total[:, :-1]], dim=-1)  # mass ranked above i
        reached = before < sampling.top_p - TOP_P_SLACK
        reached[:, 0] = True  # even for a top_p below the slack
        keep = torch.zeros_like(probs, dtype=torch.bool).scatter_(1, order, reached)
        logits = logits.masked_fill(~keep, -math.inf)
    return torch.softmax(logits, dim=-1)


def sample_next(logits: torch.Tensor, sampling: Sampling, *, generator: torch.Generator | None = None,
                seen: torch.Tensor | None = None) -> torch.Tensor:
    """One token id per row (B, 1) drawn from `next_token_probs`; greedy takes the argmax (lowest id on
    a tie) without drawing a random number."""
    if sampling.greedy:
        return _penalized(logits, sampling, seen).argmax(dim=-1, keepdim=True)
    return torch.multinomial(next_token_probs(logits, sampling, seen), num_samples=1, generator=generator)


def compile_step(model: GPT):
    """`model` compiled for the one-token decode steps of `decode_steps(step=...)`.

    dynamic=True: the cache position changes every step and must not recompile. On a CPU where
    inductor's C++ GEMM template has kernels for the weights (`_cpu_gemm_template_runs`), the weights are
    frozen into the compiled code (change them and compile again) and every weight product is that
    template: it packs each weight once into column blocks, so one row's product streams the weight
    front to back with no per-row reduction (faster than the multiply-and-sum it replaced; figures in
    docs/sample.md and the bench). The packed weights are a second copy of the Linear weights (GPT-2
    fp32: ~1.5 GB resident after compiling instead of 0.85). An int8 model keeps its multiply-and-sum
    (`kernels.int8_linear`), where the int8 -> float conversion is fused in; a low realize threshold there
    makes inductor compute each LayerNorm / GELU output once into a buffer instead of recomputing it for
    every output row.
    """
    use_decode_linears(model)  # as decode_steps does, before compiling: the model's classes then never change
    options = {"realize_opcount_threshold": 4}
    device = next(model.parameters()).device
    if device.type != "cpu" or not _cpu_gemm_template_runs(model):
        return torch.compile(model, dynamic=True, options=options)
    compiled = torch.compile(model, dynamic=True, options={**options, "max_autotune": True})

    def step(idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        # freezing is read when a graph compiles (first call, or a recompile); a patch, not global state
        with torch._inductor.config.patch(freezing=True, max_autotune_gemm_backends="CPP"):
            return compiled(idx, cache)

    return step


def _cpu_gemm_template_runs(model: GPT) -> bool:
    """Whether the compiled step takes inductor's C++ GEMM template: fp32 or bf16 weights on x86 (AVX2 /
    AVX-512), fp32 on ARM (NEON / SVE), where its registry has kernels (ARM has no bf16 ones: "no choices" at
    compile). Anything else takes the plain compile: fp16 (not measured here), other ISAs, and int8 Linears,
    which are a fused multiply-and-sum rather than a GEMM."""
    from torch._inductor import cpu_vec_isa

    isa = cpu_vec_isa.pick_vec_isa()
    if isinstance(isa, (cpu_vec_isa.VecAVX2, cpu_vec_isa.VecAVX512)):
        dtypes = (torch.float32, torch.bfloat16)
    elif isinstance(isa, (cpu_vec_isa.VecNEON, cpu_vec_isa.VecSVE)):
        dtypes = (torch.float32,)
    else:
        return False
    return all(m.weight.dtype in dtypes for m in model.modules()
               if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() == 2)


@torch.inference_mode()
def decode_steps(model: GPT, idx: torch.Tensor, *, max_new_tokens: int, sampling: Sampling,
                 generator: torch.Generator | None = None, use_cache: bool = True, step=None) -> Iterator[torch.Tensor]:
    """Yield `max_new_tokens` next-token ids (B, 1) for the rows of `idx` (B, T), one decode step at a time.

    `step` optionally replaces `model` for the one-token decode steps (e.g. a compiled version of it).
    The model's Linears become `kernels.DecodeLinear`s (in place, same weights): one row takes `gemv`.
    """
    if idx.dim() != 2 or idx.size(1) == 0:
        raise ValueError(f"the prompt must be token ids of shape (batch, length) with length >= 1, got shape "
                         f"{tuple(idx.shape)}; to start from nothing, pass one token per row (e.g. the "
                         f"end-of-text id, or a newline's id for a character model)")
    use_decode_linears(model)
    block = model.config.block_size
    B, T = idx.shape
    tokens = idx  # all tokens so far; the reference path and the sliding window read it
    cache = None
    if use_cache:
        max_len = min(block, min(T, block) + max_new_tokens)
        cache = KVCache(model.config, B, max_len, idx.device, model.transformer.wte.weight.dtype)  # lm_head may be int8
    step = step if step is not None else model
    seen = None  # (B, V) which tokens are in each row's text, for the repetition penalty
    if sampling.repetition_penalty != 1.0:
        seen = torch.zeros(B, model.config.vocab_size, dtype=torch.bool, device=idx.device).scatter_(1, idx, True)
    new = idx[:, -block:]  # tokens the model has not seen yet: first the (cropped) prompt
    for _ in range(max_new_tokens):
        if cache is None:
            logits = model(tokens[:, -block:])  # the reference: the whole (cropped) context, every step
        elif cache.pos + new.size(1) > cache.max_len:
            cache.pos = 0  # the window slides: re-run the last block_size tokens from position 0
            logits = model(tokens[:, -block:], cache)
        else:
            # the prompt (even a single token) goes through the model, then `step` takes one token a step: it
            # never sees position 0, which compiled code would treat as a case of its own and compile twice
            logits = (step if new.size(1) == 1 and cache.pos > 0 else model)(new, cache)
        next_id = sample_next(logits[:, -1, :], sampling, generator=generator, seen=seen)
        if seen is not None:
            seen.scatter_(1, next_id, True)
        tokens = torch.cat([tokens, next_id], dim=1)
        new = next_id
        yield next_id


def generate(model: GPT, idx: torch.Tensor, *, max_new_tokens: int, sampling: Sampling,
             generator: torch.Generator | None = None, eot_id: int | None = None, use_cache: bool = True,
             step=None) -> torch.Tensor:
    """Extend each row of `idx` (B, T) by up to `max_new_tokens` tokens; returns (B, T + n).

    With `eot_id`, a row that produced it is padded with it from then on, and generation ends early
    once every row has. `step`: as in `decode_steps` (e.g. `compile_step(model)`).
    """
    out = [idx]
    done = torch.zeros(idx.size(0), 1, dtype=torch.bool, device=idx.device)
    for next_id in decode_steps(model, idx, max_new_tokens=max_new_tokens, sampling=sampling, generator=generator,
                                use_cache=use_cache, step=step):
        if eot_id is not None:
            next_id = next_id.masked_fill(done, eot_id)
            done |= next_id == eot_id
        out.append(next_id)
        if eot_id is not None and bool(done.all()):
            break
    return torch.cat(out, dim=1)
