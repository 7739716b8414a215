"""FLOPs per token against hand-computed values, GPU peak lookup, the CPU probe (in the run, brief, never
emulated bf16), MFU never above 100%, MFU in train.py's log."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minigpt import flops, runtime
from minigpt.config import PRESETS, build_config, train_sections
from minigpt.model import GPT, GPTConfig

GPT2 = GPTConfig(**PRESETS["gpt2"])


def test_gpt2_flops_per_token_by_hand():
    n = 124_439_808 - 1024 * 768  # all parameters but the position embedding (the tied wte is the LM head)
    assert flops.matmul_params(124_439_808, GPT2) == n == 123_653_376
    # 6N + 12 L C T, and 2N + 4 L C T, with L = 12, C = 768, T = 1024
    assert flops.train_flops_per_token(n, GPT2) == 6 * 123_653_376 + 12 * 12 * 768 * 1024 == 855_166_464
    assert flops.inference_flops_per_token(n, GPT2) == 2 * 123_653_376 + 4 * 12 * 768 * 1024 == 285_055_488
    assert flops.train_flops_per_token(n, GPT2, T=256) == 6 * n + 12 * 12 * 768 * 256
    with torch.device("meta"):
        model = GPT(GPT2)
    assert flops.model_flops_per_token(model) == 855_166_464


def test_untied_model_does_not_count_its_input_embedding():
    assert flops.matmul_params(1000, GPT2, tied=False) == 1000 - 1024 * 768 - 50257 * 768


def test_mfu():
    assert flops.mfu(flops_per_token=1e9, tokens_per_s=100, peak=1e12) == pytest.approx(0.1)


@pytest.mark.parametrize("name,peak", [
    ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H200", 989e12), ("NVIDIA L4", 121e12), ("NVIDIA L40S", 362e12), ("NVIDIA A10", 125e12),
    ("NVIDIA A10G", 70e12), ("NVIDIA GeForce RTX 4090", 165e12), ("Tesla V100-SXM2-16GB", 125e12),
    ("Some Future GPU", None),
])
def test_gpu_peak_table(name, peak):
    assert flops.gpu_peak(name) == peak


def test_flops_does_not_import_params():
    """One-way: minigpt.tools.params imports minigpt.flops, never the reverse (FLOPs need only a count)."""
    code = ("import sys, torch; from minigpt import model; from minigpt import flops; from minigpt.config import PRESETS\n"
            "with torch.device('meta'): m = model.GPT(model.GPTConfig(**PRESETS['gpt2']))\n"
            "assert flops.model_flops_per_token(m) == 855_166_464\n"
            "assert not [n for n in sys.modules if n in ('minigpt.params', 'minigpt.tools.params')]")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_mfu_is_never_above_100_percent(capsys):
    # a peak probed while the machine was busy: the run beats it by 3.2% (the mfu=103.2% of the issue)
    assert flops.mfu(flops_per_token=1e9, tokens_per_s=103.2, peak=1e11) == 1.0
    assert flops.mfu(flops_per_token=1e9, tokens_per_s=110, peak=1e11) == 1.0
    err = capsys.readouterr().err
    assert err.count("under-measured") == 1 and "103.2 GFLOP/s" in err  # said once per peak


def test_cpu_peak_is_probed_in_the_run_never_read_from_a_cache(monkeypatch, private_cache):
    stale = {f"{flops.cpu_name()} | {torch.get_num_threads()} threads | torch {torch.__version__} | torch.float32": 1e6}
    (private_cache / "peak.json").write_text(json.dumps(stale))  # what the old code cached forever
    calls = []
    monkeypatch.setattr(flops, "matmul_peak", lambda dtype: calls.append(dtype) or 5e10)
    for _ in range(2):
        peak, note = flops.device_peak(torch.device("cpu"), torch.float32)
        assert peak == 5e10 and "probed now" in note and "50 GFLOP/s" in note
    assert calls == [torch.float32, torch.float32]


def test_emulated_bf16_is_never_probed(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_bf16_native", lambda: False)
    monkeypatch.setattr(flops, "matmul_peak", lambda *a, **k: pytest.fail("probed an emulated bf16"))
    peak, note = flops.device_peak(torch.device("cpu"), torch.bfloat16)
    assert peak is None and "no native bf16" in note and "\n" not in note


def test_probe_size_keeps_a_slow_dtype_brief():
    def timer(rate):
        spent = []
        return spent, lambda n: spent.append(2 * n**3 / rate) or spent[-1]
    spent, at = timer(1.3e9)  # emulated bf16 on an AVX2 CPU, as measured in the issue
    assert flops.probe_size(at, budget=0.5) == 512 and sum(spent) < 0.5
    spent, at = timer(100e9)  # a fast fp32 core reaches the full size
    assert flops.probe_size(at, budget=0.5) == 2048


def test_tests_keep_their_cache_out_of_home():
    assert not Path(os.environ["MINIGPT_CACHE"]).resolve().is_relative_to(Path.home().resolve() / ".cache")


def test_matmul_probe_leaves_the_random_stream_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    assert flops.matmul_peak(torch.float32, seconds=0.02, largest=256) > 0
    assert torch.equal(torch.rand(3), expected)


def test_train_logs_mfu_against_the_peak(char_dataset, tmp_path, monkeypatch, capsys):
    from minigpt.trainer import train

    monkeypatch.setattr(flops, "cpu_peak", lambda dtype: (1e15, "a test peak"))
    out = tmp_path / "out"
    overrides = dict(preset="tiny", batch_size=2, max_iters=4, eval_interval=100, eval_iters=1, log_interval=2,
                     device="cpu", plot=False, dataset=str(char_dataset), out_dir=str(out))
    train(build_config(train_sections(), overrides={k: str(v) for k, v in overrides.items()}))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "mfu" in r]
    assert len(logged) == 2
    from minigpt import checkpoint

    model = checkpoint.load_model(out).model
    fpt = flops.model_flops_per_token(model)
    for r in logged:
        assert r["mfu"] == pytest.approx(fpt * r["tokens_per_s"] / 1e15)
    printed = capsys.readouterr()
    assert "mfu=" in printed.err and "MFU against" in printed.out and "MFU" in printed.out.splitlines()[-1]


def test_train_without_mfu_probes_nothing(char_dataset, tmp_path, monkeypatch, capsys):
    from minigpt.trainer import train

    def no_probe(dtype):
        raise AssertionError("mfu=false must not probe the peak")

    monkeypatch.setattr(flops, "cpu_peak", no_probe)
    out = tmp_path / "out"
    overrides = dict(preset="tiny", batch_size=2, max_iters=4, eval_interval=100, eval_iters=1, log_interval=2,
                     device="cpu", plot=False, dataset=str(char_dataset), out_dir=str(out), mfu=False)
    train(build_config(train_sections(), overrides={k: str(v) for k, v in overrides.items()}))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("tokens_per_s" in r for r in records) and not any("mfu" in r for r in records)
    assert "MFU" not in capsys.readouterr().out


def test_steady_probe_is_the_best_sustained_round_and_says_how(monkeypatch):
    """The bench's probe: FLOPs of back-to-back products over their wall time, best round of any size."""
    clock = iter(x * 0.01 for x in range(100_000))
    monkeypatch.setattr(flops.time, "perf_counter", lambda: next(clock))  # every product takes 10 ms
    peak = flops.steady_matmul_peak(torch.float32, sizes=(16, 32), seconds=0.06, rounds=3)
    assert peak == pytest.approx(2 * 32**3 / 0.01)  # the larger size's rate: 2 n^3 FLOPs per 10 ms
    how = flops.describe_steady_probe()
    assert "1024/2048/4096" in how and "3 rounds of 0.67 s" in how and "sustained" in how


def test_steady_probe_measures_for_real_and_leaves_the_random_stream_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    assert flops.steady_matmul_peak(torch.float32, sizes=(64,), seconds=0.03, rounds=3) > 1e6
    assert torch.equal(torch.rand(3), expected)
