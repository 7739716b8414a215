"""The training loop, as a plain function: batch, forward, loss, backward, clip, step; then eval, log, save.

`train(cfg)` joins torchrun's process group (if any), builds a `Run` with `setup` (data, model,
optimizer, resume state, distributed wrapping) and runs `max_iters` optimizer steps. Evaluation
happens before the step of every iteration that is a multiple of `eval_interval` (and at the end),
followed by a checkpoint. The checkpoint records whether its iteration's evaluation already ran, so a
resumed run replays exactly the batches, dropout masks and logged losses of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from . import checkpoint, distributed, runtime, settings
from . import flops, params
from .config import Config, TrainConfig, model_config, parse_cli, train_sections
from .data import Batches, TokenDataset, resolve_dataset
from .errors import UserError
from .kernels import compiled_lm_loss, lm_loss
from .model import GPT, GPTConfig
from .optim import clip_and_step, lr_at, lr_at_fraction, make_optimizer, set_lr
from .tracking import Tracker, plot_losses


@dataclass
class TrainState:
    """Where the loop is: the next iteration, the best val loss so far, whether this iteration's eval ran."""

    iter_num: int = 0
    best_val_loss: float = math.inf
    eval_done: bool = False
    wandb_id: str = ""  # so a resumed run logs into the same Weights & Biases run
    # a run with a time budget (--max_minutes): seconds of it spent by the processes so far, spent when the
    # first step began (-1: not yet), and the longest evaluation + checkpoint (what the budget keeps for the last)
    budget_spent: float = 0.0
    budget_first: float = -1.0
    budget_reserve: float = 0.0

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for k in ("iter_num", "best_val_loss", "eval_done"):
            setattr(self, k, state[k])
        self.wandb_id = state.get("wandb_id", "")
        self.budget_spent = state.get("budget_spent", 0.0)
        self.budget_first = state.get("budget_first", -1.0)
        self.budget_reserve = state.get("budget_reserve", 0.0)


@dataclass
class Run:
    """Everything one training run holds, built once by `setup`."""

    cfg: Config  # all settings, saved in checkpoints
    t: TrainConfig
    rt: runtime.Runtime
    world: distributed.World
    dataset: TokenDataset
    model: GPT  # the plain module: evaluation and checkpoints
    step_model: nn.Module  # what a training step calls: the model, wrapped by DDP/FSDP and maybe compiled
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    batches: Batches
    state: TrainState
    out_dir: Path
    micro_steps: int  # micro-batches per optimizer step on each rank
    rows: slice  # this rank's rows of every global batch
    flops_per_token: int  # 6N + 12 L C T, counted before any sharding
    resumed: bool = False

    def say(self, *msg) -> None:
        """Print on rank 0 only, without breaking the progress bar."""
        if self.world.is_main:
            tqdm.write(" ".join(map(str, msg)))

    def save(self, improved: bool) -> None:
        path = checkpoint.save_training(
            self.out_dir / "ckpt.pt", model=self.model, optimizer=self.optimizer, scaler=self.scaler,
            batches=self.batches, train_state=self.state, world=self.world, fsdp=self.t.fsdp,
            tokenizer_spec=self.dataset.tokenizer.spec(), config=self.cfg.to_dict(),
            dataset=str(self.dataset.path.resolve()), dataset_id=dataset_id(self.dataset),
            runtime={"device": self.rt.device.type, "dtype": str(self.rt.dtype).removeprefix("torch.")})
        if path is None:  # not rank 0
            return
        if improved:
            checkpoint.link(path, self.out_dir / "best.pt")
        if self.t.keep_last:
            checkpoint.keep_last(path, self.state.iter_num, self.t.keep_last)


# ---- setting a run up ------------------------------------------------------------------------------

def check_settings(t: TrainConfig, world: distributed.World) -> int:
    """Refuse settings that cannot work together; returns the micro-batches per optimizer step on each rank.
    Each setting's own choices and range are declared with it (config.TrainConfig) and checked there."""
    try:
        settings.check(t)  # the parser did; a TrainConfig built in code is checked here
    except ValueError as e:
        raise UserError(f"invalid train settings: {e}") from None
    if t.lr_schedule == "wsd" and not t.cooldown_iters <= t.lr_decay_iters - t.warmup_iters:
        raise UserError(f"cooldown_iters ({t.cooldown_iters}) must fit between warmup_iters ({t.warmup_iters}) and "
                        f"lr_decay_iters ({t.lr_decay_iters})")
    if t.max_minutes and t.warmup_frac + t.cooldown_frac > 1:
        raise UserError(f"warmup_frac ({t.warmup_frac}) and cooldown_frac ({t.cooldown_frac}) must add up to at most 1")
    if t.optimizer == "muon" and t.fsdp:
        raise UserError("--optimizer=muon orthogonalises whole matrices, which FSDP shards; train with DDP "
                        "(--fsdp=false) or with --optimizer=adamw")
    if t.model == "resume":
        raise UserError("--model=resume: continue out_dir's checkpoint with --resume; --model names weights to "
                        "start a fresh run from")
    if t.fsdp and not world.distributed:
        raise UserError("--fsdp=true needs several processes; launch with torchrun --nproc_per_node=N")
    n = world.world_size
    if t.gradient_accumulation_steps < n:
        return 1  # each rank runs one micro-batch: the step is n / accumulation times larger (said at start)
    if t.gradient_accumulation_steps % n:
        raise UserError(f"gradient_accumulation_steps ({t.gradient_accumulation_steps}) must be divisible by the "
                        f"number of processes ({n}); use a multiple of {n}")
    return t.gradient_accumulation_steps // n


def check_out_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write_test"
        probe.write_bytes(b"")
        probe.unlink()
        for stale in stale_temporaries(out_dir):
            stale.unlink()
    except OSError as e:
        raise UserError(f"cannot write to out_dir {out_dir} ({e.strerror}); choose a writable --out_dir") from None


# Settings that say what this invocation does, not how the run trains: never taken from a checkpoint.
INVOCATION = {"out_dir", "dataset", "model", "resume", "overwrite", "eval_only"}


def continued_settings(cfg: Config, state: dict, out_dir: Path, world: distributed.World) -> tuple[TrainConfig, int]:
    """Resuming: every train setting not given (command line, file) is the checkpoint's, not the default,
    so `--resume` alone continues the run as it was; a given one takes effect (the model's, by
    config.model_config). The seed cannot change: the data stream and every RNG continue from the saved
    states, and the evaluation windows are drawn from the seed. Returns the settings and micro-steps."""
    saved = state.get("config", {})
    train = {k: v for k, v in saved.get("train", {}).items()
             if k in TrainConfig.__dataclass_fields__ and k not in cfg.explicit and k not in INVOCATION}
    cfg.sections["train"] = dataclasses.replace(cfg.train, **train)
    seed = saved.get("runtime", {}).get("seed", cfg.runtime.seed)
    if "seed" in cfg.explicit and cfg.runtime.seed != seed:
        raise UserError(f"the checkpoint in {out_dir} was trained with seed={seed}, and a resumed run continues its "
                        f"random streams; drop --seed={cfg.runtime.seed} to resume it, or train into another --out_dir")
    cfg.sections["runtime"] = dataclasses.replace(cfg.runtime, seed=seed)
    if not cfg.train.eval_only:
        checkpoint.check_resumable(state, out_dir / "ckpt.pt")
    return cfg.train, check_settings(cfg.train, world)


def changed_settings(saved: dict, now: dict) -> str:
    """'name old -> new, ...' for the settings of `now` that differ from the checkpoint's `saved` config."""
    return ", ".join(f"{k} {saved[sec][k]!r} -> {v!r}" for sec, values in now.items() if sec in saved
                     for k, v in values.items()
                     if k in saved[sec] and k not in INVOCATION and sec != "runtime" and saved[sec][k] != v)


def stale_temporaries(out_dir: Path) -> list[Path]:
    """What a run killed while saving leaves in out_dir: the atomic writer's `.NAME.<random>.tmp` of the files
    a run writes there (ckpt.pt, loss.png) and checkpoint.link's `.NAME.link`. Nothing else: out_dir may hold
    the user's own hidden files."""
    found = [f for name in ("ckpt.pt", "loss.png") for f in out_dir.glob(f".{name}.*.tmp")]
    return found + [f for f in out_dir.glob(".*.pt.link") if f.name[1:-5] == "best.pt"
                    or (f.name.startswith(".ckpt_") and f.name[6:-8].isdigit())]


def memory_needed(mcfg: GPTConfig, t: TrainConfig, shards: int = 1) -> tuple[int, int]:
    """(bytes, parameters): a lower bound on what training `mcfg` holds at once: fp32 weights, gradients
    and AdamW's two moments (16 bytes a parameter, split over `shards` under FSDP), and the activations the
    backward pass keeps, at least 16 values of 2 bytes per token, layer and channel (qkv, the attention
    output, the MLP's 4C hidden layer before and after GELU) for one micro-batch; the logits not counted."""
    with torch.device("meta"):  # shapes only: nothing is allocated
        n = sum(p.numel() for p in GPT(mcfg).parameters())  # parameters() lists the tied head once
    activations = t.batch_size * mcfg.block_size * mcfg.n_layer * mcfg.n_embd * 16 * 2
    return 16 * n // shards + activations, n


def check_memory(mcfg: GPTConfig, t: TrainConfig, device_name: str, world: distributed.World) -> None:
    """Refuse, before allocating anything, a model or context that cannot fit this machine's memory (RAM,
    or the GPU's), in one line saying how much it needs."""
    need, n = memory_needed(mcfg, t, world.world_size if t.fsdp else 1)
    cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if cuda:
        have, where = torch.cuda.get_device_properties(torch.device(device_name if device_name != "auto" else "cuda")
                                                       ).total_memory, "GPU memory"
    else:
        try:
            have, where = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "RAM"
        except (ValueError, OSError, AttributeError):  # not a POSIX system: nothing to compare with
            return
    if need > have:
        raise UserError(f"this model ({n:,} parameters, block_size={mcfg.block_size}, batch_size={t.batch_size}) "
                        f"needs at least {need / 2**30:,.1f} GiB to train (weights, gradients, AdamW state and "
                        f"activations) and this machine has {have / 2**30:,.1f} GiB of {where}; choose a smaller "
                        f"model, block_size or batch_size")


def dataset_id(dataset: TokenDataset) -> dict:
    """What tells one prepared dataset from another with the same tokenizer."""
    splits = dataset.meta.get("splits", {})
    return {"source": dataset.meta.get("source"),
            "shards": [shard["sha256"] for split in sorted(splits) for shard in splits[split]["shards"]]}


def initial_state(t: TrainConfig, dataset: TokenDataset, out_dir: Path) -> dict | None:
    """The checkpoint to continue (--resume, or --eval_only), or None for a fresh run."""
    ckpt = out_dir / "ckpt.pt"
    if (t.resume or t.eval_only) and ckpt.is_file():
        state = checkpoint.load(ckpt)
        if state["tokenizer"] != dataset.meta["tokenizer"]:
            raise UserError(f"the checkpoint in {out_dir} was trained with a different tokenizer than dataset "
                            f"{dataset.path}; resume on the dataset it was trained on")
        return state
    if t.eval_only and not t.model:
        raise UserError(f"--eval_only evaluates a trained model, and {out_dir} holds no checkpoint; point --out_dir "
                        f"at a training run, or pass --model=gpt2 (or another model) to evaluate its weights")
    if ckpt.is_file() and not t.overwrite and not t.eval_only:
        raise UserError(f"{out_dir} already holds a checkpoint; continue it with --resume, replace it with "
                        f"--overwrite, or choose another --out_dir")
    return None


def build_model(cfg: Config, dataset: TokenDataset, state: dict | None) -> GPT:
    """The run's model: a checkpoint's shape (resume), pretrained weights (fine-tune) or fresh weights."""
    t = cfg.train
    if state is not None:
        mcfg = model_config(cfg, vocab_size=dataset.vocab_size, resumed=GPTConfig(**state["model_config"]))
        return GPT(mcfg)  # its weights are loaded with the rest of the state
    if not t.model:
        return GPT(model_config(cfg, vocab_size=dataset.vocab_size))
    header = checkpoint.read_header(t.model)  # GPT-2 name or folder, or a checkpoint; unknown ones refused
    spec = dataset.meta["tokenizer"]
    if header.tokenizer != spec:
        def name(s: dict) -> str:
            return s.get("name", s.get("kind"))

        raise UserError(f"--model={t.model} was trained with the {name(header.tokenizer)} tokenizer, but "
                        f"dataset {dataset.path} was prepared with {name(spec)}; prepare it with "
                        f"`python data/prepare.py SOURCE --tokenizer={name(header.tokenizer)}`")
    mcfg = model_config(cfg, vocab_size=dataset.vocab_size, pretrained=header.config, pretrained_name=header.description)
    return checkpoint.load_model(t.model, config=mcfg).model.train()


def run_runtime(cfg: Config, state: dict | None, n_embd: int, device_name: str,
                world: distributed.World) -> runtime.Runtime:
    """runtime.setup for a run, with one dtype for all of it: `dtype=auto` on a CPU is a timed choice, so a
    resumed run keeps the dtype its checkpoint trained in (same device type), and under torchrun every rank
    takes bf16 if any rank's probe chose it, rather than each its own."""
    rc, saved = cfg.runtime, (state or {}).get("runtime", {})
    if rc.dtype == "auto" and saved.get("device") == runtime.pick_device(device_name).type:
        rc = dataclasses.replace(rc, dtype=saved["dtype"])
    rt = runtime.setup(rc, n_embd, device=device_name)
    if rc.dtype == "auto" and rt.device.type == "cpu" and world.distributed:
        bf16 = distributed.any_flag(rt.dtype is torch.bfloat16, world, rt.device)
        rt = dataclasses.replace(rt, dtype=torch.bfloat16 if bf16 else torch.float32)
    return rt


def setup(cfg: Config, world: distributed.World, device_name: str) -> Run:
    """Everything before the first step: data, model, optimizer, resume state, wrapping, logging."""
    t = cfg.train
    micro_steps = check_settings(t, world)
    out_dir = Path(t.out_dir)
    if (t.resume or t.eval_only) and "dataset" not in cfg.explicit and (out_dir / "ckpt.pt").is_file():
        # the dataset it trained on, not the default one (the header alone: its tensors stay unread)
        if saved := checkpoint.load(out_dir / "ckpt.pt", mmap=True).get("dataset"):
            cfg.sections["train"] = t = dataclasses.replace(t, dataset=saved)
    dataset = TokenDataset(resolve_dataset(t.dataset))
    state = initial_state(t, dataset, out_dir)
    if t.resume and state is None and world.is_main:
        tqdm.write(f"--resume: no checkpoint in {out_dir} yet, starting a fresh run")
    if state is not None:
        t, micro_steps = continued_settings(cfg, state, out_dir, world)
    trained_with = (state or {}).get("config", {}).get("train", {}).get("optimizer", "adamw")
    if state is not None and trained_with != t.optimizer and not t.eval_only:  # evaluating needs no optimizer
        raise UserError(f"the checkpoint in {out_dir} was trained with --optimizer={trained_with}, whose state cannot "
                        f"carry over to --optimizer={t.optimizer}; resume with the same optimizer, or start a fresh run")
    if state is not None and state.get("dataset_id") not in (None, dataset_id(dataset)) and world.is_main:
        tqdm.write(f"note: the checkpoint was trained on {state.get('dataset')} and continues on {dataset.path}, "
                   f"a different dataset with the same tokenizer")

    runtime.seed_everything(cfg.runtime.seed)  # the same initial weights on every rank (FSDP shards them as they are)
    if not t.eval_only and (state is not None or not t.model):  # fine-tuning: build_model's check_fits
        check_memory(model_config(cfg, vocab_size=dataset.vocab_size,
                                resumed=GPTConfig(**state["model_config"]) if state is not None else None),
                   t, device_name, world)
    model = build_model(cfg, dataset, state)
    rt = run_runtime(cfg, state, model.config.n_embd, device_name, world)
    if world.is_main and not t.eval_only:
        check_out_dir(out_dir)
    model = model.to(rt.device)
    if world.is_main and not t.eval_only:
        tqdm.write(f"model: {model.config}")
        tqdm.write(params.describe(model))
    flops_per_token = flops.model_flops_per_token(model)
    step_model = distributed.wrap(model, world, t.fsdp, rt.device)  # FSDP shards `model` in place
    runtime.seed_everything(cfg.runtime.seed + world.rank)  # but different dropout masks on each rank
    optimizer = make_optimizer(model, t.learning_rate, t.weight_decay, (t.beta1, t.beta2), rt.device,
                               muon_lr=t.muon_lr if t.optimizer == "muon" else None, muon_momentum=t.muon_momentum,
                               muon_weight_decay=t.muon_weight_decay)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.dtype is torch.float16)  # bf16 has fp32's range
    # Every rank draws the same global batch and trains on its own rows of it: N ranks x batch B see
    # exactly what one process with batch N*B sees.
    batches = Batches(dataset, model.config.block_size, t.batch_size * world.world_size, cfg.runtime.seed,
                      align_to_doc=t.align_to_doc)
    rows = slice(world.rank * t.batch_size, (world.rank + 1) * t.batch_size)
    run = Run(cfg, t, rt, world, dataset, model, step_model, optimizer, scaler, batches, TrainState(), out_dir,
              micro_steps, rows, flops_per_token, resumed=state is not None)
    cfg.sections["model"] = model.config  # what runs is what checkpoints record
    if state is not None and t.eval_only:
        distributed.load_full_state(model, optimizer, state["model"], None, t.fsdp)  # the weights, nothing else
        run.state.load_state_dict({**TrainState().state_dict(), **state})
    elif state is not None:
        note = checkpoint.restore_training(state, model=model, optimizer=optimizer, scaler=scaler, batches=batches,
                                           train_state=run.state, world=world, fsdp=t.fsdp)
        run.say(f"resumed from {out_dir / 'ckpt.pt'} at iteration {run.state.iter_num} "
                f"(best val loss {run.state.best_val_loss:.4f})" + (f"; note: {note}" if note else ""))
        if changed := changed_settings({**state.get("config", {}), "model": state["model_config"]}, cfg.to_dict()):
            run.say(f"settings changed from the checkpoint's, in effect from this iteration on: {changed}")
    elif t.model:
        run.say(f"initialised from the weights of {t.model}")
    if rt.compile:
        run.step_model = torch.compile(step_model)
    return run


# ---- the loop ----------------------------------------------------------------------------------------

@torch.no_grad()
def estimate_loss(run: Run) -> dict[str, float]:
    """Mean loss over `eval_iters` batches of each split, averaged over ranks (fast, noisy; see
    `python -m minigpt evaluate` for the exact loss over a whole split)."""
    run.model.eval()
    out = {}
    for split in ("train", "val"):
        losses = []
        # the same windows at every evaluation, drawn apart from the training stream
        for x, y in run.batches.eval_batches(split, run.t.eval_iters):
            with run.rt.autocast():
                losses.append(lm_loss(run.model(x[run.rows].to(run.rt.device)), y[run.rows].to(run.rt.device)).item())
        out[split] = distributed.mean(sum(losses) / len(losses), run.world, run.rt.device)
    run.model.train()
    return out


def train_step(run: Run, lr: float) -> tuple[torch.Tensor, bool]:
    """One optimizer step: gradients accumulated over micro-batches (all-reduced on the last only), then
    clip and AdamW. Returns (mean loss, finite on every rank); a non-finite loss or gradient leaves the weights
    and the optimizer untouched. With fp16's GradScaler an overflowing gradient is the scaler's business (it
    skips the step and lowers the scale, as fp16 training expects now and then), not a failed step."""
    set_lr(run.optimizer, lr, lr / run.t.learning_rate if run.t.learning_rate else 0.0, run.t.muon_lr)
    loss_sum = torch.zeros((), device=run.rt.device)
    loss_fn = compiled_lm_loss if run.rt.compile else lm_loss  # a compiling run fuses its loss too
    for micro in range(run.micro_steps):
        x, y = run.batches.get("train")
        x, y = x[run.rows].to(run.rt.device, non_blocking=True), y[run.rows].to(run.rt.device, non_blocking=True)
        with distributed.no_sync(run.step_model, micro == run.micro_steps - 1):
            with run.rt.autocast():
                loss = loss_fn(run.step_model(x), y) / run.micro_steps
            run.scaler.scale(loss).backward()
        loss_sum += loss.detach()
    if distributed.any_flag(not torch.isfinite(loss_sum).item(), run.world, run.rt.device):
        run.optimizer.zero_grad(set_to_none=True)
        if run.scaler.is_enabled():
            run.scaler.update(run.scaler.get_scale() / 2)
        return loss_sum, False
    finite = clip_and_step(run.optimizer, run.scaler, run.model.parameters(), run.t.grad_clip)
    run.optimizer.zero_grad(set_to_none=True)
    return loss_sum, finite or run.scaler.is_enabled()


def train(cfg: Config, launched: float | None = None) -> dict:
    """Train a model as `cfg` says (single process, or one rank of a torchrun job); returns final losses.
    `launched`: when a time budget (--max_minutes) starts counting; train.py passes its process's start,
    so start-up counts; default: now."""
    launched = time.time() if launched is None else launched
    world, device_name = distributed.init(cfg.runtime.device)
    try:
        result = _train(setup(cfg, world, device_name), launched)
        distributed.barrier(world)  # rank 0 may still be writing: nobody tears the group down under it
    except BaseException:
        distributed.shutdown(world)
        raise
    distributed.shutdown(world)
    if world.distributed:
        distributed.exit_process()  # a torchrun worker whose work is done and saved
    return result


class Progress:
    """What a run shows and records as it goes: the progress bar, log lines, metrics.jsonl / wandb,
    tokens per second and MFU. Only rank 0 shows or writes anything."""

    def __init__(self, run: Run):
        t, st, world = run.t, run.state, run.world
        self.run, self.main = run, world.is_main
        self.tracker = Tracker(run.out_dir, st.iter_num if run.resumed else None, run.cfg.to_dict(),
                               wandb=(t.wandb_project, t.wandb_run_name) if t.wandb_log else None,
                               wandb_id=st.wandb_id) if self.main else None
        if self.tracker is not None:
            st.wandb_id = self.tracker.wandb_id
        self.tokens_per_iter = t.batch_size * run.micro_steps * world.world_size * run.model.config.block_size
        peak, note = flops.device_peak(run.rt.device, run.rt.dtype) if self.main and t.mfu else (None, "")
        self.peak = peak * world.world_size if peak else None  # tokens/s counts every rank's tokens
        if t.mfu:
            run.say(f"MFU against: {note}")
        if run.micro_steps * world.world_size > t.gradient_accumulation_steps:
            run.say(f"note: gradient_accumulation_steps={t.gradient_accumulation_steps} is below the "
                    f"{world.world_size} processes, so each runs one micro-batch: a step sees "
                    f"{self.tokens_per_iter:,} tokens")
        run.say(f"training on {run.rt.describe()} x {world.world_size}, {self.tokens_per_iter:,} tokens per "
                f"iteration, dataset {run.dataset.path} ({run.dataset.meta['train_tokens']:,} train tokens)")
        self.start_iter, self.t0 = st.iter_num, time.time()
        self.tokens, self.t_last = 0, time.time()
        self.bar = tqdm(total=None if t.max_minutes else t.max_iters, initial=st.iter_num, desc="training",
                        dynamic_ncols=True, disable=not self.main)

    def mfu(self, tokens_per_s: float) -> float | None:
        return flops.mfu(self.run.flops_per_token, tokens_per_s, self.peak) if self.peak else None

    def evaluated(self, it: int, losses: dict[str, float]) -> None:
        self.run.say(f"step {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        if self.tracker:
            self.tracker.log({"iter": it, "train_loss": losses["train"], "val_loss": losses["val"]})

    def stepped(self, loss: torch.Tensor, lr: float, budget: Budget | None = None) -> None:
        if budget is not None and budget.step_s:  # the bar's end: the steps that fit in what is left
            self.bar.total = self.run.state.iter_num + int(budget.left() / budget.step_s)
        self.bar.update(1)
        self.tokens += self.tokens_per_iter
        it = self.run.state.iter_num
        if it % self.run.t.log_interval:
            return
        lossf = distributed.mean(loss, self.run.world, self.run.rt.device)
        now = time.time()
        tps, self.tokens, self.t_last = self.tokens / (now - self.t_last), 0, now
        mfu = self.mfu(tps)
        self.bar.set_postfix(loss=f"{lossf:.4f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}",
                             **({"mfu": f"{mfu:.1%}"} if mfu is not None else {}))
        if self.tracker:
            self.tracker.log({"iter": it, "loss": lossf, "lr": lr, "tokens_per_s": tps,
                              **({"mfu": mfu} if mfu is not None else {})})

    def close(self) -> float:
        """Close the bar and the log; returns the seconds since the start."""
        self.bar.close()
        if self.tracker:
            self.tracker.close()
        return time.time() - self.t0

    def done(self, elapsed: float) -> None:
        run = self.run
        if self.main and run.t.plot:
            plot_losses(run.out_dir / "metrics.jsonl", run.out_dir / "loss.png")
        n = run.state.iter_num - self.start_iter
        tps = n * self.tokens_per_iter / max(elapsed, 1e-9)
        mfu = self.mfu(tps)
        run.say(f"done: {n} iterations in {elapsed:.1f}s ({tps:,.0f} tokens/s"
                f"{f', MFU {mfu:.1%} with evals' if mfu is not None else ''}); checkpoint in {run.out_dir}")


def process_start() -> float:
    """When this process started (seconds since the epoch), so a time budget counts Python's and torch's
    start-up too: its age from /proc on Linux; elsewhere now."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rpartition(")")[2].split()[19])  # field 22, starttime
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return time.time()
    age = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    return time.time() - age if 0 <= age < 3600 else time.time()  # an odd clock: count from now


class Budget:
    """A wall-clock budget (--max_minutes): when the last step starts, and where in the schedule a step ends.

    It counts from `launched` (start-up included) plus what earlier processes of a resumed run spent
    (saved as `TrainState.budget_spent`), so a resumed run gets the remainder. Training time runs from
    the run's first step to the budget less a reserve for the final evaluation and checkpoint (the
    longest one measured so far, the one at step 0 included); the schedule's fraction goes 0 -> 1 over it.
    A step starts only if its estimated time (an average of recent steps) still fits."""

    def __init__(self, t: TrainConfig, state: TrainState, launched: float):
        self.t, self.state = t, state
        self.total = t.max_minutes * 60
        self.origin = launched - state.budget_spent  # the budget's zero on this process's clock
        self.step_s: float | None = None
        self.t_step = 0.0

    def used(self) -> float:
        return time.time() - self.origin

    def left(self) -> float:
        """Seconds of training time left (the reserve for the last evaluation and checkpoint kept back)."""
        return self.total - self.state.budget_reserve - self.used()

    def over(self) -> bool:
        return self.left() < (self.step_s or 0.0)

    def evaluated(self, seconds: float) -> None:
        self.state.budget_reserve = max(self.state.budget_reserve, seconds)

    def lr(self) -> float:
        """The rate at the moment the coming step should end, as a fraction of the training time."""
        st, t = self.state, self.t
        self.t_step = time.time()
        if st.budget_first < 0:
            st.budget_first = self.used()
        span = self.total - st.budget_reserve - st.budget_first
        frac = (self.used() + (self.step_s or 0.0) - st.budget_first) / max(span, 1e-9)
        if not t.decay_lr:
            return t.learning_rate
        return lr_at_fraction(frac, t.learning_rate, t.min_lr, t.warmup_frac, t.cooldown_frac)

    def stepped(self) -> None:
        """Add the step that just ended to the running average of step times."""
        dt = time.time() - self.t_step
        self.step_s = dt if self.step_s is None else 0.7 * self.step_s + 0.3 * dt

    def check_room(self) -> None:
        """Refuse a budget that ends before the first step could."""
        if self.state.budget_first < 0:
            raise UserError(f"--max_minutes={self.t.max_minutes:g} leaves no time to train: start-up and the first "
                            f"evaluation took {self.used():.1f} s of {self.total:.1f} s; raise --max_minutes")


def _train(run: Run, launched: float) -> dict:
    t, st = run.t, run.state
    budget = Budget(t, st, launched) if t.max_minutes else None
    losses: dict[str, float] = {}
    if t.eval_only:
        losses = estimate_loss(run)
        run.say(f"step {st.iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        return {"losses": losses, "best_val_loss": st.best_val_loss, "elapsed": 0.0, "out_dir": str(run.out_dir)}
    progress = Progress(run)
    stopped_by = None
    with _stop_signals() as caught:
        while True:
            it = st.iter_num
            # every rank stops at the same step: their clocks differ
            last = distributed.any_flag(budget.over(), run.world, run.rt.device) if budget else it >= t.max_iters
            if (it % t.eval_interval == 0 or last) and not st.eval_done:
                t_eval = time.time()
                losses = estimate_loss(run)
                improved = losses["val"] < st.best_val_loss
                st.best_val_loss = min(st.best_val_loss, losses["val"])  # never replaced by a worse one
                st.eval_done = True
                progress.evaluated(it, losses)
                if improved or t.always_save_checkpoint:
                    if budget:
                        st.budget_spent = budget.used()
                    run.save(improved)
                if budget:
                    budget.evaluated(time.time() - t_eval)
                    last = last or distributed.any_flag(budget.over(), run.world, run.rt.device)
            if last:
                break

            if budget:  # one rate on every rank (it comes from each one's clock)
                lr = distributed.mean(budget.lr(), run.world, run.rt.device)
            else:
                lr = lr_at(it, t.learning_rate, t.min_lr, t.warmup_iters, t.lr_decay_iters, t.decay_lr,
                           t.lr_schedule, t.cooldown_iters)
            loss, finite = train_step(run, lr)
            if budget:
                budget.stepped()
            st.iter_num, st.eval_done = it + 1, False
            if not finite:
                if t.on_nan == "stop":
                    progress.close()
                    what = "a gradient became NaN/inf" if math.isfinite(loss.item()) else f"the loss became {loss.item()}"
                    raise UserError(f"{what} at iteration {it}; stopped, the last good "
                                    f"checkpoint in {run.out_dir} is untouched (lower learning_rate, or on_nan=skip)")
                run.say(f"warning: non-finite loss or gradient at iteration {it}; step skipped")
                continue
            progress.stepped(loss, lr, budget)
            if distributed.any_flag(bool(caught), run.world, run.rt.device):
                stopped_by = caught[0] if caught else signal.SIGTERM
                if budget:
                    st.budget_spent = budget.used()
                run.save(improved=False)
                break
    elapsed = progress.close()
    if budget:
        budget.check_room()
    if stopped_by is not None:
        run.say(f"stopped by {signal.Signals(stopped_by).name} after iteration {st.iter_num}: checkpoint saved to "
                f"{run.out_dir / 'ckpt.pt'}; continue with `python train.py ... --resume`")
        raise SystemExit(128 + stopped_by)  # 130 for SIGINT, 143 for SIGTERM
    progress.done(elapsed)
    if budget:
        run.say(f"budget: {budget.used():.1f} s of {budget.total:.1f} s from launch to checkpoint")
    return {"losses": losses, "best_val_loss": st.best_val_loss, "elapsed": elapsed, "out_dir": str(run.out_dir)}


@contextmanager
def _stop_signals():
    """SIGINT / SIGTERM ask the loop to finish its step, save and exit; the caught signal is in the list."""
    caught: list[int] = []

    def handler(signum, frame):
        caught.append(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def main(argv: list[str]) -> int:
    """`python -m minigpt train` (and train.py): parse the settings, train."""
    cfg = parse_cli(argv, train_sections(), "python -m minigpt train",
                    "Pretrain or fine-tune a GPT: [CONFIG.toml] [--key=value ...] (docs/train.md)")
    train(cfg, launched=process_start())  # a --max_minutes budget counts start-up too
    return 0
