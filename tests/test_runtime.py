import pytest
import torch

from minigpt import runtime
from minigpt.errors import UserError

CPU = torch.device("cpu")


@pytest.fixture
def probing(monkeypatch):
    """dtype=auto as a user gets it: the suite's pin (conftest) removed, so the CPU's choice is probed."""
    monkeypatch.delenv(runtime.AUTO_CPU_ENV, raising=False)


def fake_timer(seconds: dict):
    """A make_timer for bf16_speedup whose steps take `seconds[dtype]` (a list: one value per call)."""
    calls = []

    def make(width, rows):
        def timer(dtype):
            calls.append(dtype)
            return seconds[dtype].pop(0)
        return timer
    return make, calls


def test_auto_dtype_on_cpu_is_bf16_where_the_probe_finds_it_faster_at_any_width(monkeypatch, probing):
    monkeypatch.setattr(runtime, "cpu_bf16_native", lambda: True)
    speedups = {64: 1.4, 128: 1.41, 768: 1.05, 1600: 2.0}  # whatever the width: the measurement decides
    monkeypatch.setattr(runtime, "bf16_speedup", lambda width: speedups[width])
    assert runtime.pick_dtype("auto", CPU, 64) is torch.bfloat16  # the old width rule kept fp32 below 512
    assert runtime.pick_dtype("auto", CPU, 128) is torch.bfloat16
    dtype, why = runtime.choose_dtype("auto", CPU, 768)
    assert dtype is torch.float32 and "bf16 1.05x fp32 at width 768, probed now" in why  # a near-tie: fp32
    assert runtime.pick_dtype("auto", CPU, 1600) is torch.bfloat16
    monkeypatch.setattr(runtime, "bf16_speedup", lambda width: runtime.BF16_MARGIN)
    assert runtime.pick_dtype("auto", CPU, 128) is torch.bfloat16  # the margin itself is enough


def test_cpu_without_native_bf16_stays_fp32_and_never_probes(monkeypatch, probing):
    monkeypatch.setattr(runtime, "cpu_bf16_native", lambda: False)  # AVX2 only
    monkeypatch.setattr(runtime, "bf16_speedup", lambda width: pytest.fail("probed an emulated bf16"))
    for width in (32, 128, 768, 12288):
        dtype, why = runtime.choose_dtype("auto", CPU, width)
        assert dtype is torch.float32 and why == "auto: no native bf16 on this CPU"
    monkeypatch.setenv(runtime.AUTO_CPU_ENV, "bfloat16")  # not even a pin makes it emulate bf16
    assert runtime.pick_dtype("auto", CPU, 768) is torch.float32
    with pytest.raises(UserError, match="no native bf16"):  # one line at once, not minutes of emulated matmuls
        runtime.pick_dtype("bfloat16", CPU)
    monkeypatch.setattr(runtime, "cpu_bf16_native", lambda: True)
    assert runtime.pick_dtype("bfloat16", CPU) is torch.bfloat16


def test_bf16_speedup_takes_each_dtypes_best_alternated_after_a_warm_up(monkeypatch):
    fp32, bf16 = torch.float32, torch.bfloat16
    # warm-ups (slow first calls, ignored), then a moment of other load hits one fp32 step
    make, calls = fake_timer({fp32: [9.0, 0.10, 0.50, 0.11], bf16: [9.0, 0.08, 0.05, 0.07]})
    assert runtime.bf16_speedup(128, reps=3, make_timer=make) == pytest.approx(0.10 / 0.05)
    assert calls == [fp32, bf16] + [fp32, bf16] * 3
    make, _ = fake_timer({fp32: [1.0, 0.10, 0.10, 0.10], bf16: [1.0, 0.12, 0.13, 0.12]})
    assert runtime.bf16_speedup(128, reps=3, make_timer=make) == pytest.approx(0.10 / 0.12)


def test_probe_rows_keep_the_probe_brief_for_wide_models():
    assert runtime.probe_rows(128) == 1024 and runtime.probe_rows(768) == 128 and runtime.probe_rows(12288) == 64
    for width in (128, 384, 768, 1024):  # wider ones take the floor of 64 rows
        assert 48 * runtime.probe_rows(width) * width**2 <= runtime.PROBE_FLOPS


def test_the_pin_replaces_the_probe_and_is_checked(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_bf16_native", lambda: True)
    monkeypatch.setattr(runtime, "bf16_speedup", lambda width: pytest.fail("a pinned choice probes nothing"))
    monkeypatch.setenv(runtime.AUTO_CPU_ENV, "bfloat16")
    assert runtime.choose_dtype("auto", CPU, 64) == (torch.bfloat16, f"auto: pinned by ${runtime.AUTO_CPU_ENV}")
    monkeypatch.setenv(runtime.AUTO_CPU_ENV, "fp8")
    with pytest.raises(UserError, match="MINIGPT_CPU_AUTO_DTYPE=fp8: use float32 or bfloat16"):
        runtime.pick_dtype("auto", CPU, 64)


@pytest.mark.skipif(not runtime.cpu_bf16_native(), reason="this CPU has no native bf16: the probe never runs here")
def test_the_real_probe_times_both_dtypes():
    timer = runtime.mlp_step_timer(64, runtime.probe_rows(64))
    assert timer(torch.float32) > 0 and timer(torch.bfloat16) > 0
    assert 0 < runtime.bf16_speedup(64, reps=1) < 1000


def test_setup_sets_the_threads_before_it_probes_the_dtype(monkeypatch, probing):
    from minigpt.config import RuntimeConfig

    monkeypatch.setattr(runtime, "cpu_bf16_native", lambda: True)
    seen = []
    monkeypatch.setattr(runtime, "bf16_speedup", lambda width: seen.append(torch.get_num_threads()) or 1.5)
    old = torch.get_num_threads()
    try:
        rt = runtime.setup(RuntimeConfig(device="cpu", threads=1), n_embd=128)
    finally:
        torch.set_num_threads(old)
    assert seen == [1] and rt.dtype is torch.bfloat16 and "bf16 1.50x fp32 at width 128" in rt.describe()


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
