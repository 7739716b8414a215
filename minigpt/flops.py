"""FLOPs per token and model FLOPs utilisation (MFU): how much of the hardware's peak a run uses.

The estimates follow PaLM (appendix B) and nanoGPT's `estimate_mfu`. Letters: N matmul parameters,
L n_layer, C n_embd, T the number of positions a token attends over (the sequence length).

    training:  6N + 12 L C T  FLOPs per token
    inference: 2N +  4 L C T  FLOPs per token

A parameter used in a matrix multiply costs 2 FLOPs per token forward (a multiply and an add) and 4
backward (the gradient with respect to the input and to the weight): 6N. Attention adds two matmuls
per layer with no parameters, q k^T and att v, each 2 C T FLOPs per token forward: 4 L C T forward,
12 L C T forward + backward. The whole T x T score matrix is counted, as in PaLM, although a causal
kernel can skip the masked half. For inference T is the context the new token attends to (the
sequence length in a full forward pass, the cache length when generating with a KV cache).

Which parameters count in N: those that take part in a matrix multiply. Everything except the position
embedding (a table lookup, no arithmetic) and, for an untied model, the input token embedding (also a
lookup; its twin the LM head is a matmul and counts). With the tied head of GPT-2 the token embedding
*is* the LM head and counts once, so N = total - wpe (nanoGPT's `get_num_params()`; 123,653,376 for
gpt2). Biases and norms are counted too: under 0.1% and it keeps N a plain count. Kaplan et al. drop
all embeddings instead, which undercounts small models whose LM head is a large share of the work.

MFU = (FLOPs per token x tokens per second) / peak FLOP/s, never shown above 100%. Peaks: a table of
dense bf16 tensor-core figures for common GPUs (as nanoGPT uses the A100's 312 TFLOP/s whatever the
precision), and on a CPU the rate of a large matmul in the training dtype, probed in the same run and
never cached, so a peak measured under another load cannot outlive it. Two probes:

- `matmul_peak`, train.py's: about half a second at start-up (every run pays for it), the fastest
  single product at two sizes. Quick, and only as steady as the machine is quiet.
- `steady_matmul_peak`, the bench's: the best *sustained* rate (FLOPs of back-to-back products over
  their wall time) of 1024, 2048 and 4096 squares, three rounds of ~0.7 s each per size after a
  warm-up: seconds per dtype, steady to a few percent, so the bench's MFU measures the step, not the probe.

bf16 is not probed on a CPU without native bf16: emulated, it is ~100x slower than fp32 and the probe
would take minutes.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import time

import torch

from . import runtime
from .model import GPTConfig

# Dense (no sparsity) bf16 tensor-core peaks in FLOP/s, from the vendors' datasheets. Matched against
# torch.cuda.get_device_name() in this order, so the more specific names come first. V100 and T4 have
# no bf16: their fp16 figure is given.
GPU_PEAKS: list[tuple[str, float]] = [
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("A6000", 155e12),
    ("RTX 4090", 165e12),  # with fp32 accumulation, as PyTorch runs it
    ("RTX 3090", 71e12),
    ("V100", 125e12),  # fp16
    ("T4", 65e12),  # fp16
]


def matmul_params(n_params: int, config: GPTConfig, tied: bool = True) -> int:
    """N: the parameters that take part in a matmul (all but the position and, if untied, the input
    token embedding; see the module docstring)."""
    lookups = config.block_size * config.n_embd + (0 if tied else config.vocab_size * config.n_embd)
    return n_params - lookups


def train_flops_per_token(n: int, config: GPTConfig, T: int | None = None) -> int:
    """6N + 12 L C T: forward and backward FLOPs per trained token at sequence length T (block_size)."""
    T = config.block_size if T is None else T
    return 6 * n + 12 * config.n_layer * config.n_embd * T


def inference_flops_per_token(n: int, config: GPTConfig, T: int | None = None) -> int:
    """2N + 4 L C T: forward FLOPs per token attending over T positions."""
    T = config.block_size if T is None else T
    return 2 * n + 4 * config.n_layer * config.n_embd * T


def model_flops_per_token(model: torch.nn.Module, T: int | None = None) -> int:
    """Training FLOPs per token of a GPT module, from its parameter count (`parameters()` lists a tied
    tensor once) and config; no table of minigpt.params needed, so that module may import this one."""
    n_params = sum(p.numel() for p in model.parameters())
    tied = model.lm_head.weight is model.transformer.wte.weight
    return train_flops_per_token(matmul_params(n_params, model.config, tied), model.config, T)


def mfu(flops_per_token: float, tokens_per_s: float, peak: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s as a share of the peak, never above 1.

    A run faster than the peak means the peak was under-measured (probed while other work shared the
    cores), not that the hardware did the impossible: it is said once on stderr and the MFU shown is 100%."""
    achieved = flops_per_token * tokens_per_s
    if achieved <= peak:
        return achieved / peak
    if peak not in _said_under_measured:
        _said_under_measured.add(peak)
        print(f"note: this run reached {achieved / 1e9:,.1f} GFLOP/s, more than the probed peak of "
              f"{peak / 1e9:,.1f}: the peak was under-measured (probed while the machine was busy), so MFU "
              f"shows 100%", file=sys.stderr)
    return 1.0


_said_under_measured: set[float] = set()


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo (or lscpu) names it, with the vector extensions that decide its
    matmul speed (AMX, AVX512-BF16, AVX-512, AVX2): two machines with one name can differ there."""
    name = ""
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
                break
    except OSError:
        pass
    if not name:
        try:
            out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
            name = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "")
        except (OSError, subprocess.SubprocessError):
            pass
    name = name or platform.processor() or "unknown CPU"
    flags = runtime.cpu_flags()
    isa = [f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in flags]
    return f"{name} ({', '.join(isa)})" if isa else name


PROBE_SECONDS = 0.5  # much shorter probes under-measure in a fresh process (threads and caches still cold)


def probe_size(seconds_at, budget: float = PROBE_SECONDS, largest: int = 2048) -> int:
    """The matrix size to probe with: double from 256 while one matmul (`seconds_at(n)` times it) takes
    under a tenth of the budget, up to `largest`. A slow dtype stops at a small matmul instead of taking
    minutes over a big one; a fast one reaches the size that shows its peak."""
    n = 256
    while n < largest and seconds_at(n) < budget / 10:
        n *= 2
    return n


def matmul_peak(dtype: torch.dtype, seconds: float = PROBE_SECONDS, largest: int = 2048) -> float:
    """Best FLOP/s of a square matmul in `dtype` on the CPU, measured now in about `seconds`: the
    ceiling MFU is measured against. Probed in the run that uses it, never cached, so a figure taken
    under another load cannot outlive it.

    Warm-ups first: AMX (bf16 on recent Xeons) runs far below its speed on its first calls, which would
    make every MFU off by that factor."""
    g = torch.Generator().manual_seed(0)  # its own generator: probing must not move training's random stream

    def pair(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(n, n, generator=g, dtype=dtype), torch.randn(n, n, generator=g, dtype=dtype)

    def seconds_at(n: int) -> float:
        a, b = pair(n)
        t0 = time.perf_counter()
        a @ b
        return time.perf_counter() - t0

    seconds_at(256)  # first call: library start-up
    n = probe_size(seconds_at, seconds, largest)
    # The largest size is not always the fastest (bf16 on some CPUs peaks at 1024), and a peak measured low
    # over-states every MFU: the best of n / 2 and n, half the time each.
    best = 0.0
    for size in sorted({max(256, n // 2), n}):
        a, b = pair(size)
        for _ in range(3):
            a @ b
        end = time.perf_counter() + seconds / 2
        for _ in range(100):
            t0 = time.perf_counter()
            a @ b
            t1 = time.perf_counter()
            best = max(best, 2 * size**3 / (t1 - t0))
            if t1 > end:
                break
    return best


STEADY_SIZES = (1024, 2048, 4096)


def steady_matmul_peak(dtype: torch.dtype, sizes: tuple[int, ...] = STEADY_SIZES, seconds: float = 2.0,
                       rounds: int = 3) -> float:
    """The best sustained FLOP/s of square matmuls in `dtype`: for each size, a warm-up, then `rounds`
    rounds of back-to-back products for `seconds / rounds` each; a round's rate is its FLOPs over its wall
    time (not its fastest call), the result the best round of any size. Seconds per dtype: the bench's
    probe, steadier than `matmul_peak` because no single lucky or unlucky call decides it."""
    g = torch.Generator().manual_seed(0)  # its own generator: probing must not move anyone's random stream
    best, per_round = 0.0, seconds / rounds

    def sustained(a: torch.Tensor, b: torch.Tensor, n: int, duration: float) -> float:
        k, t0 = 0, time.perf_counter()
        while True:
            a @ b
            k += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= duration:
                return 2 * n**3 * k / elapsed

    for n in sizes:
        a, b = torch.randn(n, n, generator=g, dtype=dtype), torch.randn(n, n, generator=g, dtype=dtype)
        sustained(a, b, n, per_round / 2)  # warm-up: thread pool, caches, the matrix units' first calls
        for _ in range(rounds):
            best = max(best, sustained(a, b, n, per_round))
    return best


def describe_steady_probe(sizes: tuple[int, ...] = STEADY_SIZES, seconds: float = 2.0, rounds: int = 3) -> str:
    """How `steady_matmul_peak` probed, in words for a table's header."""
    return (f"best sustained rate of back-to-back {'/'.join(map(str, sizes))} square matmuls, {rounds} rounds of "
            f"{seconds / rounds:.2g} s per size after a warm-up")


def cpu_peak(dtype: torch.dtype) -> tuple[float | None, str]:
    """(FLOP/s or None, what it is): the CPU matmul peak in `dtype`, probed now; None for an emulated bf16."""
    threads = f"{torch.get_num_threads()} threads"
    if dtype is torch.bfloat16 and not runtime.cpu_bf16_native():
        return None, (f"{cpu_name()}, {threads}: no bf16 peak, this CPU has no native bf16 (AVX-512 or AMX) "
                      "and emulated bf16 is not worth measuring; MFU not reported")
    peak = matmul_peak(dtype)
    return peak, (f"{cpu_name()}, {threads}, {peak / 1e9:,.0f} GFLOP/s "
                  f"{str(dtype).removeprefix('torch.')} matmul peak (probed now)")


def gpu_peak(name: str) -> float | None:
    """The table's bf16 peak for a GPU name (as torch.cuda.get_device_name gives it), None if unknown."""
    return next((peak for key, peak in GPU_PEAKS if key.lower() in name.lower()), None)


def device_peak(device: torch.device, dtype: torch.dtype) -> tuple[float | None, str]:
    """(peak FLOP/s or None, where it came from) for MFU on `device` training in `dtype`."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak(name)
        if peak is None:
            return None, f"{name} is not in minigpt.flops.GPU_PEAKS; MFU not reported"
        return peak, f"{name}, {peak / 1e12:,.0f} TFLOP/s dense bf16 (datasheet)"
    if device.type == "cpu":
        return cpu_peak(dtype)
    return None, f"no peak known for {device.type}; MFU not reported"
