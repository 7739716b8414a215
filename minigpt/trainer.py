"""The training loop, as a plain function: batch, forward, loss, backward, clip, step; then eval, log, save.

`train(cfg)` sets a run up (device, data, model, optimizer, resume state, distributed wrapping) and
then runs `max_iters` optimizer steps. Evaluation happens before the step of every iteration that is a
multiple of `eval_interval` (and at the end), and is followed by a checkpoint. A checkpoint records
whether the evaluation of its iteration already ran, so a resumed run replays exactly the same
stream of batches, dropout masks and logged losses as an uninterrupted one.
"""

from __future__ import annotations

import math
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm import tqdm

from . import checkpoint, distributed, flops, params, runtime
from .config import Config
from .data import Batches, TokenDataset, resolve_dataset
from .errors import UserError
from .model import GPT, GPTConfig, lm_loss
from .optim import lr_at, make_optimizer
from .tracking import Tracker, plot_losses

SHAPE_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "bias")


@torch.no_grad()
def estimate_loss(model, batches: Batches, eval_iters: int, rows: slice, device, ctx) -> dict[str, float]:
    """Mean loss over `eval_iters` random batches of each split (fast, noisy; see minigpt.evaluate for exact)."""
    model.eval()
    out = {}
    for split in ("train", "val"):
        losses = torch.zeros(eval_iters)
        for k in range(eval_iters):
            x, y = batches.get(split)
            with ctx:
                losses[k] = lm_loss(model(x[rows].to(device)), y[rows].to(device)).item()
        out[split] = losses.mean().item()
    model.train()
    return out


def model_config_for(cfg: Config, vocab_size: int) -> GPTConfig:
    """The model shape for a fresh run: the configured one, with the vocabulary taken from the dataset."""
    m = cfg.model
    if "vocab_size" in cfg.explicit:
        if m.vocab_size < vocab_size:
            raise UserError(f"vocab_size={m.vocab_size} is smaller than the dataset's tokenizer vocabulary "
                            f"({vocab_size}); drop --vocab_size or raise it")
        return m
    return GPTConfig(**{**m.__dict__, "vocab_size": vocab_size})


def _check_settings(t) -> None:
    for name in ("batch_size", "gradient_accumulation_steps", "eval_interval", "eval_iters", "log_interval"):
        if getattr(t, name) < 1:
            raise UserError(f"{name} must be a positive integer, got {getattr(t, name)}")
    if t.max_iters < 0 or t.keep_last < 0:
        raise UserError("max_iters and keep_last must be >= 0")
    if t.on_nan not in ("stop", "skip"):
        raise UserError(f"on_nan must be 'stop' or 'skip', got '{t.on_nan}'")


def _check_out_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write_test"
        probe.write_bytes(b"")
        probe.unlink()
        for stale in out_dir.glob(".*.tmp"):  # left by a run killed while it was saving
            stale.unlink()
    except OSError as e:
        raise UserError(f"cannot write to out_dir {out_dir} ({e.strerror}); choose a writable --out_dir") from None


def _initial_state(cfg: Config, dataset: TokenDataset, out_dir: Path):
    """(model config, resume state or None) for the run's init_from."""
    t = cfg.train
    resume = t.init_from == "resume" or (t.resume and (out_dir / "ckpt.pt").is_file())
    if resume:
        state = checkpoint.load(out_dir)
        mcfg = GPTConfig(**state["model_config"])
        clash = [k for k in SHAPE_KEYS if k in cfg.explicit and getattr(cfg.model, k) != getattr(mcfg, k)]
        if clash:
            raise UserError(f"the checkpoint in {out_dir} has {', '.join(f'{k}={getattr(mcfg, k)}' for k in clash)}, "
                            f"which differs from this run's settings; drop those settings to resume it, "
                            f"or train into another --out_dir")
        if state["tokenizer"] != dataset.meta["tokenizer"]:
            raise UserError(f"the checkpoint in {out_dir} was trained with a different tokenizer than dataset "
                            f"{dataset.path}; resume on the dataset it was trained on")
        return mcfg, state
    if (out_dir / "ckpt.pt").is_file() and not t.overwrite:
        raise UserError(f"{out_dir} already holds a checkpoint; continue it with --resume, replace it with "
                        f"--overwrite, or choose another --out_dir")
    if t.init_from == "scratch":
        return model_config_for(cfg, dataset.vocab_size), None
    return _pretrained_config(cfg, dataset), None  # GPT-2 weights to fine-tune (loaded once the model exists)


def _pretrained_config(cfg: Config, dataset: TokenDataset) -> GPTConfig:
    """The model config for fine-tuning GPT-2 weights: theirs, with this run's dropout and (shorter) block_size."""
    from . import hf

    t = cfg.train
    mcfg = hf.read_config(hf.locate(t.init_from))  # an unknown init_from is refused here
    spec = dataset.meta["tokenizer"]
    if spec.get("kind") != "tiktoken" or spec.get("name") != "gpt2":
        raise UserError(f"--init_from={t.init_from} fine-tunes GPT-2, whose tokenizer is gpt2, but dataset "
                        f"{dataset.path} was prepared with {spec.get('name', spec.get('kind'))}; prepare it with "
                        f"`python data/prepare.py SOURCE --tokenizer gpt2`")
    clash = [k for k in SHAPE_KEYS if k in cfg.explicit and k != "block_size" and getattr(cfg.model, k) != getattr(mcfg, k)]
    if clash:
        raise UserError(f"{t.init_from} has {', '.join(f'{k}={getattr(mcfg, k)}' for k in clash)}, which differs "
                        f"from this run's settings; drop those settings to fine-tune it")
    block_size = cfg.model.block_size if "block_size" in cfg.explicit else mcfg.block_size
    dropout = cfg.model.dropout if "dropout" in cfg.explicit else 0.0
    return GPTConfig(**{**mcfg.__dict__, "block_size": block_size, "dropout": dropout})


@contextmanager
def _stop_signals():
    """SIGINT / SIGTERM ask the loop to finish its step, save and exit; the caught signal is in the list."""
    caught: list[int] = []
    handler = lambda signum, frame: caught.append(signum)  # noqa: E731
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def train(cfg: Config) -> dict:
    """Train a model as `cfg` says (single process, or one rank of a torchrun job); returns final losses."""
    world, device_name = distributed.init(cfg.runtime.device)
    try:
        result = _train(cfg, world, runtime.pick_device(device_name))
        distributed.barrier(world)  # rank 0 may still be writing: nobody tears the group down under it
        return result
    finally:
        distributed.shutdown(world)


def _train(cfg: Config, world: distributed.World, device: torch.device) -> dict:
    t = cfg.train
    _check_settings(t)
    if t.gradient_accumulation_steps % world.world_size:
        raise UserError(f"gradient_accumulation_steps ({t.gradient_accumulation_steps}) must be divisible by the "
                        f"number of processes ({world.world_size})")
    micro_steps = t.gradient_accumulation_steps // world.world_size  # per rank
    rc = cfg.runtime
    runtime.setup_threads(rc.threads)
    runtime.setup_cuda_speed(device)
    runtime.setup_cpu_allocator(device)
    runtime.seed_everything(rc.seed)  # the same initial weights on every rank (FSDP shards them as they are)
    main = world.is_main
    say = tqdm.write if main else (lambda *a, **k: None)  # printing that keeps the progress bar intact

    dataset = TokenDataset(resolve_dataset(t.dataset))
    out_dir = Path(t.out_dir)
    mcfg, state = _initial_state(cfg, dataset, out_dir)
    dtype = runtime.pick_dtype(rc.dtype, device, mcfg.n_embd)
    ctx = runtime.autocast(device, dtype)
    dataset.check_block_size(mcfg.block_size)
    if main:
        _check_out_dir(out_dir)

    model = GPT(mcfg)
    if state is None and t.init_from not in ("scratch", "resume"):  # fine-tuning: start from GPT-2's weights
        model.load_state_dict(checkpoint.load_model(t.init_from, config=mcfg).model.state_dict())
        say(f"initialised from GPT-2 weights {t.init_from}")
    model = model.to(device)
    say(f"model: {mcfg}")
    say(params.describe(model))
    flops_per_token = flops.model_flops_per_token(model)  # 6N + 12 L C T, before any sharding
    model = distributed.wrap(model, world, t.fsdp, device)  # FSDP shards in place; DDP returns a wrapper
    plain = checkpoint.unwrap(model)  # for eval and checkpoints: no DDP / compile wrappers
    runtime.seed_everything(rc.seed + world.rank)  # but different dropout masks on each rank
    optimizer = make_optimizer(plain, t.learning_rate, t.weight_decay, (t.beta1, t.beta2), device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)  # fp16 only: bf16 has fp32's range
    # Every rank draws the same global batch and trains on its own rows of it: N ranks x batch B
    # see exactly what one process with batch N*B sees.
    batches = Batches(dataset, mcfg.block_size, t.batch_size * world.world_size, rc.seed, align_to_doc=t.align_to_doc)
    rows = slice(world.rank * t.batch_size, (world.rank + 1) * t.batch_size)

    start_iter, best_val, eval_done = 0, math.inf, False
    if state is not None:
        distributed.load_full_state(plain, optimizer, state["model"], state["optimizer"], t.fsdp)
        scaler.load_state_dict(state["scaler"])
        batches.load_state_dict(state["data"])
        runtime.set_rng_state(state["rng"])
        start_iter, best_val, eval_done = state["iter_num"], state["best_val_loss"], state["eval_done"]
        say(f"resumed from {out_dir / 'ckpt.pt'} at iteration {start_iter} (best val loss {best_val:.4f})")
    compiled = runtime.pick_compile(rc.compile, device)
    train_model = torch.compile(model) if compiled else model

    tracker = None
    if main:
        wandb_cfg = {"project": t.wandb_project, "run_name": t.wandb_run_name} if t.wandb_log else None
        tracker = Tracker(out_dir, start_iter if state is not None else None, wandb_cfg, cfg.to_dict())
    tokens_per_iter = t.batch_size * t.gradient_accumulation_steps * mcfg.block_size
    peak, peak_note = flops.device_peak(device, dtype) if main else (None, "")
    say(f"MFU against: {peak_note}")
    # tokens/s counts every rank's tokens, so the peak is per device times the number of processes
    mfu_of = (lambda tps: flops.mfu(flops_per_token, tps, peak * world.world_size)) if peak else (lambda tps: None)
    say(f"training on {device} x {world.world_size} ({str(dtype).removeprefix('torch.')}"
        f"{', compiled' if compiled else ''}), {tokens_per_iter:,} "
        f"tokens per iteration, dataset {dataset.path} ({dataset.meta['train_tokens']:,} train tokens)")

    def save(it: int, done: bool, improved: bool) -> None:
        model_state, optim_state = distributed.full_state(plain, optimizer, t.fsdp)  # collective under FSDP
        if not main:
            return
        path = checkpoint.save(
            out_dir / "ckpt.pt", plain, dataset.tokenizer.spec(), model_state=model_state,
            optimizer=optim_state, scaler=scaler.state_dict(), data=batches.state_dict(), rng=runtime.rng_state(),
            iter_num=it, eval_done=done, best_val_loss=best_val, config=cfg.to_dict(), dataset=str(dataset.path),
        )
        if improved:
            checkpoint.link(path, out_dir / "best.pt")
        if t.keep_last:
            checkpoint.keep_last(path, it, t.keep_last)

    losses: dict[str, float] = {}
    stopped_by = None
    t0 = time.time()
    bar = tqdm(total=t.max_iters, initial=start_iter, desc="training", dynamic_ncols=True, disable=not main)
    tokens_seen, t_last = 0, time.time()
    with _stop_signals() as caught:
        for it in range(start_iter, t.max_iters + 1):
            if (it % t.eval_interval == 0 or it == t.max_iters) and not (it == start_iter and eval_done):
                losses = {k: distributed.mean(v, world, device)
                          for k, v in estimate_loss(plain, batches, t.eval_iters, rows, device, ctx).items()}
                improved = losses["val"] < best_val
                best_val = min(best_val, losses["val"])  # never replaced by a worse one
                say(f"step {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
                if tracker:
                    tracker.log({"iter": it, "train_loss": losses["train"], "val_loss": losses["val"]})
                if improved or t.always_save_checkpoint:
                    save(it, True, improved)
            if it == t.max_iters or t.eval_only:
                break

            # one optimizer step: accumulate gradients over micro-batches, all-reduce on the last only
            lr = lr_at(it, t.learning_rate, t.min_lr, t.warmup_iters, t.lr_decay_iters, t.decay_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = torch.zeros((), device=device)
            for micro in range(micro_steps):
                x, y = batches.get("train")
                x, y = x[rows].to(device, non_blocking=True), y[rows].to(device, non_blocking=True)
                with distributed.no_sync(model, micro == micro_steps - 1):
                    with ctx:
                        loss = lm_loss(train_model(x), y) / micro_steps
                    scaler.scale(loss).backward()
                loss_sum += loss.detach()
            if distributed.any_flag(not torch.isfinite(loss_sum).item(), world, device):
                if t.on_nan == "stop":
                    bar.close()
                    raise UserError(f"the loss became {loss_sum.item()} at iteration {it}; stopped, the last good "
                                    f"checkpoint in {out_dir} is untouched (lower learning_rate, or on_nan=skip)")
                say(f"warning: non-finite loss at iteration {it}; step skipped")
                optimizer.zero_grad(set_to_none=True)
                scaler.update(scaler.get_scale() / 2) if scaler.is_enabled() else None
                continue
            if t.grad_clip > 0:
                scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            bar.update(1)

            tokens_seen += tokens_per_iter
            if (it + 1) % t.log_interval == 0:
                lossf = distributed.mean(loss_sum, world, device)
                now = time.time()
                tps = tokens_seen / (now - t_last)
                tokens_seen, t_last = 0, now
                mfu = mfu_of(tps)
                bar.set_postfix(loss=f"{lossf:.4f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}",
                                **({"mfu": f"{mfu:.1%}"} if mfu is not None else {}))
                if tracker:
                    tracker.log({"iter": it + 1, "loss": lossf, "lr": lr, "tokens_per_s": tps,
                                 **({"mfu": mfu} if mfu is not None else {})})
            if distributed.any_flag(bool(caught), world, device):
                stopped_by = caught[0] if caught else signal.SIGTERM
                save(it + 1, False, False)
                break
    bar.close()
    if tracker:
        tracker.close()
    elapsed = time.time() - t0
    if stopped_by is not None:
        name = signal.Signals(stopped_by).name
        say(f"stopped by {name} after iteration {it + 1}: checkpoint saved to {out_dir / 'ckpt.pt'}; "
            f"continue with `python train.py ... --resume`")
        raise SystemExit(128 + stopped_by)  # 130 for SIGINT, 143 for SIGTERM
    if main and t.plot and not t.eval_only:
        plot_losses(out_dir / "metrics.jsonl", out_dir / "loss.png")
    n_trained = max(0, t.max_iters - start_iter)
    tps = n_trained * tokens_per_iter / max(elapsed, 1e-9)
    mfu = mfu_of(tps)
    say(f"done: {n_trained} iterations in {elapsed:.1f}s ({tps:,.0f} tokens/s"
        f"{f', MFU {mfu:.1%} with evals' if mfu is not None else ''}); checkpoint in {out_dir}")
    return {"losses": losses, "best_val_loss": best_val, "elapsed": elapsed, "out_dir": str(out_dir)}
