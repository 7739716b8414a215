"""What every workload shares: the machine's description, the ceilings probed in the run, a fresh process
per variant, timing, and the markdown table.

A row is a dict: workload, variant, and what was measured (tokens_per_s, ms_per_step, ratio to the
workload's in-run reference, mfu, bandwidth share, peak_rss_mb, notes). Every row names the machine.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from minigpt import flops, runtime

ROOT = Path(__file__).resolve().parent.parent  # the checkout: train.py, data/prepare.py, configs/
NO_BF16 = "skipped: no native bf16 on this CPU (emulated, it runs ~100x slower than fp32 and would take minutes)"


# ---------------------------------------------------------------------------------------------------
# The machine: its name and the ceilings rows are compared with, probed in this run

def machine(device: str = "cpu") -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))}, {flops.cpu_name()} host"
    return f"{flops.cpu_name()}, {torch.get_num_threads()} threads"


def read_bandwidth(n_bytes: int = 256 << 20, seconds: float = 0.5) -> float:
    """Best bytes/s of reading an fp32 tensor of `n_bytes` (8x a large L3 by default, so it streams from
    memory): the ceiling of a decode step, which reads every weight once per token. The best of three
    reading kernels, alternated: on some CPUs one of them (sum) reads markedly slower than the others, and
    a probe by that one alone would under-measure the ceiling and over-state every decode row's share."""
    x = torch.ones(n_bytes // 4)
    kernels = (x.sum, x.amax, lambda: torch.dot(x, x))  # dot(x, x) reads x once: both operands are one stream
    for read in kernels:
        read()  # first touch and thread start-up
    best, end = 0.0, time.perf_counter() + seconds
    for _ in range(30):
        for read in kernels:
            t0 = time.perf_counter()
            read()
            best = max(best, x.numel() * 4 / (time.perf_counter() - t0))
        if time.perf_counter() > end:
            break
    return best


# The bench's matmul probe (flops.steady_matmul_peak): sizes, seconds per size and rounds; --quick: a smoke run
PROBE = {"sizes": flops.STEADY_SIZES, "seconds": 2.0, "rounds": 3}
QUICK_PROBE = {"sizes": (256, 512), "seconds": 0.3, "rounds": 3}


@dataclass
class Ceilings:
    """What this run measured the machine can do; None where not probed (or, for bf16, not native)."""

    peaks: dict[str, float | None]  # dtype name -> matmul FLOP/s
    bandwidth: float | None = None
    how: str = ""  # how the peaks were found, for the header

    @classmethod
    def probe(cls, matmul: bool, bandwidth: bool, say=print, quick: bool = False, device: str = "cpu") -> "Ceilings":
        c = cls({"float32": None, "bfloat16": None})
        if device.startswith("cuda"):  # no probe: the datasheet's dense bf16 figure, as train.py uses it
            name = torch.cuda.get_device_name(torch.device(device))
            c.peaks["bfloat16"] = flops.gpu_peak(name)
            c.how = f"bf16 peak from the datasheet table (minigpt.flops.GPU_PEAKS): {name}"
            if matmul:
                say(f"matmul peak: {c.how}; " + (f"{c.peaks['bfloat16'] / 1e12:,.0f} TFLOP/s" if c.peaks["bfloat16"]
                                                  else "not in the table, no MFU"))
            return c
        if matmul:
            probe = QUICK_PROBE if quick else PROBE
            c.how = "probed now: " + flops.describe_steady_probe(**probe)
            c.peaks["float32"] = flops.steady_matmul_peak(torch.float32, **probe)
            c.peaks["bfloat16"] = flops.steady_matmul_peak(torch.bfloat16, **probe) if runtime.cpu_bf16_native() else None
            bf16 = (f"{c.peaks['bfloat16'] / 1e9:,.0f} GFLOP/s" if c.peaks["bfloat16"]
                    else "not probed (no native bf16 on this CPU)")
            say(f"matmul peak: fp32 {c.peaks['float32'] / 1e9:,.0f} GFLOP/s, bf16 {bf16} ({c.how})")
        if bandwidth:
            c.bandwidth = read_bandwidth()
            say(f"streaming read bandwidth, probed now: {c.bandwidth / 1e9:,.1f} GB/s")
        return c


def bandwidth_share(tokens_per_s: float, weight_bytes: int, bandwidth: float | None) -> float | None:
    """Decode speed as a share of the bandwidth limit (bandwidth / bytes of weights read per token)."""
    return tokens_per_s * weight_bytes / bandwidth if bandwidth else None


def skip_reason(dtype_name: str, device: str = "cpu") -> str | None:
    """Why a variant in this dtype is not run on this machine, or None to run it."""
    return NO_BF16 if dtype_name == "bfloat16" and device == "cpu" and not runtime.cpu_bf16_native() else None


# ---------------------------------------------------------------------------------------------------
# Running a variant in a fresh process, timing it

def _child(conn, fn, kwargs):
    try:
        result = fn(**kwargs)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        conn.send(result)
    except Exception as e:  # report, do not hang the parent
        conn.send({"error": f"{type(e).__name__}: {e}"})


def isolated(fn, **kwargs) -> dict:
    """Run `fn(**kwargs)` in a fresh process and return its result with that process's peak RSS, so memory
    peaks do not leak from one variant to the next; an exception comes back as {"error": ...}."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_child, args=(child, fn, kwargs))
    p.start()
    child.close()  # ours: so a child that dies without sending ends recv() instead of blocking forever
    try:
        result = parent.recv()
    except EOFError:
        result = {"error": "the benchmark process died without a result (out of memory?)"}
    p.join()
    return result


def timed(step, steps: int, warmup: int) -> tuple[float, float]:
    """(median seconds of `steps` calls after `warmup` ones, seconds of the first call)."""
    t0 = time.perf_counter()
    step()  # the first step includes compilation
    first = time.perf_counter() - t0
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), first


def run_timed(cmd: list[str], cwd: Path | None = None) -> tuple[float, subprocess.CompletedProcess]:
    """(wall seconds, the finished process) of a command run as a user runs it."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    return time.perf_counter() - t0, proc


def failed(what: str, proc: subprocess.CompletedProcess) -> str:
    return f"{what} failed: {' '.join(proc.stderr.strip().splitlines()[-1:])}"


def python() -> str:
    return sys.executable


# ---------------------------------------------------------------------------------------------------
# The table

COLUMNS = ["workload", "variant", "machine", "tokens/s", "ms/step", "vs reference", "MFU", "of bandwidth limit",
           "peak RSS MB", "notes"]


def format_rows(rows: list[dict], machine_name: str) -> str:
    """A markdown table; every row names the machine it ran on. MFU is against the probed matmul peak of the
    row's dtype; 'of bandwidth limit' is decode speed over probed bandwidth / weight bytes per token."""
    def f(v, fmt):
        return fmt.format(v) if isinstance(v, (int, float)) and math.isfinite(v) else ""

    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        out.append("| " + " | ".join([
            r.get("workload", ""), r.get("variant", ""), machine_name, f(r.get("tokens_per_s"), "{:,.1f}"),
            f(r.get("ms_per_step"), "{:,.1f}"), f(r.get("ratio"), "{:.2f}x"), f(r.get("mfu"), "{:.1%}"),
            f(r.get("bandwidth"), "{:.0%}"), f(r.get("peak_rss_mb"), "{:,.0f}"), r.get("notes", "") or "",
        ]) + " |")
    return "\n".join(out)
