"""Training that survives real runs: exact resume (also after SIGKILL), clean stops, NaN guard, bad input."""

import hashlib
import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, run
from minigpt.config import TrainConfig, build_config, train_sections
from minigpt.errors import UserError
from minigpt.model import GPTConfig
from minigpt.trainer import train

BASE = dict(preset="tiny", batch_size=4, eval_interval=10, eval_iters=2, log_interval=5, lr_decay_iters=60,
            warmup_iters=5, device="cpu", dropout=0.1, plot=False)


def cfg(dataset, out_dir, **kw):
    overrides = {**BASE, "dataset": str(dataset), "out_dir": str(out_dir), **kw}
    return build_config(train_sections(), overrides={k: str(v) for k, v in overrides.items()})


def weights_hash(out_dir) -> str:
    state = torch.load(out_dir / "ckpt.pt", weights_only=True)["model"]
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode() + state[k].numpy().tobytes())
    return h.hexdigest()


def metrics(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def losses_of(out_dir):
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "mfu")} for r in metrics(out_dir)]  # timings


@pytest.fixture
def straight(char_dataset, tmp_path):
    out = tmp_path / "straight"
    train(cfg(char_dataset, out, max_iters=40))
    return out


def test_resume_is_bit_identical(char_dataset, tmp_path, straight):
    out = tmp_path / "parts"
    train(cfg(char_dataset, out, max_iters=20))  # first half, ends with an eval + checkpoint at 20
    train(cfg(char_dataset, out, max_iters=40, resume=True))
    assert weights_hash(out) == weights_hash(straight)
    assert losses_of(out) == losses_of(straight)


def _start(char_dataset, out, max_iters, **kw):
    """train.py in its own process; its output goes to OUT.log (a pipe nobody reads would fill up and
    stall the run)."""
    settings = {**BASE, "dataset": char_dataset, "out_dir": out, "max_iters": max_iters, **kw}
    args = [f"--{k}={v}" for k, v in settings.items()]
    log = open(f"{out}.log", "a")
    return subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def _log(out) -> str:
    return open(f"{out}.log").read()


def _finish(proc, out, timeout=600) -> int:
    proc.wait(timeout=timeout)
    assert proc.returncode in (0, 130, 143), _log(out)[-2000:]
    return proc.returncode


def _checkpointed_past(out, iteration) -> bool:
    """Whether out/ckpt.pt holds an iteration past `iteration` (it is replaced atomically, never torn)."""
    try:
        return torch.load(out / "ckpt.pt", weights_only=True)["iter_num"] > iteration
    except FileNotFoundError:
        return False


def _wait_for_checkpoint_after(proc, out, iteration, timeout=300):
    """Wait until the running training has checkpointed past `iteration`."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if _checkpointed_past(out, iteration):
            return
        time.sleep(0.05)
    raise AssertionError(f"training ended or stalled before checkpointing past {iteration}: {_log(out)[-2000:]}")


def test_resume_after_sigkill_is_bit_identical(char_dataset, tmp_path):
    # Every run is its own process, as a user runs them: nothing an earlier test did to this process's
    # torch state (threads, compiled kernels) can make the reference differ from the killed run.
    long, kw = 1500, dict(eval_interval=300, lr_decay_iters=1500)  # long enough that the kill lands mid-run
    ref = tmp_path / "ref"
    assert _finish(_start(char_dataset, ref, long, **kw), ref) == 0
    out = tmp_path / "killed"
    proc = _start(char_dataset, out, long, **kw)
    _wait_for_checkpoint_after(proc, out, 0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    state = torch.load(out / "ckpt.pt", weights_only=True)
    assert 0 < state["iter_num"] < long
    assert _finish(_start(char_dataset, out, long, resume=True, **kw), out) == 0
    assert weights_hash(out) == weights_hash(ref)
    assert losses_of(out) == losses_of(ref)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_stop_signal_saves_and_exits_conventionally(char_dataset, tmp_path, sig, code):
    out = tmp_path / "stopped"
    proc = _start(char_dataset, out, 100000)
    _wait_for_checkpoint_after(proc, out, -1)
    proc.send_signal(sig)
    assert _finish(proc, out, timeout=120) == code
    state = torch.load(out / "ckpt.pt", weights_only=True)
    assert state["iter_num"] > 0 and state["eval_done"] is False
    assert "checkpoint saved to" in _log(out)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(char_dataset, tmp_path, monkeypatch):
    from minigpt import trainer

    out = tmp_path / "nan"
    real, calls = trainer.lm_loss, {"n": 0}

    def poisoned(logits, targets):
        calls["n"] += 1
        loss = real(logits, targets)
        return loss * float("nan") if logits.requires_grad and calls["n"] > 30 else loss

    monkeypatch.setattr(trainer, "lm_loss", poisoned)
    with pytest.raises(UserError, match="last good checkpoint"):
        train(cfg(char_dataset, out, max_iters=40))
    good = torch.load(out / "ckpt.pt", weights_only=True)
    assert good["iter_num"] == 20 and all(torch.isfinite(v).all() for v in good["model"].values())
    calls["n"] = 0
    train(cfg(char_dataset, tmp_path / "skip", max_iters=40, on_nan="skip"))
    assert torch.load(tmp_path / "skip" / "ckpt.pt", weights_only=True)["iter_num"] == 40


def test_best_val_is_never_replaced_by_a_worse_one(char_dataset, tmp_path):
    out = tmp_path / "best"
    train(cfg(char_dataset, out, max_iters=30, learning_rate=0.5, min_lr=0.5, warmup_iters=0))  # diverges
    evals = [r["val_loss"] for r in metrics(out) if "val_loss" in r]
    assert torch.load(out / "ckpt.pt", weights_only=True)["best_val_loss"] == min(evals)
    assert torch.load(out / "best.pt", weights_only=True)["iter_num"] == evals.index(min(evals)) * 10


def test_bad_input(char_dataset, tmp_path, straight):
    with pytest.raises(UserError, match="differs from this run's settings"):
        train(cfg(char_dataset, straight, max_iters=50, resume=True, n_layer=3))
    with pytest.raises(UserError, match="already holds a checkpoint"):
        train(cfg(char_dataset, straight, max_iters=50))
    with pytest.raises(UserError, match="float16 is not supported on the CPU"):
        train(cfg(char_dataset, tmp_path / "o", dtype="float16"))
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot write to out_dir"):
        train(cfg(char_dataset, blocker / "sub", max_iters=1))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "ckpt.pt").write_bytes((straight / "ckpt.pt").read_bytes()[:4096])
    before = (broken / "ckpt.pt").read_bytes()
    with pytest.raises(UserError, match="truncated or corrupt"):
        train(cfg(char_dataset, broken, max_iters=50, init_from="resume"))
    assert (broken / "ckpt.pt").read_bytes() == before


def test_wandb_offline_run_holds_the_metrics(char_dataset, tmp_path):
    pytest.importorskip("wandb")
    out = tmp_path / "wb"
    p = run("train.py", *[f"--{k}={v}" for k, v in {**BASE, "dataset": char_dataset, "out_dir": out,
                                                    "max_iters": 20, "wandb_log": True}.items()],
            env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    runs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1, p.stdout
    data = runs[0].read_bytes()
    assert b"val_loss" in data and b"train_loss" in data


def test_loss_curve_png_is_written(char_dataset, tmp_path):
    out = tmp_path / "png"
    train(cfg(char_dataset, out, max_iters=20, plot=True))
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compiled_and_bf16_follow_the_fp32_trajectory(char_dataset, tmp_path):
    """Speed options keep results right: compile matches fp32 closely, bf16 autocast more loosely."""
    runs = {}
    for name, kw in {"fp32": {}, "compiled": {"compile": True}, "bf16": {"dtype": "bfloat16"}}.items():
        out = tmp_path / name
        train(cfg(char_dataset, out, max_iters=20, dropout=0.0, **kw))
        runs[name] = [r["loss"] for r in metrics(out) if "loss" in r]
    assert runs["compiled"] == pytest.approx(runs["fp32"], abs=1e-3)
    assert runs["bf16"] == pytest.approx(runs["fp32"], abs=3e-2)
    assert runs["fp32"][-1] < runs["fp32"][0]
