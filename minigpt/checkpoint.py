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
Writes are atomic (temp file in the same folder, fsync, rename); loads use `weights_only=True`. After
torch.save's zip comes a 48-byte trailer, b"minigpt-sha256:\0" and the sha256 of every byte before it
(hashed as they are written); a load hashes the file on a thread beside torch.load's own read and refuses
a file whose bytes differ. Files without the trailer (older minigpt) load unchecked. A checkpoint whose
weights hold a NaN or inf is never written.

Loading a model, from any source, is `load_model(source)`: the one loader behind sample, the attention
maps, evaluate, export and fine-tuning (each command's `--model=SOURCE`). A source is a checkpoint (a
folder holding ckpt.pt, or a .pt file), an OpenAI GPT-2 name (gpt2, gpt2-medium, gpt2-large, gpt2-xl) or
a local Hugging Face GPT-2 folder (config.json + weights), told apart by `resolve(source)`;
`read_config(source)` reads only its model config, without the weights.
    loaded = load_model(source, device)           # Loaded(model, tokenizer, state, description)
    loaded = load_model("gpt2", config=mine)      # GPT-2's weights in a model with a shorter block_size
                                                  # and this run's dropout (fine-tuning)
    loaded, rt = load_for_inference(source, rc)   # on the device and in the dtype a RuntimeConfig picks
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import shutil
import threading
import zipfile
from pathlib import Path
from typing import Any

import torch

from . import distributed, hf, quant, runtime
from .config import on_weights
from .errors import UserError
from .fileio import atomic_open
from .model import GPT, GPTConfig
from . import tokenizer as tokenizers

FORMAT = "minigpt-checkpoint"
VERSION = 2  # 2: `rng` holds every rank's state (a list); 1 held rank 0's (a dict)
CHECKSUM_MARK = b"minigpt-sha256:\0"  # then 32 bytes of sha256; zip readers ignore bytes after the archive
TRAILER = len(CHECKSUM_MARK) + 32
REQUIRED = ("model", "model_config", "tokenizer")  # what any use of a checkpoint reads
TRAINING = ("optimizer", "scaler", "data", "rng", "iter_num", "best_val_loss", "eval_done")  # and resuming


class _Hashing:
    """A writable file that hashes what goes through it: the checksum costs no second read."""

    def __init__(self, f):
        self.f, self.sha = f, hashlib.sha256()

    def write(self, data) -> int:
        self.sha.update(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def save(path: str | Path, model: torch.nn.Module, tokenizer_spec: dict, model_state: dict | None = None,
         **extra: Any) -> Path:
    """Write a checkpoint atomically; `model_state` overrides the module's own (e.g. gathered from FSDP shards)."""
    path = Path(path)
    weights = model.state_dict() if model_state is None else model_state
    floats = [(k, v) for k, v in weights.items() if v.is_floating_point()]
    if floats and not torch.stack([torch.isfinite(v).all().cpu() for _, v in floats]).all():  # one sync
        bad = next(k for k, v in floats if not torch.isfinite(v).all())
        raise UserError(f"not saving {path}: the weights hold NaN or inf values ({bad}); the previous checkpoint "
                        f"is intact (lower learning_rate or grad_clip and continue with --resume)")
    state = {
        "format": FORMAT,
        "version": VERSION,
        "model": weights,
        "model_config": dataclasses.asdict(model.config),
        "tokenizer": tokenizer_spec,
        **extra,
    }
    try:
        with atomic_open(path) as f:
            hashing = _Hashing(f)
            torch.save(state, hashing)
            f.write(CHECKSUM_MARK + hashing.sha.digest())
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
    """Load what `save_training` wrote into the parts of a fresh run; returns a note when something cannot
    continue exactly (the RNG states of another number of processes, fp16's loss scale after bf16/fp32).
    The optimizer's hyper-parameters (betas, weight decay, Muon's momentum) stay this run's settings:
    they live in its param groups, which loading the optimizer's state would otherwise replace."""
    settings = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    distributed.load_full_state(model, optimizer, state["model"], state["optimizer"], fsdp)
    for group, mine in zip(optimizer.param_groups, settings):
        group.update(mine)
    notes = []
    if state["scaler"] or not scaler.is_enabled():
        scaler.load_state_dict(state["scaler"])
    else:  # saved by a run without fp16, whose disabled scaler has no state
        notes.append("the checkpoint was not trained in float16, so the loss scale starts afresh")
    batches.load_state_dict(state["data"])
    train_state.load_state_dict(state)
    rng = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]  # version 1 kept rank 0's only
    runtime.set_rng_state(rng[world.rank % len(rng)])
    if len(rng) != world.world_size:
        notes.append(f"the checkpoint holds the random state of {len(rng)} process(es) and this run has "
                     f"{world.world_size}: dropout masks will differ from an uninterrupted run")
    return "; ".join(notes) or None


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
                        f"or pass --model pointing at a folder holding ckpt.pt")
    return p


def load(path_or_dir: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False,
         verify: bool | None = None) -> dict:
    """Read and validate a checkpoint; a damaged (checksum), corrupt, truncated or foreign file, or one
    missing what every checkpoint holds, gets one clear error. With `mmap`, tensors are mapped from the
    file and read only when touched (reading just the config); `verify` (default: unless `mmap`) checks
    the checksum."""
    p = find(path_or_dir)
    intact = _start_checksum(p) if (not mmap if verify is None else verify) else None
    damaged = UserError(f"{p} is damaged: its bytes do not match the checksum saved with them; use another "
                        f"checkpoint (best.pt, ckpt_<iter>.pt) or train again")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True, mmap=mmap)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError, OSError) as e:
        if intact is not None and not intact():
            raise damaged from None
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise UserError(f"{p} is not a readable checkpoint ({first}); it may be truncated or corrupt, "
                        f"use another checkpoint or train again") from None
    if intact is not None and not intact():
        raise damaged
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{p} is not a minigpt checkpoint (no '{FORMAT}' marker); "
                        f"load GPT-2 weights with --model=gpt2 (or a Hugging Face folder) instead, or train a model with train.py")
    if state.get("version", 0) > VERSION:
        raise UserError(f"{p} was written by a newer minigpt (checkpoint version {state['version']}); upgrade minigpt")
    if missing := [k for k in REQUIRED if k not in state]:
        raise UserError(f"{p} lacks {', '.join(missing)}, which every minigpt checkpoint holds (it was edited or "
                        f"written by something else); use another checkpoint or train again")
    return state


def check_resumable(state: dict, where: str | Path) -> None:
    """Refuse, in one line, a checkpoint that holds a model but not what continuing its training needs."""
    if missing := [k for k in TRAINING if k not in state]:
        raise UserError(f"{where} holds a model but not {', '.join(missing)}, so its training cannot continue; "
                        f"fine-tune its weights in a fresh run with --model={where}, or use a checkpoint "
                        f"written by train.py")


def _start_checksum(p: Path):
    """Hash `p` on a thread (hashlib releases the GIL, so this overlaps torch.load's read of the same,
    then cached, bytes); returns a function that waits and says whether the bytes match the trailer, or
    None for a file written without one."""
    size = p.stat().st_size
    with open(p, "rb") as f:
        f.seek(max(0, size - TRAILER))
        tail = f.read(TRAILER)
    if size < TRAILER or not tail.startswith(CHECKSUM_MARK):
        return None
    result = []

    def work():
        h, left, buf = hashlib.sha256(), size - TRAILER, bytearray(1 << 22)
        with open(p, "rb") as f:
            while left > 0:
                n = f.readinto(memoryview(buf)[: min(left, len(buf))])
                if not n:
                    break
                h.update(memoryview(buf)[:n])
                left -= n
        result.append(left == 0 and h.digest() == tail[len(CHECKSUM_MARK):])

    thread = threading.Thread(target=work, name="checkpoint-sha256", daemon=True)
    thread.start()

    def intact() -> bool:
        thread.join()
        return bool(result and result[0])

    return intact


def build_model(state: dict, device: str | torch.device = "cpu", config: GPTConfig | None = None) -> GPT:
    """The model a checkpoint describes, with its weights loaded; `config` as in `load_model`."""
    model = _build(_model_config(state["model_config"]), state["model"], config, "the checkpoint")
    return model.to(device)


def _model_config(d: dict) -> GPTConfig:
    try:
        return GPTConfig(**d)
    except (TypeError, ValueError) as e:
        raise UserError(f"the checkpoint's model config is invalid ({e})") from None


# ---- Loading a model from any source --------------------------------------------------------------


@dataclasses.dataclass
class Loaded:
    """A model ready to run (eval mode) and what came with it."""

    model: GPT
    tokenizer: tokenizers.Tokenizer
    state: dict | None  # the whole checkpoint dict for a minigpt checkpoint; None for GPT-2 weights
    description: str  # where the weights came from, for messages: "checkpoint out/ckpt.pt (iter 2000)"


@dataclasses.dataclass(frozen=True)
class Header:
    """What a source holds, without its weights."""

    config: GPTConfig
    tokenizer: dict  # the tokenizer spec (tokenizer.from_spec builds it)
    description: str


GPT2_TOKENIZER = hf.GPT2_TOKENIZER


@dataclasses.dataclass(frozen=True)
class Source:
    """What a `--model=SOURCE` names, resolved."""

    kind: str  # "checkpoint" (a minigpt checkpoint file) or "gpt2" (an OpenAI name or a local HF folder)
    path: str  # the checkpoint file; the GPT-2 name or folder


def resolve(source: str | Path) -> Source:
    """The one reading of `--model=SOURCE`, for every command that reads a model: an existing folder holding
    ckpt.pt or a .pt file is a checkpoint; a folder with config.json (and no ckpt.pt) Hugging Face GPT-2
    weights; gpt2, gpt2-medium, gpt2-large or gpt2-xl (when no such path exists) OpenAI's weights."""
    s, p = str(source), Path(source)
    if s in hf.GPT2_NAMES and not p.exists():
        return Source("gpt2", s)
    if p.is_dir() and (p / "config.json").is_file() and not (p / "ckpt.pt").is_file():
        return Source("gpt2", s)
    if s and p.exists():
        return Source("checkpoint", str(find(p)))
    raise UserError(f"{f'no model at {s}' if s else '--model is empty'}: give --model a checkpoint folder or .pt "
                    f"file (train one with `python train.py --out_dir={s or 'out'}`), a GPT-2 name "
                    f"({', '.join(hf.GPT2_NAMES)}) or a local Hugging Face GPT-2 folder")


def _is_gpt2(source: str | Path) -> bool:
    return resolve(source).kind == "gpt2"


def read_header(source: str | Path) -> Header:
    """The model config and tokenizer of `source` without loading its weights (a checkpoint's tensors
    are memory-mapped and never read; a GPT-2 name is still downloaded on first use)."""
    if _is_gpt2(source):
        return Header(hf.read_config(hf.locate(str(source))), hf.tokenizer_spec(str(source)), f"GPT-2 weights {source}")
    state = load(source, mmap=True)
    return Header(_model_config(state["model_config"]), state["tokenizer"], _describe(source, state))


def read_config(source: str | Path) -> GPTConfig:
    """The model config of `source` (see `read_header`)."""
    return read_header(source).config


def load_model(source: str | Path, device: str | torch.device = "cpu", *, config: GPTConfig | None = None) -> Loaded:
    """The model in `source` (a checkpoint folder or file, a GPT-2 name or a local Hugging Face GPT-2
    folder) in eval mode on `device`, with its tokenizer.

    `config` builds a different model around the same weights: the source's shape, with a block_size no
    longer than the source's (position embeddings are cropped) and any dropout (fine-tuning).
    """
    if _is_gpt2(source):
        own, weights = hf.read(str(source))
        model = _build(own, weights, config, str(source))
        return Loaded(model.to(device).eval(), tokenizers.from_spec(hf.tokenizer_spec(str(source))), None,
                      f"GPT-2 weights {source}")
    state = load(source)
    model = build_model(state, device, config).eval()
    return Loaded(model, tokenizers.from_spec(state["tokenizer"]), state, _describe(source, state))


def load_for_inference(source: str | Path, rc, quantize: str = "none") -> tuple[Loaded, runtime.Runtime]:
    """`load_model(source)` placed as the RuntimeConfig `rc` says: device, and weights held in the runtime
    dtype (picked by the model's width), the one precision policy of sample, evaluate and the attention maps;
    then, with quantize='int8', its Linear weights swapped for int8 ones (`minigpt.quant`)."""
    if quantize not in quant.MODES:  # before the slow load
        raise UserError(f"--quantize must be one of {', '.join(quant.MODES)}, got '{quantize}'")
    loaded = load_model(source)
    rt = runtime.setup(rc, loaded.model.config.n_embd)
    loaded.model.to(device=rt.device, dtype=rt.dtype)
    quant.quantize(loaded.model, quantize)
    return loaded, rt


def _describe(source: str | Path, state: dict) -> str:
    it = state.get("iter_num")
    return f"checkpoint {find(source)}" + (f" (iter {it})" if it is not None else "")


def _build(own: GPTConfig, weights: dict[str, torch.Tensor], config: GPTConfig | None, where: str) -> GPT:
    """GPT(config or own) holding `weights`, which were trained as `own`."""
    if config is not None:
        on_weights(own, dataclasses.asdict(config), where)  # the one rule for what may change on given weights
        wpe = "transformer.wpe.weight"
        if wpe in weights:  # the first positions are the ones a shorter context uses
            weights = {**weights, wpe: weights[wpe][: config.block_size]}
    model = GPT(config or own)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise UserError(f"the weights of {where} do not fit its model config ({str(e).splitlines()[0]})") from None
    return model
