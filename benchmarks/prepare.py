"""prepare: GPT-2 BPE preparation speed (--num_proc=2 against the --num_proc=1 reference on the same
text) and the peak memory of preparing ~2 GB of text, running `data/prepare.py` as a user does."""

from __future__ import annotations

import json
import random
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from minigpt.corpus import shakespeare

from .common import ROOT, isolated, python

ABOUT = "GPT-2 BPE preparation: throughput at 1 and 2 processes, peak memory on ~2 GB of text"
NEEDS = ()
SIZES = {"speed": 300_000_000, "memory": 2_000_000_000, "quick": 50_000_000}  # bytes of text
PROCS = (1, 2)  # --num_proc of the speed rows (the first is the reference), then of the memory row


def make_text_corpus(folder, n_bytes: int, seed: int = 0):
    """About `n_bytes` of text in ~5 MB files: the bundled plays, each copy with its speeches shuffled."""
    speeches = "\n".join(d.text() for d in shakespeare().documents()).split("\n\n")
    rng, folder, written, i = random.Random(seed), Path(folder), 0, 0
    folder.mkdir(parents=True, exist_ok=True)
    while written < n_bytes:
        rng.shuffle(speeches)
        data = "\n\n".join(speeches).encode("utf-8")
        (folder / f"part_{i:05d}.txt").write_bytes(data)
        written, i = written + len(data), i + 1
    return folder, written


def _tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, from /proc (Linux)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmRSS:")))
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration):
            pass
    return total / 1024


def prepare_bench(source: str, num_proc: int, out: str) -> dict:
    """Run `python data/prepare.py SOURCE --tokenizer=gpt2` as a user does (start-up included): throughput,
    peak RSS of its whole process tree (sampled) and of its largest single process (getrusage)."""
    cmd = [python(), str(ROOT / "data" / "prepare.py"), source, "--tokenizer=gpt2", f"--num_proc={num_proc}",
           f"--out={out}", "--overwrite"]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:  # a file, not a pipe: a full pipe would stall the child
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        tree = 0.0
        while proc.poll() is None:
            tree = max(tree, _tree_rss_mb(proc.pid))
            time.sleep(0.1)
        wall = time.perf_counter() - t0
        if proc.returncode:
            err.seek(0)
            last = [ln for ln in err.read().replace("\r", "\n").splitlines() if ln.strip()][-1:]
            raise RuntimeError(f"data/prepare.py failed with status {proc.returncode}: {' '.join(last)}")
    meta = json.loads((Path(out) / "meta.json").read_text())
    return {"wall_s": wall, "tokens_per_s": (meta["train_tokens"] + meta["val_tokens"]) / wall,
            "mb_per_s": (meta["train_bytes"] + meta["val_bytes"]) / 1e6 / wall, "tree_peak_mb": tree,
            "largest_process_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def run(settings, ceilings) -> list[dict]:
    """--num_proc=2 vs the --num_proc=1 reference on the same text, then the peak memory of preparing
    ~2 GB of text (--quick: the same ~50 MB for both)."""
    quick = settings.quick
    tmp = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    rows, ref = [], None
    try:
        small, n_small = make_text_corpus(tmp / "small", SIZES["quick" if quick else "speed"])
        for num_proc in PROCS:
            row = {"workload": "prepare", "variant": f"gpt2 num_proc={num_proc}"}
            r = isolated(prepare_bench, source=str(small), num_proc=num_proc, out=str(tmp / f"out{num_proc}"))
            if "error" in r:
                rows.append({**row, "notes": r["error"]})
                continue
            ref = ref or r["tokens_per_s"]
            rows.append({**row, "tokens_per_s": r["tokens_per_s"], "ratio": r["tokens_per_s"] / ref,
                         "peak_rss_mb": r["tree_peak_mb"],
                         "notes": f"{r['mb_per_s']:.1f} MB/s of text, {n_small / 1e6:,.1f} MB corpus, "
                                  f"{r['wall_s']:.0f}s with start-up"})
            shutil.rmtree(tmp / f"out{num_proc}", ignore_errors=True)
        big, n_big = (small, n_small) if quick else make_text_corpus(tmp / "big", SIZES["memory"], seed=1)
        row = {"workload": "prepare", "variant": f"memory, num_proc={PROCS[-1]}"}
        r = isolated(prepare_bench, source=str(big), num_proc=PROCS[-1], out=str(tmp / "big_out"))
        if "error" in r:
            rows.append({**row, "notes": r["error"]})
        else:
            rows.append({**row, "tokens_per_s": r["tokens_per_s"], "peak_rss_mb": r["tree_peak_mb"],
                         "notes": f"{n_big / 1e9:.2f} GB of text in {r['wall_s']:.0f}s; RSS of the whole process tree "
                                  f"(sampled), largest single process {r['largest_process_mb']:,.0f} MB; "
                                  f"target < 1024 MB"})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows
