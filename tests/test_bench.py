"""The benchmarks (benchmarks/, run by `python -m minigpt bench`): the arithmetic with the measured functions
mocked (the table, MFU per dtype, bandwidth shares, skipping emulated bf16, the command line), then one
real, small run of each workload's code path (tiny shapes, a few steps: seconds, not a measurement)."""

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import benchmarks
from benchmarks import cli, common, generate_gpt2, prepare, speedrun_cpu, train_baby, train_gpt2, training
from conftest import ROOT, needs_gpt2
from minigpt import flops, runtime, trainer
from minigpt.config import PRESETS
from minigpt.errors import UserError
from minigpt.model import GPTConfig
from minigpt.tools import bench as bench_command

TINY = dict(n_layer=1, n_head=2, n_embd=16, block_size=128, vocab_size=65)


def fake_isolated(calls, tokens_per_s=1000.0, flops_per_token=1e6, bandwidth=0.0, paired_bandwidth=None):
    def run(fn, **kwargs):
        calls.append(kwargs)
        return {"tokens_per_s": tokens_per_s, "ms_per_step": 10.0, "flops_per_token": flops_per_token,
                "compile_s": 0.0, "peak_rss_mb": 100.0, "tokens": [1, 2, 3], "bandwidth": bandwidth,
                "paired_bandwidth": bandwidth if paired_bandwidth is None else paired_bandwidth}
    return run


def in_process(fn, **kwargs):
    """`isolated` without the fresh process (tested on its own below): the real function, run here."""
    return {**fn(**kwargs), "peak_rss_mb": 1.0}


def settings(**kw):
    return cli.BenchConfig(**kw)


# ---------------------------------------------------------------------------------------------------
# The arithmetic, with the measurements mocked

def test_every_row_names_the_machine():
    rows = [{"workload": "train-baby", "variant": "fp32 eager", "tokens_per_s": 12345.6, "ms_per_step": 62.2,
             "ratio": 1.0, "mfu": 0.1234, "peak_rss_mb": 389.4},
            {"workload": "generate-gpt2", "variant": "minigpt fp32", "tokens_per_s": 30.0, "bandwidth": 0.42},
            {"workload": "train-baby", "variant": "bf16 eager", "notes": common.NO_BF16}]
    lines = common.format_rows(rows, "Some CPU (avx2), 2 threads").splitlines()
    assert len(lines) == 5 and all("| Some CPU (avx2), 2 threads |" in line for line in lines[2:])
    assert "| 12,345.6 | 62.2 | 1.00x | 12.3% |  | 389 |" in lines[2]
    assert "| 30.0 |  |  |  | 42% |" in lines[3]
    assert "skipped: no native bf16" in lines[4] and "|  |  |  |  |  |  |" in lines[4]


def test_bf16_rows_are_skipped_without_native_bf16(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_bf16_native", lambda: False)
    calls = []
    monkeypatch.setattr(training, "isolated", fake_isolated(calls))
    monkeypatch.setattr(generate_gpt2, "isolated", fake_isolated(calls))
    ceilings = common.Ceilings({"float32": 1e12, "bfloat16": None}, bandwidth=1e10)
    rows = train_baby.run(settings(quick=True), ceilings) + generate_gpt2.run(settings(quick=True), ceilings)
    assert {c.get("dtype_name") for c in calls} == {"float32"}  # no bf16 process was started
    skipped = [r["variant"] for r in rows if r.get("notes") == common.NO_BF16]
    assert skipped == ["bf16 eager", "bf16 compiled", "minigpt bf16 (KV cache)", "minigpt bf16 compiled"]
    assert all("tokens_per_s" not in r for r in rows if r["variant"] in skipped)


def test_native_bf16_rows_run(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_bf16_native", lambda: True)
    calls = []
    monkeypatch.setattr(training, "isolated", fake_isolated(calls))
    train_baby.run(settings(quick=True), common.Ceilings({"float32": 1e12, "bfloat16": 2e12}))
    assert [(c["dtype_name"], c["compile_"]) for c in calls] == [("float32", False), ("bfloat16", False),
                                                                ("float32", True), ("bfloat16", True)]
    assert all(c["shape"] is train_baby.SHAPE and (c["steps"], c["warmup"]) == (3, 1) for c in calls)


def test_train_rows_use_their_dtype_peak_and_never_exceed_100_percent(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_bf16_native", lambda: True)
    monkeypatch.setattr(training, "isolated", fake_isolated([], tokens_per_s=1000.0, flops_per_token=1e6))
    rows = train_baby.run(settings(quick=True), common.Ceilings({"float32": 1e10, "bfloat16": 5e8}))
    mfu = {r["variant"]: r["mfu"] for r in rows}
    assert mfu["fp32 eager"] == pytest.approx(1e9 / 1e10)
    assert mfu["bf16 eager"] == 1.0  # 1e9 FLOP/s against an under-measured 5e8 peak: shown as 100%, not 200%


def test_the_bench_probes_the_steady_peak_and_says_how(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_bf16_native", lambda: False)
    probed = []
    monkeypatch.setattr(flops, "steady_matmul_peak", lambda dtype, **probe: probed.append((dtype, probe)) or 5e10)
    monkeypatch.setattr(flops, "matmul_peak", lambda *a, **k: pytest.fail("the bench takes the steady probe"))
    said = []
    c = common.Ceilings.probe(matmul=True, bandwidth=False, say=said.append)
    assert probed == [(torch.float32, common.PROBE)] and c.peaks == {"float32": 5e10, "bfloat16": None}
    assert common.PROBE == {"sizes": (1024, 2048, 4096), "seconds": 2.0, "rounds": 3}  # the recipe
    assert said == ["matmul peak: fp32 50 GFLOP/s, bf16 not probed (no native bf16 on this CPU) (probed now: best "
                    "sustained rate of back-to-back 1024/2048/4096 square matmuls, 3 rounds of 0.67 s per size "
                    "after a warm-up)"]
    probed.clear()
    common.Ceilings.probe(matmul=True, bandwidth=False, say=said.append, quick=True)
    assert probed == [(torch.float32, common.QUICK_PROBE)]


def test_read_bandwidth_is_a_plausible_memory_speed():
    bw = common.read_bandwidth(n_bytes=16 << 20, seconds=0.05)
    assert 1e8 < bw < 1e13  # between 0.1 GB/s and 10 TB/s


def test_decode_against_the_bandwidth_limit():
    gpt2 = GPTConfig(**PRESETS["gpt2"])
    assert generate_gpt2.decode_weight_bytes(gpt2, "float32") == 123_653_376 * 4  # all but wpe, the tied head once
    assert generate_gpt2.decode_weight_bytes(gpt2, "bfloat16") == 123_653_376 * 2
    # 20 tokens/s x 0.5 GB per token = 10 GB/s of a 20 GB/s memory: half the limit
    assert common.bandwidth_share(20, 500_000_000, 20e9) == pytest.approx(0.5)
    assert common.bandwidth_share(20, 500_000_000, None) is None


@pytest.mark.parametrize("beside", [40e9, 10e9])
def test_decode_rows_against_the_read_beside_them_and_the_best_of_the_run(monkeypatch, beside):
    # the share: the fastest repetition against the read probed beside it (8 GB/s here); the notes: the share
    # against the best read of the run (the run's probe, 20 GB/s, or the best beside any repetition)
    monkeypatch.setattr(runtime, "cpu_bf16_native", lambda: False)
    monkeypatch.setattr(generate_gpt2, "isolated", fake_isolated([], tokens_per_s=20.0, bandwidth=beside,
                                                                 paired_bandwidth=8e9))
    rows = generate_gpt2.run(settings(quick=True), common.Ceilings({"float32": 1e12, "bfloat16": None}, bandwidth=20e9))
    row = next(r for r in rows if r["variant"] == "minigpt fp32 (KV cache)")
    weight_bytes = generate_gpt2.decode_weight_bytes(GPTConfig(**PRESETS["gpt2"]), "float32")
    assert row["bandwidth"] == 20 * weight_bytes / 8e9  # the same arithmetic, so exact
    assert "limit at 8.0 GB/s (read beside the fastest repetition)" in row["notes"]
    strict = 20 * weight_bytes / max(beside, 20e9)
    assert f"{strict:.0%} of the best read anywhere in the run ({max(beside, 20e9) / 1e9:.1f} GB/s)" in row["notes"]
    # batch 3: 20 tokens/s over three rows is 20/3 decode steps a second, each reading the weights once
    row3 = next(r for r in rows if r["variant"] == "minigpt fp32 compiled, batch 3")
    assert row3["bandwidth"] == pytest.approx(20 / 3 * weight_bytes / 8e9)


def test_generate_bench_pairs_the_fastest_repetition_with_the_read_beside_it(monkeypatch):
    # reads before, between and after three repetitions; the fastest repetition is the last, between the reads
    # of 40 and 31 GB/s; the best read of all (50, before the first) belongs to a slower one
    reads = iter([50e9, 30e9, 40e9, 31e9])
    monkeypatch.setattr(generate_gpt2, "read_bandwidth", lambda *a, **k: next(reads))
    clock = iter([0.0, 1.0, 5.0, 5.0, 6.0, 6.0, 6.5])  # warm-up (not compiled: one reading), then 4, 1 and 0.5 s
    monkeypatch.setattr(generate_gpt2.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(generate_gpt2, "generate", lambda model, prompt, max_new_tokens, **k:
                        torch.zeros(1, prompt.size(1) + max_new_tokens, dtype=torch.long))
    r = generate_gpt2.generate_bench("minigpt", "float32", prompt_len=4, new_tokens=8, reps=3, shape=TINY)
    assert r["tokens_per_s"] == 16 and r["paired_bandwidth"] == 40e9 and r["bandwidth"] == 50e9


def fake_workload(monkeypatch, name: str, run, needs=()):
    """A workload is a module named in benchmarks.WORKLOADS: here one made on the spot."""
    module = types.ModuleType(f"fake_{name.replace('-', '_')}")
    module.ABOUT, module.NEEDS, module.run = "a fake", needs, run
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(benchmarks.WORKLOADS, name, module.__name__)
    return module


def test_prepare_prints_the_machine_first_and_probes_nothing(monkeypatch, capsys):
    monkeypatch.setattr(flops, "steady_matmul_peak", lambda *a, **k: pytest.fail("prepare needs no matmul peak"))
    monkeypatch.setattr(common, "read_bandwidth", lambda *a, **k: pytest.fail("prepare needs no bandwidth"))
    seen = []

    def fake_prepare(s, ceilings):
        seen.append((s.quick, capsys.readouterr().out))
        return [{"workload": "prepare", "variant": "gpt2 num_proc=1", "tokens_per_s": 1.0}]

    fake_workload(monkeypatch, "prepare", fake_prepare, prepare.NEEDS)
    assert cli.main(["prepare", "--quick"]) == 0
    (quick, before), = seen
    assert quick and before.startswith("machine: ") and "running prepare (quick)" in before
    assert "| prepare | gpt2 num_proc=1 |" in capsys.readouterr().out


def test_a_new_workload_is_one_module_and_one_registry_line(monkeypatch, capsys):
    fake_workload(monkeypatch, "plan", lambda s, c: [{"workload": "plan", "variant": "v", "notes": "ran"}])
    assert cli.main(["plan"]) == 0
    assert "| plan | v |" in capsys.readouterr().out


def test_workloads_as_bare_arguments_or_repeated(monkeypatch, capsys):
    ran, checked = [], []
    for name in ("prepare", "speedrun-cpu"):
        fake_workload(monkeypatch, name, lambda s, c, n=name: ran.append(n) or [])
    sys.modules[benchmarks.WORKLOADS["speedrun-cpu"]].check = lambda s: checked.append(s.data_dir)
    cli.main(["prepare", "speedrun-cpu"])
    cli.main(["--workloads=speedrun-cpu", "--data_dir=here"])
    assert ran == ["prepare", "speedrun-cpu", "speedrun-cpu"] and checked == ["", "here"]
    with pytest.raises(UserError, match="unknown workload train-gpt3; choose from train-baby"):
        cli.main(["train-gpt3"])
    with pytest.raises(UserError, match="--device=tpu: use cpu, or cuda"):
        cli.main(["prepare", "--device=tpu"])


def test_speedrun_finds_the_shared_data_by_flag_or_environment(tmp_path, monkeypatch):
    text = tmp_path / "shared" / "data" / "tinyshakespeare" / "input.txt"
    text.parent.mkdir(parents=True)
    text.write_text("First Citizen:\n")
    monkeypatch.delenv("MINIGPT_SHARED", raising=False)
    assert speedrun_cpu.tinyshakespeare_input(str(tmp_path / "shared" / "data")) == text
    monkeypatch.setenv("MINIGPT_SHARED", str(tmp_path / "shared"))
    assert speedrun_cpu.tinyshakespeare_input("") == text
    with pytest.raises(UserError, match="no tinyshakespeare/input.txt under /nowhere; pass --data_dir"):
        speedrun_cpu.tinyshakespeare_input("/nowhere")
    monkeypatch.delenv("MINIGPT_SHARED")
    monkeypatch.setattr(speedrun_cpu, "ROOT", tmp_path)  # no data/tinyshakespeare prepared there
    monkeypatch.setattr(speedrun_cpu, "run_speedrun", lambda *a: pytest.fail("checked before any workload runs"))
    with pytest.raises(UserError, match="--data_dir is not set"):
        cli.main(["prepare", "speedrun-cpu"])


def test_speedrun_rows_ratio_every_run_to_the_reference_and_summarise_each_recipe(tmp_path, monkeypatch):
    walls = iter([90.0, 15.0, 14.0, 16.0, 80.0, 85.0, 90.0])  # reference, 3 speedrun seeds, 3 quality seeds
    cmds = []

    def fake_timed(cmd, cwd=None):
        cmds.append(cmd)
        return next(walls), subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(speedrun_cpu, "run_timed", fake_timed)
    monkeypatch.setattr(speedrun_cpu, "speedrun_dataset", lambda data_dir, tmp: tmp_path)
    losses = iter([1.895, 1.89, 1.88, 1.87, 1.60, 1.61, 1.62])
    monkeypatch.setattr(speedrun_cpu, "full_val_loss", lambda out: next(losses))
    rows = speedrun_cpu.run_speedrun(False, "")
    assert [c[2].rsplit("/", 1)[-1] for c in cmds] == ["baby.toml"] + ["speedrun_cpu.toml"] * 3 + ["quality_cpu.toml"] * 3
    assert [c[-1] for c in cmds[1:4]] == ["--seed=1337", "--seed=1338", "--seed=1339"]  # three seeds, not one run thrice
    assert len(rows) == 9 and rows[0]["ratio"] == 1.0 and rows[1]["ratio"] == 6.0
    summary = rows[4]
    # approx at its default 1e-6: the mean of the walls is summed in floats, nothing looser
    assert summary["variant"].endswith("mean of 3") and summary["ratio"] == pytest.approx(90 / 15)
    assert "worst 1.8900" in summary["notes"] and "slowest 16.0s (5.62x)" in summary["notes"]


def test_a_failing_peer_is_a_row_not_a_crash(tmp_path, monkeypatch):
    (tmp_path / "data" / "shakespeare_char").mkdir(parents=True)
    (tmp_path / "data" / "shakespeare_char" / "val.bin").write_bytes(b"")
    monkeypatch.setattr(speedrun_cpu, "run_timed", lambda cmd, cwd=None: (1.0, subprocess.CompletedProcess(cmd, 1, "", "boom\n")))
    row = speedrun_cpu.run_nanogpt(tmp_path, lambda: None, quick=True)
    assert row["notes"] == "nanoGPT's train.py failed: boom" and "wall" not in row
    with pytest.raises(UserError, match="holds no nanoGPT checkout"):
        cli.main(["speedrun-cpu", f"--nanogpt_dir={tmp_path}", "--data_dir=/nowhere"])


# ---------------------------------------------------------------------------------------------------
# The command: found in a checkout, refused in one line outside one; not in the installed package

def test_minigpt_bench_finds_the_checkouts_benchmarks_and_says_so_outside_one(tmp_path, monkeypatch):
    assert bench_command.find_benchmarks() == ROOT
    with pytest.raises(UserError, match="the benchmarks live in a checkout of minigpt") as e:
        bench_command.find_benchmarks(tmp_path)
    assert "\n" not in str(e.value)
    monkeypatch.setattr(bench_command, "CHECKOUT", tmp_path)  # an installed package: no benchmarks/ beside it
    code = (f"import sys; sys.argv = ['minigpt', 'bench']; from minigpt.tools import bench; "
            f"bench.CHECKOUT = __import__('pathlib').Path({str(tmp_path)!r}); from minigpt.errors import run_cli; "
            f"run_cli(bench.main, ['--help'])")  # found by mistake, it would print its help, not run anything
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.startswith("error: the benchmarks live in a checkout") and p.stdout == ""


def test_the_wheel_holds_the_package_only():
    import tomllib

    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert "minigpt" in packages and all(p.split(".")[0] == "minigpt" for p in packages)


# ---------------------------------------------------------------------------------------------------
# One real, small run of each workload's code path

def _bump(x):
    return {"pid": os.getpid(), "x": x + 1}


def _fail():
    raise ValueError("no luck")


def test_isolated_runs_each_variant_in_a_fresh_process():
    r = common.isolated(_bump, x=1)
    assert r["x"] == 2 and r["pid"] != os.getpid() and r["peak_rss_mb"] > 10  # torch alone is more than 10 MB
    sent = []
    common._child(types.SimpleNamespace(send=sent.append), _fail, {})  # what the child sends when a variant fails
    assert sent == [{"error": "ValueError: no luck"}]


def test_train_workload_for_real_through_the_trainers_step(monkeypatch):
    monkeypatch.setattr(train_baby, "SHAPE", training.Shape("tiny", batch=2, T=16, overrides={"vocab_size": 65}))
    monkeypatch.setattr(training, "VARIANTS", {"fp32 eager": ("float32", False), "bf16 eager": ("bfloat16", False)})
    monkeypatch.setattr(training, "isolated", in_process)
    steps = []
    real_step = trainer.train_step
    monkeypatch.setattr(trainer, "train_step", lambda run, lr: steps.append(run) or real_step(run, lr))
    rows = train_baby.run(settings(quick=True), common.Ceilings({"float32": 1e15, "bfloat16": 1e15}))
    ran = [r for r in rows if "tokens_per_s" in r]
    assert ran[0]["variant"] == "fp32 eager" and ran[0]["ratio"] == 1.0 and "2 x 16 tokens" in ran[0]["notes"]
    assert all(r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 for r in ran)
    assert len(ran) == (2 if runtime.cpu_bf16_native() else 1)
    assert len(steps) == 5 * len(ran)  # the first step, 1 warm-up and 3 timed: each the trainer's own
    assert isinstance(steps[0], trainer.Run) and steps[0].rt.dtype is torch.float32


def test_train_step_bench_trains():
    shape = training.Shape("tiny", batch=4, T=16, overrides={"vocab_size": 65})
    r = training.step_bench(shape, "float32", False, steps=6, warmup=0)
    assert r["losses"][-1] < r["losses"][0] and r["flops_per_token"] == flops.model_flops_per_token(
        training.make_run(shape, "float32", False).model, 16)


def test_generate_workload_for_real_equals_transformers(monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setattr(generate_gpt2, "SHAPE", TINY)
    variants = {k: v for k, v in generate_gpt2.VARIANTS.items() if k in (
        "transformers generate fp32", "minigpt fp32 (KV cache)", "minigpt int8 weight-only compiled, batch 3")}
    variants["minigpt int8 weight-only compiled, batch 3"] = ("minigpt", "float32", "int8", False, 3)  # no compile
    monkeypatch.setattr(generate_gpt2, "VARIANTS", variants)
    monkeypatch.setattr(generate_gpt2, "isolated", in_process)
    monkeypatch.setattr(generate_gpt2, "read_bandwidth", lambda seconds: 1e10)
    rows = generate_gpt2.run(settings(quick=True), common.Ceilings({}, bandwidth=1e10))
    assert [r["variant"] for r in rows] == list(variants) and all(r["tokens_per_s"] > 0 for r in rows)
    assert "greedy tokens (row 0) equal to the reference's: 64/64" in rows[1]["notes"]  # fp32 = transformers
    assert rows[2]["ms_per_step"] == pytest.approx(3000 / rows[2]["tokens_per_s"])  # 3 tokens per decode step


def test_speedrun_workload_for_real(monkeypatch, tmp_path, char_dataset):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text('preset = "tiny"\nbatch_size = 2\neval_iters = 1\neval_interval = 100\nmfu = false\n'
                      'warmup_iters = 0\n')
    monkeypatch.setattr(speedrun_cpu, "RECIPES", {"tiny": (str(recipe), 2, "a goal")})
    monkeypatch.setattr(speedrun_cpu, "QUICK", ["--max_iters=2", "--lr_decay_iters=2"])
    monkeypatch.setattr(speedrun_cpu, "speedrun_dataset", lambda data_dir, tmp: char_dataset)
    rows = speedrun_cpu.run(settings(quick=True), common.Ceilings({}))
    (row,) = rows  # --quick: one seed
    assert row["ratio"] == 1.0 and "launch to checkpoint, full-val loss" in row["notes"], row
    loss = float(row["notes"].split("full-val loss ")[1].split(";")[0])
    assert 0 < loss < 2 * torch.log(torch.tensor(65.0)).item()


def test_nanogpt_full_val_script_for_real(tmp_path):
    """The peer's evaluation is a real file run inside a nanoGPT checkout: here a stand-in model.py whose
    loss is the target token's value, so the mean over the val split is known."""
    (tmp_path / "model.py").write_text(
        "import torch\nfrom dataclasses import dataclass\n"
        "@dataclass\nclass GPTConfig:\n    block_size: int = 4\n"
        "class GPT(torch.nn.Module):\n"
        "    def __init__(self, config):\n        super().__init__(); self.config = config; self.w = torch.nn.Parameter(torch.ones(1))\n"
        "    def forward(self, x, y):\n        return None, (y.float() * self.w).mean()\n")
    (tmp_path / "data" / "shakespeare_char").mkdir(parents=True)
    import numpy as np

    np.arange(11, dtype=np.uint16).tofile(tmp_path / "data" / "shakespeare_char" / "val.bin")
    torch.save({"model_args": {"block_size": 4}, "model": {"_orig_mod.w": torch.ones(1)}}, tmp_path / "ckpt.pt")
    p = subprocess.run([sys.executable, str(speedrun_cpu.NANOGPT_FULL_VAL), str(tmp_path / "ckpt.pt")],
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert float(p.stdout.split()[-1]) == pytest.approx(sum(range(1, 11)) / 10)  # targets 1..10, each once


@needs_gpt2
def test_prepare_workload_for_real(monkeypatch):
    monkeypatch.setattr(prepare, "SIZES", {"speed": 0, "memory": 0, "quick": 150_000})
    monkeypatch.setattr(prepare, "PROCS", (1,))  # one process: the pool's start-up is not this test's business
    monkeypatch.setattr(prepare, "isolated", in_process)
    rows = prepare.run(settings(quick=True), common.Ceilings({}))
    assert [r["variant"] for r in rows] == ["gpt2 num_proc=1", "memory, num_proc=1"], rows
    assert all(r["tokens_per_s"] > 0 and r["peak_rss_mb"] > 0 for r in rows) and rows[0]["ratio"] == 1.0
    assert "MB/s of text" in rows[0]["notes"] and "target < 1024 MB" in rows[1]["notes"]


def test_train_gpt2_adds_nanogpt_only_with_a_checkout(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(training, "isolated", lambda fn, **kw: calls.append(fn) or {"error": "x"})
    train_gpt2.run(settings(quick=True), common.Ceilings({}))
    assert train_gpt2.nanogpt_step_bench not in calls
    train_gpt2.run(settings(quick=True, nanogpt_dir=str(tmp_path)), common.Ceilings({}))
    assert calls[-1] is train_gpt2.nanogpt_step_bench
