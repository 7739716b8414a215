import pytest
import torch

from minigpt import runtime
from minigpt.errors import UserError

CPU = torch.device("cpu")


def test_auto_dtype_on_cpu_depends_on_width_and_bf16_support(monkeypatch):
    monkeypatch.setattr(runtime, "_cpu_has_bf16", lambda: True)
    assert runtime.pick_dtype("auto", CPU, 128) is torch.float32
    assert runtime.pick_dtype("auto", CPU, 768) is torch.bfloat16
    monkeypatch.setattr(runtime, "_cpu_has_bf16", lambda: False)
    assert runtime.pick_dtype("auto", CPU, 768) is torch.float32
    assert runtime.pick_dtype("bfloat16", CPU) is torch.bfloat16


def test_bad_dtype_and_device():
    with pytest.raises(UserError, match="float16 is not supported on the CPU"):
        runtime.pick_dtype("float16", CPU)
    with pytest.raises(UserError, match="unknown dtype"):
        runtime.pick_dtype("fp8", CPU)
    with pytest.raises(UserError, match="unknown device"):
        runtime.pick_device("tpu")


def test_rng_state_round_trip():
    runtime.seed_everything(3)
    state = runtime.rng_state()
    a = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    runtime.set_rng_state(state)
    b = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_compile_auto_is_on_for_cuda_only_and_explicit_wins():
    from minigpt.config import SAMPLE_SECTIONS, parse_cli, train_sections

    assert runtime.pick_compile(None, torch.device("cuda")) is True
    assert runtime.pick_compile(None, CPU) is False
    assert runtime.pick_compile(True, CPU) is True and runtime.pick_compile(False, torch.device("cuda")) is False
    for sections in (train_sections(), SAMPLE_SECTIONS):  # one runtime section, one meaning, every command
        assert parse_cli([], sections, "p", "a").runtime.compile is None
        assert parse_cli(["--compile=auto"], sections, "p", "a").runtime.compile is None
        assert parse_cli(["--compile"], sections, "p", "a").runtime.compile is True
        assert parse_cli(["--compile=false"], sections, "p", "a").runtime.compile is False
        with pytest.raises(UserError, match="compile"):
            parse_cli(["--compile=maybe"], sections, "p", "a")
