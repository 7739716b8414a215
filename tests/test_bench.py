"""The benchmark's logic, fast: the table, the probes' sanity, skipping emulated bf16, the command line.
(The benchmarks themselves take minutes and assert nothing; they are not run here.)"""

import subprocess
from types import SimpleNamespace

import pytest
import torch

from minigpt.tools import bench, flops
from minigpt.config import PRESETS
from minigpt.errors import UserError
from minigpt.model import GPTConfig


def fake_isolated(calls, tokens_per_s=1000.0, flops_per_token=1e6, bandwidth=0.0, paired_bandwidth=None):
    def run(fn, **kwargs):
        calls.append(kwargs)
        return {"tokens_per_s": tokens_per_s, "ms_per_step": 10.0, "flops_per_token": flops_per_token,
                "compile_s": 0.0, "peak_rss_mb": 100.0, "tokens": [1, 2, 3], "bandwidth": bandwidth,
                "paired_bandwidth": bandwidth if paired_bandwidth is None else paired_bandwidth}
    return run


def test_every_row_names_the_machine():
    rows = [{"workload": "train-baby", "variant": "fp32 eager", "tokens_per_s": 12345.6, "ms_per_step": 62.2,
             "ratio": 1.0, "mfu": 0.1234, "peak_rss_mb": 389.4},
            {"workload": "generate-gpt2", "variant": "minigpt fp32", "tokens_per_s": 30.0, "bandwidth": 0.42},
            {"workload": "train-baby", "variant": "bf16 eager", "notes": bench.NO_BF16}]
    lines = bench.format_rows(rows, "Some CPU (avx2), 2 threads").splitlines()
    assert len(lines) == 5 and all("| Some CPU (avx2), 2 threads |" in line for line in lines[2:])
    assert "| 12,345.6 | 62.2 | 1.00x | 12.3% |  | 389 |" in lines[2]
    assert "| 30.0 |  |  |  | 42% |" in lines[3]
    assert "skipped: no native bf16" in lines[4] and "|  |  |  |  |  |  |" in lines[4]


def test_bf16_rows_are_skipped_without_native_bf16(monkeypatch):
    monkeypatch.setattr(flops, "cpu_bf16_native", lambda: False)
    calls = []
    monkeypatch.setattr(bench, "isolated", fake_isolated(calls))
    ceilings = bench.Ceilings({"float32": 1e12, "bfloat16": None}, bandwidth=1e10)
    rows = bench.run_train("train-baby", True, ceilings) + bench.run_generate(True, ceilings)
    assert {c.get("dtype_name") for c in calls} == {"float32"}  # no bf16 process was started
    skipped = [r["variant"] for r in rows if r.get("notes") == bench.NO_BF16]
    assert skipped == ["bf16 eager", "bf16 compiled", "minigpt bf16 (KV cache)", "minigpt bf16 compiled"]
    assert all("tokens_per_s" not in r for r in rows if r["variant"] in skipped)


def test_native_bf16_rows_run(monkeypatch):
    monkeypatch.setattr(flops, "cpu_bf16_native", lambda: True)
    calls = []
    monkeypatch.setattr(bench, "isolated", fake_isolated(calls))
    bench.run_train("train-baby", True, bench.Ceilings({"float32": 1e12, "bfloat16": 2e12}))
    assert [c["dtype_name"] for c in calls] == ["float32", "bfloat16", "float32", "bfloat16"]


def test_train_rows_use_their_dtype_peak_and_never_exceed_100_percent(monkeypatch):
    monkeypatch.setattr(flops, "cpu_bf16_native", lambda: True)
    monkeypatch.setattr(bench, "isolated", fake_isolated([], tokens_per_s=1000.0, flops_per_token=1e6))
    rows = bench.run_train("train-baby", True, bench.Ceilings({"float32": 1e10, "bfloat16": 5e8}))
    mfu = {r["variant"]: r["mfu"] for r in rows}
    assert mfu["fp32 eager"] == pytest.approx(1e9 / 1e10)
    assert mfu["bf16 eager"] == 1.0  # 1e9 FLOP/s against an under-measured 5e8 peak: shown as 100%, not 200%


def test_probe_skips_the_bf16_peak_without_native_bf16(monkeypatch):
    monkeypatch.setattr(flops, "cpu_bf16_native", lambda: False)
    probed = []
    monkeypatch.setattr(flops, "matmul_peak", lambda dtype: probed.append(dtype) or 5e10)
    said = []
    c = bench.Ceilings.probe(matmul=True, bandwidth=False, say=said.append)
    assert probed == [torch.float32] and c.peaks == {"float32": 5e10, "bfloat16": None} and c.bandwidth is None
    assert said == ["matmul peak, probed now: fp32 50 GFLOP/s, bf16 not probed (no native bf16 on this CPU)"]


def test_read_bandwidth_is_a_plausible_memory_speed():
    bw = bench.read_bandwidth(n_bytes=16 << 20, seconds=0.05)
    assert 1e8 < bw < 1e13  # between 0.1 GB/s and 10 TB/s


def test_decode_against_the_bandwidth_limit():
    gpt2 = GPTConfig(**PRESETS["gpt2"])
    assert bench.decode_weight_bytes(gpt2, "float32") == 123_653_376 * 4  # all but wpe, the tied head once
    assert bench.decode_weight_bytes(gpt2, "bfloat16") == 123_653_376 * 2
    # 20 tokens/s x 0.5 GB per token = 10 GB/s of a 20 GB/s memory: half the limit
    assert bench.bandwidth_share(20, 500_000_000, 20e9) == pytest.approx(0.5)
    assert bench.bandwidth_share(20, 500_000_000, None) is None


@pytest.mark.parametrize("beside", [40e9, 10e9])
def test_decode_rows_against_the_read_beside_them_and_the_best_of_the_run(monkeypatch, beside):
    # the share: the fastest repetition against the read probed beside it (8 GB/s here); the notes: the share
    # against the best read of the run (the run's probe, 20 GB/s, or the best beside any repetition)
    monkeypatch.setattr(flops, "cpu_bf16_native", lambda: False)
    monkeypatch.setattr(bench, "isolated", fake_isolated([], tokens_per_s=20.0, bandwidth=beside, paired_bandwidth=8e9))
    rows = bench.run_generate(True, bench.Ceilings({"float32": 1e12, "bfloat16": None}, bandwidth=20e9))
    row = next(r for r in rows if r["variant"] == "minigpt fp32 (KV cache)")
    weight_bytes = bench.decode_weight_bytes(GPTConfig(**PRESETS["gpt2"]), "float32")
    assert row["bandwidth"] == 20 * weight_bytes / 8e9  # the same arithmetic, so exact
    assert "limit at 8.0 GB/s (read beside the fastest repetition)" in row["notes"]
    strict = 20 * weight_bytes / max(beside, 20e9)
    assert f"{strict:.0%} of the best read anywhere in the run ({max(beside, 20e9) / 1e9:.1f} GB/s)" in row["notes"]


def test_generate_bench_pairs_the_fastest_repetition_with_the_read_beside_it(monkeypatch):
    # reads before, between and after three repetitions; the fastest repetition is the last, between the reads
    # of 40 and 31 GB/s; the best read of all (50, before the first) belongs to a slower one
    reads = iter([50e9, 30e9, 40e9, 31e9])
    monkeypatch.setattr(bench, "read_bandwidth", lambda *a, **k: next(reads))
    clock = iter([0.0, 1.0, 5.0, 5.0, 6.0, 6.0, 6.5])  # warm-up (not compiled: one reading), then 4, 1 and 0.5 s
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(bench, "generate", lambda model, prompt, max_new_tokens, **k:
                        torch.zeros(1, prompt.size(1) + max_new_tokens, dtype=torch.long))
    monkeypatch.setattr(bench, "PRESETS", {"gpt2": dict(n_layer=1, n_head=2, n_embd=8, block_size=32, vocab_size=16)})
    r = bench.generate_bench("minigpt", "float32", prompt_len=4, new_tokens=8, reps=3)
    assert r["tokens_per_s"] == 16 and r["paired_bandwidth"] == 40e9 and r["bandwidth"] == 50e9


def test_prepare_prints_the_machine_first_and_probes_nothing(monkeypatch, capsys):
    monkeypatch.setattr(flops, "matmul_peak", lambda *a, **k: pytest.fail("prepare needs no matmul peak"))
    monkeypatch.setattr(bench, "read_bandwidth", lambda *a, **k: pytest.fail("prepare needs no bandwidth"))
    seen = []

    def fake_prepare(settings, ceilings):
        seen.append((settings.quick, capsys.readouterr().out))
        return [{"workload": "prepare", "variant": "gpt2 num_proc=1", "tokens_per_s": 1.0}]

    monkeypatch.setitem(bench.WORKLOADS, "prepare", (fake_prepare, False, False))
    assert bench.main(["prepare", "--quick"]) == 0
    (quick, before), = seen
    assert quick and before.startswith("machine: ") and "running prepare (quick)" in before
    assert "| prepare | gpt2 num_proc=1 |" in capsys.readouterr().out


def test_workloads_as_bare_arguments_or_repeated(monkeypatch, capsys):
    ran = []
    for name in ("prepare", "speedrun-cpu"):
        monkeypatch.setitem(bench.WORKLOADS, name, (lambda s, c, n=name: ran.append(n) or [], False, False))
    monkeypatch.setattr(bench, "tinyshakespeare_input", lambda data_dir: None)
    bench.main(["prepare", "speedrun-cpu"])
    bench.main(["--workloads=speedrun-cpu"])
    assert ran == ["prepare", "speedrun-cpu", "speedrun-cpu"]
    with pytest.raises(UserError, match="unknown workload train-gpt3; choose from train-baby"):
        bench.main(["train-gpt3"])


def test_speedrun_finds_the_shared_data_by_flag_or_environment(tmp_path, monkeypatch):
    text = tmp_path / "shared" / "data" / "tinyshakespeare" / "input.txt"
    text.parent.mkdir(parents=True)
    text.write_text("First Citizen:\n")
    monkeypatch.delenv("MINIGPT_SHARED", raising=False)
    assert bench.tinyshakespeare_input(str(tmp_path / "shared" / "data")) == text
    monkeypatch.setenv("MINIGPT_SHARED", str(tmp_path / "shared"))
    assert bench.tinyshakespeare_input("") == text
    with pytest.raises(UserError, match="no tinyshakespeare/input.txt under /nowhere; pass --data_dir"):
        bench.tinyshakespeare_input("/nowhere")
    monkeypatch.delenv("MINIGPT_SHARED")
    monkeypatch.setattr(bench, "ROOT", tmp_path)  # no data/tinyshakespeare prepared there
    with pytest.raises(UserError, match="--data_dir is not set"):
        bench.main(["speedrun-cpu"])  # before any workload runs


def test_speedrun_rows_ratio_every_run_to_the_reference_and_summarise_each_recipe(tmp_path, monkeypatch):
    walls = iter([90.0, 15.0, 14.0, 16.0, 80.0, 85.0, 90.0])  # reference, 3 speedrun seeds, 3 quality seeds
    cmds = []

    def fake_timed(cmd, cwd=None):
        cmds.append(cmd)
        return next(walls), subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(bench, "_run_timed", fake_timed)
    monkeypatch.setattr(bench, "speedrun_dataset", lambda data_dir, tmp: tmp_path)
    monkeypatch.setattr(bench.checkpoint, "load_model", lambda out: SimpleNamespace(model=None, state={"dataset": ""}))
    monkeypatch.setattr(bench, "TokenDataset", lambda path: SimpleNamespace(splits={"val": None}))
    monkeypatch.setattr(bench, "resolve_dataset", lambda name: name)
    losses = iter([1.895, 1.89, 1.88, 1.87, 1.60, 1.61, 1.62])
    monkeypatch.setattr(bench, "evaluate_split", lambda model, data, batch: (next(losses), 0))
    rows = bench.run_speedrun(False, "")
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
    monkeypatch.setattr(bench, "_run_timed", lambda cmd, cwd=None: (1.0, subprocess.CompletedProcess(cmd, 1, "", "boom\n")))
    row = bench.run_nanogpt(tmp_path, lambda: None, quick=True)
    assert row["notes"] == "nanoGPT's train.py failed: boom" and "wall" not in row
    with pytest.raises(UserError, match="holds no nanoGPT checkout"):
        bench.main(["speedrun-cpu", f"--nanogpt_dir={tmp_path}", "--data_dir=/nowhere"])
