"""Exact evaluation: loss, perplexity and bits per byte over a whole split, in non-overlapping windows."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from tqdm import tqdm

from . import checkpoint, runtime
from .config import opt, parse_cli
from .data import TokenDataset, iter_windows, resolve_dataset
from .errors import UserError, run_cli
from .model import GPT


@torch.no_grad()
def evaluate_split(model: GPT, data, batch_size: int = 32, device="cpu", ctx=None) -> tuple[float, int]:
    """(mean next-token loss, number of predicted tokens) over every position of `data`."""
    model.eval()
    total, count = 0.0, 0
    block = model.config.block_size
    n_windows = math.ceil((len(data) - 1) / block)
    with tqdm(total=n_windows, desc="evaluating", unit="window", disable=n_windows < 200) as bar:
        for x, y in iter_windows(data, block, batch_size):
            x, y = x.to(device), y.to(device)
            with ctx or contextlib.nullcontext():
                logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1),
                                                     reduction="sum")
            total += loss.item()
            count += y.numel()
            bar.update(x.size(0))
    return total / count, count


def bits_per_byte(loss: float, n_tokens: int, n_bytes: int) -> float:
    """Loss in nats per token -> bits per byte of source text: comparable across tokenizers."""
    return loss * n_tokens / (math.log(2) * n_bytes)


@dataclass
class EvalConfig:
    out_dir: str = opt("out", "folder holding ckpt.pt (or a path to a checkpoint file)")
    split: str = opt("val", "'train' or 'val'")
    dataset: str = opt("", "dataset to evaluate on; default: the one the checkpoint was trained on")
    batch_size: int = opt(32, "windows per forward pass")
    device: str = opt("auto", "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    dtype: str = opt("float32", "'float32' or 'bfloat16'")


def main(argv: list[str]) -> int:
    cfg = parse_cli(argv, {"eval": EvalConfig}, "python -m minigpt.evaluate", __doc__.splitlines()[0]).eval
    if cfg.split not in ("train", "val"):
        raise UserError(f"--split must be 'train' or 'val', got '{cfg.split}'")
    device = runtime.pick_device(cfg.device)
    dtype = runtime.pick_dtype(cfg.dtype, device)
    model, tok, state = checkpoint.load_model(cfg.out_dir, device)
    dataset = TokenDataset(resolve_dataset(cfg.dataset or state.get("dataset", "")))
    if dataset.meta["tokenizer"] != state["tokenizer"]:
        raise UserError(f"dataset {dataset.path} uses a different tokenizer than the checkpoint; evaluate on "
                        f"data prepared with the checkpoint's tokenizer")
    data = dataset.splits[cfg.split]
    if len(data) < 2:
        raise UserError(f"the {cfg.split} split of {dataset.path} has fewer than 2 tokens")
    loss, n = evaluate_split(model, data, cfg.batch_size, device, runtime.autocast(device, dtype))
    n_bytes = dataset.meta[f"{cfg.split}_bytes"]
    print(f"{cfg.split} split of {dataset.path}: {n:,} tokens")
    print(f"loss {loss:.4f}  perplexity {math.exp(loss):.3f}  bits per byte {bits_per_byte(loss, n, n_bytes):.4f}")
    return 0


if __name__ == "__main__":
    run_cli(main)
