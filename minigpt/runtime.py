"""Where code runs: device, precision (autocast), seeds and threads; the single setup home."""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import random
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from .errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}'; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{name}' asked for, but CUDA is not available here; use --device=cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device '{name}' asked for, but MPS is not available here; use --device=cpu")
    return device


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as /proc/cpuinfo lists them (Linux; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):  # x86, Arm
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def cpu_bf16_native() -> bool:
    """Whether bf16 matmuls run natively on this CPU (oneDNN's check: AVX512-BF16, AMX or Arm's bf16).
    Without it they are emulated, about 100x slower than fp32 (AVX2-only CPUs): bf16 is then never worth
    probing, training or sampling in."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def mlp_step_timer(width: int, rows: int):
    """A function of a dtype that times (seconds) one forward and backward of a block's MLP at `width`
    (rows x C -> 4C -> C, GELU between) with fp32 weights under autocast to that dtype: the products, the
    casts autocast makes every call and the elementwise work, as a training step pays them."""
    g = torch.Generator().manual_seed(0)  # its own generator: probing must not move training's random stream
    x = torch.randn(rows, width, generator=g, requires_grad=True)
    w1 = torch.randn(4 * width, width, generator=g).div_(width**0.5).requires_grad_()
    w2 = torch.randn(width, 4 * width, generator=g).div_((4 * width) ** 0.5).requires_grad_()
    F = torch.nn.functional

    def seconds(dtype: torch.dtype) -> float:
        x.grad = w1.grad = w2.grad = None
        t0 = time.perf_counter()
        with autocast(torch.device("cpu"), dtype):
            y = F.linear(F.gelu(F.linear(x, w1)), w2)
        y.float().sum().backward()
        return time.perf_counter() - t0

    return seconds


PROBE_FLOPS = 6e9  # per MLP step of the dtype probe: tens of ms in fp32 on a small CPU, a few in bf16
# Pins what dtype=auto takes on a CPU with native bf16, without probing: for a test suite or a CI that must
# not depend on a timing (the tests pin float32; the policy's own tests unset it).
AUTO_CPU_ENV = "MINIGPT_CPU_AUTO_DTYPE"
BF16_MARGIN = 1.1  # bf16 must be this much faster: a near-tie keeps fp32, which has no rounding to weigh


def probe_rows(width: int) -> int:
    """Rows for the dtype probe at `width`: a power of two from 64 to 1024 (a micro-batch's tokens, or
    fewer for wide models), within PROBE_FLOPS for one forward and backward (6 x rows x 8 C^2 FLOPs)."""
    rows = 1024
    while rows > 64 and 48 * rows * width**2 > PROBE_FLOPS:
        rows //= 2
    return rows


def bf16_speedup(width: int, reps: int = 3, make_timer=mlp_step_timer) -> float:
    """fp32's best time over bf16's for a block's MLP step at `width` (see `mlp_step_timer`), the two
    dtypes alternated so a moment of other load hits both, after a warm-up step of each (oneDNN's kernels
    for the shape, the thread pool, caches). Well under a second on a quiet CPU with native bf16."""
    timer = make_timer(width, probe_rows(width))
    best = {torch.float32: math.inf, torch.bfloat16: math.inf}
    for dtype in best:
        timer(dtype)
    for _ in range(reps):
        for dtype in best:
            best[dtype] = min(best[dtype], timer(dtype))
    return best[torch.float32] / best[torch.bfloat16]


def choose_dtype(name: str, device: torch.device, n_embd: int | None = None) -> tuple[torch.dtype, str]:
    """(dtype, why). 'auto': bf16 on CUDA where supported, else fp16; on a CPU, bf16 where this CPU runs
    the model's shape faster in bf16 by BF16_MARGIN, timed now (`bf16_speedup`: a block's MLP at its width,
    forward and backward), else fp32; never bf16 (and no probe) on a CPU without native bf16; $AUTO_CPU_ENV
    pins the CPU's choice instead of probing. An explicit dtype is checked against the device."""
    if name == "auto":
        if device.type == "cuda":
            bf16 = torch.cuda.is_bf16_supported()
            return (torch.bfloat16, "auto: CUDA with bf16") if bf16 else (torch.float16, "auto: CUDA without bf16")
        if device.type != "cpu":
            return torch.float32, f"auto: {device.type}"
        if not cpu_bf16_native():
            return torch.float32, "auto: no native bf16 on this CPU"
        pinned = os.environ.get(AUTO_CPU_ENV, "")
        if pinned:
            if pinned not in ("float32", "bfloat16"):
                raise UserError(f"${AUTO_CPU_ENV}={pinned}: use float32 or bfloat16, or unset it to probe")
            return DTYPES[pinned], f"auto: pinned by ${AUTO_CPU_ENV}"
        if n_embd is None:
            return torch.float32, "auto: no model width to probe"
        speedup = bf16_speedup(n_embd)
        dtype = torch.bfloat16 if speedup >= BF16_MARGIN else torch.float32
        return dtype, f"auto: bf16 {speedup:.2f}x fp32 at width {n_embd}, probed now; --dtype overrides"
    if name not in DTYPES:
        raise UserError(f"unknown dtype '{name}'; use auto, {', '.join(DTYPES)}")
    dtype = DTYPES[name]
    if dtype is torch.float16 and device.type == "cpu":
        raise UserError("--dtype=float16 is not supported on the CPU; use bfloat16 or float32")
    if dtype is torch.bfloat16 and device.type == "cpu" and not cpu_bf16_native():
        raise UserError("--dtype=bfloat16: this CPU has no native bf16 (AVX512-BF16 or AMX), so every bf16 matmul "
                        "is emulated, about 100x slower than float32; use --dtype=float32 (or auto)")
    return dtype, "set by --dtype"


def pick_dtype(name: str, device: torch.device, n_embd: int | None = None) -> torch.dtype:
    """The dtype of `choose_dtype`, without the why."""
    return choose_dtype(name, device, n_embd)[0]


def pick_compile(setting: bool | None, device: torch.device) -> bool:
    """torch.compile or not: an explicit setting wins; auto (None) compiles on CUDA, where it is the usual
    speed-up, and not on the CPU, where the 20-40 s of compiling outweighed the gain per step in the bench's
    training rows (benchmarks/results.md)."""
    return device.type == "cuda" if setting is None else setting


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed-precision context for forward passes; a no-op for float32."""
    if dtype is torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state() -> dict:
    """Every random state a training step draws from, as values `torch.load(weights_only=True)` accepts."""
    np_state = np.random.get_state(legacy=False)
    np_state["state"] = {"key": np_state["state"]["key"].tolist(), "pos": int(np_state["state"]["pos"])}
    state = {"python": random.getstate(), "numpy": np_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np_state = dict(state["numpy"])
    np_state["state"] = {"key": np.asarray(np_state["state"]["key"], dtype=np.uint32), "pos": np_state["state"]["pos"]}
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def free_cores(interval: float = 0.25) -> tuple[int, float]:
    """(cores this process may run on, how many of them other work keeps busy right now).

    Busy-ness is read from /proc/stat over `interval` seconds (Linux); elsewhere nothing counts as busy.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    def sample() -> list[tuple[int, int]]:
        with open("/proc/stat") as f:
            rows = [line.split() for line in f if line.startswith("cpu") and line[3].isdigit()]
        return [(sum(map(int, r[1:9])), int(r[4]) + int(r[5])) for r in rows]  # (total, idle + iowait) jiffies
    try:
        before = sample()
        time.sleep(interval)
        after = sample()
    except (OSError, ValueError, IndexError):
        return cores, 0.0
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(len(after))
    busy = 0.0
    for cpu in allowed:
        if cpu < len(after):
            total = after[cpu][0] - before[cpu][0]
            busy += 1.0 - (after[cpu][1] - before[cpu][1]) / total if total > 0 else 0.0
    return cores, busy


def probe_threads(candidates: list[int], seconds: float = 0.08) -> dict[int, float]:
    """Matmuls (384 x 384, fp32) per second at each thread count, timed now."""
    a = torch.randn(384, 384)
    rates = {}
    for n in candidates:
        torch.set_num_threads(n)
        for _ in range(3):  # warm-up: thread pool and caches
            a @ a
        t0, k = time.perf_counter(), 0
        while (elapsed := time.perf_counter() - t0) < seconds:
            a @ a
            k += 1
        rates[n] = k / elapsed
    return rates


def pick_threads(setting: int, device: torch.device) -> tuple[int, str]:
    """(torch threads, why). An explicit setting wins. Otherwise each process of this machine's torchrun
    job (or the only one) gets its share of the cores, unless other programs keep cores busy: then a
    short probe times a matmul at 1 thread, at the free cores and at the share, and the fastest wins:
    beside a busy program at normal priority, more threads can run slower than one (every matmul waits
    for the descheduled thread), beside a niced one they still win (benchmarks/results.md)."""
    if setting > 0:
        return setting, "set by --threads"
    if device.type != "cpu":
        return torch.get_num_threads(), "torch's default (the work runs on the accelerator)"
    cores, busy = free_cores()
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    share = max(1, cores // local)
    if busy < 0.5 or share == 1:
        return share, f"{cores} cores" + (f" shared by {local} processes" if local > 1 else "") + \
            "; --threads=N overrides"
    free = max(1, round(cores - busy) // local)
    rates = probe_threads(sorted({1, free, share}))
    best = 1
    for n in sorted(rates):  # more threads only for a clear gain: a stalled thread costs more than it brings
        if rates[n] > 1.2 * rates[best]:
            best = n
    shown = ", ".join(f"{n}: {r:.0f}/s" for n, r in rates.items())
    return best, f"other work keeps {busy:.1f} of {cores} cores busy; matmul probe {shown}; --threads=N overrides"


def setup_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)


def setup_cpu_allocator(device: torch.device) -> bool:
    """Keep freed memory in the process on the CPU: glibc otherwise returns every large block (a
    gradient, an embedding's backward buffer) to the OS and page-faults it back in on the next step, a
    sizeable share of a GPT-2 training step (benchmarks/results.md). Linux/glibc only; returns whether it
    applied."""
    if device.type != "cpu" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # musl or another libc: leave the allocator alone
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))


def setup_cuda_speed(device: torch.device) -> None:
    """TF32 matmuls and cuDNN autotuning on CUDA: free speed for training at no practical cost."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


@dataclass(frozen=True)
class Runtime:
    """What `setup` decided for a command: device, compute dtype, compile or not, CPU threads."""

    device: torch.device
    dtype: torch.dtype
    compile: bool
    threads: int
    why_threads: str = ""
    why_dtype: str = ""

    def autocast(self):
        """The mixed-precision context for forward passes of fp32 weights (a no-op for float32)."""
        return autocast(self.device, self.dtype)

    def describe(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.") + (f" ({self.why_dtype})" if self.why_dtype else "")
        threads = f", {self.threads} threads ({self.why_threads})" if self.device.type == "cpu" else ""
        return f"{self.device} {dtype}{', compiled' if self.compile else ''}{threads}"


def setup(rc, n_embd: int | None = None, device: str | None = None) -> Runtime:
    """Apply a RuntimeConfig: pick device, threads, dtype (on a CPU, by a probe at the model's width) and
    compile; set the process up for them. `device` overrides rc.device (torchrun's rank picks its own GPU).
    Seeding is the caller's."""
    dev = pick_device(device or rc.device)
    threads, why = pick_threads(rc.threads, dev)
    if dev.type == "cpu":
        torch.set_num_threads(threads)  # before the dtype probe: it times the threads the run will use
    dtype, why_dtype = choose_dtype(rc.dtype, dev, n_embd)
    setup_cuda_speed(dev)
    setup_cpu_allocator(dev)
    return Runtime(dev, dtype, pick_compile(rc.compile, dev), threads, why, why_dtype)
