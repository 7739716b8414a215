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

MFU = (FLOPs per token x tokens per second) / peak FLOP/s. Peaks: a table of dense bf16 tensor-core
figures for common GPUs (as nanoGPT uses the A100's 312 TFLOP/s whatever the precision), and on a CPU
the best rate of a large matmul in the training dtype, measured once and cached in
~/.cache/minigpt/peak.json (or $MINIGPT_CACHE) per CPU model, thread count, torch version and dtype.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from .fileio import atomic_write_json
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
    """Training FLOPs per token of a GPT module (counted from its parameters, a tied tensor once)."""
    from .params import count_params

    c = count_params(model)
    return train_flops_per_token(matmul_params(c.total, model.config, c.tied), model.config, T)


def mfu(flops_per_token: float, tokens_per_s: float, peak: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s as a share of the peak."""
    return flops_per_token * tokens_per_s / peak


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 20) -> float:
    """Best FLOP/s of an n x n matmul in `dtype` on the CPU: the ceiling MFU is measured against.

    Several warm-ups first: AMX (bf16 on recent Xeons) reached only a third of its speed on the first
    calls here, which made the peak, and so every MFU, off by 3x."""
    g = torch.Generator().manual_seed(0)  # its own generator: probing must not move training's random stream
    a, b = torch.randn(n, n, generator=g, dtype=dtype), torch.randn(n, n, generator=g, dtype=dtype)
    for _ in range(3):  # warm-up
        a @ b
    best = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def cache_file() -> Path:
    return Path(os.environ.get("MINIGPT_CACHE", Path.home() / ".cache" / "minigpt")) / "peak.json"


def cpu_peak(dtype: torch.dtype, path: Path | None = None) -> tuple[float, bool]:
    """(FLOP/s, whether it came from the cache): the CPU matmul peak for this machine and setup, probed
    once (about a second) and then read from the cache."""
    path = path or cache_file()
    key = f"{cpu_name()} | {torch.get_num_threads()} threads | torch {torch.__version__} | {dtype}"
    try:
        cache = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        cache = {}
    if isinstance(cache.get(key), (int, float)):
        return float(cache[key]), True
    peak = matmul_peak(dtype)
    cache[key] = peak
    try:
        atomic_write_json(path, cache)
    except OSError:
        pass  # a read-only home: measure again next time
    return peak, False


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
        peak, cached = cpu_peak(dtype)
        how = f"cached in {cache_file()}" if cached else "measured now, cached"
        return peak, (f"{cpu_name()}, {torch.get_num_threads()} threads, {peak / 1e9:,.0f} GFLOP/s "
                      f"{str(dtype).removeprefix('torch.')} matmul peak ({how})")
    return None, f"no peak known for {device.type}; MFU not reported"
