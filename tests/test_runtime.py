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
    with pytest.raises(UserError, match="no native bf16"):  # one line at once, not minutes of emulated matmuls
        runtime.pick_dtype("bfloat16", CPU)
    monkeypatch.setattr(runtime, "_cpu_has_bf16", lambda: True)
    assert runtime.pick_dtype("bfloat16", CPU) is torch.bfloat16


def test_threads_follow_the_free_cores_and_a_probe_when_busy(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    probed = []

    def probe(candidates):
        probed.append(candidates)
        return {n: (1000.0 if n == 1 else 300.0) for n in candidates}  # a busy core: more threads stall

    monkeypatch.setattr(runtime, "probe_threads", probe)
    monkeypatch.setattr(runtime, "free_cores", lambda: (2, 0.1))
    assert runtime.pick_threads(0, CPU)[0] == 2 and probed == []  # a quiet machine: every core, no probe
    monkeypatch.setattr(runtime, "free_cores", lambda: (2, 0.9))  # another program keeps one core busy
    threads, why = runtime.pick_threads(0, CPU)
    assert threads == 1 and probed == [[1, 2]] and "busy" in why
    monkeypatch.setattr(runtime, "probe_threads", lambda c: {n: 100.0 * n for n in c})  # e.g. it runs at nice 19
    assert runtime.pick_threads(0, CPU)[0] == 2
    assert runtime.pick_threads(3, CPU) == (3, "set by --threads")
    monkeypatch.setattr(runtime, "free_cores", lambda: (8, 0.0))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun's processes share the cores
    assert runtime.pick_threads(0, CPU)[0] == 4


def test_thread_probe_times_each_candidate():
    rates = runtime.probe_threads([1, 2], seconds=0.02)
    assert set(rates) == {1, 2} and all(r > 0 for r in rates.values())


def test_free_cores_reads_a_share_of_the_allowed_cores():
    cores, busy = runtime.free_cores(0.2)
    assert cores >= 1 and 0.0 <= busy <= cores + 0.05  # /proc/stat jiffies: a fraction per core


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
