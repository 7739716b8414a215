"""plan: `python -m minigpt plan` against what its plans achieve. For each corpus and budget: plan, then
`python train.py PLANNED.toml` timed from launch to saved checkpoint, then the checkpoint's loss over the whole
val split; the row sets the prediction beside the achieved loss and the wall beside the budget. The budgets:
1, 5 and 15 minutes on tinyshakespeare as characters and on the bundled plays with the gpt2 tokenizer; on the
characters also the wall of configs/baby.toml (run first, in this run) and 10 minutes. About 75 minutes in all;
--quick plans half a minute on each corpus. At the end a markdown table for docs/plan.md."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import tomllib
from pathlib import Path

from minigpt import checkpoint
from minigpt.plan import LossModel, Shape

from .common import ROOT, failed, python, run_timed
from .speedrun_cpu import full_val_loss, speedrun_dataset, tinyshakespeare_input

ABOUT = "minigpt plan's predicted full-val loss against what the planned run achieves, and its wall against the budget"
NEEDS = ()
CHAR_BUDGETS = ["baby", 1, 5, 10, 15]  # minutes; "baby": configs/baby.toml's wall in this run
BPE_BUDGETS = [1, 5, 15]
GOALS = {"baby": "goal <= 1.58 (quality_cpu: 1.614)", 10: "goal <= 1.50"}


def check(settings) -> None:
    if not (ROOT / "data" / "tinyshakespeare" / "meta.json").is_file():
        tinyshakespeare_input(settings.data_dir)


def plays_dataset(tmp: Path) -> Path:
    """The bundled plays with the gpt2 tokenizer: data/shakespeare_gpt2 if prepared, else prepared into `tmp`."""
    prepared = ROOT / "data" / "shakespeare_gpt2"
    if (prepared / "meta.json").is_file():
        return prepared
    out = tmp / "shakespeare_gpt2"
    subprocess.run([python(), str(ROOT / "data" / "prepare.py"), "shakespeare", "--tokenizer=gpt2", f"--out={out}"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def plan_header(header: str) -> tuple[LossModel, float]:
    """The loss model and the tokens a planned config's header states (its "# Exact:" line)."""
    line = next(l for l in header.splitlines() if l.startswith("# Exact: "))
    values = dict(kv.split("=") for kv in line.removeprefix("# Exact: ").split())
    tokens = float(values.pop("tokens"))
    return LossModel(**{k: float(v) for k, v in values.items()}), tokens


def plan_and_train(corpus: str, dataset: Path, minutes: float, tmp: Path, goal: str = "", pilot: str = "auto") -> dict:
    """One row: plan `minutes` on `dataset`, train the planned config, evaluate it over the whole val split."""
    name = f"{corpus}, {minutes:.3g} min" + ("" if pilot == "auto" else f", --pilot={pilot}")
    row = {"workload": "plan", "variant": name, "corpus": corpus, "budget": minutes * 60, "goal": goal}
    config, out = tmp / f"plan-{len(os.listdir(tmp))}.toml", tmp / f"out-{len(os.listdir(tmp))}"
    proc = subprocess.run([python(), "-m", "minigpt", "plan", str(dataset), f"--minutes={minutes}", f"--config={config}",
                           f"--out_dir={out}", f"--pilot={pilot}"], capture_output=True, text=True,
                          cwd=ROOT)
    if proc.returncode:
        return {**row, "notes": failed("minigpt plan", proc)}
    planned = tomllib.loads(config.read_text())
    predicted = float(config.read_text().split("full-val loss ", 1)[1].split()[0])
    launched = time.time()
    exit_wall, proc = run_timed([python(), str(ROOT / "train.py"), str(config)])
    if proc.returncode:
        return {**row, "notes": failed("train.py", proc)}
    wall = (out / "ckpt.pt").stat().st_mtime - launched  # launch to checkpoint: the budget's end
    loss = full_val_loss(out)
    # the miss in two parts: the steps the run made against the plan's (the machine's speed), and the loss
    # model's own miss at the tokens the run saw
    model, tokens_planned = plan_header(config.read_text())
    steps_planned = round(tokens_planned / (planned["batch_size"] * planned["block_size"]))
    steps = checkpoint.load(out / "ckpt.pt")["iter_num"]
    params = Shape(planned["n_layer"], planned["n_embd"], planned["block_size"], planned["batch_size"]).params
    at_steps = model.predict(params, steps * planned["batch_size"] * planned["block_size"], planned["n_embd"])
    shape = f"{planned['n_layer']}x{planned['n_embd']}, {planned['n_head']} heads, ctx {planned['block_size']}"
    return {**row, "wall": wall, "loss": loss, "predicted": predicted, "shape": shape, "dtype": planned["dtype"],
            "steps": steps, "steps_planned": steps_planned, "at_steps": at_steps,
            "notes": f"{shape} {planned['dtype']}: predicted {predicted:.3f}, full-val {loss:.4f} "
                     f"({loss - predicted:+.3f}); {steps:,} steps of ~{steps_planned:,} planned, predicted at "
                     f"{steps:,} steps {at_steps:.3f} ({loss - at_steps:+.3f}); launch to checkpoint {wall:.1f}s of "
                     f"{minutes * 60:.0f}s ({wall / (minutes * 60):.1%}), to exit {exit_wall:.1f}s"}


def docs_table(rows: list[dict]) -> str:
    """The rows as docs/plan.md's table."""
    out = ["| corpus | budget | chosen | predicted | achieved full-val | error | steps (planned) | "
           "predicted at those steps | launch to checkpoint |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "loss" not in r:
            continue
        goal = r["goal"]
        out.append(f"| {r['corpus']} | {r['budget']:.0f} s | {r['shape']} {r['dtype']} | {r['predicted']:.3f} | "
                   f"{r['loss']:.4f}{f' ({goal})' if goal else ''} | {r['loss'] - r['predicted']:+.3f} | "
                   f"{r['steps']:,} ({r['steps_planned']:,}) | {r['at_steps']:.3f} ({r['loss'] - r['at_steps']:+.3f}) | "
                   f"{r['wall']:.1f} s ({r['wall'] / r['budget']:.1%}) |")
    return "\n".join(out)


def run(settings, ceilings) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-plan-") as tmp:
        tmp = Path(tmp)
        chars = speedrun_dataset(settings.data_dir, tmp)
        plays = plays_dataset(tmp)
        if settings.quick:
            jobs = [("tinyshakespeare chars", chars, 0.5, ""), ("shakespeare plays gpt2", plays, 0.5, "")]
        else:
            base = tmp / "baby"
            wall, proc = run_timed([python(), str(ROOT / "train.py"), str(ROOT / "configs" / "baby.toml"),
                                    f"--out_dir={base}", f"--dataset={chars}", "--plot=false"])
            if proc.returncode:
                rows.append({"workload": "plan", "variant": "reference configs/baby.toml",
                             "notes": failed("train.py", proc)})
            else:
                rows.append({"workload": "plan", "variant": "reference configs/baby.toml", "wall": wall,
                             "notes": f"wall {wall:.1f}s launch to checkpoint (the 'baby' budget), "
                                      f"full-val {full_val_loss(base):.4f}"})
            jobs = [("tinyshakespeare chars", chars, (wall if b == "baby" else b * 60) / 60, GOALS.get(b, ""))
                    for b in CHAR_BUDGETS if b != "baby" or not proc.returncode]
            jobs += [("shakespeare plays gpt2", plays, b, "") for b in BPE_BUDGETS]
        work = tmp / "runs"
        work.mkdir()
        for corpus, dataset, minutes, goal in jobs:
            rows.append(plan_and_train(corpus, dataset, minutes, work, goal))
            print(rows[-1].get("notes", ""), flush=True)
    print("\n" + docs_table([r for r in rows if r.get("corpus")]), flush=True)
    return rows
