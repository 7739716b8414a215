"""The benchmark command: `python -m minigpt.bench [WORKLOAD ...] [--quick]` prints a markdown table.

Each workload measures variants of one job against an in-run reference (the fp32 eager variant of the
same model) and reports tokens/s, ms/step, the ratio to the reference and the peak RSS of the process
that ran it (every variant runs in a fresh process, so peaks do not leak from one to the next).
Benchmarks are not tests: they assert nothing and take minutes.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import time

import torch

from .config import PRESETS
from .errors import UserError, run_cli
from .flops import cpu_name, matmul_peak, model_flops_per_token
from .model import GPT, GPTConfig, lm_loss
from .optim import make_optimizer
from . import runtime

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
    dtype = runtime.DTYPES[dtype_name]
    model = GPT(cfg)
    opt = make_optimizer(model, 1e-4, 0.1, (0.9, 0.95), device)
    fwd = torch.compile(model) if compile_ else model
    ctx = runtime.autocast(device, dtype)
    T = cfg.block_size if preset != "gpt2" else 256
    x = torch.randint(0, cfg.vocab_size, (batch, T))
    y = torch.randint(0, cfg.vocab_size, (batch, T))

    def step():
        with ctx:
            loss = lm_loss(fwd(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

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
    flops_per_token = model_flops_per_token(model, T)  # 6N + 12 L C T, see minigpt.flops
    tps = batch * T / (ms / 1000)
    return {"tokens_per_s": tps, "ms_per_step": ms, "flops": flops_per_token * tps,
            "compile_s": max(0.0, first - ms / 1000) if compile_ else 0.0}


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
    result = parent.recv()
    p.join()
    return result


def run_train(name: str, quick: bool, peak_bf16: float) -> list[dict]:
    preset, overrides, batch = TRAIN_WORKLOADS[name]
    steps, warmup = (3, 1) if quick else (10, 3)
    rows, ref = [], None
    for variant, (dtype, compile_) in TRAIN_VARIANTS.items():
        r = isolated(train_step_bench, preset=preset, overrides=overrides, batch=batch, dtype_name=dtype,
                     compile_=compile_, steps=steps, warmup=warmup)
        if "error" in r:
            rows.append({"workload": name, "variant": variant, "notes": r["error"]})
            continue
        ref = ref or r["tokens_per_s"]
        rows.append({"workload": name, "variant": variant, "tokens_per_s": r["tokens_per_s"],
                     "ms_per_step": r["ms_per_step"], "ratio": r["tokens_per_s"] / ref,
                     "mfu": r["flops"] / peak_bf16, "peak_rss_mb": r["peak_rss_mb"],
                     "notes": f"compile {r['compile_s']:.0f}s" if compile_ else ""})
    return rows


# generate-gpt2: GPT-2 124M (random weights, built here), batch 1, a 16-token prompt, greedy
GENERATE_VARIANTS = {  # variant -> (engine, dtype); the first is the reference
    "transformers generate fp32": ("transformers", "float32"),
    "minigpt fp32 (KV cache)": ("minigpt", "float32"),
    "minigpt bf16 (KV cache)": ("minigpt", "bfloat16"),
}


def generate_bench(engine: str, dtype_name: str, prompt_len: int, new_tokens: int, reps: int) -> dict:
    """Best-of-`reps` tokens/s of greedy generation with GPT-2 124M's shape; the same weights in every process."""
    from .generate import GREEDY, generate

    torch.manual_seed(0)
    model = GPT(GPTConfig(**PRESETS["gpt2"])).eval()
    prompt = torch.randint(0, model.config.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(1))
    if engine == "transformers":
        from transformers import GPT2Config, GPT2LMHeadModel

        from . import hf

        ref = GPT2LMHeadModel(GPT2Config(**hf.hf_config(model.config))).eval()
        missing, unexpected = ref.load_state_dict(hf.to_hf_state_dict(model), strict=False)
        assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)  # the head is tied
        ref.generation_config.eos_token_id = None  # never stop early: exactly new_tokens tokens
        mask = torch.ones_like(prompt)
        run = lambda n: ref.generate(prompt, attention_mask=mask, max_new_tokens=n, do_sample=False,  # noqa: E731
                                     pad_token_id=0)
    else:
        model.to(runtime.DTYPES[dtype_name])
        run = lambda n: generate(model, prompt, max_new_tokens=n, sampling=GREEDY)  # noqa: E731
    with torch.inference_mode():
        run(8)  # warm-up
        best, out = 0.0, None
        for _ in range(reps):
            t0 = time.perf_counter()
            out = run(new_tokens)
            best = max(best, new_tokens / (time.perf_counter() - t0))
    assert out.shape[1] == prompt_len + new_tokens
    return {"tokens_per_s": best, "ms_per_step": 1000 / best, "tokens": out[0, prompt_len:].tolist()}


def run_generate(quick: bool) -> list[dict]:
    new_tokens, reps = (64, 1) if quick else (256, 3)
    rows, ref = [], None
    for variant, (engine, dtype) in GENERATE_VARIANTS.items():
        r = isolated(generate_bench, engine=engine, dtype_name=dtype, prompt_len=16, new_tokens=new_tokens, reps=reps)
        if "error" in r:
            rows.append({"workload": "generate-gpt2", "variant": variant, "notes": r["error"]})
            continue
        ref = ref or r
        same = sum(a == b for a, b in zip(r["tokens"], ref["tokens"]))
        rows.append({"workload": "generate-gpt2", "variant": variant, "tokens_per_s": r["tokens_per_s"],
                     "ms_per_step": r["ms_per_step"], "ratio": r["tokens_per_s"] / ref["tokens_per_s"],
                     "peak_rss_mb": r["peak_rss_mb"],
                     "notes": f"{new_tokens} new tokens; greedy tokens equal to the reference's: {same}/{new_tokens}"})
    return rows


SPEEDRUN_CONFIG = "configs/speedrun_cpu.toml"
TINYSHAKESPEARE = "../shared/data/tinyshakespeare/input.txt"


def run_speedrun(quick: bool, runs: int = 3) -> list[dict]:
    """Wall time of `python train.py configs/speedrun_cpu.toml` (launch to saved checkpoint) and its loss
    over the whole tinyshakespeare val split; prepares the data from ../shared if needed."""
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from . import checkpoint
    from .data import TokenDataset, resolve_dataset
    from .evaluate import evaluate_split

    if not Path("data/tinyshakespeare/meta.json").is_file():
        if not Path(TINYSHAKESPEARE).is_file():
            raise UserError("speedrun-cpu needs tinyshakespeare: run `python data/prepare.py tinyshakespeare` "
                            "(or with --input FILE)")
        subprocess.run([sys.executable, "data/prepare.py", "tinyshakespeare", "--input", TINYSHAKESPEARE], check=True)
    rows = []
    for i in range(1 if quick else runs):
        out = Path(tempfile.mkdtemp(prefix="speedrun-"))
        cmd = [sys.executable, "train.py", SPEEDRUN_CONFIG, f"--out_dir={out}", "--plot=false"]
        if quick:
            cmd.append("--max_iters=50")
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        loaded = checkpoint.load_model(out)
        model, state = loaded.model, loaded.state
        val = TokenDataset(resolve_dataset(state["dataset"])).splits["val"]
        loss, _ = evaluate_split(model, val, batch_size=64)
        rows.append({"workload": "speedrun-cpu", "variant": f"run {i + 1}", "ms_per_step": None,
                     "notes": f"wall {wall:.1f}s, full-val loss {loss:.4f} (target <= 1.898; nanoGPT: 134 s)"})
    return rows


def make_text_corpus(folder, n_bytes: int, seed: int = 0):
    """About `n_bytes` of text in ~5 MB files: the bundled plays, each copy with its speeches shuffled."""
    import random
    from pathlib import Path

    from .corpus import shakespeare

    speeches = shakespeare().text.split("\n\n")
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
    from pathlib import Path

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
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "data" / "prepare.py"
    cmd = [sys.executable, str(script), source, "--tokenizer=gpt2", f"--num_proc={num_proc}", "--out", out,
           "--overwrite"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tree = 0.0
    while proc.poll() is None:
        tree = max(tree, _tree_rss_mb(proc.pid))
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed with status {proc.returncode}")
    meta = json.loads((Path(out) / "meta.json").read_text())
    return {"wall_s": wall, "tokens_per_s": (meta["train_tokens"] + meta["val_tokens"]) / wall,
            "mb_per_s": (meta["train_bytes"] + meta["val_bytes"]) / 1e6 / wall, "tree_peak_mb": tree,
            "largest_process_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def run_prepare(quick: bool) -> list[dict]:
    """GPT-2 BPE preparation: --num_proc=2 vs the --num_proc=1 reference on the same text, then the peak
    memory of preparing ~2 GB of text (~50 MB with --quick)."""
    import shutil
    import tempfile
    from pathlib import Path

    tmp = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    rows, ref = [], None
    try:
        small, n_small = make_text_corpus(tmp / "small", 50_000_000 if quick else 300_000_000)
        for num_proc in (1, 2):
            r = isolated(prepare_bench, source=str(small), num_proc=num_proc, out=str(tmp / f"out{num_proc}"))
            if "error" in r:
                rows.append({"workload": "prepare", "variant": f"gpt2 num_proc={num_proc}", "notes": r["error"]})
                continue
            ref = ref or r["tokens_per_s"]
            rows.append({"workload": "prepare", "variant": f"gpt2 num_proc={num_proc}", "tokens_per_s": r["tokens_per_s"],
                         "ratio": r["tokens_per_s"] / ref, "peak_rss_mb": r["tree_peak_mb"],
                         "notes": f"{r['mb_per_s']:.1f} MB/s of text, {n_small / 1e6:,.0f} MB corpus, "
                                  f"{r['wall_s']:.0f}s with start-up"})
            shutil.rmtree(tmp / f"out{num_proc}", ignore_errors=True)
        big, n_big = (small, n_small) if quick else make_text_corpus(tmp / "big", 2_000_000_000, seed=1)
        r = isolated(prepare_bench, source=str(big), num_proc=2, out=str(tmp / "big_out"))
        if "error" in r:
            rows.append({"workload": "prepare", "variant": "memory, num_proc=2", "notes": r["error"]})
        else:
            rows.append({"workload": "prepare", "variant": "memory, num_proc=2", "tokens_per_s": r["tokens_per_s"],
                         "peak_rss_mb": r["tree_peak_mb"],
                         "notes": f"{n_big / 1e9:.2f} GB of text in {r['wall_s']:.0f}s; RSS of the whole process tree "
                                  f"(sampled), largest single process {r['largest_process_mb']:,.0f} MB; "
                                  f"target < 1024 MB"})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def format_rows(rows: list[dict]) -> str:
    cols = ["workload", "variant", "tokens/s", "ms/step", "vs reference", "MFU (bf16 peak)", "peak RSS MB", "notes"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    f = lambda v, fmt: (fmt.format(v) if isinstance(v, (int, float)) else "")  # noqa: E731
    for r in rows:
        out.append("| " + " | ".join([
            r.get("workload", ""), r.get("variant", ""), f(r.get("tokens_per_s"), "{:,.1f}"),
            f(r.get("ms_per_step"), "{:,.1f}"), f(r.get("ratio"), "{:.2f}x"), f(r.get("mfu"), "{:.1%}"),
            f(r.get("peak_rss_mb"), "{:,.0f}"), r.get("notes", "") or "",
        ]) + " |")
    return "\n".join(out)


WORKLOADS = {
    "train-baby": lambda quick, peak: run_train("train-baby", quick, peak),
    "train-gpt2": lambda quick, peak: run_train("train-gpt2", quick, peak),
    "generate-gpt2": lambda quick, peak: run_generate(quick),
    "speedrun-cpu": lambda quick, peak: run_speedrun(quick),
    "prepare": lambda quick, peak: run_prepare(quick),
}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m minigpt.bench", description=__doc__.splitlines()[0])
    p.add_argument("workloads", nargs="*", help=f"any of {', '.join(WORKLOADS)} (default: all)")
    p.add_argument("--quick", action="store_true", help="fewer steps: a smoke run, not a measurement")
    args = p.parse_args(argv)
    names = args.workloads or list(WORKLOADS)
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise UserError(f"unknown workload {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    peak32, peak16 = matmul_peak(torch.float32), matmul_peak(torch.bfloat16)
    print(f"machine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"matmul peak (2048^2): fp32 {peak32 / 1e9:,.0f} GFLOP/s, bf16 {peak16 / 1e9:,.0f} GFLOP/s\n")
    rows = []
    for name in names:
        rows += WORKLOADS[name](args.quick, peak16)
        print(format_rows(rows), "\n", flush=True)
    return 0


if __name__ == "__main__":
    run_cli(main)
