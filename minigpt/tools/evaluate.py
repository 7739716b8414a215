"""Exact evaluation: loss, perplexity and bits per byte over a whole split, in non-overlapping windows.

    python -m minigpt evaluate --model=out [--split=val] [--dataset=NAME] [--device=auto --dtype=auto]

Every token of the split but the first is predicted once, from the tokens before it in its window.
Bits per byte divide the summed loss (in bits) by the bytes of text those predicted tokens spell: the
first token's bytes are left out, since nothing predicts it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from tqdm import tqdm

from .. import checkpoint
from ..config import MODEL_HELP, RuntimeConfig, opt, parse_cli
from ..data import TokenDataset, iter_windows, resolve_dataset
from ..errors import UserError, run_cli
from ..kernels import lm_loss
from ..model import GPT


@torch.no_grad()
def evaluate_split(model: GPT, data, batch_size: int = 32, device="cpu") -> tuple[float, int]:
    """(mean next-token loss, number of predicted tokens) over every position of `data`."""
    model.eval()
    total, count = 0.0, 0
    block = model.config.block_size
    n_windows = math.ceil((len(data) - 1) / block)
    with tqdm(total=n_windows, desc="evaluating", unit="window", disable=n_windows < 200) as bar:
        for x, y in iter_windows(data, block, batch_size):
            x, y = x.to(device), y.to(device)
            total += lm_loss(model(x), y).item() * y.numel()  # lm_loss is the mean over the batch's targets
            count += y.numel()
            bar.update(x.size(0))
    return total / count, count


def token_bytes(tok, token: int) -> int:
    """Bytes of source text one token stands for; end-of-text stands for none (it separates documents)."""
    if token == tok.eot_id:
        return 0
    enc = getattr(tok, "enc", None)  # byte-level BPE: a token may hold part of a character's bytes
    if enc is not None:
        return len(enc.decode_single_token_bytes(token))
    return len(tok.decode([token]).encode("utf-8"))


def bits_per_byte(loss: float, n_tokens: int, n_bytes: int) -> float:
    """Loss in nats per token over `n_tokens` predicted tokens spelling `n_bytes` bytes -> bits per byte
    of source text: comparable across tokenizers."""
    return loss * n_tokens / (math.log(2) * n_bytes)


@dataclass
class EvalConfig:
    model: str = opt("out", MODEL_HELP)
    split: str = opt("val", "the split to evaluate", choices=("train", "val"))
    dataset: str = opt("", "dataset to evaluate on; default: the one the checkpoint was trained on")
    batch_size: int = opt(32, "windows per forward pass", range="[1, inf)")
    quantize: str = opt("none", "'int8': evaluate with weight-only int8 Linears (what quantizing costs), or 'none'",
                        choices=("none", "int8"))

    RENAMED: ClassVar[dict[str, str]] = {"out_dir": "model", "init_from": "model", "source": "model"}


@dataclass(frozen=True)
class Result:
    dataset: str
    split: str
    loss: float  # mean nats per predicted token
    tokens: int  # predicted tokens (the split's tokens but the first)
    bytes: int  # bytes of text the predicted tokens spell
    bits_per_byte: float


def evaluate(cfg: EvalConfig, rc: RuntimeConfig) -> Result:
    loaded, rt = checkpoint.load_for_inference(cfg.model, rc, cfg.quantize)
    trained_on = (loaded.state or {}).get("dataset", "")
    if not (cfg.dataset or trained_on):
        raise UserError(f"{loaded.description} does not name the dataset it was trained on; pass --dataset")
    dataset = TokenDataset(resolve_dataset(cfg.dataset or trained_on))
    spec = loaded.state["tokenizer"] if loaded.state else loaded.tokenizer.spec()
    if dataset.meta["tokenizer"] != spec:
        raise UserError(f"dataset {dataset.path} uses a different tokenizer than {loaded.description}; evaluate on "
                        f"data prepared with the model's tokenizer")
    data = dataset.splits[cfg.split]
    if len(data) < 2:
        raise UserError(f"the {cfg.split} split of {dataset.path} has fewer than 2 tokens")
    model = torch.compile(loaded.model, dynamic=True) if rt.compile else loaded.model  # the tail window is shorter
    loss, n = evaluate_split(model, data, cfg.batch_size, rt.device)
    n_bytes = dataset.meta[f"{cfg.split}_bytes"] - token_bytes(loaded.tokenizer, int(data[0]))
    return Result(str(dataset.path), cfg.split, loss, n, n_bytes, bits_per_byte(loss, n, n_bytes))


def main(argv: list[str]) -> int:
    cfg = parse_cli(argv, {"eval": EvalConfig, "runtime": RuntimeConfig}, "python -m minigpt evaluate",
                    __doc__.splitlines()[0])
    r = evaluate(cfg.eval, cfg.runtime)
    print(f"{r.split} split of {r.dataset}: {r.tokens:,} tokens predicted ({r.bytes:,} bytes of text)")
    print(f"loss {r.loss:.4f}  perplexity {math.exp(r.loss):.3f}  bits per byte {r.bits_per_byte:.4f}")
    return 0


if __name__ == "__main__":
    run_cli(main)
