"""The benchmark command: `python -m minigpt bench [WORKLOAD ...] [--quick]` prints a markdown table.

Each workload measures variants of one job against an in-run reference and reports tokens/s, ms/step,
the ratio to the reference and the peak RSS of the process that ran it (every variant runs in a fresh
process, so peaks do not leak from one to the next). Every row names the machine, and the ceilings it
is compared with are probed in the same run: the matmul peaks (MFU of training rows) and the streaming
read bandwidth (decode rows: one generated token reads every weight once, so bandwidth / weight bytes
is the fastest decode can go). Rows this CPU cannot run well (bf16 without native bf16) are skipped
with a note. Benchmarks are not tests: they assert nothing and take minutes.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import multiprocessing as mp
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import checkpoint, quant, runtime
from ..config import PRESETS, opt, parse_cli
from ..corpus import shakespeare
from ..data import TokenDataset, resolve_dataset
from ..errors import UserError, run_cli
from ..generate import GREEDY, compile_step, generate
from ..kernels import lm_loss
from ..model import GPT, GPTConfig
from ..optim import clip_and_step, make_optimizer
from . import flops
from .evaluate import evaluate_split


def _project_root() -> Path:
    """The checkout holding train.py and data/prepare.py (the benchmarks run them as a user does)."""
    here = Path(__file__).resolve()
    return next((p for p in here.parents if (p / "train.py").is_file()), here.parent.parent)


ROOT = _project_root()
NO_BF16 = "skipped: no native bf16 on this CPU (emulated, it runs at ~1 GFLOP/s and would take minutes)"


# ---------------------------------------------------------------------------------------------------
# The machine: its name and the ceilings rows are compared with, probed in this run

def machine() -> str:
    return f"{flops.cpu_name()}, {torch.get_num_threads()} threads"


def read_bandwidth(n_bytes: int = 256 << 20, seconds: float = 0.5) -> float:
    """Best bytes/s of reading an fp32 tensor of `n_bytes` (8x a large L3 by default, so it streams from
    memory): the ceiling of a decode step, which reads every weight once per token. The best of three
    reading kernels, alternated: on a Zen 4 here sum() read 17% slower than amax() and dot(), so a probe
    by sum() alone under-measured the ceiling and over-stated every decode row's share of it."""
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


@dataclass
class Ceilings:
    """What this run measured the machine can do; None where not probed (or, for bf16, not native)."""

    peaks: dict[str, float | None]  # dtype name -> matmul FLOP/s
    bandwidth: float | None = None

    @classmethod
    def probe(cls, matmul: bool, bandwidth: bool, say=print) -> "Ceilings":
        c = cls({"float32": None, "bfloat16": None})
        if matmul:
            c.peaks["float32"] = flops.matmul_peak(torch.float32)
            c.peaks["bfloat16"] = flops.matmul_peak(torch.bfloat16) if flops.cpu_bf16_native() else None
            bf16 = (f"{c.peaks['bfloat16'] / 1e9:,.0f} GFLOP/s" if c.peaks["bfloat16"]
                    else "not probed (no native bf16 on this CPU)")
            say(f"matmul peak, probed now: fp32 {c.peaks['float32'] / 1e9:,.0f} GFLOP/s, bf16 {bf16}")
        if bandwidth:
            c.bandwidth = read_bandwidth()
            say(f"streaming read bandwidth, probed now: {c.bandwidth / 1e9:,.1f} GB/s")
        return c


def bandwidth_share(tokens_per_s: float, weight_bytes: int, bandwidth: float | None) -> float | None:
    """Decode speed as a share of the bandwidth limit (bandwidth / bytes of weights read per token)."""
    return tokens_per_s * weight_bytes / bandwidth if bandwidth else None


def skip_reason(dtype_name: str) -> str | None:
    """Why a variant in this dtype is not run on this CPU, or None to run it."""
    return NO_BF16 if dtype_name == "bfloat16" and not flops.cpu_bf16_native() else None


# ---------------------------------------------------------------------------------------------------
# Running a variant in a fresh process

def _child(conn, fn, kwargs):
    try:
        result = fn(**kwargs)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        conn.send(result)
    except Exception as e:  # report, do not hang the parent
        conn.send({"error": f"{type(e).__name__}: {e}"})


def isolated(fn, **kwargs) -> dict:
    """Run `fn(**kwargs)` in a fresh process and return its result with that process's peak RSS."""
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


# ---------------------------------------------------------------------------------------------------
# train-*: full training steps

# workload -> (preset, overrides, batch size, sequence length). GPT-2 runs 8 x 256 = 2,048 tokens a step: the
# optimizer's pass over 124M weights and the other per-step costs are then ~5% of a step, not ~40% at 1 x 256.
TRAIN_WORKLOADS = {
    "train-baby": ("baby", {"vocab_size": 65}, 12, 64),
    "train-gpt2": ("gpt2", {}, 8, 256),
}
TRAIN_VARIANTS = {  # variant -> (dtype, compile); the first is the reference
    "fp32 eager": ("float32", False),
    "bf16 eager": ("bfloat16", False),
    "fp32 compiled": ("float32", True),
    "bf16 compiled": ("bfloat16", True),
}
# nanoGPT's own step at the same shape, with --nanogpt_dir naming a checkout of karpathy/nanoGPT (run from there)
NANOGPT_VARIANT = "nanoGPT fp32 eager"


def _timed(step, steps: int, warmup: int) -> tuple[float, float]:
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


def train_step_bench(preset: str, overrides: dict, batch: int, T: int, dtype_name: str, compile_: bool, steps: int,
                     warmup: int) -> dict:
    """Median time of a full training step (forward, backward, clip, fused AdamW) on random tokens, with
    the functions train.py's step calls (lm_loss, make_optimizer, clip_and_step)."""
    torch.manual_seed(0)
    cfg = GPTConfig(**{**PRESETS[preset], **overrides, "dropout": 0.0})
    device = torch.device("cpu")
    runtime.setup_cpu_allocator(device)  # as train.py does
    model = GPT(cfg)
    opt_ = make_optimizer(model, 1e-4, 0.1, (0.9, 0.95), device)
    scaler = torch.amp.GradScaler("cpu", enabled=False)  # bf16 needs no loss scale
    fwd = torch.compile(model) if compile_ else model
    ctx = runtime.autocast(device, runtime.DTYPES[dtype_name])
    x = torch.randint(0, cfg.vocab_size, (batch, T))
    y = torch.randint(0, cfg.vocab_size, (batch, T))

    def step():
        with ctx:
            loss = lm_loss(fwd(x), y)
        loss.backward()
        clip_and_step(opt_, scaler, model.parameters(), 1.0)
        opt_.zero_grad(set_to_none=True)

    s, first = _timed(step, steps, warmup)
    return {"tokens_per_s": batch * T / s, "ms_per_step": s * 1000,
            "flops_per_token": flops.model_flops_per_token(model, T),  # 6N + 12 L C T, see minigpt.tools.flops
            "compile_s": max(0.0, first - s) if compile_ else 0.0}


def nanogpt_step_bench(path: str, batch: int, T: int, steps: int, warmup: int) -> dict:
    """nanoGPT's GPT-2 124M step from its own checkout: forward with targets, backward, clip_grad_norm_,
    the AdamW its configure_optimizers builds (fused only on CUDA, so its for-each AdamW here), in fp32."""
    sys.path.insert(0, path)
    from model import GPT as NanoGPT, GPTConfig as NanoConfig  # nanoGPT's model.py, not ours

    torch.manual_seed(0)
    model = NanoGPT(NanoConfig(block_size=1024, vocab_size=50257, n_layer=12, n_head=12, n_embd=768, dropout=0.0,
                               bias=True))
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its parameter groups
        opt_ = model.configure_optimizers(weight_decay=0.1, learning_rate=1e-4, betas=(0.9, 0.95), device_type="cpu")
    x = torch.randint(0, 50257, (batch, T))
    y = torch.randint(0, 50257, (batch, T))

    def step():
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt_.step()
        opt_.zero_grad(set_to_none=True)

    s, _ = _timed(step, steps, warmup)
    n = model.get_num_params()  # without the position embedding: our N
    return {"tokens_per_s": batch * T / s, "ms_per_step": s * 1000,
            "flops_per_token": 6 * n + 12 * 12 * 768 * T}


def run_train(name: str, quick: bool, ceilings: Ceilings, nanogpt_dir: str = "") -> list[dict]:
    preset, overrides, batch, T = TRAIN_WORKLOADS[name]
    steps, warmup = (3, 1) if quick else (10, 3)
    variants = dict(TRAIN_VARIANTS)
    if name == "train-gpt2" and nanogpt_dir:
        variants[NANOGPT_VARIANT] = ("float32", False)
    rows, ref = [], None
    for variant, (dtype, compile_) in variants.items():
        row = {"workload": name, "variant": variant}
        if skip_reason(dtype):
            rows.append({**row, "notes": skip_reason(dtype)})
            continue
        if variant == NANOGPT_VARIANT:
            r = isolated(nanogpt_step_bench, path=str(Path(nanogpt_dir).resolve()), batch=batch, T=T, steps=steps, warmup=warmup)
        else:
            r = isolated(train_step_bench, preset=preset, overrides=overrides, batch=batch, T=T, dtype_name=dtype,
                         compile_=compile_, steps=steps, warmup=warmup)
        if "error" in r:
            rows.append({**row, "notes": r["error"]})
            continue
        ref = ref or r["tokens_per_s"]
        peak = ceilings.peaks.get(dtype)
        notes = [f"{batch} x {T} tokens"] + ([f"compile {r['compile_s']:.0f}s"] if compile_ else [])
        rows.append({**row, "tokens_per_s": r["tokens_per_s"], "ms_per_step": r["ms_per_step"],
                     "ratio": r["tokens_per_s"] / ref, "peak_rss_mb": r["peak_rss_mb"],
                     "mfu": flops.mfu(r["flops_per_token"], r["tokens_per_s"], peak) if peak else None,
                     "notes": ", ".join(notes)})
    return rows


# ---------------------------------------------------------------------------------------------------
# generate-gpt2: decoding, against transformers and against the bandwidth limit

# GPT-2 124M (random weights, built here), batch 1, a 16-token prompt, greedy
GENERATE_VARIANTS = {  # variant -> (engine, dtype, quantize, compile the decode step); the first is the reference
    "transformers generate fp32": ("transformers", "float32", "none", False),
    "minigpt fp32 (KV cache)": ("minigpt", "float32", "none", False),
    "minigpt bf16 (KV cache)": ("minigpt", "bfloat16", "none", False),
    "minigpt fp32 compiled": ("minigpt", "float32", "none", True),
    "minigpt bf16 compiled": ("minigpt", "bfloat16", "none", True),
    "minigpt int8 weight-only compiled": ("minigpt", "float32", "int8", True),
}


def decode_weight_bytes(config: GPTConfig, dtype_name: str, tied: bool = True, quantize: str = "none") -> int:
    """Bytes of weights one decoded token reads: every matmul parameter once (the position embedding is a
    one-row lookup); the KV cache's reads are left out (small next to GPT-2's weights at these lengths).
    int8: one byte per matmul weight, plus the fp32 scale of each output row and the biases and
    LayerNorms in `dtype_name`."""
    with torch.device("meta"):
        model = GPT(config)
    n = flops.matmul_params(sum(p.numel() for p in model.parameters()), config, tied)
    if quantize == "none":
        return n * runtime.DTYPES[dtype_name].itemsize
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    weights = sum(m.weight.numel() for m in linears)
    rows = sum(m.out_features for m in linears)
    return weights + 4 * rows + (n - weights) * runtime.DTYPES[dtype_name].itemsize


def generate_bench(engine: str, dtype_name: str, prompt_len: int, new_tokens: int, reps: int,
                   quantize: str = "none", compile_: bool = False) -> dict:
    """Best-of-`reps` tokens/s of greedy generation with GPT-2 124M's shape; the same weights in every process."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**PRESETS["gpt2"])).eval()
    prompt = torch.randint(0, model.config.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(1))
    if engine == "transformers":
        from transformers import GPT2Config, GPT2LMHeadModel  # optional, and seconds to import

        from .. import hf

        ref = GPT2LMHeadModel(GPT2Config(**hf.hf_config(model.config))).eval()
        missing, unexpected = ref.load_state_dict(hf.to_hf_state_dict(model), strict=False)
        assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)  # the head is tied
        ref.generation_config.eos_token_id = None  # never stop early: exactly new_tokens tokens
        mask = torch.ones_like(prompt)

        def run(n: int) -> torch.Tensor:
            return ref.generate(prompt, attention_mask=mask, max_new_tokens=n, do_sample=False, pad_token_id=0)
    else:
        quant.quantize(model.to(runtime.DTYPES[dtype_name]), quantize)
        step = compile_step(model) if compile_ else None

        def run(n: int) -> torch.Tensor:
            return generate(model, prompt, max_new_tokens=n, sampling=GREEDY, step=step)
    with torch.inference_mode():
        t0 = time.perf_counter()
        run(8)  # warm-up (and compilation)
        compile_s = time.perf_counter() - t0 if compile_ else 0.0
        # This VM's read bandwidth moves within a minute (31-48 GB/s) and between processes (33-65 GB/s in
        # launches seconds apart): reads probed in this process between the repetitions, and each repetition
        # paired with the better of the reads just before and just after it
        best, out, paired, reads = 0.0, None, 0.0, [read_bandwidth(seconds=0.25)]
        for _ in range(reps):
            t0 = time.perf_counter()
            out = run(new_tokens)
            tokens_per_s = new_tokens / (time.perf_counter() - t0)
            reads.append(read_bandwidth(seconds=0.25))
            if tokens_per_s > best:
                best, paired = tokens_per_s, max(reads[-2:])
    assert out.shape[1] == prompt_len + new_tokens
    return {"tokens_per_s": best, "ms_per_step": 1000 / best, "tokens": out[0, prompt_len:].tolist(),
            "compile_s": compile_s, "bandwidth": max(reads), "paired_bandwidth": paired}


def run_generate(quick: bool, ceilings: Ceilings) -> list[dict]:
    new_tokens, reps = (64, 1) if quick else (256, 3)
    rows, ref = [], None
    for variant, (engine, dtype, quantize, compile_) in GENERATE_VARIANTS.items():
        row = {"workload": "generate-gpt2", "variant": variant}
        if skip_reason(dtype):
            rows.append({**row, "notes": skip_reason(dtype)})
            continue
        r = isolated(generate_bench, engine=engine, dtype_name=dtype, prompt_len=16, new_tokens=new_tokens, reps=reps,
                     quantize=quantize, compile_=compile_)
        if "error" in r:
            rows.append({**row, "notes": r["error"]})
            continue
        ref = ref or r
        same = sum(a == b for a, b in zip(r["tokens"], ref["tokens"]))
        weight_bytes = decode_weight_bytes(GPTConfig(**PRESETS["gpt2"]), dtype, quantize=quantize)
        # the row's share: its fastest repetition against the read probed beside it in the same process; the
        # notes add the stricter one, against the best read probed anywhere in the run
        best_read = max(ceilings.bandwidth or 0.0, r["bandwidth"])
        strict = bandwidth_share(r["tokens_per_s"], weight_bytes, best_read)
        rows.append({**row, "tokens_per_s": r["tokens_per_s"], "ms_per_step": r["ms_per_step"],
                     "ratio": r["tokens_per_s"] / ref["tokens_per_s"], "peak_rss_mb": r["peak_rss_mb"],
                     "bandwidth": bandwidth_share(r["tokens_per_s"], weight_bytes, r["paired_bandwidth"]),
                     "notes": f"{new_tokens} new tokens, {weight_bytes / 1e6:,.0f} MB of weights read per token, "
                              f"limit at {r['paired_bandwidth'] / 1e9:.1f} GB/s (read beside the fastest repetition); "
                              f"{strict:.0%} of the best read anywhere in the run ({best_read / 1e9:.1f} GB/s); "
                              f"greedy tokens equal to the reference's: {same}/{new_tokens}"
                              + (f"; compile {r['compile_s']:.0f}s" if compile_ else "")})
    return rows


# ---------------------------------------------------------------------------------------------------
# speedrun-cpu: the CPU speedrun against the recipe it beats, run here too

SPEEDRUN = {  # variant -> (config, runs, target); the first is the in-run reference
    "reference configs/baby.toml (nanoGPT's baby recipe)": ("configs/baby.toml", 1, ""),
    "speedrun configs/speedrun_cpu.toml": ("configs/speedrun_cpu.toml", 3, "goal: loss <= 1.898 in 1/6 of the reference's wall"),
    "quality configs/quality_cpu.toml": ("configs/quality_cpu.toml", 3, "goal: loss <= 1.65 within the reference's wall"),
}
# nanoGPT's documented CPU run of shakespeare_char (its README), for --nanogpt_dir
NANOGPT_BABY = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1",
                "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--max_iters=2000",
                "--lr_decay_iters=2000", "--dropout=0.0"]
# Its checkpoint's loss over the whole val split, in the windows minigpt's evaluate uses (run inside its checkout)
NANOGPT_FULL_VAL = """
import sys, numpy as np, torch
from model import GPT, GPTConfig
ck = torch.load(sys.argv[1], map_location="cpu")
m = GPT(GPTConfig(**ck["model_args"]))
m.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in ck["model"].items()})
m.eval()
data = np.fromfile("data/shakespeare_char/val.bin", dtype=np.uint16).astype(np.int64)
T, n, total = m.config.block_size, len(data) - 1, 0.0
with torch.no_grad():
    for s in range(0, n, T):
        e = min(s + T, n)
        _, loss = m(torch.from_numpy(data[s:e])[None], torch.from_numpy(data[s + 1:e + 1])[None])
        total += loss.item() * (e - s)
print(total / n)
"""


def tinyshakespeare_input(data_dir: str) -> Path:
    """tinyshakespeare's input.txt under --data_dir, else $MINIGPT_SHARED (either the folder holding
    tinyshakespeare/ or its parent holding data/tinyshakespeare/)."""
    base = data_dir or os.environ.get("MINIGPT_SHARED", "")
    for cand in ((Path(base) / "tinyshakespeare" / "input.txt", Path(base) / "data" / "tinyshakespeare" / "input.txt")
                 if base else ()):
        if cand.is_file():
            return cand
    where = f"no tinyshakespeare/input.txt under {base}" if base else "--data_dir is not set (nor MINIGPT_SHARED)"
    raise UserError(f"speedrun-cpu needs tinyshakespeare and {where}; pass --data_dir=FOLDER holding "
                    f"tinyshakespeare/input.txt, or prepare it with `python data/prepare.py tinyshakespeare`")


def speedrun_dataset(data_dir: str, tmp: Path) -> Path:
    """The prepared tinyshakespeare: the project's data/tinyshakespeare if there, else prepared into `tmp`."""
    prepared = ROOT / "data" / "tinyshakespeare"
    if (prepared / "meta.json").is_file():
        return prepared
    out = tmp / "tinyshakespeare"
    subprocess.run([sys.executable, str(ROOT / "data" / "prepare.py"), "tinyshakespeare",
                    f"--input={tinyshakespeare_input(data_dir)}", f"--out={out}"], check=True, stdout=subprocess.DEVNULL)
    return out


def _run_timed(cmd: list[str], cwd: Path | None = None) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    return time.perf_counter() - t0, proc


def _failed(what: str, proc: subprocess.CompletedProcess) -> str:
    return f"{what} failed: {' '.join(proc.stderr.strip().splitlines()[-1:])}"


def run_nanogpt(nanogpt: Path, input_txt, quick: bool) -> dict:
    """nanoGPT's baby command in its own checkout (its data prepared there first, from the same text), timed
    from launch to exit, and its checkpoint's loss over the whole val split."""
    row = {"workload": "speedrun-cpu", "variant": f"peer: nanoGPT's baby command ({nanogpt})"}
    data = nanogpt / "data" / "shakespeare_char"
    if not (data / "val.bin").is_file():
        shutil.copyfile(input_txt(), data / "input.txt")  # its prepare.py downloads it otherwise
        proc = subprocess.run([sys.executable, "prepare.py"], capture_output=True, text=True, cwd=data)
        if proc.returncode:
            return {**row, "notes": _failed("nanoGPT's data/shakespeare_char/prepare.py", proc)}
    with tempfile.TemporaryDirectory(prefix="bench-nanogpt-") as out:
        wall, proc = _run_timed([sys.executable, "train.py", *NANOGPT_BABY, f"--out_dir={out}"]
                            + (["--max_iters=50", "--lr_decay_iters=50", "--eval_interval=50"] if quick else []), cwd=nanogpt)
        if proc.returncode:
            return {**row, "notes": _failed("nanoGPT's train.py", proc)}
        ev = subprocess.run([sys.executable, "-c", NANOGPT_FULL_VAL, str(Path(out) / "ckpt.pt")], capture_output=True,
                            text=True, cwd=nanogpt)
        if ev.returncode:
            return {**row, "notes": _failed("evaluating nanoGPT's checkpoint", ev)}
    return {**row, "wall": wall, "loss": float(ev.stdout.split()[-1])}


def run_speedrun(quick: bool, data_dir: str, nanogpt_dir: str = "", runs: int = 3) -> list[dict]:
    """Wall time of `python train.py CONFIG` (launch to saved checkpoint) and its loss over the whole
    tinyshakespeare val split: the reference recipe (nanoGPT's baby run, in minigpt) once, each recipe with
    `runs` seeds and a summary row; with `nanogpt_dir`, nanoGPT's own baby run beside them."""
    rows, ref = [], None

    def add(row: dict, target: str = "") -> None:
        nonlocal ref
        ref = ref or row["wall"]
        rows.append({**row, "ratio": ref / row["wall"],
                     "notes": f"wall {row['wall']:.1f}s launch to checkpoint, full-val loss {row['loss']:.4f}"
                              + (f"; {target}" if target else "")})

    with tempfile.TemporaryDirectory(prefix="bench-speedrun-") as tmp:
        dataset = speedrun_dataset(data_dir, Path(tmp))
        for variant, (config, n_runs, target) in SPEEDRUN.items():
            n_runs = 1 if quick else n_runs
            done = []
            for i in range(n_runs):
                out = Path(tmp) / f"out-{len(rows)}"
                row = {"workload": "speedrun-cpu", "variant": variant + (f", seed {1337 + i}" if n_runs > 1 else "")}
                wall, proc = _run_timed([sys.executable, str(ROOT / "train.py"), str(ROOT / config), f"--out_dir={out}",
                                     f"--dataset={dataset}", "--plot=false", f"--seed={1337 + i}"]
                                    + (["--max_iters=50", "--lr_decay_iters=50", "--cooldown_iters=20"] if quick else []))
                if proc.returncode:
                    rows.append({**row, "notes": _failed("train.py", proc)})
                    continue
                loaded = checkpoint.load_model(out)
                loss, _ = evaluate_split(loaded.model, TokenDataset(resolve_dataset(loaded.state["dataset"])).splits["val"], 64)
                done.append({**row, "wall": wall, "loss": loss})
                add(done[-1], target)
            if len(done) > 1:
                walls, losses = [r["wall"] for r in done], [r["loss"] for r in done]
                add({"workload": "speedrun-cpu", "variant": variant + f", mean of {len(done)}",
                     "wall": statistics.mean(walls), "loss": statistics.mean(losses)},
                    f"worst {max(losses):.4f}, slowest {max(walls):.1f}s ({ref / max(walls):.2f}x); {target}")
        if nanogpt_dir:
            peer = run_nanogpt(Path(nanogpt_dir), lambda: tinyshakespeare_input(data_dir), quick)
            if "wall" in peer:
                add(peer, "the same recipe in nanoGPT, run here")
            else:
                rows.append(peer)
    return rows


# ---------------------------------------------------------------------------------------------------
# prepare: GPT-2 BPE preparation speed and memory

def make_text_corpus(folder, n_bytes: int, seed: int = 0):
    """About `n_bytes` of text in ~5 MB files: the bundled plays, each copy with its speeches shuffled."""
    speeches = "\n".join(d.text() for d in shakespeare().documents()).split("\n\n")
    rng, folder, written, i = random.Random(seed), Path(folder), 0, 0
    folder.mkdir(parents=True, exist_ok=True)
    while written < n_bytes:
        rng.shuffle(speeches)
        data = "\n\n".join(speeches).encode("utf-8")
        (folder / f"part_{i:05d}.txt").write_bytes(data)
        written, i = written + len(data), i + 1
    return folder, written


def _tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, from /proc (Linux)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmRSS:")))
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration):
            pass
    return total / 1024


def prepare_bench(source: str, num_proc: int, out: str) -> dict:
    """Run `python data/prepare.py SOURCE --tokenizer=gpt2` as a user does (start-up included): throughput,
    peak RSS of its whole process tree (sampled) and of its largest single process (getrusage)."""
    cmd = [sys.executable, str(ROOT / "data" / "prepare.py"), source, "--tokenizer=gpt2", f"--num_proc={num_proc}",
           f"--out={out}", "--overwrite"]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:  # a file, not a pipe: a full pipe would stall the child
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        tree = 0.0
        while proc.poll() is None:
            tree = max(tree, _tree_rss_mb(proc.pid))
            time.sleep(0.1)
        wall = time.perf_counter() - t0
        if proc.returncode:
            err.seek(0)
            last = [ln for ln in err.read().replace("\r", "\n").splitlines() if ln.strip()][-1:]
            raise RuntimeError(f"data/prepare.py failed with status {proc.returncode}: {' '.join(last)}")
    meta = json.loads((Path(out) / "meta.json").read_text())
    return {"wall_s": wall, "tokens_per_s": (meta["train_tokens"] + meta["val_tokens"]) / wall,
            "mb_per_s": (meta["train_bytes"] + meta["val_bytes"]) / 1e6 / wall, "tree_peak_mb": tree,
            "largest_process_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def run_prepare(quick: bool) -> list[dict]:
    """GPT-2 BPE preparation: --num_proc=2 vs the --num_proc=1 reference on the same text, then the peak
    memory of preparing ~2 GB of text (~50 MB with --quick)."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    rows, ref = [], None
    try:
        small, n_small = make_text_corpus(tmp / "small", 50_000_000 if quick else 300_000_000)
        for num_proc in (1, 2):
            row = {"workload": "prepare", "variant": f"gpt2 num_proc={num_proc}"}
            r = isolated(prepare_bench, source=str(small), num_proc=num_proc, out=str(tmp / f"out{num_proc}"))
            if "error" in r:
                rows.append({**row, "notes": r["error"]})
                continue
            ref = ref or r["tokens_per_s"]
            rows.append({**row, "tokens_per_s": r["tokens_per_s"], "ratio": r["tokens_per_s"] / ref,
                         "peak_rss_mb": r["tree_peak_mb"],
                         "notes": f"{r['mb_per_s']:.1f} MB/s of text, {n_small / 1e6:,.0f} MB corpus, "
                                  f"{r['wall_s']:.0f}s with start-up"})
            shutil.rmtree(tmp / f"out{num_proc}", ignore_errors=True)
        big, n_big = (small, n_small) if quick else make_text_corpus(tmp / "big", 2_000_000_000, seed=1)
        row = {"workload": "prepare", "variant": "memory, num_proc=2"}
        r = isolated(prepare_bench, source=str(big), num_proc=2, out=str(tmp / "big_out"))
        if "error" in r:
            rows.append({**row, "notes": r["error"]})
        else:
            rows.append({**row, "tokens_per_s": r["tokens_per_s"], "peak_rss_mb": r["tree_peak_mb"],
                         "notes": f"{n_big / 1e9:.2f} GB of text in {r['wall_s']:.0f}s; RSS of the whole process tree "
                                  f"(sampled), largest single process {r['largest_process_mb']:,.0f} MB; "
                                  f"target < 1024 MB"})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


# ---------------------------------------------------------------------------------------------------
# The table and the command line

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


WORKLOADS = {  # name -> (run(settings, ceilings), needs the matmul peaks, needs the bandwidth)
    "train-baby": (lambda s, c: run_train("train-baby", s.quick, c), True, False),
    "train-gpt2": (lambda s, c: run_train("train-gpt2", s.quick, c, s.nanogpt_dir), True, False),
    "generate-gpt2": (lambda s, c: run_generate(s.quick, c), False, True),
    "speedrun-cpu": (lambda s, c: run_speedrun(s.quick, s.data_dir, s.nanogpt_dir), False, False),
    "prepare": (lambda s, c: run_prepare(s.quick), False, False),
}


@dataclass
class BenchConfig:
    workloads: list[str] = opt([], f"workloads to run, as bare arguments or repeated: {', '.join(WORKLOADS)} "
                                   "(none given: all)")
    quick: bool = opt(False, "fewer steps: a smoke run, not a measurement")
    data_dir: str = opt("", "folder holding tinyshakespeare/input.txt, for speedrun-cpu when data/tinyshakespeare "
                            "is not prepared; default $MINIGPT_SHARED")
    nanogpt_dir: str = opt("", "a karpathy/nanoGPT checkout, run side by side as a peer: train-gpt2 adds its fp32 "
                               "step, speedrun-cpu its own baby command, evaluated the same way")


def main(argv: list[str]) -> int:
    cfg = parse_cli(argv, {"bench": BenchConfig}, "python -m minigpt bench", __doc__.splitlines()[0],
                    positional="workloads")
    s = cfg.bench
    names = s.workloads or list(WORKLOADS)
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise UserError(f"unknown workload {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    if s.nanogpt_dir and not all((Path(s.nanogpt_dir) / f).is_file() for f in ("train.py", "model.py")):
        raise UserError(f"--nanogpt_dir={s.nanogpt_dir} holds no nanoGPT checkout (train.py and model.py); clone "
                        f"karpathy/nanoGPT there, or leave --nanogpt_dir out")
    if "speedrun-cpu" in names and not (ROOT / "data" / "tinyshakespeare" / "meta.json").is_file():
        tinyshakespeare_input(s.data_dir)  # fail now, not after the other workloads
    name = machine()
    print(f"machine: {name}, torch {torch.__version__}", flush=True)
    ceilings = Ceilings.probe(matmul=any(WORKLOADS[n][1] for n in names),
                              bandwidth=any(WORKLOADS[n][2] for n in names), say=lambda m: print(m, flush=True))
    rows = []
    for n in names:
        print(f"\nrunning {n}{' (quick)' if s.quick else ''}...", flush=True)
        rows += WORKLOADS[n][0](s, ceilings)
        print(format_rows(rows, name), flush=True)
    return 0


if __name__ == "__main__":
    run_cli(main)
