"""train-gpt2: GPT-2 124M's full training step in fp32 and bf16, eager and compiled; with --nanogpt_dir,
nanoGPT's own fp32 step at the same shape beside it. 8 x 256 = 2,048 tokens a step: the optimizer's pass
over 124M weights and the other per-step costs are then a few percent of a step, not a large share as at
1 x 256."""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import torch

from .common import timed
from .training import Shape, run_train

ABOUT = "training steps of GPT-2 124M (8 x 256 tokens); --nanogpt_dir adds nanoGPT's step"
NEEDS = ("matmul",)
SHAPE = Shape("gpt2", batch=8, T=256)
NANOGPT_VARIANT = "nanoGPT fp32 eager"


def nanogpt_step_bench(path: str, batch: int, T: int, steps: int, warmup: int) -> dict:
    """nanoGPT's GPT-2 124M step from its own checkout: forward with targets, backward, clip_grad_norm_,
    the AdamW its configure_optimizers builds (fused only on CUDA, so its for-each AdamW here), in fp32."""
    sys.path.insert(0, path)
    from model import GPT as NanoGPT, GPTConfig as NanoConfig  # nanoGPT's model.py, not ours

    torch.manual_seed(0)
    model = NanoGPT(NanoConfig(block_size=1024, vocab_size=50257, n_layer=12, n_head=12, n_embd=768, dropout=0.0,
                               bias=True))
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its parameter groups
        opt = model.configure_optimizers(weight_decay=0.1, learning_rate=1e-4, betas=(0.9, 0.95), device_type="cpu")
    x = torch.randint(0, 50257, (batch, T))
    y = torch.randint(0, 50257, (batch, T))

    def step():
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    s, _ = timed(step, steps, warmup)
    n = model.get_num_params()  # without the position embedding: our N
    return {"tokens_per_s": batch * T / s, "ms_per_step": s * 1000, "flops_per_token": 6 * n + 12 * 12 * 768 * T}


def run(settings, ceilings) -> list[dict]:
    peers = {}
    if settings.nanogpt_dir and getattr(settings, "device", "cpu") == "cpu":
        peers[NANOGPT_VARIANT] = ("float32", nanogpt_step_bench, {"path": str(Path(settings.nanogpt_dir).resolve()),
                                                                  "batch": SHAPE.batch, "T": SHAPE.T})
    return run_train("train-gpt2", SHAPE, settings, ceilings, peers)
