"""Plan by the clock: the best model this machine can train on a dataset in N minutes, predicted before it starts.

    python -m minigpt plan DATASET --minutes=M [--pilot=auto|true|false] [--config=FILE.toml] [--out_dir=DIR]

1. Measure: a few real training steps of each candidate shape (`trainer.setup` + `train_step`, so the
   thread and dtype choice train.py makes; bf16 and fp32 where the CPU has bf16) give its tokens/s here.
2. Predict: the full-val loss of each candidate after the tokens it sees in the budget, from
   L(N, D) = E + A / N^alpha + B / (D' w)^beta  (N: non-embedding parameters; D': tokens seen, repeated
   epochs discounted as in Muennighoff et al. 2023: D' = U + U R* (1 - exp(-(D/U - 1) / R*)) past U unique
   tokens; w = (width / 128)^gamma, what a token teaches a wider model, fitted where the vocabulary is large).
   The fit is built in (pilot runs of this recipe on the bundled corpora, see BUILTIN); short pilot runs
   on this dataset (at most `pilot_share` of the budget) shift its level E to this dataset.
3. Pick the lowest predicted loss and write a TOML config that `python train.py FILE` runs as it is,
   with `max_minutes` set (the schedule is timed against the budget), headed by its prediction.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import distributed, runtime, trainer
from .config import Config, RuntimeConfig, build_config, opt, parse_cli, train_sections
from .data import TokenDataset, iter_windows, resolve_dataset
from .errors import UserError, run_cli

# ---- the loss model -----------------------------------------------------------------------------------

REPEAT_R_STAR = 15.4  # Muennighoff et al. 2023 (R_D*): epochs past the first are worth less and less
# R* values a fit tries when its points repeat epochs: Muennighoff's 15.4 was fitted on billion-parameter
# models; a few-million-parameter model on a 1M-token corpus starts to memorise after a couple of epochs
R_STAR_GRID = (0.25, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 11.0, REPEAT_R_STAR)


def effective_tokens(d: float, unique: float, r_star: float = REPEAT_R_STAR) -> float:
    """Tokens seen, with epochs past the first discounted (a token seen again teaches less): past `unique`
    tokens, D' = U + U R* (1 - exp(-(D/U - 1) / R*)), which approaches U (1 + R*) however long the run."""
    if unique <= 0 or d <= unique:
        return d
    return unique + unique * r_star * (1 - math.exp(-(d / unique - 1) / r_star))


WIDTH_REF = 128  # the width at which a token counts once (LossModel.gamma)


@dataclass(frozen=True)
class LossModel:
    """L(N, D) = E + A / N^alpha + B / (D' w)^beta: Chinchilla's form, with D' = effective_tokens(D, unique, r_star)
    and w = (width / WIDTH_REF)^gamma. gamma > 0 where a wider model learns more from each token early on (a
    50k-token embedding and head: at 0.19M tokens 4x256 is 0.22 below 4x128, which is level with 2x128 of
    the same width; docs/plan.md); the term fades as D grows, so size still decides late."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float
    unique: float = 0.0  # train tokens of the dataset; 0: never repeated
    r_star: float = REPEAT_R_STAR  # how fast repeated epochs lose their worth (effective_tokens)
    gamma: float = 0.0  # what a token teaches a model `width` wide: (width / WIDTH_REF)^gamma of one at WIDTH_REF

    def predict(self, n: float, d: float, width: float = WIDTH_REF) -> float:
        size, data = self.terms(n, d, width)
        return self.E + size + data

    def terms(self, n: float, d: float, width: float = WIDTH_REF) -> tuple[float, float]:
        """The loss above E owed to the model's size and to the tokens it has seen."""
        return self.A / n ** self.alpha, self.B / (self.effective(d) * (width / WIDTH_REF) ** self.gamma) ** self.beta

    def effective(self, d: float) -> float:
        return effective_tokens(d, self.unique, self.r_star)

    def on(self, unique: float) -> "LossModel":
        """The same fit for a dataset of `unique` train tokens."""
        return dataclasses.replace(self, unique=unique)

    def describe(self) -> str:
        data = f"(D' (C/{WIDTH_REF})^{self.gamma:g})" if self.gamma else "D'"
        notes = [f"D' discounts epochs past {self.unique:,.0f} tokens, R* = {self.r_star:g}"] if self.unique else []
        if self.gamma:
            notes.append("C: the width")
        return (f"L = {self.E:.3f} + {self.A:.4g} / N^{self.alpha:.3f} + {self.B:.4g} / {data}^{self.beta:.3f}"
                + (f"  ({'; '.join(notes)})" if notes else ""))


def _nnls3(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Non-negative least squares for a few columns, exactly: the best unconstrained fit over every subset of
    columns whose coefficients all come out >= 0."""
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    if np.all(coef >= 0):  # the usual case: the unconstrained optimum is feasible
        return coef, float(np.sum((X @ coef - y) ** 2))
    best, best_err = np.zeros(X.shape[1]), float(np.sum(y ** 2))
    for k in range(1, X.shape[1]):
        for cols in itertools.combinations(range(X.shape[1]), k):
            coef, *_ = np.linalg.lstsq(X[:, cols], y, rcond=None)
            if np.all(coef >= 0):
                err = float(np.sum((X[:, cols] @ coef - y) ** 2))
                if err < best_err:
                    best_err, best = err, np.zeros(X.shape[1])
                    best[list(cols)] = coef
    return best, best_err


GAMMA_GRID = tuple(np.round(np.arange(0.0, 1.001, 0.05), 2))  # the widths' gamma a fit tries (LossModel)


def fit_loss_model(points: list[tuple[float, ...]], unique: float = 0.0,
                   exponents: tuple[float, float] | None = None, E: float | None = None,
                   r_star: float | None = None, gamma: float | None = 0.0) -> LossModel:
    """Least-squares fit of L(N, D) to (N, D, loss) or (N, D, loss, width) points. For each (alpha, beta) the
    model is linear in (E, A, B) >= 0, solved exactly; (alpha, beta) are searched on a grid, then on a finer
    one around the best (moved along while the best lies on its edge). `exponents` fixes (alpha, beta), `E`
    fixes the floor: what points far from the floor can support. Where points repeat epochs (D > unique), R*
    is fitted too, over R_STAR_GRID, unless `r_star` fixes it. `gamma` fixes the width's exponent (0: a token
    is a token; points without a width are WIDTH_REF wide); None fits it over GAMMA_GRID."""
    repeats = unique > 0 and any(p[1] > unique for p in points)
    r_stars = [r_star] if r_star is not None else (R_STAR_GRID if repeats else [REPEAT_R_STAR])
    gammas = [gamma] if gamma is not None else GAMMA_GRID
    fits = [_fit_exponents(points, unique, r, exponents, E, g) for r in r_stars for g in gammas]
    return min(fits, key=lambda f: f[0])[1]


def _fit_exponents(points, unique, r_star, exponents, E, gamma) -> tuple[float, LossModel]:
    n = np.array([p[0] for p in points], float)
    width = np.array([p[3] if len(p) > 3 else WIDTH_REF for p in points], float)
    d = np.array([effective_tokens(p[1], unique, r_star) for p in points], float) * (width / WIDTH_REF) ** gamma
    y = np.array([p[2] for p in points], float) - (E or 0.0)

    def solve(alpha: float, beta: float) -> tuple[float, np.ndarray]:
        X = np.stack([np.ones_like(n), n ** -alpha, d ** -beta], axis=1)
        if E is not None:
            coef, err = _nnls3(X[:, 1:], y)
            return err, np.concatenate([[E], coef])
        coef, err = _nnls3(X, y)
        return err, coef

    if exponents is not None:
        grid = [exponents]
    else:
        grid = list(itertools.product(np.arange(0.02, 1.5, 0.04), repeat=2))
    err, alpha, beta = min((solve(a, b)[0], a, b) for a, b in grid)
    for _ in range(8 if exponents is None else 0):  # a finer grid around the best, moved along while the
        # best lies on its edge (the valley can run diagonally between the coarse points)
        fine = [(alpha + i * 0.002, beta + j * 0.002) for i in range(-20, 21) for j in range(-20, 21)]
        err, a, b = min((solve(a, b)[0], a, b) for a, b in fine if a > 0 and b > 0)
        moved = abs(a - alpha) > 0.039 or abs(b - beta) > 0.039
        alpha, beta = a, b
        if not moved:
            break
    err, (E_, A, B) = solve(alpha, beta)
    return err, LossModel(float(E_), float(A), float(alpha), float(B), float(beta), unique, r_star, float(gamma))


# Built-in fits of this module's recipe (RECIPE, the candidates' shapes) on the bundled corpora, from pilot
# runs: each a fresh run of a fixed number of steps (the same warmup and cooldown fractions), then its loss
# over the whole val split. How they were made: docs/plan.md ("Built-in fits"). One fit per family of
# candidates (see FAMILIES): 'char-64' and 'char-256', tinyshakespeare as characters in windows of 64 and
# 256; 'bpe-128', the bundled plays (`shakespeare`) with the gpt2 tokenizer. Each is the prior for other
# datasets of its kind.
BUILTIN: dict[str, tuple[LossModel, str]] = {
    # 12 runs of 0.39-2.7M params x 0.5-5.1M tokens (two of them configs/quality_cpu.toml's, four of them
    # planned 1-10 minute runs), rms miss 0.008; E fixed at 1.1: runs this far from the floor cannot place it,
    # and E from 1.0 to 1.2 predicts within 0.006 of it up to 8M tokens (docs/plan.md)
    "char-64": (LossModel(E=1.1, A=2.0830, alpha=0.174, B=484.71, beta=0.514, r_star=2.0),
                "12 runs on tinyshakespeare characters, 0.4-2.7M params x 0.5-5.1M tokens"),
    # 6 runs of 0.39-3.1M params x 1.5-8.5M tokens, rms miss 0.007; E fixed at 1.1 as above
    "char-256": (LossModel(E=1.1, A=38418.8, alpha=0.98, B=16984.1, beta=0.732, r_star=1.5),
                 "6 runs on tinyshakespeare characters, 0.4-3.1M params x 1.5-8.5M tokens"),
    # 16 runs of 0.39-3.1M params x 0.18-4.5M tokens, rms miss 0.016 (leave-one-out 0.028); E fixed at 3.0,
    # the floor of the smallest leave-one-out miss from 1.0 to 3.5; gamma 0.35: a 256-wide model learns from
    # a token what a 128-wide one learns from 1.27 (docs/plan.md)
    "bpe-128": (LossModel(E=3.0, A=1.2701, alpha=0.094, B=263.74, beta=0.402, r_star=4.0, gamma=0.35),
                "16 runs on the bundled plays with the gpt2 tokenizer, 0.4-3.1M params x 0.18-4.5M tokens"),
}


# ---- the recipe and the candidates --------------------------------------------------------------------

# What every planned run shares (configs/quality_cpu.toml's recipe: Muon for the blocks' matrices, AdamW
# for embeddings and norms, warmup-stable-decay with a 40% cooldown, no dropout in a run this short).
RECIPE = dict(optimizer="muon", muon_lr=0.02, muon_momentum=0.95, learning_rate=3e-3, min_lr=1e-4,
              weight_decay=0.1, beta2=0.99, grad_clip=1.0, warmup_frac=0.035, cooldown_frac=0.4)
MODEL = dict(dropout=0.0, bias=False)


@dataclass(frozen=True)
class Shape:
    n_layer: int
    n_embd: int
    block_size: int
    batch_size: int
    family: str = ""  # the built-in fit that predicts it (BUILTIN)

    @property
    def n_head(self) -> int:
        return max(1, self.n_embd // (32 if self.n_embd <= 192 else 64))  # heads of 32 for narrow models, else 64

    @property
    def params(self) -> int:
        """Non-embedding parameters: 12 C^2 per block (no biases) and its two norms."""
        return self.n_layer * (12 * self.n_embd ** 2 + 2 * self.n_embd)

    def name(self) -> str:
        return f"{self.n_layer}x{self.n_embd}"

    def label(self) -> str:
        """The name with its context: two families hold shapes of the same name."""
        return f"{self.name()} ctx {self.block_size}"

    def settings(self) -> dict:
        return dict(n_layer=self.n_layer, n_embd=self.n_embd, n_head=self.n_head, block_size=self.block_size,
                    batch_size=self.batch_size, **MODEL)


def kind(dataset: TokenDataset) -> str:
    """'char' for small vocabularies (a character per token), else 'bpe'."""
    return "char" if dataset.vocab_size <= 1024 else "bpe"


# The candidates, by family: (context, rows a step, (layers, width) ...), 2,048 tokens a step in each.
# Characters in windows of 64 x 32 rows (configs/quality_cpu.toml's) learn fastest at first; windows of
# 256 x 8 start slower and pass them once a run sees a few million tokens (docs/plan.md), so both are weighed.
# BPE starts at width 128: a 64-wide embedding of a 50k vocabulary learns on a curve of its own (slower at
# first, then catching up), which the loss model cannot follow (docs/plan.md).
FAMILIES: dict[str, tuple[int, int, tuple[tuple[int, int], ...]]] = {
    "char-64": (64, 32, ((2, 128), (4, 128), (4, 192), (6, 192), (4, 256), (6, 256), (8, 256), (6, 384))),
    "char-256": (256, 8, ((4, 192), (6, 192), (4, 256), (6, 256), (8, 256), (6, 384))),
    "bpe-128": (128, 16, ((2, 128), (4, 128), (4, 192), (4, 256), (6, 256), (6, 384))),
}


def candidates(k: str) -> list[Shape]:
    """The shapes a plan weighs for a tokenizer kind, from a 2-layer baby model to one 10x its size."""
    return [Shape(l, c, ctx, rows, family) for family, (ctx, rows, sizes) in FAMILIES.items()
            if family.startswith(k + "-") for l, c in sizes]


def bundled(dataset: TokenDataset) -> bool:
    """Whether the built-in fit of this dataset's kind was made on it: tinyshakespeare as characters, or the
    bundled plays with the gpt2 tokenizer."""
    source, tok = str(dataset.meta.get("source", "")), dataset.meta.get("tokenizer", {})
    if kind(dataset) == "char":
        return source.startswith("tinyshakespeare") and dataset.vocab_size == 65
    return source.startswith("shakespeare:") and tok.get("name") == "gpt2"


# ---- running the real training code --------------------------------------------------------------------

def train_config(dataset: str, shape: Shape, out_dir: str, *, dtype: str, threads: int, seed: int = 1337,
                 **train) -> Config:
    """The Config train.py would build for this shape and the recipe."""
    settings = dict(dataset=dataset, out_dir=out_dir, device="cpu", dtype=dtype, threads=threads, seed=seed,
                    mfu=False, plot=False, overwrite=True, eval_iters=5, log_interval=1_000_000, **RECIPE,
                    **shape.settings())
    settings.update(train)
    return build_config(train_sections(), overrides=settings)


@contextlib.contextmanager
def _quiet():
    """The trainer's table and bars stay out of the plan's output."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


@dataclass
class Speed:
    shape: Shape
    dtype: str
    tokens_per_s: float
    setup_s: float  # building data, model and optimizer
    eval_s: float  # one evaluation (eval_iters batches of both splits) and a checkpoint
    warm_s: float = 0.0  # what the first steps take beyond the steady step time (a run pays it too)


# How long a candidate's steps are timed: this VM's step time wanders by +-10% within seconds, and a 1-minute
# BPE plan misses by 0.05 for 7% fewer steps than it counted (docs/plan.md), so a few steps are not enough
MEASURE_SECONDS = 3.0


def measure(dataset: str, shape: Shape, dtype: str, threads: int, steps: int = 3, warm: int = 2,
            device: str = "cpu", seconds: float | None = None) -> Speed:
    """tokens/s of real training steps (at least `steps`, and for at least `seconds`) after `warm` untimed
    ones, with train.py's setup; what the warm steps took beyond the steady rate; one evaluation as the
    trainer makes it (eval_iters batches of both splits) and a checkpoint. `seconds`: MEASURE_SECONDS
    unless given."""
    seconds = MEASURE_SECONDS if seconds is None else seconds
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        cfg = train_config(dataset, shape, tmp, dtype=dtype, threads=threads, device=device)
        t0 = time.perf_counter()
        run = trainer.setup(cfg, distributed.World(), device)
        t1 = time.perf_counter()
        for _ in range(warm):
            trainer.train_step(run, 1e-4)
        t2 = time.perf_counter()
        done = 0
        while done < steps or time.perf_counter() - t2 < seconds:
            trainer.train_step(run, 1e-4)
            done += 1
        step_s = (time.perf_counter() - t2) / done
        t3 = time.perf_counter()
        trainer.estimate_loss(run)
        run.save(improved=False)
        eval_s = time.perf_counter() - t3
    warm_s = max(0.0, t2 - t1 - warm * step_s)
    return Speed(shape, dtype, shape.batch_size * shape.block_size / step_s, t1 - t0, eval_s, warm_s)


def pilot(dataset: str, shape: Shape, tokens: int, dtype: str, threads: int, val_tokens: int = 0,
          seed: int = 1337, device: str = "cpu") -> tuple[float, float, float]:
    """Train `shape` on about `tokens` tokens with the recipe (steps, not time; the same warmup and cooldown
    fractions) and return (N, D, val loss): over the whole val split, or `val_tokens` of it spread evenly."""
    steps = max(4, round(tokens / (shape.batch_size * shape.block_size)))
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        cfg = train_config(dataset, shape, tmp, dtype=dtype, threads=threads, seed=seed, max_iters=steps,
                           lr_decay_iters=steps, lr_schedule="wsd", warmup_iters=round(RECIPE["warmup_frac"] * steps),
                           cooldown_iters=round(RECIPE["cooldown_frac"] * steps), eval_interval=steps, eval_iters=1,
                           device=device)
        run = trainer.setup(cfg, distributed.World(), device)
        trainer._train(run, time.time())
        loss = val_loss(run.model, run.dataset.splits["val"], val_tokens, run.rt)
    return shape.params, steps * shape.batch_size * shape.block_size, loss


@torch.no_grad()
def val_loss(model, data, max_tokens: int = 0, rt=None) -> float:
    """The mean loss over the whole split in non-overlapping windows, as `minigpt evaluate` computes it
    (tests/test_plan.py ties the two), or over `max_tokens` of it in windows spread evenly across the split."""
    block, device = model.config.block_size, rt.device if rt else "cpu"
    model.eval()
    if not max_tokens or max_tokens >= len(data) - 1:
        windows = iter_windows(data, block, 32)
    else:
        starts = np.linspace(0, len(data) - block - 2, max(1, max_tokens // block)).astype(np.int64)
        w = torch.from_numpy(np.asarray(data[starts[:, None] + np.arange(block + 1)], dtype=np.int64))
        windows = ((w[i:i + 32, :-1], w[i:i + 32, 1:]) for i in range(0, len(w), 32))
    total, count = 0.0, 0
    for x, y in windows:
        logits = model(x.to(device)).float()
        total += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.to(device).flatten(), reduction="sum"))
        count += y.numel()
    return total / count


# ---- the plan -------------------------------------------------------------------------------------------

@dataclass
class PlanConfig:
    dataset: str = opt("", "the prepared dataset to plan for (a name under data/ or a path), given bare: plan DATASET")
    minutes: float = opt(0.0, "the budget: minutes from train.py's launch to its saved checkpoint")
    pilot: str = opt("auto", "shift the loss model to this dataset with short pilot runs (at most pilot_share of the "
                             "budget); auto: only where no built-in fit was made on this dataset", choices=("auto", "true", "false"))
    pilot_share: float = opt(0.15, "the most the pilots may take, as a share of the budget", range="[0, 1)")
    config: str = opt("", "the TOML file to write; default: plan-DATASET-Mmin.toml in the current folder")
    out_dir: str = opt("", "the planned run's out_dir; default: out-plan-DATASET-Mmin")


# The least a plan-time pilot trains on: shorter runs sit where the loss still falls steeply, and a shift
# fitted there says little about the end of a full run (the built-in fits start at 500k tokens).
MIN_PILOT_TOKENS = 400_000
STOP_MARGIN = 0.03  # predicted loss; measuring stops after two larger candidates lose by more
PILOT_VAL_TOKENS = 32_768  # of the val split, spread evenly: close to the whole split's loss, in a fraction of the time


@dataclass
class Row:
    speed: Speed
    tokens: float  # seen in the budget
    loss: float  # predicted full-val loss

    @property
    def shape(self) -> Shape:
        return self.speed.shape


def _dtypes(rc: RuntimeConfig, device) -> list[str]:
    """The precisions to time: as given, or for 'auto' on a CPU with native bf16 both bf16 and fp32 (autocast's
    casts can cost narrow models more than the faster matmuls save; measuring settles it)."""
    if rc.dtype != "auto":
        runtime.pick_dtype(rc.dtype, device)  # refuses what this machine cannot run, in one line
        return [rc.dtype]
    if device.type == "cpu" and runtime.cpu_bf16_native():
        return ["bfloat16", "float32"]
    return [str(runtime.pick_dtype("auto", device, 768)).removeprefix("torch.")]


@dataclass
class Plan:
    best: Row
    rows: list[Row]  # every candidate, best first
    models: dict[str, LossModel]  # each family's, as used
    how: str  # where the loss models came from
    text: str  # the TOML config

    @property
    def model(self) -> LossModel:
        """The winner's family's."""
        return self.models[self.best.shape.family]


def plan(p: PlanConfig, rc: RuntimeConfig, *, import_s: float | None = None, say=print) -> Plan:
    """Measure, predict, pick. `import_s`: what train.py's imports
    take before its first line (counted in its budget), measured by `main`."""
    if not p.minutes > 0:
        raise UserError(f"--minutes must be a positive budget in minutes, got {p.minutes:g}")
    if not p.dataset:
        raise UserError("name the prepared dataset to plan for: python -m minigpt plan DATASET --minutes=M")
    if not 0 <= p.pilot_share < 1:
        raise UserError(f"--pilot_share must be in [0, 1), got {p.pilot_share:g}")
    path = resolve_dataset(p.dataset)
    dataset = TokenDataset(path)
    budget = p.minutes * 60
    device = runtime.pick_device(rc.device)
    threads, why = runtime.pick_threads(rc.threads, device)
    dtypes = _dtypes(rc, device)
    k = kind(dataset)
    shortest = min(len(s) for s in dataset.splits.values()) - 1
    shapes = [s for s in candidates(k) if s.block_size <= shortest]
    if not shapes:  # a tiny dataset: the shortest context's family, in a context it can hold
        if shortest < 8:
            raise UserError(f"dataset {path} has a split of {shortest + 1} tokens, too few to train on; prepare more text")
        least = min(s.block_size for s in candidates(k))
        shapes = [dataclasses.replace(s, block_size=shortest) for s in candidates(k) if s.block_size == least]
    if import_s is None:
        import_s = import_seconds()
    say(f"planning {p.minutes:g} minutes on {path} ({dataset.meta['train_tokens']:,} train tokens, "
        f"vocabulary {dataset.vocab_size:,}); {device}, {threads} threads ({why})")

    # the loss model of each family: built in, later shifted to pilots of this dataset where the budget allows
    models = {f: BUILTIN[f][0].on(float(dataset.meta["train_tokens"])) for f in {s.family for s in shapes}}
    how = " and ".join(f"the built-in '{f}' fit ({BUILTIN[f][1]})" for f in sorted(models))
    own = bundled(dataset)
    pilots = p.pilot == "true" or (p.pilot == "auto" and not own)
    if not own:
        how += (", made on another corpus" + ("" if pilots else ": without pilots expect a larger error"))
    elif not pilots:
        how += ", made on this dataset: no pilots needed, the whole budget trains"

    def train_seconds(s: Speed) -> float:
        """What the budget leaves for training steps: start-up (imports, and the slowest setup of every timing,
        kept or not: the first one pays lazy imports, as a fresh train.py does), the evaluation and checkpoint
        at step 0 and at the end, and the first steps' extra time."""
        return budget - import_s - max(setups) - 2 * s.eval_s - s.warm_s

    def timed(shape: Shape, dtype: str) -> Speed:
        s = measure(str(path), shape, dtype, threads, device=str(device))
        setups.append(s.setup_s)
        return s

    def predict(s: Speed) -> Row:
        tokens = max(0.0, train_seconds(s) * s.tokens_per_s)
        return Row(s, tokens, models[s.shape.family].predict(s.shape.params, tokens, s.shape.n_embd) if tokens else math.inf)

    # the speed of the candidates, smallest first, each in its faster precision (once bf16 wins, the wider
    # ones take it too); past the best prediction larger ones only get slower, so measuring stops after two
    # that lose by more than STOP_MARGIN
    speeds: dict[Shape, Speed] = {}
    setups: list[float] = []
    shapes.sort(key=lambda s: s.params)
    with tqdm(total=len(shapes) * len(dtypes), desc="measuring", unit="run") as bar:
        for shape in shapes:
            for dtype in dtypes:
                s = timed(shape, dtype)
                if shape not in speeds or s.tokens_per_s > speeds[shape].tokens_per_s:
                    speeds[shape] = s
                bar.update(1)
            if speeds[shape].dtype == "bfloat16" and len(dtypes) > 1:
                dtypes = ["bfloat16"]
                bar.total = bar.n + len(shapes) - len(speeds)
            losses = [predict(s).loss for s in speeds.values()]
            if len(losses) >= 3 and min(losses[-2:]) > min(losses) + STOP_MARGIN:
                bar.total = bar.n
                break

    if all(train_seconds(s) * s.tokens_per_s < 2 * s.shape.batch_size * s.shape.block_size for s in speeds.values()):
        fastest = max(speeds.values(), key=lambda s: s.tokens_per_s)
        need = budget - train_seconds(fastest) + 2 * fastest.shape.batch_size * fastest.shape.block_size / fastest.tokens_per_s
        raise UserError(f"--minutes={p.minutes:g} is too short to train even {fastest.shape.name()} here: start-up, "
                        f"two evaluations and two steps take about {need:.1f} s; give a larger budget")

    # the leader, timed again: where candidates are close, the one whose timing read fastest leads, so its
    # first timing overstates its speed (a winner's curse: planned runs made 3-8% fewer steps than planned,
    # docs/plan.md). Its prediction comes from a second timing apart from the choice; should another
    # candidate lead after it, that one is timed again too.
    retimed: set[Shape] = set()
    while (leader := min(speeds.values(), key=lambda s: predict(s).loss)).shape not in retimed:
        again = timed(leader.shape, leader.dtype)
        say(f"timed the leader {leader.shape.label()} again: {leader.tokens_per_s:,.0f} -> {again.tokens_per_s:,.0f} tokens/s")
        speeds[leader.shape] = again
        retimed.add(leader.shape)

    # pilots, then predict and pick
    if pilots:  # `leader`: the one timed twice, above
        smallest = speeds[shapes[0]]
        val_tokens = min(PILOT_VAL_TOKENS, len(dataset.splits["val"]) - 1)
        points = run_pilots(str(path), leader, smallest, p.pilot_share * budget, threads, str(device), val_tokens,
                            say)
        if points:
            models, note = calibrate(models, points)  # one shift for all: the ranking stays
            how = f"{how}; {note}"
        else:
            how = f"{how}; no pilots: {p.pilot_share:.0%} of the budget is too short for a useful one"

    rows = sorted((predict(s) for s in speeds.values()), key=lambda r: r.loss)
    best = rows[0]
    return Plan(best, rows, models, how,
                render_config(p, path, best, rows, models[best.shape.family], how, threads, str(device)))


def run_pilots(dataset: str, leader: Speed, smallest: Speed, seconds: float, threads: int, device: str,
               val_tokens: int, say) -> list[tuple]:
    """Short runs of the recipe on this dataset within `seconds`: the leading candidate and the smallest at
    D and 3D tokens each, else the leader alone, else the smallest alone, else none where D would fall below
    MIN_PILOT_TOKENS. Returns (shape, D, loss) points, the loss over `val_tokens` of the val split."""
    options = [[leader, smallest], [leader], [smallest]] if leader is not smallest else [[leader]]
    for chosen in options:
        overhead = sum(2 * (s.setup_s + s.eval_s + val_tokens / (3 * s.tokens_per_s)) for s in chosen)
        d = (seconds - overhead) / sum(4 / s.tokens_per_s for s in chosen)  # D and 3D tokens of each shape
        if d >= MIN_PILOT_TOKENS:
            break
    else:
        return []
    runs = [(s, int(d * m)) for s in chosen for m in (1, 3)]
    points = []
    t0 = time.time()
    for s, tokens in tqdm(runs, desc="pilots", unit="run"):
        _, d, loss = pilot(dataset, s.shape, tokens, s.dtype, threads, val_tokens=val_tokens, device=device)
        points.append((s.shape, d, loss))
    say(f"pilots: {len(points)} runs in {time.time() - t0:.1f} s (allowed {seconds:.1f} s)")
    return points


def calibrate(models: dict[str, LossModel], points: list[tuple[Shape, float, float]]) -> tuple[dict[str, LossModel], str]:
    """Shift every family's E alike so the models meet the pilots on average: a handful of short runs pin the
    level of this dataset's loss, not the exponents (those stay the built-in fits')."""
    residuals = [loss - models[shape.family].predict(shape.params, d, shape.n_embd) for shape, d, loss in points]
    shift = sum(residuals) / len(residuals)
    spread = max(abs(r - shift) for r in residuals)
    shifted = {f: dataclasses.replace(m, E=m.E + shift) for f, m in models.items()}
    return shifted, (f"E shifted by {shift:+.3f} to {len(points)} pilot runs here "
                     f"({', '.join(f'{s.label()} x {d / 1e6:.2f}M tokens: {l:.3f}' for s, d, l in points)}; "
                     f"largest miss after the shift {spread:.3f})")


def render_config(p: PlanConfig, path: Path, best: Row, rows: list[Row], model: LossModel, how: str,
                  threads: int, device: str = "cpu") -> str:
    """The planned run as a TOML file train.py runs as it is, its prediction and how it was made on top."""
    s, name = best.shape, _name(path)
    out_dir = p.out_dir or f"out-plan-{name}-{p.minutes:g}min"
    steps = best.tokens / (s.batch_size * s.block_size)
    lines = [
        f"# Planned by `python -m minigpt plan {p.dataset} --minutes={p.minutes:g}` for this machine "
        f"({threads} threads, {best.speed.dtype}).",
        f"# Prediction: full-val loss {best.loss:.3f} (python -m minigpt evaluate --model={out_dir} --dtype=float32), "
        f"{s.label()} ({s.params / 1e6:.2f}M non-embedding",
        f"# parameters) at {best.speed.tokens_per_s:,.0f} tokens/s measured: about {best.tokens / 1e6:.2f}M tokens "
        f"({best.tokens / s.params:.1f} per parameter, ~{steps:,.0f} steps) in the budget.",
        f"# Loss model: {model.describe()}",
        f"# Exact: tokens={best.tokens!r} " + " ".join(f"{k}={v!r}" for k, v in dataclasses.asdict(model).items()),
        f"# from {how}.",
        "# Runner-up: " + ", ".join(f"{r.shape.label()} {r.loss:.3f}" for r in rows[1:4]) + ".",
        f"# Train:  python train.py {p.config or default_config_path(p, path)}",
        "# The recipe (minigpt.plan.RECIPE): configs/quality_cpu.toml's, timed against the budget (max_minutes):",
        "# Muon for the blocks' matrices, AdamW for embeddings and norms, warmup-stable-decay with a 40% cooldown,",
        "# no dropout; evaluations only at the start and the end.",
    ]
    settings = dict(dataset=str(path), out_dir=out_dir, device=device, dtype=best.speed.dtype,
                    max_minutes=p.minutes, **s.settings(), **RECIPE, eval_interval=1_000_000, eval_iters=5,
                    log_interval=50, mfu=False, plot=False, overwrite=True)
    for key, value in settings.items():
        lines.append(f"{key} = {_toml(value)}")
    return "\n".join(lines) + "\n"


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def _name(path: Path) -> str:
    return path.resolve().name


def default_config_path(p: PlanConfig, path: Path) -> str:
    return f"plan-{_name(path)}-{p.minutes:g}min.toml"


def table(rows: list[Row]) -> str:
    head = (f"{'shape':>7} {'heads':>5} {'ctx':>4} {'params':>8} {'dtype':>8} {'tokens/s':>9} {'tokens':>8} "
            f"{'tok/param':>9} {'pred. loss':>10}")
    lines = [head, "-" * len(head)]
    for i, r in enumerate(rows):
        s = r.shape
        lines.append(f"{s.name():>7} {s.n_head:>5} {s.block_size:>4} {s.params / 1e6:>7.2f}M {r.speed.dtype:>8} "
                     f"{r.speed.tokens_per_s:>9,.0f} {r.tokens / 1e6:>7.2f}M {r.tokens / s.params:>9.1f} "
                     f"{r.loss:>10.3f}" + ("  <- planned" if i == 0 else ""))
    return "\n".join(lines)


def why(best: Row, rows: list[Row], model: LossModel) -> str:
    """One paragraph: what the winner trades, against the models just smaller and larger."""
    s = best.shape
    size_term, data_term = model.terms(s.params, best.tokens, s.n_embd)
    smaller = [r for r in rows if r.shape.params < s.params]
    larger = [r for r in rows if r.shape.params > s.params]
    text = (f"{s.label()} wins: of its predicted {best.loss:.3f}, {size_term:.3f} is for its size and {data_term:.3f} "
            f"for the {best.tokens / 1e6:.2f}M tokens it sees.")
    if smaller:
        r = max(smaller, key=lambda r: r.shape.params)
        text += (f" The smaller {r.shape.label()} sees {r.tokens / 1e6:.2f}M tokens but is too small to use them "
                 f"({r.loss:.3f}).")
    if larger:
        r = min(larger, key=lambda r: r.shape.params)
        text += (f" The larger {r.shape.label()} would see only {r.tokens / 1e6:.2f}M tokens in the budget "
                 f"({r.loss:.3f}).")
    return text


def import_seconds() -> float:
    """How long train.py takes to start (Python, torch, minigpt's trainer), timed in a fresh process."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import minigpt.trainer"], check=False, capture_output=True)
    return time.perf_counter() - t0


def main(argv: list[str]) -> int:
    cfg = parse_cli(argv, {"plan": PlanConfig, "runtime": RuntimeConfig}, "python -m minigpt plan",
                    __doc__.splitlines()[0], positional="dataset")
    p = cfg.plan
    result = plan(p, cfg.runtime)
    target = Path(p.config or default_config_path(p, resolve_dataset(p.dataset)))
    print(table(result.rows))
    print(why(result.best, result.rows, result.model))
    print(f"loss model: {result.model.describe()}\n  from {result.how}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(result.text)
    tmp.replace(target)  # all or nothing
    print(f"wrote {target}: predicted full-val loss {result.best.loss:.3f}; train with `python train.py {target}`")
    return 0


if __name__ == "__main__":
    run_cli(main)
