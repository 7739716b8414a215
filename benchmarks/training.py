"""Full training steps, timed: the trainer's own `train_step` on a `Run` built from the pieces
`trainer.setup` builds it from (the settings through the one config merge, the model, `make_optimizer`,
the GradScaler, torch.compile), with random tokens in place of a dataset, so the bench measures the step
train.py takes and nothing else. The workloads train-baby and train-gpt2 differ in shape only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from minigpt import distributed, flops, runtime, trainer
from minigpt.config import build_config, train_sections
from minigpt.model import GPT
from minigpt.optim import make_optimizer

from .common import Ceilings, isolated, skip_reason, timed

VARIANTS = {  # variant -> (dtype, compile); the first is the in-run reference
    "fp32 eager": ("float32", False),
    "bf16 eager": ("bfloat16", False),
    "fp32 compiled": ("float32", True),
    "bf16 compiled": ("bfloat16", True),
}


@dataclass
class Shape:
    """What a training workload trains: a preset with overrides, `batch` rows of `T` tokens a step."""

    preset: str
    batch: int
    T: int
    overrides: dict = field(default_factory=dict)


class RandomBatches:
    """Stands in for data.Batches: the same random tokens every step (the step's cost, not the data's)."""

    def __init__(self, vocab_size: int, batch: int, T: int):
        g = torch.Generator().manual_seed(1)
        self.x = torch.randint(0, vocab_size, (batch, T), generator=g)
        self.y = torch.randint(0, vocab_size, (batch, T), generator=g)

    def get(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x, self.y


def _setting(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def make_run(shape: Shape, dtype_name: str, compile_: bool, device: str = "cpu") -> trainer.Run:
    """A one-process trainer.Run of `shape` on random tokens, as trainer.setup assembles one."""
    settings = {"preset": shape.preset, **shape.overrides, "batch_size": shape.batch, "dropout": 0.0,
                "dtype": dtype_name, "device": device, "compile": compile_}
    cfg = build_config(train_sections(), overrides={k: _setting(v) for k, v in settings.items()})
    t, dev = cfg.train, torch.device(device)
    runtime.setup_cpu_allocator(dev)  # as runtime.setup does for train.py
    runtime.setup_cuda_speed(dev)
    rt = runtime.Runtime(dev, runtime.DTYPES[dtype_name], compile_, torch.get_num_threads(), "the bench's")
    runtime.seed_everything(cfg.runtime.seed)
    model = GPT(cfg.model).to(dev)
    optimizer = make_optimizer(model, t.learning_rate, t.weight_decay, (t.beta1, t.beta2), dev,
                               muon_lr=t.muon_lr if t.optimizer == "muon" else None, muon_momentum=t.muon_momentum,
                               muon_weight_decay=t.muon_weight_decay)
    scaler = torch.amp.GradScaler(dev.type, enabled=rt.dtype is torch.float16)
    return trainer.Run(cfg=cfg, t=t, rt=rt, world=distributed.World(), dataset=None, model=model,
                       step_model=torch.compile(model) if compile_ else model, optimizer=optimizer, scaler=scaler,
                       batches=RandomBatches(cfg.model.vocab_size, shape.batch, shape.T), state=trainer.TrainState(),
                       out_dir=Path("."), micro_steps=1, rows=slice(0, shape.batch),
                       flops_per_token=flops.model_flops_per_token(model, shape.T))


def step_bench(shape: Shape, dtype_name: str, compile_: bool, steps: int, warmup: int, device: str = "cpu") -> dict:
    """Median time of trainer.train_step (forward, backward, clip, AdamW) at `shape`."""
    run = make_run(shape, dtype_name, compile_, device)
    losses = []

    def step():
        loss, finite = trainer.train_step(run, run.t.learning_rate)
        losses.append(loss.item())  # a sync on CUDA: the step is done when the clock stops

    s, first = timed(step, steps, warmup)
    return {"tokens_per_s": shape.batch * shape.T / s, "ms_per_step": s * 1000,
            "flops_per_token": run.flops_per_token, "compile_s": max(0.0, first - s) if compile_ else 0.0,
            "losses": losses}


def run_train(workload: str, shape: Shape, settings, ceilings: Ceilings, peers: dict | None = None) -> list[dict]:
    """One row per variant (and per peer: variant -> (dtype, function, its keyword arguments), run the
    same way), each in a fresh process: tokens/s, ms/step, ratio to the first row, MFU of the row's dtype."""
    steps, warmup = (3, 1) if settings.quick else (10, 3)
    device = getattr(settings, "device", "cpu")
    jobs = {variant: (dtype, step_bench, {"shape": shape, "dtype_name": dtype, "compile_": compile_, "device": device})
            for variant, (dtype, compile_) in VARIANTS.items()}
    jobs.update(peers or {})
    rows, ref = [], None
    for variant, (dtype, fn, kwargs) in jobs.items():
        row = {"workload": workload, "variant": variant}
        if skip_reason(dtype, device):
            rows.append({**row, "notes": skip_reason(dtype, device)})
            continue
        r = isolated(fn, **kwargs, steps=steps, warmup=warmup)
        if "error" in r:
            rows.append({**row, "notes": r["error"]})
            continue
        ref = ref or r["tokens_per_s"]
        peak = ceilings.peaks.get(dtype)
        notes = [f"{shape.batch} x {shape.T} tokens"] + ([f"compile {r['compile_s']:.0f}s"] if r.get("compile_s") else [])
        rows.append({**row, "tokens_per_s": r["tokens_per_s"], "ms_per_step": r["ms_per_step"],
                     "ratio": r["tokens_per_s"] / ref, "peak_rss_mb": r.get("peak_rss_mb"),
                     "mfu": flops.mfu(r["flops_per_token"], r["tokens_per_s"], peak) if peak else None,
                     "notes": ", ".join(notes)})
    return rows
