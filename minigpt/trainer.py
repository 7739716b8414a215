"""The training loop, as a plain function: batch, forward, loss, backward, clip, step; eval, log, save."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from . import checkpoint, params, runtime
from .config import Config
from .data import Batches, TokenDataset, resolve_dataset
from .errors import UserError
from .model import GPT, GPTConfig, lm_loss
from .optim import lr_at, make_optimizer


@torch.no_grad()
def estimate_loss(model, batches: Batches, eval_iters: int, device, ctx) -> dict[str, float]:
    """Mean loss over `eval_iters` random batches of each split (fast, noisy; see minigpt.evaluate for exact)."""
    model.eval()
    out = {}
    for split in ("train", "val"):
        losses = torch.zeros(eval_iters)
        for k in range(eval_iters):
            x, y = batches.get(split)
            with ctx:
                losses[k] = lm_loss(model(x.to(device)), y.to(device)).item()
        out[split] = losses.mean().item()
    model.train()
    return out


def model_config_for(cfg: Config, vocab_size: int) -> GPTConfig:
    """The model shape for a run: the configured one, with the vocabulary taken from the dataset."""
    m = cfg.model
    if "vocab_size" in cfg.explicit:
        if m.vocab_size < vocab_size:
            raise UserError(f"vocab_size={m.vocab_size} is smaller than the dataset's tokenizer vocabulary "
                            f"({vocab_size}); drop --vocab_size or raise it")
        return m
    return GPTConfig(**{**m.__dict__, "vocab_size": vocab_size})


def train(cfg: Config) -> dict:
    """Train a model as `cfg` says; returns the final losses and timings."""
    t = cfg.train
    device = runtime.pick_device(t.device)
    dtype = runtime.pick_dtype(t.dtype, device)
    runtime.setup_threads(t.threads)
    runtime.setup_cuda_speed(device)
    runtime.seed_everything(t.seed)
    ctx = runtime.autocast(device, dtype)
    for name in ("batch_size", "gradient_accumulation_steps", "max_iters", "eval_interval", "eval_iters", "log_interval"):
        if getattr(t, name) < (0 if name == "max_iters" else 1):
            raise UserError(f"{name} must be a positive integer, got {getattr(t, name)}")

    dataset = TokenDataset(resolve_dataset(t.dataset))
    out_dir = Path(t.out_dir)
    start_iter, best_val = 0, math.inf
    if t.init_from == "resume":
        state = checkpoint.load(out_dir)
        mcfg = GPTConfig(**state["model_config"])
    elif t.init_from == "scratch":
        state = None
        mcfg = model_config_for(cfg, dataset.vocab_size)
    else:
        raise UserError(f"unknown init_from '{t.init_from}'; use 'scratch' or 'resume'")
    dataset.check_block_size(mcfg.block_size)

    model = GPT(mcfg).to(device)
    print(f"model: {mcfg}")
    print(params.describe(model))
    optimizer = make_optimizer(model, t.learning_rate, t.weight_decay, (t.beta1, t.beta2), device)
    batches = Batches(dataset, mcfg.block_size, t.batch_size, t.seed)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        batches.load_state_dict(state["data"])
        start_iter, best_val = state["iter_num"], state["best_val_loss"]
        print(f"resumed from {out_dir / 'ckpt.pt'} at iteration {start_iter}")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create out_dir {out_dir} ({e.strerror}); choose a writable --out_dir") from None
    train_model = torch.compile(model) if t.compile else model

    tokens_per_iter = t.batch_size * t.gradient_accumulation_steps * mcfg.block_size
    print(f"training on {device} ({str(dtype).removeprefix('torch.')}), {tokens_per_iter:,} tokens per iteration, "
          f"dataset {dataset.path} ({dataset.meta['train_tokens']:,} train tokens)")

    def save(it: int, name: str = "ckpt.pt") -> Path:
        return checkpoint.save(
            out_dir / name, model, dataset.tokenizer.spec(),
            optimizer=optimizer.state_dict(), data=batches.state_dict(), iter_num=it,
            best_val_loss=best_val, config=cfg.to_dict(), dataset=str(dataset.path),
        )

    metrics = open(out_dir / "metrics.jsonl", "a")
    losses = {}
    t0 = time.time()
    bar = tqdm(range(start_iter, t.max_iters + 1), initial=start_iter, total=t.max_iters + 1, desc="training",
               dynamic_ncols=True)
    tokens_seen, t_last = 0, time.time()
    for it in bar:
        if it % t.eval_interval == 0 or it == t.max_iters:
            losses = estimate_loss(model, batches, t.eval_iters, device, ctx)
            improved = losses["val"] < best_val
            best_val = min(best_val, losses["val"])
            bar.write(f"step {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
            metrics.write(json.dumps({"iter": it, "train_loss": losses["train"], "val_loss": losses["val"]}) + "\n")
            metrics.flush()
            if it > start_iter or it == t.max_iters:
                if improved:
                    save(it, "best.pt")
                if improved or t.always_save_checkpoint:
                    save(it)
        if it == t.max_iters or t.eval_only:
            break

        lr = lr_at(it, t.learning_rate, t.min_lr, t.warmup_iters, t.lr_decay_iters, t.decay_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for _ in range(t.gradient_accumulation_steps):
            x, y = batches.get("train")
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with ctx:
                loss = lm_loss(train_model(x), y) / t.gradient_accumulation_steps
            loss.backward()
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        tokens_seen += tokens_per_iter
        if (it + 1) % t.log_interval == 0:
            lossf = loss.item() * t.gradient_accumulation_steps
            now = time.time()
            tps = tokens_seen / (now - t_last)
            tokens_seen, t_last = 0, now
            bar.set_postfix(loss=f"{lossf:.4f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}")
            metrics.write(json.dumps({"iter": it + 1, "loss": lossf, "lr": lr, "tokens_per_s": tps}) + "\n")
    bar.close()
    metrics.close()
    elapsed = time.time() - t0
    n_trained = t.max_iters - start_iter
    print(f"done: {n_trained} iterations in {elapsed:.1f}s "
          f"({n_trained * tokens_per_iter / max(elapsed, 1e-9):,.0f} tokens/s); checkpoint in {out_dir}")
    return {"losses": losses, "best_val_loss": best_val, "elapsed": elapsed, "out_dir": str(out_dir)}
