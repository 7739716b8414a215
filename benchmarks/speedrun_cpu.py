"""speedrun-cpu: `python train.py CONFIG` from launch to saved checkpoint, and its loss over the whole
tinyshakespeare val split: the reference recipe (nanoGPT's baby run, in minigpt) once, each recipe with
several seeds and a summary row; with --nanogpt_dir, nanoGPT's own baby run beside them."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from minigpt import checkpoint
from minigpt.data import TokenDataset, resolve_dataset
from minigpt.errors import UserError
from minigpt.tools.evaluate import evaluate_split

from .common import ROOT, failed, python, run_timed

ABOUT = "train.py's CPU speedrun recipes, launch to checkpoint, full-val loss (and nanoGPT's run with --nanogpt_dir)"
NEEDS = ()
RECIPES = {  # variant -> (config, runs, target); the first is the in-run reference
    "reference configs/baby.toml (nanoGPT's baby recipe)": ("configs/baby.toml", 1, ""),
    "speedrun configs/speedrun_cpu.toml": ("configs/speedrun_cpu.toml", 3, "goal: loss <= 1.898 in 1/6 of the reference's wall"),
    "quality configs/quality_cpu.toml": ("configs/quality_cpu.toml", 3, "goal: loss <= 1.65 within the reference's wall"),
}
QUICK = ["--max_iters=50", "--lr_decay_iters=50", "--cooldown_iters=20"]  # --quick: a smoke run, one seed
# nanoGPT's documented CPU run of shakespeare_char (its README), for --nanogpt_dir
NANOGPT_BABY = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1",
                "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--max_iters=2000",
                "--lr_decay_iters=2000", "--dropout=0.0"]
NANOGPT_FULL_VAL = Path(__file__).with_name("nanogpt_full_val.py")


def tinyshakespeare_input(data_dir: str) -> Path:
    """tinyshakespeare's input.txt under --data_dir, else $MINIGPT_SHARED (either the folder holding
    tinyshakespeare/ or its parent holding data/tinyshakespeare/)."""
    base = data_dir or os.environ.get("MINIGPT_SHARED", "")
    for cand in ((Path(base) / "tinyshakespeare" / "input.txt", Path(base) / "data" / "tinyshakespeare" / "input.txt")
                 if base else ()):
        if cand.is_file():
            return cand
    where = f"no tinyshakespeare/input.txt under {base}" if base else "--data_dir is not set (nor MINIGPT_SHARED)"
    raise UserError(f"speedrun-cpu needs tinyshakespeare and {where}; pass --data_dir=FOLDER holding "
                    f"tinyshakespeare/input.txt, or prepare it with `python data/prepare.py tinyshakespeare`")


def check(settings) -> None:
    """Before any workload runs: the data this one needs is there."""
    if not (ROOT / "data" / "tinyshakespeare" / "meta.json").is_file():
        tinyshakespeare_input(settings.data_dir)


def speedrun_dataset(data_dir: str, tmp: Path) -> Path:
    """The prepared tinyshakespeare: the project's data/tinyshakespeare if there, else prepared into `tmp`."""
    prepared = ROOT / "data" / "tinyshakespeare"
    if (prepared / "meta.json").is_file():
        return prepared
    out = tmp / "tinyshakespeare"
    subprocess.run([python(), str(ROOT / "data" / "prepare.py"), "tinyshakespeare",
                    f"--input={tinyshakespeare_input(data_dir)}", f"--out={out}"], check=True, stdout=subprocess.DEVNULL)
    return out


def full_val_loss(out: Path) -> float:
    loaded = checkpoint.load_model(out)
    loss, _ = evaluate_split(loaded.model, TokenDataset(resolve_dataset(loaded.state["dataset"])).splits["val"], 64)
    return loss


def run_nanogpt(nanogpt: Path, input_txt, quick: bool) -> dict:
    """nanoGPT's baby command in its own checkout (its data prepared there first, from the same text), timed
    from launch to exit, and its checkpoint's loss over the whole val split."""
    row = {"workload": "speedrun-cpu", "variant": f"peer: nanoGPT's baby command ({nanogpt})"}
    data = nanogpt / "data" / "shakespeare_char"
    if not (data / "val.bin").is_file():
        shutil.copyfile(input_txt(), data / "input.txt")  # its prepare.py downloads it otherwise
        proc = subprocess.run([python(), "prepare.py"], capture_output=True, text=True, cwd=data)
        if proc.returncode:
            return {**row, "notes": failed("nanoGPT's data/shakespeare_char/prepare.py", proc)}
    with tempfile.TemporaryDirectory(prefix="bench-nanogpt-") as out:
        wall, proc = run_timed([python(), "train.py", *NANOGPT_BABY, f"--out_dir={out}"]
                               + (["--max_iters=50", "--lr_decay_iters=50", "--eval_interval=50"] if quick else []),
                               cwd=nanogpt)
        if proc.returncode:
            return {**row, "notes": failed("nanoGPT's train.py", proc)}
        ev = subprocess.run([python(), str(NANOGPT_FULL_VAL), str(Path(out) / "ckpt.pt")], capture_output=True,
                            text=True, cwd=nanogpt)
        if ev.returncode:
            return {**row, "notes": failed("evaluating nanoGPT's checkpoint", ev)}
    return {**row, "wall": wall, "loss": float(ev.stdout.split()[-1])}


def run_speedrun(quick: bool, data_dir: str, nanogpt_dir: str = "") -> list[dict]:
    """One row per run of each recipe (the first the reference, the speed-up its wall over the row's), a
    summary row per recipe run more than once, and nanoGPT's own run with `nanogpt_dir`."""
    rows, ref = [], None

    def add(row: dict, target: str = "") -> None:
        nonlocal ref
        ref = ref or row["wall"]
        rows.append({**row, "ratio": ref / row["wall"],
                     "notes": f"wall {row['wall']:.1f}s launch to checkpoint, full-val loss {row['loss']:.4f}"
                              + (f"; {target}" if target else "")})

    with tempfile.TemporaryDirectory(prefix="bench-speedrun-") as tmp:
        dataset = speedrun_dataset(data_dir, Path(tmp))
        for variant, (config, n_runs, target) in RECIPES.items():
            n_runs = 1 if quick else n_runs
            done = []
            for i in range(n_runs):
                out = Path(tmp) / f"out-{len(rows)}"
                row = {"workload": "speedrun-cpu", "variant": variant + (f", seed {1337 + i}" if n_runs > 1 else "")}
                wall, proc = run_timed([python(), str(ROOT / "train.py"), str(ROOT / config), f"--out_dir={out}",
                                        f"--dataset={dataset}", "--plot=false", f"--seed={1337 + i}"]
                                       + (QUICK if quick else []))
                if proc.returncode:
                    rows.append({**row, "notes": failed("train.py", proc)})
                    continue
                done.append({**row, "wall": wall, "loss": full_val_loss(out)})
                add(done[-1], target)
            if len(done) > 1:
                walls, losses = [r["wall"] for r in done], [r["loss"] for r in done]
                add({"workload": "speedrun-cpu", "variant": variant + f", mean of {len(done)}",
                     "wall": statistics.mean(walls), "loss": statistics.mean(losses)},
                    f"worst {max(losses):.4f}, slowest {max(walls):.1f}s ({ref / max(walls):.2f}x); {target}")
        if nanogpt_dir:
            peer = run_nanogpt(Path(nanogpt_dir), lambda: tinyshakespeare_input(data_dir), quick)
            if "wall" in peer:
                add(peer, "the same recipe in nanoGPT, run here")
            else:
                rows.append(peer)
    return rows


def run(settings, ceilings) -> list[dict]:
    return run_speedrun(settings.quick, settings.data_dir, settings.nanogpt_dir)
