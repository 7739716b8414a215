"""The command line of the benchmarks: which workloads, the machine, the ceilings, then the table after each."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch

from minigpt.config import opt, parse_cli
from minigpt.errors import UserError

from . import WORKLOADS
from .common import Ceilings, format_rows, machine


@dataclass
class BenchConfig:
    workloads: list[str] = opt([], f"workloads to run, as bare arguments or repeated: {', '.join(WORKLOADS)} "
                                   "(none given: all)")
    quick: bool = opt(False, "fewer steps and a short matmul probe: a smoke run, not a measurement")
    device: str = opt("cpu", "'cpu', or 'cuda' / 'cuda:N' for the train and generate workloads on a GPU")
    data_dir: str = opt("", "folder holding tinyshakespeare/input.txt, for speedrun-cpu when data/tinyshakespeare "
                            "is not prepared; default $MINIGPT_SHARED")
    nanogpt_dir: str = opt("", "a karpathy/nanoGPT checkout, run side by side as a peer: train-gpt2 adds its fp32 "
                               "step, speedrun-cpu its own baby command, evaluated the same way")


def workload(name: str):
    return importlib.import_module(WORKLOADS[name])


def main(argv: list[str]) -> int:
    cfg = parse_cli(argv, {"bench": BenchConfig}, "python -m minigpt bench",
                    "Training, decoding and preparation speed, against this machine's limits probed in the same run.",
                    positional="workloads")
    s = cfg.bench
    names = s.workloads or list(WORKLOADS)
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise UserError(f"unknown workload {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    if s.device != "cpu" and not (s.device.startswith("cuda") and torch.cuda.is_available()):
        raise UserError(f"--device={s.device}: use cpu, or cuda / cuda:N on a machine with a CUDA GPU")
    if s.device != "cpu" and (off := [n for n in names if n not in ("train-baby", "train-gpt2", "generate-gpt2")]):
        raise UserError(f"{', '.join(off)} run on the CPU only; leave --device out for them")
    if s.nanogpt_dir and not all((Path(s.nanogpt_dir) / f).is_file() for f in ("train.py", "model.py")):
        raise UserError(f"--nanogpt_dir={s.nanogpt_dir} holds no nanoGPT checkout (train.py and model.py); clone "
                        f"karpathy/nanoGPT there, or leave --nanogpt_dir out")
    modules = {n: workload(n) for n in names}
    for m in modules.values():  # fail now, not after the other workloads
        if hasattr(m, "check"):
            m.check(s)
    name = machine(s.device)
    print(f"machine: {name}, torch {torch.__version__}", flush=True)
    ceilings = Ceilings.probe(matmul=any("matmul" in m.NEEDS for m in modules.values()),
                              bandwidth=any("bandwidth" in m.NEEDS for m in modules.values()),
                              say=lambda m: print(m, flush=True), quick=s.quick, device=s.device)
    rows = []
    for n, m in modules.items():
        print(f"\nrunning {n}{' (quick)' if s.quick else ''}...", flush=True)
        rows += m.run(s, ceilings)
        print(format_rows(rows, name), flush=True)
    if ceilings.how:
        print(f"\nMFU against the matmul peak of the row's dtype, {ceilings.how}", flush=True)
    return 0
