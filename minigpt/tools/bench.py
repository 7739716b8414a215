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
from ..generate import GREEDY, compile_step, decode_steps
from ..model import GPT, GPTConfig, lm_loss
from ..optim import make_optimizer
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
    """Best bytes/s of summing an fp32 tensor of `n_bytes` (8x a large L3 by default, so it streams from
    memory): the ceiling of a decode step, which reads every weight once per token."""
    x = torch.ones(n_bytes // 4)
    x.sum()  # first touch and thread start-up
    best, end = 0.0, time.perf_counter() + seconds
    for _ in range(50):
        t0 = time.perf_counter()
        x.sum()
        t1 = time.perf_counter()
        best = max(best, x.numel() * 4 / (t1 - t0))
        if t1 > end:
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
            c.peaks["float32"] = flops.matmul_peak(torch.float32, seconds=0.5)
            c.peaks["bfloat16"] = flops.matmul_peak(torch.bfloat16, seconds=0.5) if flops.cpu_bf16_native() else None
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

# workload -> (preset, overrides, batch size); B*T >= 256 for gpt2 as the issue asks
TRAIN_WORKLOADS = {
    "train-baby": ("baby", {"vocab_size": 65}, 12),
    "train-gpt2": ("gpt2", {}, 1),
}
TRAIN_VARIANTS = {  # variant -> (dtype, compile); the first is the reference
    "fp32 eager": ("float32", False),
    "bf16 eager": ("bfloat16", False),
    "fp32 compiled": ("float32", True),
    "bf16 compiled": ("bfloat16", True),
}


def train_step_bench(preset: str, overrides: dict, batch: int, dtype_name: str, compile_: bool, steps: int,
                     warmup: int) -> dict:
    """Median time of a full training step (forward, backward, clip, fused AdamW) on random tokens."""
    torch.manual_seed(0)
    cfg = GPTConfig(**{**PRESETS[preset], **overrides, "dropout": 0.0})
    device = torch.device("cpu")
    runtime.setup_cpu_allocator(device)  # as train.py does
    model = GPT(cfg)
    opt_ = make_optimizer(model, 1e-4, 0.1, (0.9, 0.95), device)
    fwd = torch.compile(model) if compile_ else model
    ctx = runtime.autocast(device, runtime.DTYPES[dtype_name])
    T = cfg.block_size if preset != "gpt2" else 256
    x = torch.randint(0, cfg.vocab_size, (batch, T))
    y = torch.randint(0, cfg.vocab_size, (batch, T))

    def step():
        with ctx:
            loss = lm_loss(fwd(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt_.step()
        opt_.zero_grad(set_to_none=True)

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
    ms = statistics.median(times) * 1000
    tps = batch * T / (ms / 1000)
    return {"tokens_per_s": tps, "ms_per_step": ms,
            "flops_per_token": flops.model_flops_per_token(model, T),  # 6N + 12 L C T, see minigpt.tools.flops
            "compile_s": max(0.0, first - ms / 1000) if compile_ else 0.0}


def run_train(name: str, quick: bool, ceilings: Ceilings) -> list[dict]:
    preset, overrides, batch = TRAIN_WORKLOADS[name]
    steps, warmup = (3, 1) if quick else (10, 3)
    rows, ref = [], None
    for variant, (dtype, compile_) in TRAIN_VARIANTS.items():
        row = {"workload": name, "variant": variant}
        if skip_reason(dtype):
            rows.append({**row, "notes": skip_reason(dtype)})
            continue
        r = isolated(train_step_bench, preset=preset, overrides=overrides, batch=batch, dtype_name=dtype,
                     compile_=compile_, steps=steps, warmup=warmup)
        if "error" in r:
            rows.append({**row, "notes": r["error"]})
            continue
        ref = ref or r["tokens_per_s"]
        peak = ceilings.peaks.get(dtype)
        rows.append({**row, "tokens_per_s": r["tokens_per_s"], "ms_per_step": r["ms_per_step"],
                     "ratio": r["tokens_per_s"] / ref, "peak_rss_mb": r["peak_rss_mb"],
                     "mfu": flops.mfu(r["flops_per_token"], r["tokens_per_s"], peak) if peak else None,
                     "notes": f"compile {r['compile_s']:.0f}s" if compile_ else ""})
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
    compile_s = 0.0
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
            return torch.cat([prompt] + list(decode_steps(model, prompt, max_new_tokens=n, sampling=GREEDY, step=step)), 1)
    with torch.inference_mode():
        t0 = time.perf_counter()
        run(8)  # warm-up (and compilation)
        compile_s = time.perf_counter() - t0 if compile_ else 0.0
        best, out = 0.0, None
        for _ in range(reps):
            t0 = time.perf_counter()
            out = run(new_tokens)
            best = max(best, new_tokens / (time.perf_counter() - t0))
    assert out.shape[1] == prompt_len + new_tokens
    return {"tokens_per_s": best, "ms_per_step": 1000 / best, "tokens": out[0, prompt_len:].tolist(),
            "compile_s": compile_s}


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
        rows.append({**row, "tokens_per_s": r["tokens_per_s"], "ms_per_step": r["ms_per_step"],
                     "ratio": r["tokens_per_s"] / ref["tokens_per_s"], "peak_rss_mb": r["peak_rss_mb"],
                     "bandwidth": bandwidth_share(r["tokens_per_s"], weight_bytes, ceilings.bandwidth),
                     "notes": f"{new_tokens} new tokens, {weight_bytes / 1e6:,.0f} MB of weights read per token; "
                              f"greedy tokens equal to the reference's: {same}/{new_tokens}"
                              + (f"; compile {r['compile_s']:.0f}s" if compile_ else "")})
    return rows


# ---------------------------------------------------------------------------------------------------
# speedrun-cpu: the CPU speedrun against the recipe it beats, run here too

SPEEDRUN = {  # variant -> config; the first is the in-run reference
    "reference configs/baby.toml": "configs/baby.toml",
    "speedrun configs/speedrun_cpu.toml": "configs/speedrun_cpu.toml",
}


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


def run_speedrun(quick: bool, data_dir: str, runs: int = 3) -> list[dict]:
    """Wall time of `python train.py CONFIG` (launch to saved checkpoint) and its loss over the whole
    tinyshakespeare val split, for the reference recipe (nanoGPT's baby run) and for the speedrun."""
    rows, ref = [], None
    with tempfile.TemporaryDirectory(prefix="bench-speedrun-") as tmp:
        dataset = speedrun_dataset(data_dir, Path(tmp))
        for variant, config in SPEEDRUN.items():
            n_runs = 1 if quick or config == "configs/baby.toml" else runs
            for i in range(n_runs):
                out = Path(tmp) / f"out-{len(rows)}"
                cmd = [sys.executable, str(ROOT / "train.py"), str(ROOT / config), f"--out_dir={out}",
                       f"--dataset={dataset}", "--plot=false"] + (["--max_iters=50"] if quick else [])
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True)
                wall = time.perf_counter() - t0
                row = {"workload": "speedrun-cpu", "variant": variant + (f", run {i + 1}" if n_runs > 1 else "")}
                if proc.returncode:
                    rows.append({**row, "notes": f"train.py failed: {proc.stderr.strip().splitlines()[-1:]}"})
                    continue
                loaded = checkpoint.load_model(out)
                model, state = loaded.model, loaded.state
                loss, _ = evaluate_split(model, TokenDataset(resolve_dataset(state["dataset"])).splits["val"], 64)
                ref = ref or wall
                rows.append({**row, "ms_per_step": None, "ratio": ref / wall,
                             "notes": f"wall {wall:.1f}s launch to checkpoint, full-val loss {loss:.4f} "
                                      f"(target <= 1.898; nanoGPT's baby run: 134 s)"})
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
    "train-gpt2": (lambda s, c: run_train("train-gpt2", s.quick, c), True, False),
    "generate-gpt2": (lambda s, c: run_generate(s.quick, c), False, True),
    "speedrun-cpu": (lambda s, c: run_speedrun(s.quick, s.data_dir), False, False),
    "prepare": (lambda s, c: run_prepare(s.quick), False, False),
}


@dataclass
class BenchConfig:
    workloads: list[str] = opt([], f"workloads to run, as bare arguments or repeated: {', '.join(WORKLOADS)} "
                                   "(none given: all)")
    quick: bool = opt(False, "fewer steps: a smoke run, not a measurement")
    data_dir: str = opt("", "folder holding tinyshakespeare/input.txt, for speedrun-cpu when data/tinyshakespeare "
                            "is not prepared; default $MINIGPT_SHARED")


def main(argv: list[str]) -> int:
    cfg = parse_cli(argv, {"bench": BenchConfig}, "python -m minigpt bench", __doc__.splitlines()[0],
                    positional="workloads")
    s = cfg.bench
    names = s.workloads or list(WORKLOADS)
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise UserError(f"unknown workload {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
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
