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
    state = torch.load(straight / "ckpt.pt", weights_only=True)  # and the checkpoint names the one it trained on
    assert state["iter_num"] == 50 and state["dataset"] == str(other.resolve())
    assert state["dataset_id"]["shards"] == [s["sha256"] for split in ("train", "val")
                                             for s in json.loads((other / "meta.json").read_text())["splits"][split]["shards"]]


def test_a_preset_that_contradicts_the_checkpoint_is_refused(char_dataset, straight):
    with pytest.raises(UserError, match="which differs from the settings given"):
        train(cfg(char_dataset, straight, max_iters=50, resume=True, preset="baby"))


def test_checkpoint_names_its_dataset_by_absolute_path(char_dataset, tmp_path, straight):
    state = torch.load(straight / "ckpt.pt", weights_only=True)
    assert state["dataset"] == str(char_dataset.resolve())
    p = run("-m", "minigpt", "evaluate", f"--model={straight}", "--device=cpu", cwd=tmp_path)  # another folder
    assert f"of {char_dataset.resolve()}" in p.stdout  # found the dataset by the path the checkpoint holds
    loss = float(p.stdout.split("loss ")[1].split()[0])
    assert 1.0 < loss < 3.0  # the trained model's (a fresh one: ln 33 = 3.5)


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
    with pytest.raises(UserError, match="which differs from the settings given"):
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
        train(cfg(char_dataset, out, max_iters=50, resume=True, optimizer="adamw"))
    train(cfg(char_dataset, out, max_iters=45, resume=True))  # not given: the checkpoint's optimizer goes on
    assert torch.load(out / "ckpt.pt", weights_only=True)["config"]["train"]["optimizer"] == "muon"
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


def _inf_gradient_at(monkeypatch, call):
    """The `call`-th training forward pass gives a finite loss whose gradient is inf (every logit's)."""
    from minigpt import trainer

    real, calls = trainer.lm_loss, {"n": 0}

    def poisoned(logits, targets):
        if logits.requires_grad:
            calls["n"] += 1
            if calls["n"] == call:
                logits.register_hook(lambda g: torch.full_like(g, float("inf")))
        return real(logits, targets)

    monkeypatch.setattr(trainer, "lm_loss", poisoned)


def test_a_non_finite_gradient_with_a_finite_loss_is_skipped_or_stops(char_dataset, tmp_path, monkeypatch, capsys):
    # it used to step: ckpt.pt then held NaN in every weight and the run ended "done"
    _inf_gradient_at(monkeypatch, 25)
    out = tmp_path / "skip"
    train(cfg(char_dataset, out, max_iters=40, on_nan="skip"))
    assert "non-finite loss or gradient at iteration 24; step skipped" in capsys.readouterr().out
    state = torch.load(out / "ckpt.pt", weights_only=True)
    assert state["iter_num"] == 40 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert all(torch.isfinite(t).all() for s in state["optimizer"]["state"].values() for t in s.values())
    _inf_gradient_at(monkeypatch, 25)
    out = tmp_path / "stop"
    with pytest.raises(UserError, match="a gradient became NaN/inf at iteration 24; stopped, the last good checkpoint"):
        train(cfg(char_dataset, out, max_iters=40))
    good = torch.load(out / "ckpt.pt", weights_only=True)
    assert good["iter_num"] == 20 and all(torch.isfinite(v).all() for v in good["model"].values())


def test_weights_that_are_not_finite_are_never_saved(char_dataset, tmp_path, straight, monkeypatch):
    from minigpt import checkpoint, trainer

    real = trainer.clip_and_step

    def overflowing_step(optimizer, *a):  # finite gradients, but a step that overflows a weight
        finite = real(optimizer, *a)
        optimizer.param_groups[0]["params"][0].data[0, 0] = float("inf")
        return finite

    before = (straight / "ckpt.pt").read_bytes()
    monkeypatch.setattr(trainer, "clip_and_step", overflowing_step)
    with pytest.raises(UserError, match=r"not saving .*ckpt.pt: the weights hold NaN or inf values \(transformer.wte"):
        train(cfg(char_dataset, straight, max_iters=50, resume=True, on_nan="skip"))  # NaN losses after it: skipped
    assert (straight / "ckpt.pt").read_bytes() == before and not list(straight.glob(".*.tmp"))
    model = GPT_tiny()
    with torch.no_grad():
        model.lm_head.weight[1, 2] = float("nan")
    with pytest.raises(UserError, match="NaN or inf"):
        checkpoint.save(tmp_path / "x" / "ckpt.pt", model, {"kind": "char", "chars": "ab"})
    assert not (tmp_path / "x" / "ckpt.pt").exists()


def GPT_tiny():
    from minigpt.model import GPT

    return GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=2))


def test_a_checkpoint_carries_a_checksum_and_one_flipped_byte_is_refused(char_dataset, tmp_path, straight):
    from minigpt import checkpoint

    data = (straight / "ckpt.pt").read_bytes()
    assert data[-48:-32] == b"minigpt-sha256:\0" and data[-32:] == hashlib.sha256(data[:-48]).digest()
    # one bit of one weight, deep inside the file: torch.load reads it without complaint
    weights = torch.load(straight / "ckpt.pt", weights_only=True)["model"]["transformer.h.0.mlp.c_fc.weight"]
    at = data.find(weights.numpy().tobytes()[:64])
    assert at > 0
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "ckpt.pt").write_bytes(data[:at + 5] + bytes([data[at + 5] ^ 0x10]) + data[at + 6:])
    with pytest.raises(UserError, match=r"damaged: its bytes do not match the checksum saved with them"):
        checkpoint.load_model(damaged)
    with pytest.raises(UserError, match="damaged"):
        train(cfg(char_dataset, damaged, max_iters=50, resume=True))
    p = run("sample.py", f"--model={damaged}", "--device=cpu", "--max_new_tokens=2", check=False)
    assert p.returncode == 2 and "damaged" in p.stderr and "Traceback" not in p.stderr
    # a checkpoint written before checksums (no trailer) still loads, unchecked
    old = tmp_path / "old"
    old.mkdir()
    (old / "ckpt.pt").write_bytes(data[:-48])
    loaded = checkpoint.load_model(old)
    assert torch.equal(loaded.model.transformer.h[0].mlp.c_fc.weight, weights)


def test_a_checkpoint_missing_keys_is_refused_in_one_line(char_dataset, tmp_path, straight):
    from minigpt import checkpoint

    state = torch.load(straight / "ckpt.pt", weights_only=True)
    for key, where in [("model_config", "load"), ("tokenizer", "load"), ("optimizer", "resume"), ("rng", "resume")]:
        out = tmp_path / key
        out.mkdir()
        torch.save({k: v for k, v in state.items() if k != key}, out / "ckpt.pt")
        if where == "load":
            with pytest.raises(UserError, match=f"lacks {key}, which every minigpt checkpoint holds"):
                checkpoint.load_model(out)
        else:
            assert checkpoint.load_model(out).model.config.n_layer == 2  # sampling needs only the model
            with pytest.raises(UserError, match=f"holds a model but not {key}, so its training cannot continue"):
                train(cfg(char_dataset, out, max_iters=50, resume=True))


def test_the_start_of_run_sweep_deletes_only_the_checkpoint_writers_temporaries(tmp_path):
    from minigpt.trainer import check_out_dir

    out = tmp_path / "out"
    out.mkdir()
    ours = [".ckpt.pt.1a2b3c4d.tmp", ".loss.png.0f0f0f0f.tmp", ".best.pt.link", ".ckpt_0000040.pt.link"]
    theirs = {".notes.tmp": b"my notes", ".data.bin.12345678.tmp": b"theirs", ".my.pt.link": b"x", "a.tmp": b"y"}
    for name in ours:
        (out / name).write_bytes(b"half a checkpoint")
    for name, data in theirs.items():
        (out / name).write_bytes(data)
    check_out_dir(out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == theirs


def test_resume_without_settings_continues_with_the_checkpoints(char_dataset, tmp_path):
    # settings left out at resume are the checkpoint's, not the defaults: `--resume` alone continues the run
    changed = dict(learning_rate=1e-3, weight_decay=0.3, beta2=0.9, grad_clip=0.5, eval_interval=10)
    ref, out = tmp_path / "ref", tmp_path / "parts"
    train(cfg(char_dataset, ref, max_iters=40, **changed))
    train(cfg(char_dataset, out, max_iters=20, **changed))
    resumed = build_config(train_sections(), overrides={"out_dir": str(out), "resume": "true", "max_iters": "40",
                                                        "device": "cpu", "plot": "false", "threads": "1"})  # no dataset
    train(resumed)
    assert weights_hash(out) == weights_hash(ref) and losses_of(out) == losses_of(ref)
    saved = torch.load(out / "ckpt.pt", weights_only=True)
    assert {k: saved["config"]["train"][k] for k in changed} == changed
    assert saved["config"]["model"] == saved["model_config"]  # the config records the model that ran


def test_settings_given_at_resume_take_effect_and_are_recorded(char_dataset, tmp_path, straight, capsys):
    # they used to be ignored (the optimizer's restored param groups kept the old ones), yet saved in the config
    base = torch.load(straight / "ckpt.pt", weights_only=True)
    assert base["config"]["train"]["weight_decay"] == 0.1 and base["model_config"]["dropout"] == 0.1
    same, new = tmp_path / "same", tmp_path / "new"
    for d in (same, new):
        d.mkdir()
        (d / "ckpt.pt").write_bytes((straight / "ckpt.pt").read_bytes())
    train(cfg(char_dataset, same, max_iters=50, resume=True))
    capsys.readouterr()
    given = dict(weight_decay=0.5, beta1=0.1, beta2=0.5, dropout=0.5, learning_rate=1e-3)
    train(cfg(char_dataset, new, max_iters=50, resume=True, **given))
    (said,) = [line for line in capsys.readouterr().out.splitlines() if "settings changed" in line]  # one line
    assert said.startswith("settings changed from the checkpoint's, in effect from this iteration on: ")
    for k in ("weight_decay 0.1 -> 0.5", "beta1 0.9 -> 0.1", "beta2 0.99 -> 0.5", "dropout 0.1 -> 0.5",
              "learning_rate 0.0015 -> 0.001", "max_iters 40 -> 50"):
        assert k in said, k
    state = torch.load(new / "ckpt.pt", weights_only=True)
    groups = state["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.5, 0.0] and {tuple(g["betas"]) for g in groups} == {(0.1, 0.5)}
    assert state["model_config"]["dropout"] == 0.5 == state["config"]["model"]["dropout"]
    assert {k: state["config"]["train"][k] for k in given if k != "dropout"} == {k: v for k, v in given.items()
                                                                               if k != "dropout"}
    assert weights_hash(new) != weights_hash(same)  # they changed the training
    with pytest.raises(UserError, match="activation='gelu'"):
        train(cfg(char_dataset, new, max_iters=60, resume=True, activation="gelu_tanh"))
    with pytest.raises(UserError, match="trained with seed=1337.*drop --seed=5"):
        train(cfg(char_dataset, new, max_iters=60, resume=True, seed=5))


def test_muon_settings_given_at_resume_take_effect(char_dataset, tmp_path):
    muon = dict(optimizer="muon", lr_schedule="wsd", cooldown_iters=20, lr_decay_iters=40)
    out = tmp_path / "muon"
    train(cfg(char_dataset, out, max_iters=20, **muon))
    train(cfg(char_dataset, out, max_iters=30, resume=True, muon_momentum=0.8, muon_weight_decay=0.05, **muon))
    state = torch.load(out / "ckpt.pt", weights_only=True)
    (g,) = [g for g in state["optimizer"]["param_groups"] if g["muon"]]
    assert (g["momentum"], g["weight_decay"]) == (0.8, 0.05)
    assert (state["config"]["train"]["muon_momentum"], state["config"]["train"]["muon_weight_decay"]) == (0.8, 0.05)


def test_eval_only_on_a_muon_checkpoint_needs_no_optimizer_setting(char_dataset, tmp_path, capsys):
    out = tmp_path / "muon"
    train(cfg(char_dataset, out, max_iters=20, optimizer="muon"))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    plain = train(cfg(char_dataset, out, eval_only=True))  # --optimizer left at adamw: it used to be refused
    assert "step 20: train loss" in capsys.readouterr().out
    with_muon = train(cfg(char_dataset, out, eval_only=True, optimizer="muon"))
    assert plain["losses"] == with_muon["losses"] and plain["losses"]["val"] < 3.5
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_a_model_or_context_too_big_for_this_machine_is_refused_before_allocating(char_dataset, tmp_path):
    from minigpt.trainer import memory_needed

    # ~700B parameters: 11 TB of weights, gradients and AdamW state; it used to start allocating them
    with pytest.raises(UserError, match=r"needs at least [\d,.]+ GiB to train .* this machine has [\d,.]+ GiB of RAM"):
        train(cfg(char_dataset, tmp_path / "big", n_layer=96, n_head=96, n_embd=24576))
    with pytest.raises(UserError, match=r"block_size=4194304, batch_size=1024\) needs at least"):  # 8.8 TB of activations
        train(cfg(char_dataset, tmp_path / "long", block_size=2**22, batch_size=1024))
    assert not (tmp_path / "big").exists() and not (tmp_path / "long").exists()
    tiny = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=33)
    t = cfg(char_dataset, tmp_path / "o").train  # batch_size 4
    n = 33 * 32 + 32 * 32 + 2 * (2 * 32 + 32 * 96 + 32 * 32 + 32 * 128 + 128 * 32) + 32  # wte, wpe, blocks, ln_f
    assert memory_needed(tiny, t) == (16 * n + 4 * 32 * 2 * 32 * 16 * 2, n)


@pytest.mark.skipif(not __import__("minigpt.runtime").runtime.cpu_bf16_native(),
                    reason="needs a CPU with native bf16 (AVX512-BF16 or AMX) for dtype=auto to choose bf16")
def test_a_resumed_run_keeps_the_dtype_auto_chose(char_dataset, tmp_path, monkeypatch, capsys):
    # dtype=auto on a CPU is a timed choice; a resume that timed again could continue in the other dtype
    from minigpt import runtime
    monkeypatch.setenv(runtime.AUTO_CPU_ENV, "bfloat16")  # the first process's probe chose bf16
    train(cfg(char_dataset, tmp_path, max_iters=4, dtype="auto"))
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["runtime"] == {"device": "cpu", "dtype": "bfloat16"}
    monkeypatch.setenv(runtime.AUTO_CPU_ENV, "float32")  # the resumed process's would choose fp32
    capsys.readouterr()
    train(cfg(char_dataset, tmp_path, max_iters=8, dtype="auto", resume=True))
    assert "training on cpu bfloat16" in capsys.readouterr().out
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["runtime"]["dtype"] == "bfloat16"
