"""FLOPs per token against hand-computed values, GPU peak lookup, the cached CPU probe, MFU in train.py's log."""

import json

import pytest
import torch

from minigpt import flops
from minigpt.config import PRESETS, TrainConfig, build_config, train_sections
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


def test_cpu_peak_is_probed_once_and_cached(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(flops, "matmul_peak", lambda dtype: calls.append(dtype) or 5e10)
    path = tmp_path / "peak.json"
    assert flops.cpu_peak(torch.float32, path) == (5e10, False)
    assert flops.cpu_peak(torch.float32, path) == (5e10, True)
    assert flops.cpu_peak(torch.bfloat16, path) == (5e10, False)  # another dtype, another probe
    assert calls == [torch.float32, torch.bfloat16]
    keys = list(json.loads(path.read_text()))
    assert all(torch.__version__ in k and f"{torch.get_num_threads()} threads" in k for k in keys)


def test_matmul_probe_leaves_the_random_stream_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    assert flops.matmul_peak(torch.float32, n=64, reps=2) > 0
    assert torch.equal(torch.rand(3), expected)


def test_train_logs_mfu_against_the_peak(char_dataset, tmp_path, monkeypatch, capsys):
    from minigpt.trainer import train

    monkeypatch.setattr(flops, "cpu_peak", lambda dtype: (1e9, True))
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
        assert r["mfu"] == pytest.approx(fpt * r["tokens_per_s"] / 1e9)
    printed = capsys.readouterr()
    assert "mfu=" in printed.err and "MFU against" in printed.out and "MFU" in printed.out.splitlines()[-1]
