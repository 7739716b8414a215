"""Checkpoints: the only place that reads or writes checkpoint files.

A checkpoint is one `.pt` file holding a dict of tensors and JSON-compatible metadata:
    format, version   -- "minigpt-checkpoint", 1: tells our files from foreign ones
    model             -- the uncompiled, unwrapped model's state dict (no `_orig_mod.` keys)
    model_config      -- GPTConfig as a dict
    tokenizer         -- the tokenizer spec, so sampling needs nothing but the checkpoint
    config            -- the full run config, by section
    iter_num, best_val_loss, eval_done -- the loop's train state
    optimizer, scaler, data, rng -- for resuming: optimizer and GradScaler state, the data sampler's
                                    generator, and one RNG state per process
Writes are atomic (temp file in the same folder, fsync, rename); loads use `weights_only=True`.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch

from . import distributed, runtime
from .errors import UserError
from .fileio import atomic_open
from .model import GPT, GPTConfig
from . import tokenizer as tokenizers

FORMAT = "minigpt-checkpoint"
VERSION = 2  # 2: `rng` holds every rank's state (a list); 1 held rank 0's (a dict)


def save(path: str | Path, model: torch.nn.Module, tokenizer_spec: dict, model_state: dict | None = None,
         **extra: Any) -> Path:
    """Write a checkpoint atomically; `model_state` overrides the module's own (e.g. gathered from FSDP shards)."""
    path = Path(path)
    state = {
        "format": FORMAT,
        "version": VERSION,
        "model": model.state_dict() if model_state is None else model_state,
        "model_config": dataclasses.asdict(model.config),
        "tokenizer": tokenizer_spec,
        **extra,
    }
    try:
        with atomic_open(path) as f:
            torch.save(state, f)
    except OSError as e:  # permission denied, disk full, ...: the previous checkpoint is untouched
        raise UserError(f"cannot write the checkpoint to {path} ({e.strerror or e}); free some space or choose a "
                        f"writable --out_dir, then continue with --resume (the previous checkpoint is intact)") from None
    return path


def save_training(path: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler,
                  batches, train_state, world: distributed.World, fsdp: bool, tokenizer_spec: dict,
                  **extra: Any) -> Path | None:
    """Save everything a run needs to continue exactly: model, optimizer, GradScaler, data sampler, every
    rank's RNG state and the loop's train state. Collective under torchrun (every rank calls it); rank 0
    writes. Returns the path written (None on other ranks)."""
    model_state, optim_state = distributed.full_state(model, optimizer, fsdp)
    rng = distributed.gather_objects(runtime.rng_state(), world)  # one per rank: dropout masks differ by rank
    if not world.is_main:
        return None
    return save(path, model, tokenizer_spec, model_state=model_state, optimizer=optim_state,
                scaler=scaler.state_dict(), data=batches.state_dict(), rng=rng, **train_state.state_dict(), **extra)


def restore_training(state: dict, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler, batches,
                     train_state, world: distributed.World, fsdp: bool) -> str | None:
    """Load what `save_training` wrote into the parts of a fresh run; returns a note when the RNG states
    cannot be restored exactly (a different number of processes than the run that saved)."""
    distributed.load_full_state(model, optimizer, state["model"], state["optimizer"], fsdp)
    scaler.load_state_dict(state["scaler"])
    batches.load_state_dict(state["data"])
    train_state.load_state_dict(state)
    rng = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]  # version 1 kept rank 0's only
    runtime.set_rng_state(rng[world.rank % len(rng)])
    if len(rng) != world.world_size:
        return (f"the checkpoint holds the random state of {len(rng)} process(es) and this run has "
                f"{world.world_size}: dropout masks will differ from an uninterrupted run")
    return None


def link(src: Path, dst: Path) -> None:
    """Make `dst` the same file as `src` (a hard link, else a durable copy), replacing `dst` atomically."""
    tmp = dst.with_name(f".{dst.name}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout)
            fout.flush()
            os.fsync(fout.fileno())
    os.replace(tmp, dst)


def keep_last(latest: Path, iter_num: int, n: int) -> None:
    """Keep `latest` also as ckpt_<iter>.pt and delete all but the newest `n` of those."""
    link(latest, latest.with_name(f"ckpt_{iter_num:07d}.pt"))
    numbered = sorted(latest.parent.glob("ckpt_[0-9]*.pt"))
    for old in numbered[:-n]:
        old.unlink()


def find(path_or_dir: str | Path) -> Path:
    """A checkpoint file, or `ckpt.pt` inside a folder."""
    p = Path(path_or_dir)
    if p.is_dir():
        p = p / "ckpt.pt"
    if not p.is_file():
        raise UserError(f"no checkpoint at {p}; train one with `python train.py --out_dir={Path(path_or_dir)}` "
                        f"or pass --out_dir pointing at a folder holding ckpt.pt")
    return p


def load(path_or_dir: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read and validate a checkpoint; a corrupt, truncated or foreign file gets one clear error."""
    p = find(path_or_dir)
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise UserError(f"{p} is not a readable checkpoint ({first}); it may be truncated or corrupt, "
                        f"use another checkpoint or train again") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{p} is not a minigpt checkpoint (no '{FORMAT}' marker); "
                        f"load GPT-2 weights with --init_from instead, or train a model with train.py")
    if state.get("version", 0) > VERSION:
        raise UserError(f"{p} was written by a newer minigpt (checkpoint version {state['version']}); upgrade minigpt")
    return state


def build_model(state: dict, device: str | torch.device = "cpu") -> GPT:
    """The model a checkpoint describes, with its weights loaded."""
    try:
        config = GPTConfig(**state["model_config"])
    except (TypeError, ValueError) as e:
        raise UserError(f"the checkpoint's model config is invalid ({e})") from None
    model = GPT(config)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise UserError(f"the checkpoint's weights do not fit its model config ({str(e).splitlines()[0]})") from None
    return model.to(device)


def load_model(path_or_dir: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode, tokenizer, checkpoint dict) for sampling, evaluation and inspection."""
    state = load(path_or_dir)
    model = build_model(state, device).eval()
    return model, tokenizers.from_spec(state["tokenizer"]), state
