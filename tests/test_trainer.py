"""Training that survives real runs: exact resume (also after SIGKILL), clean stops, NaN guard, bad input."""

import dataclasses
import hashlib
import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, run
from minigpt.config import build_config, train_sections
from minigpt.errors import UserError
from minigpt.model import GPTConfig
from minigpt.trainer import train

BASE = dict(preset="tiny", batch_size=4, eval_interval=10, eval_iters=2, log_interval=5, lr_decay_iters=60,
            warmup_iters=5, device="cpu", dropout=0.1, plot=False, threads=1)  # one thread: the same sums every run


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


def test_a_checkpoint_of_the_previous_version_loads_and_resumes_exactly(char_dataset, tmp_path, straight):
    """Version 1 (before the remodel) kept rank 0's RNG state as one dict and had no dataset or wandb ids."""
    from minigpt import checkpoint

    out = tmp_path / "v1"
    train(cfg(char_dataset, out, max_iters=20))
    state = torch.load(out / "ckpt.pt", weights_only=True)
    state["version"], state["rng"] = 1, state["rng"][0]
    for k in ("wandb_id", "dataset_id"):
        del state[k]
    torch.save(state, out / "ckpt.pt")
    assert checkpoint.load_model(out).state["version"] == 1  # sample, evaluate, export read it
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
    long, kw = 400, dict(eval_interval=100, lr_decay_iters=400)  # long enough that the kill lands mid-run
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


def _scripted_evals(monkeypatch, val_losses):
    """Make estimate_loss return these val losses in turn (train loss = val loss)."""
    from minigpt import trainer

    it = iter(val_losses)

    def fake(run):
        v = next(it)
        return {"train": v, "val": v}

    monkeypatch.setattr(trainer, "estimate_loss", fake)


def test_best_val_is_never_replaced_by_a_worse_one(char_dataset, tmp_path, monkeypatch):
    _scripted_evals(monkeypatch, [3.0, 2.5, 2.8, 2.6, 2.9])  # evals at 0, 10, 20, 30, 40: best at 10, last worst
    out = tmp_path / "best"
    train(cfg(char_dataset, out, max_iters=40))
    assert torch.load(out / "ckpt.pt", weights_only=True)["best_val_loss"] == 2.5
    assert torch.load(out / "ckpt.pt", weights_only=True)["iter_num"] == 40  # always_save_checkpoint (default)
    assert torch.load(out / "best.pt", weights_only=True)["iter_num"] == 10


def test_without_always_save_only_improvements_are_checkpointed(char_dataset, tmp_path, monkeypatch):
    _scripted_evals(monkeypatch, [3.0, 2.5, 2.8, 2.6, 2.9])
    out = tmp_path / "improving"
    train(cfg(char_dataset, out, max_iters=40, always_save_checkpoint=False))
    assert torch.load(out / "ckpt.pt", weights_only=True)["iter_num"] == 10
    assert torch.load(out / "best.pt", weights_only=True)["iter_num"] == 10


def test_keep_last_keeps_the_newest_n(char_dataset, tmp_path):
    out = tmp_path / "keep"
    train(cfg(char_dataset, out, max_iters=40, keep_last=2))
    assert sorted(p.name for p in out.glob("ckpt_*.pt")) == ["ckpt_0000030.pt", "ckpt_0000040.pt"]
    assert torch.load(out / "ckpt_0000030.pt", weights_only=True)["iter_num"] == 30


def test_resume_without_a_checkpoint_starts_fresh(char_dataset, tmp_path, capsys):
    out = tmp_path / "fresh"
    train(cfg(char_dataset, out, max_iters=10, resume=True))
    assert "no checkpoint" in capsys.readouterr().out
    assert torch.load(out / "ckpt.pt", weights_only=True)["iter_num"] == 10


def test_eval_only_reports_a_trained_run_and_writes_nothing(char_dataset, tmp_path, straight, capsys):
    before = {p.name: p.read_bytes() for p in straight.iterdir() if p.is_file()}
    result = train(cfg(char_dataset, straight, max_iters=40, eval_only=True))
    printed = capsys.readouterr().out
    assert "step 40: train loss" in printed and "val loss" in printed
    assert result["losses"]["val"] < 3.0  # the trained weights, not a fresh init (ln 33 = 3.5)
    assert {p.name: p.read_bytes() for p in straight.iterdir() if p.is_file()} == before
    fresh = tmp_path / "nothing"
    with pytest.raises(UserError, match="holds no checkpoint"):
        train(cfg(char_dataset, fresh, eval_only=True))
    assert not fresh.exists() or not any(fresh.iterdir())


def test_resume_says_when_the_dataset_changed(char_dataset, tmp_path, straight, capsys):
    from conftest import TEXT, prepare_text

    other = tmp_path / "other_ds"
    prepare_text(TEXT[::-1], other)  # the same characters, another text
    train(cfg(other, straight, max_iters=50, resume=True))
    assert "a different dataset" in capsys.readouterr().out


def test_a_preset_that_contradicts_the_checkpoint_is_refused(char_dataset, straight):
    with pytest.raises(UserError, match="differs from this run's settings"):
        train(cfg(char_dataset, straight, max_iters=50, resume=True, preset="baby"))


def test_checkpoint_names_its_dataset_by_absolute_path(char_dataset, tmp_path, straight):
    state = torch.load(straight / "ckpt.pt", weights_only=True)
    assert state["dataset"] == str(char_dataset.resolve())
    p = run("-m", "minigpt", "evaluate", f"--model={straight}", "--device=cpu", cwd=tmp_path)  # another folder
    assert "loss" in p.stdout


def test_a_failed_save_is_one_line_and_keeps_the_previous_checkpoint(char_dataset, tmp_path, straight, monkeypatch):
    import errno

    from minigpt import checkpoint

    before = (straight / "ckpt.pt").read_bytes()

    def full_disk(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(UserError, match="No space left on device.*previous checkpoint is intact"):
        train(cfg(char_dataset, straight, max_iters=50, resume=True))
    assert (straight / "ckpt.pt").read_bytes() == before
    assert not list(straight.glob(".*.tmp"))


def test_best_link_falls_back_to_a_copy(tmp_path, monkeypatch):
    from minigpt import checkpoint

    src = tmp_path / "ckpt.pt"
    src.write_bytes(b"weights")

    def no_links(a, b):
        raise OSError("links not supported here")

    monkeypatch.setattr(checkpoint.os, "link", no_links)
    checkpoint.link(src, tmp_path / "best.pt")
    assert (tmp_path / "best.pt").read_bytes() == b"weights"


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
        train(cfg(char_dataset, broken, max_iters=50, resume=True))
    assert (broken / "ckpt.pt").read_bytes() == before


def test_wandb_offline_run_holds_the_metrics_and_a_resume_continues_it(char_dataset, tmp_path):
    pytest.importorskip("wandb")
    out = tmp_path / "wb"
    common = {**BASE, "dataset": char_dataset, "out_dir": out, "wandb_log": True}
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    run("train.py", *[f"--{k}={v}" for k, v in {**common, "max_iters": 20}.items()], env=env)
    run_id = torch.load(out / "ckpt.pt", weights_only=True)["wandb_id"]
    assert run_id
    run("train.py", *[f"--{k}={v}" for k, v in {**common, "max_iters": 30, "resume": True}.items()], env=env)
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(run_id) for r in runs)  # one wandb run, continued
    data = next(runs[0].glob("run-*.wandb")).read_bytes()
    assert b"val_loss" in data and b"train_loss" in data


def test_muon_resume_is_bit_identical_and_its_settings_are_checked(char_dataset, tmp_path):
    muon = dict(optimizer="muon", lr_schedule="wsd", cooldown_iters=20, lr_decay_iters=40)
    straight_out, out = tmp_path / "straight", tmp_path / "parts"
    first = train(cfg(char_dataset, straight_out, max_iters=40, **muon))
    train(cfg(char_dataset, out, max_iters=20, **muon))
    train(cfg(char_dataset, out, max_iters=40, resume=True, **muon))
    assert weights_hash(out) == weights_hash(straight_out) and losses_of(out) == losses_of(straight_out)
    assert first["losses"]["train"] < 3.0  # it learns (the tiny model starts at ln(65) = 4.17)
    state = torch.load(out / "ckpt.pt", weights_only=True)["optimizer"]
    assert any("momentum_buffer" in s for s in state["state"].values())  # Muon's state is in the checkpoint
    with pytest.raises(UserError, match="--optimizer=muon, whose state cannot carry over"):
        train(cfg(char_dataset, out, max_iters=50, resume=True))
    for bad, match in [(dict(optimizer="sgd"), "optimizer must be"), (dict(lr_schedule="linear"), "lr_schedule must be"),
                       (dict(lr_schedule="wsd", cooldown_iters=100), "cooldown_iters")]:
        with pytest.raises(UserError, match=match):
            train(cfg(char_dataset, tmp_path / "bad", max_iters=1, **bad))


def test_muon_with_fsdp_is_refused_in_one_line(char_dataset, tmp_path):
    from minigpt.distributed import World
    from minigpt.trainer import check_settings

    t = cfg(char_dataset, tmp_path / "o", optimizer="muon", fsdp=True, gradient_accumulation_steps=2).train
    with pytest.raises(UserError, match="--optimizer=muon orthogonalises whole matrices, which FSDP shards"):
        check_settings(t, World(rank=0, world_size=2))
    assert check_settings(dataclasses.replace(t, optimizer="adamw"), World(rank=0, world_size=2)) == 1
