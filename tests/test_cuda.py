"""The CUDA paths, on a GPU: marked `cuda` and skipped elsewhere with the reason (scripts/gpu_check.sh runs
them with `pytest -m cuda`): the trainer's step in bf16 autocast and in fp16 with the GradScaler, fused
AdamW, SDPA's flash kernel against the written-out attention, the compiled decode step against eager.
Then the GPU check's dry run, which runs everywhere."""

import os
import shlex
import subprocess

import pytest
import torch

from benchmarks.training import Shape, make_run
from conftest import ROOT, needs_cuda
from minigpt import kernels, trainer
from minigpt.config import SAMPLE_SECTIONS, parse_cli, train_sections
from minigpt.generate import GREEDY, compile_step, generate
from minigpt.model import GPT, GPTConfig
from minigpt.optim import make_optimizer

CUDA = torch.device("cuda")
SHAPE = Shape("tiny", batch=4, T=32, overrides={"vocab_size": 65})


def cuda(test):
    for mark in reversed(needs_cuda):
        test = mark(test)
    return test


def losses(dtype_name: str, steps: int = 5) -> tuple[list[float], trainer.Run]:
    run = make_run(SHAPE, dtype_name, False, "cuda")  # a trainer.Run as trainer.setup assembles one
    out = []
    for _ in range(steps):
        loss, finite = trainer.train_step(run, run.t.learning_rate)
        assert finite
        out.append(loss.item())
    return out, run


@cuda
def test_bf16_autocast_training_step_follows_fp32():
    fp32, _ = losses("float32")
    bf16, run = losses("bfloat16")
    assert run.rt.dtype is torch.bfloat16 and not run.scaler.is_enabled()  # bf16 has fp32's range: no scale
    assert bf16[-1] < bf16[0]
    # the same weights and batches: the first loss differs by bf16 rounding of the products only (8 bits of
    # mantissa: relative 2^-8), the later ones drift a little further as the updates differ
    assert bf16[0] == pytest.approx(fp32[0], rel=2**-7)
    assert bf16[-1] == pytest.approx(fp32[-1], rel=2**-5)


@cuda
def test_fp16_step_with_the_grad_scaler():
    fp32, _ = losses("float32")
    fp16, run = losses("float16")
    assert run.scaler.is_enabled() and run.scaler.get_scale() > 0
    assert fp16[-1] < fp16[0]
    assert fp16[0] == pytest.approx(fp32[0], rel=2**-9)  # fp16: 10 bits of mantissa
    assert all(torch.isfinite(p).all() for p in run.model.parameters())


@cuda
def test_fused_adamw_on_cuda_equals_the_for_each_one_on_the_cpu():
    torch.manual_seed(0)
    config = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=65, bias=False)
    cpu_model = GPT(config)
    gpu_model = GPT(config).to(CUDA)
    gpu_model.load_state_dict(cpu_model.state_dict())
    gpu_opt = make_optimizer(gpu_model, 1e-2, 0.1, (0.9, 0.95), CUDA)
    assert gpu_opt.defaults.get("fused") is True
    cpu_opt = torch.optim.AdamW([{"params": g["params"], "weight_decay": g["weight_decay"]}
                                 for g in make_optimizer(cpu_model, 1e-2, 0.1, (0.9, 0.95),
                                                         torch.device("cpu")).param_groups],
                                lr=1e-2, betas=(0.9, 0.95), foreach=False)
    for p, q in zip(cpu_model.parameters(), gpu_model.parameters()):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.to(CUDA)
    for _ in range(3):
        cpu_opt.step()
        gpu_opt.step()
    for p, q in zip(cpu_model.parameters(), gpu_model.parameters()):
        torch.testing.assert_close(q.cpu(), p, rtol=1e-5, atol=1e-6)  # fp32 updates, summed in another order


@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_flash_sdpa_equals_the_explicit_attention(dtype):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 4, 128, 64, device=CUDA, dtype=dtype, generator=g).requires_grad_() for _ in range(3))
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # refuses to run rather than fall back to another kernel
        y = kernels.attention(q, k, v)
        y.float().square().sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    ref = kernels.naive_attention(q, k, v)  # fp32 inside, rounded to dtype at the end
    ref.float().square().sum().backward()
    # Not yet measured on a GPU (none in the session that wrote this): the bounds are what the kernels' roundings
    # allow, a couple of roundings of the output, more for the gradients (flash rounds P and dS to `dtype` inside).
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(y.float(), ref.float(), rtol=2 * eps, atol=eps)
    for got, want in zip(grads, (q.grad, k.grad, v.grad)):
        torch.testing.assert_close(got.float(), want.float(), rtol=16 * eps, atol=16 * eps)


@cuda
def test_the_model_on_cuda_equals_the_model_on_the_cpu():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=65, bias=False)).eval()
    idx = torch.randint(0, 65, (2, 64))
    with torch.no_grad():
        want = model(idx)
        got = model.to(CUDA)(idx.to(CUDA)).cpu()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)  # fp32 both (TF32 off by default in tests)


@cuda
def test_compiled_decode_step_equals_eager_on_cuda():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=65, bias=False)).to(CUDA).eval()
    prompt = torch.randint(0, 65, (2, 8), device=CUDA)
    eager = generate(model, prompt, max_new_tokens=24, sampling=GREEDY)
    compiled = generate(model, prompt, max_new_tokens=24, sampling=GREEDY, step=compile_step(model))
    assert torch.equal(compiled, eager)


# ---------------------------------------------------------------------------------------------------
# scripts/gpu_check.sh: a dry run wherever there is no GPU (or with --dry-run)

def dry_run(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "GPU_CHECK_OUT": "out/gpu_check_dry_run_test"}, timeout=60)


def test_gpu_check_dry_run_says_what_it_would_run_and_runs_nothing():
    p = dry_run("--dry-run")
    assert p.returncode == 0 and p.stderr == ""
    lines = p.stdout.splitlines()
    assert lines[0] == "gpu check, dry run (--dry-run): on a CUDA machine it would run, within 450s in all:"
    steps = {line.split()[0]: line.split(")  ", 1)[1] for line in lines[1:-1]}
    assert list(steps) == ["cuda-tests", "prepare", "train", "sample", "bench-train", "bench-generate"]
    assert "-m pytest -q -m cuda tests/test_cuda.py" in steps["cuda-tests"]
    assert "bench train-gpt2 --quick --device=cuda" in steps["bench-train"]
    assert "bench generate-gpt2 --quick --device=cuda" in steps["bench-generate"]
    assert not (ROOT / "out" / "gpu_check_dry_run_test").exists()  # a dry run writes nothing
    # the commands it would run take the settings the project has today (a renamed one fails here, not on the GPU)
    train = parse_cli(shlex.split(steps["train"])[2:], train_sections(), "train", "")
    assert (train.model.n_layer, train.model.n_embd, train.train.max_iters) == (12, 768, 200)
    assert (train.runtime.dtype, train.runtime.compile, train.runtime.device) == ("bfloat16", True, "cuda")
    sample = parse_cli(shlex.split(steps["sample"])[2:], SAMPLE_SECTIONS, "sample", "")
    assert sample.runtime.device == "cuda" and "out/gpu_check_dry_run_test/run" in steps["sample"]
    assert "--tokenizer=gpt2" in steps["prepare"]
    if not torch.cuda.is_available():
        p = dry_run()
        assert p.returncode == 0 and "dry run (no CUDA GPU here)" in p.stdout
    assert dry_run("--bogus").returncode == 2
