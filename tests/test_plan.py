"""Planning by the clock: training to a time budget, its schedule, the loss-model fit, `minigpt plan`."""

import json
import os
import signal
import threading
import time
import tomllib

import pytest
import torch

from benchmarks.plan import plan_header
from minigpt import plan as planner
from minigpt.config import RuntimeConfig, build_config, train_sections
from minigpt.errors import UserError, run_cli
from minigpt.optim import lr_at_fraction
from minigpt.trainer import train

BASE = dict(preset="tiny", batch_size=4, eval_iters=2, eval_interval=1_000_000, log_interval=1, device="cpu",
            plot=False, threads=1, mfu=False, learning_rate=1e-3, min_lr=1e-4, warmup_frac=0.1, cooldown_frac=0.4)


def cfg(dataset, out_dir, **kw):
    overrides = {**BASE, "dataset": str(dataset), "out_dir": str(out_dir), **kw}
    return build_config(train_sections(), overrides={k: str(v) for k, v in overrides.items()})


@pytest.fixture(scope="module", autouse=True)
def warm(tmp_path_factory):
    """One short training first: a process's first run pays one-off imports (seconds on a busy machine),
    which would eat the few-second budgets the tests below time."""
    from conftest import TEXT, prepare_text

    tmp = tmp_path_factory.mktemp("warm")
    train(cfg(prepare_text(TEXT, tmp / "ds"), tmp / "out", max_iters=2))


def lrs(out_dir) -> list[float]:
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["lr"] for r in rows if "lr" in r]


# ---- the schedule as a function of the elapsed share of the budget ------------------------------------

def test_the_time_schedule_at_its_boundaries():
    lr, lo = 1e-3, 1e-4
    at = lambda f: lr_at_fraction(f, lr, lo, 0.1, 0.4)  # noqa: E731
    assert at(0.0) == 0.0  # warmup starts from nothing
    assert at(0.05) == pytest.approx(lr / 2)  # halfway up
    assert at(0.1) == lr  # warmup ends at the peak
    assert at(0.3) == lr and at(0.6) == lr  # stable until the cooldown starts at 1 - 0.4
    assert at(0.8) == pytest.approx((lr + lo) / 2)  # the cooldown is linear
    assert at(1.0 - 1e-9) == pytest.approx(lo)  # and ends at min_lr with the budget
    assert at(1.0) == lo and at(1.5) == lo  # past the budget: min_lr
    assert lr_at_fraction(0.0, lr, lo, 0.0, 0.0) == lr  # neither warmup nor cooldown: flat


# ---- training to a budget ----------------------------------------------------------------------------------

def test_a_budgeted_run_stops_on_time_with_its_cooldown_finished(char_dataset, tmp_path):
    out, budget = tmp_path / "run", 4.0
    launched = time.time()
    train(cfg(char_dataset, out, max_minutes=budget / 60, max_iters=3), launched=launched)
    wall = (out / "ckpt.pt").stat().st_mtime - launched  # launch to checkpoint
    assert 0.9 * budget <= wall <= 1.05 * budget
    seen = lrs(out)
    assert len(seen) > 3, "max_iters does not cap a budgeted run"
    assert max(seen) == pytest.approx(1e-3)  # warmed up to the peak
    assert seen[-1] <= 1e-4 + 0.05 * (1e-3 - 1e-4)  # the last step ran at the end of the cooldown
    assert torch.load(out / "ckpt.pt", weights_only=True)["iter_num"] == len(seen)


def test_resume_keeps_the_budget(char_dataset, tmp_path):
    out, budget = tmp_path / "run", 5.0
    t0 = time.time()
    stop = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGINT))  # the trainer saves and exits 130
    stop.start()
    with pytest.raises(SystemExit) as e:
        train(cfg(char_dataset, out, max_minutes=budget / 60), launched=t0)
    assert e.value.code == 130
    spent = torch.load(out / "ckpt.pt", weights_only=True)["budget_spent"]
    assert 1.8 <= spent <= time.time() - t0
    t1 = time.time()
    train(cfg(char_dataset, out, max_minutes=budget / 60, resume=True), launched=t1)
    wall = (out / "ckpt.pt").stat().st_mtime - t1
    assert 0.9 * (budget - spent) <= wall <= 1.05 * (budget - spent)  # the remainder, not a new budget
    assert lrs(out)[-1] <= 1e-4 + 0.05 * (1e-3 - 1e-4)


def test_bad_budgets_stop_with_one_line(char_dataset, tmp_path):
    with pytest.raises(UserError, match="max_minutes must be"):
        train(cfg(char_dataset, tmp_path / "a", max_minutes=-1))
    with pytest.raises(UserError, match="leaves no time to train"):  # start-up alone is longer than 60 ms
        train(cfg(char_dataset, tmp_path / "b", max_minutes=0.001), launched=time.time() - 1)
    with pytest.raises(UserError, match="add up to at most 1"):
        train(cfg(char_dataset, tmp_path / "c", max_minutes=1, warmup_frac=0.7, cooldown_frac=0.4))


# ---- the loss model ------------------------------------------------------------------------------------------

TRUE = dict(E=1.2, A=40.0, alpha=0.35, B=250.0, beta=0.4)


def synthetic(unique=0.0, r_star=planner.REPEAT_R_STAR):
    true = planner.LossModel(**TRUE, unique=unique, r_star=r_star)
    return true, [(n, d, true.predict(n, d)) for n in (1e5, 4e5, 1.6e6, 6.4e6) for d in (2e5, 1e6, 5e6, 2.5e7)]


@pytest.mark.parametrize("unique, r_star", [(0.0, planner.REPEAT_R_STAR), (2e6, planner.REPEAT_R_STAR), (2e6, 2.0)])
def test_the_fit_recovers_known_parameters(unique, r_star):
    true, points = synthetic(unique, r_star)
    fit = planner.fit_loss_model(points, unique=unique)
    if unique:  # points past one epoch place R*, how fast repeats lose their worth
        assert fit.r_star == r_star
    assert fit.alpha == pytest.approx(TRUE["alpha"], abs=0.005)
    assert fit.beta == pytest.approx(TRUE["beta"], abs=0.005)
    assert fit.E == pytest.approx(TRUE["E"], abs=0.02)
    for n, d, loss in points:
        assert fit.predict(n, d) == pytest.approx(loss, abs=2e-3)


def test_the_fit_with_fixed_exponents_recovers_the_coefficients():
    true, points = synthetic()
    fit = planner.fit_loss_model(points, exponents=(TRUE["alpha"], TRUE["beta"]))
    assert (fit.E, fit.A, fit.B) == pytest.approx((TRUE["E"], TRUE["A"], TRUE["B"]), rel=1e-6)


def test_the_fit_with_a_fixed_floor_recovers_the_rest():
    true, points = synthetic()
    fit = planner.fit_loss_model(points, E=TRUE["E"])
    assert fit.E == TRUE["E"]
    assert (fit.alpha, fit.beta) == pytest.approx((TRUE["alpha"], TRUE["beta"]), abs=0.005)


def test_the_fit_recovers_how_much_more_a_wider_model_learns_from_a_token():
    true = planner.LossModel(**TRUE, gamma=0.3)
    shapes = [(1e5, 64), (4e5, 128), (1.6e6, 256), (6.4e6, 384)]  # (parameters, width)
    points = [(n, d, true.predict(n, d, c), c) for n, c in shapes for d in (2e5, 1e6, 5e6, 2.5e7)]
    fit = planner.fit_loss_model(points, E=TRUE["E"], gamma=None)
    assert fit.gamma == pytest.approx(0.3)  # on the grid
    assert (fit.alpha, fit.beta) == pytest.approx((TRUE["alpha"], TRUE["beta"]), abs=0.005)
    for n, d, loss, c in points:
        assert fit.predict(n, d, c) == pytest.approx(loss, abs=2e-3)
    # a token-is-a-token fit of the same points misses: the width is what they need
    flat = planner.fit_loss_model(points, E=TRUE["E"])
    assert max(abs(flat.predict(n, d, c) - loss) for n, d, loss, c in points) > 0.02


def test_the_two_terms_add_up_to_the_prediction_and_the_widths_term_fades():
    model = planner.LossModel(**TRUE, unique=1e6, r_star=2.0, gamma=0.3)
    for n, d, c in [(1e5, 2e5, 64), (3e6, 4e6, 384)]:
        size, data = model.terms(n, d, c)
        assert size > 0 and data > 0
        assert model.E + size + data == pytest.approx(model.predict(n, d, c), rel=1e-12)
    gain = lambda d: model.predict(1e6, d, 128) - model.predict(1e6, d, 256)  # what twice the width buys
    # it falls with the tokens seen as the data term does, D'^-beta
    assert gain(2e5) / gain(2e6) == pytest.approx((model.effective(2e6) / model.effective(2e5)) ** TRUE["beta"])
    assert planner.LossModel(**TRUE).predict(1e6, 2e5, 256) == planner.LossModel(**TRUE).predict(1e6, 2e5)


def test_the_header_gives_the_bench_the_model_back(tmp_path):
    model = planner.LossModel(**TRUE, unique=1e6, r_star=2.0, gamma=0.25)
    shape = planner.Shape(2, 64, 32, 4, "bpe-128")
    row = planner.Row(planner.Speed(shape, "float32", 1000.0, 0.1, 0.1), 12345.6,
                      model.predict(shape.params, 12345.6, shape.n_embd))
    p = planner.PlanConfig(dataset="data/x", minutes=1)
    text = planner.render_config(p, tmp_path, row, [row], model, "a test", threads=1)
    assert plan_header(text) == (model, 12345.6)


def test_the_printed_model_names_the_width_only_where_it_counts():
    chars, bpe = planner.LossModel(**TRUE, unique=1e6, r_star=2.0), planner.LossModel(**TRUE, unique=1e6, gamma=0.3)
    assert "C/128" not in chars.describe() and "width" not in chars.describe()
    assert "(C/128)^0.3" in bpe.describe() and "C: the width" in bpe.describe()
    assert "C: the width" in planner.LossModel(**TRUE, gamma=0.3).describe()  # no epochs to discount, still C


def test_repeated_epochs_count_less():
    u = 1e6
    assert planner.effective_tokens(5e5, u) == 5e5  # the first epoch counts in full
    assert u < planner.effective_tokens(3e6, u) < 3e6  # later ones less
    assert planner.effective_tokens(1e9, u) == pytest.approx(u * (1 + planner.REPEAT_R_STAR), rel=1e-3)  # a ceiling
    assert planner.effective_tokens(1e9, u, r_star=2.0) == pytest.approx(3 * u, rel=1e-12)  # a lower one, sooner


def test_calibration_shifts_the_level_of_every_family_alike():
    true, points = synthetic()
    width = {n: int((n / 12) ** 0.5) for n in {p[0] for p in points}}  # a one-layer shape of about n parameters
    shapes = {n: planner.Shape(1, w, 64, 32, "char-64") for n, w in width.items()}
    off = planner.LossModel(**{**TRUE, "E": 1.0})
    other = planner.LossModel(**{**TRUE, "E": 0.5, "A": 1.0})
    pilots = [(shapes[n], d, true.predict(shapes[n].params, d)) for n, d, _ in points]
    fitted, note = planner.calibrate({"char-64": off, "char-256": other}, pilots)
    assert fitted["char-64"].E == pytest.approx(TRUE["E"])
    assert fitted["char-256"].E == pytest.approx(0.7)  # the same shift, though no pilot ran in its family
    assert (fitted["char-64"].A, fitted["char-64"].alpha, fitted["char-64"].B) == (off.A, off.alpha, off.B)
    assert "+0.200" in note


def test_val_loss_is_what_evaluate_computes(char_dataset):
    from minigpt.data import TokenDataset
    from minigpt.model import GPT, GPTConfig
    from minigpt.tools.evaluate import evaluate_split

    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=40, bias=False))
    val = TokenDataset(char_dataset).splits["val"]
    assert planner.val_loss(model, val) == pytest.approx(evaluate_split(model, val)[0], rel=1e-5)
    assert planner.val_loss(model, val, max_tokens=200) == pytest.approx(evaluate_split(model, val)[0], abs=0.2)


# ---- minigpt plan ----------------------------------------------------------------------------------------

def test_auto_precision_times_bf16_only_where_the_cpu_has_it(monkeypatch):
    from minigpt import runtime

    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_bf16_native", lambda: True)
    assert planner._dtypes(RuntimeConfig(dtype="auto"), cpu) == ["bfloat16", "float32"]
    monkeypatch.setattr(runtime, "cpu_bf16_native", lambda: False)
    assert planner._dtypes(RuntimeConfig(dtype="auto"), cpu) == ["float32"]
    assert planner._dtypes(RuntimeConfig(dtype="float32"), cpu) == ["float32"]


@pytest.fixture
def small_shapes(monkeypatch):
    """Candidates that train in seconds: the tiny preset's size and two steps up. The plan's start-up
    estimate is a fresh process's imports; the trainings here run in this process, which has them."""
    shapes = [planner.Shape(1, 16, 32, 4, "char-64"), planner.Shape(2, 32, 32, 4, "char-64"),
              planner.Shape(2, 64, 32, 4, "char-256")]
    monkeypatch.setattr(planner, "candidates", lambda kind: list(shapes))
    monkeypatch.setattr(planner, "import_seconds", lambda: 0.0)
    monkeypatch.setattr(planner, "MEASURE_SECONDS", 0.2)  # steps of a few ms: hundreds of them
    return shapes


def test_plan_writes_a_config_that_trains_within_its_budget(char_dataset, tmp_path, small_shapes, capsys):
    target, out = tmp_path / "planned.toml", tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        run_cli(planner.main, [str(char_dataset), "--minutes=0.1", "--pilot=false", f"--config={target}",
                               f"--out_dir={out}", "--threads=1", "--dtype=float32"])
    assert e.value.code == 0
    shown = capsys.readouterr().out
    assert "pred. loss" in shown and "<- planned" in shown and "wins" in shown
    text = target.read_text()
    assert text.startswith("# Planned by") and "# Prediction: full-val loss" in text
    # the bench reads the loss model and the planned tokens back from the header: they give the header's
    # prediction, which it prints to 3 decimals (so within half of the last one)
    model, tokens = plan_header(text)
    cfg = tomllib.loads(text)
    predicted = float(text.split("full-val loss ", 1)[1].split()[0])
    shape = planner.Shape(cfg["n_layer"], cfg["n_embd"], cfg["block_size"], cfg["batch_size"])
    assert model.predict(shape.params, tokens) == pytest.approx(predicted, abs=5e-4)
    launched = time.time()
    train(build_config(train_sections(), target), launched=launched)
    wall = (out / "ckpt.pt").stat().st_mtime - launched
    assert 0.9 * 6 <= wall <= 1.05 * 6


def test_plan_picks_the_lowest_predicted_loss_and_pilots_shift_it(char_dataset, small_shapes, monkeypatch):
    monkeypatch.setattr(planner, "MIN_PILOT_TOKENS", 500)  # this dataset is tiny: pilots of a few steps
    p = planner.PlanConfig(dataset=str(char_dataset), minutes=0.5, pilot="true", pilot_share=0.3)
    result = planner.plan(p, RuntimeConfig(threads=1, dtype="float32"), say=lambda *a: None)
    assert result.best.loss == min(r.loss for r in result.rows)
    assert "pilot runs here" in result.how
    for r in result.rows:
        assert r.loss == pytest.approx(result.models[r.shape.family].predict(r.shape.params, r.tokens))


def test_the_leader_is_timed_again_and_predicted_from_that(char_dataset, small_shapes, monkeypatch):
    # where candidates are close, the one whose timing read fastest leads: its prediction comes from a
    # second timing; a new leader is timed again too; nobody is timed more than twice; the start-up the
    # first timing paid (lazy imports, as a fresh train.py pays them) still counts
    tiny, mid, wide = small_shapes
    readings = {tiny: [1_000.0, 900.0], mid: [1e9, 1.0], wide: [10.0]}  # mid's first reading is a fluke
    calls = []

    def fake_measure(dataset, shape, dtype, threads, device="cpu", **kw):
        calls.append(shape)
        setup = 5.0 if len(calls) == 1 else 0.01
        return planner.Speed(shape, dtype, readings[shape][calls.count(shape) - 1], setup, 0.01)

    monkeypatch.setattr(planner, "measure", fake_measure)
    p = planner.PlanConfig(dataset=str(char_dataset), minutes=0.5, pilot="false")
    shown = []
    result = planner.plan(p, RuntimeConfig(threads=1, dtype="float32"), say=shown.append)
    assert [calls.count(s) for s in small_shapes] == [2, 2, 1]
    assert result.best.shape == tiny and result.best.speed.tokens_per_s == 900.0
    assert result.best.tokens == pytest.approx((30 - 5.0 - 2 * 0.01) * 900.0)
    assert {r.shape: r.speed.tokens_per_s for r in result.rows}[mid] == 1.0
    assert result.best.loss == min(r.loss for r in result.rows)
    assert any("again" in line and "1,000 -> 900" in line for line in shown)


@pytest.mark.parametrize("own_fit, pilots", [(True, False), (False, True)])
def test_auto_pilots_only_where_no_built_in_fit_was_made_on_the_dataset(char_dataset, small_shapes, monkeypatch,
                                                                       own_fit, pilots):
    monkeypatch.setattr(planner, "bundled", lambda dataset: own_fit)
    ran = []
    monkeypatch.setattr(planner, "run_pilots", lambda *a, **k: ran.append(1) or [])
    p = planner.PlanConfig(dataset=str(char_dataset), minutes=0.5)
    assert p.pilot == "auto"
    result = planner.plan(p, RuntimeConfig(threads=1, dtype="float32"), say=lambda *a: None)
    assert bool(ran) == pilots
    assert ("no pilots needed" in result.how) == own_fit


@pytest.mark.parametrize("args, message", [
    (["--minutes=0"], "--minutes must be a positive budget"),
    (["--minutes=-2"], "--minutes must be a positive budget"),
    (["--minutes=0.001", "--pilot=false"], "too short to train"),
])
def test_bad_plan_inputs_stop_with_one_line_and_exit_2(char_dataset, small_shapes, capsys, monkeypatch, args,
                                                       message):
    # a start-up of 1 s, longer than 0.001 minutes: too short on any machine (with the fixture's 0 s, a quiet
    # machine's fast setup left time for a few steps of the tiny candidates and the plan went ahead)
    monkeypatch.setattr(planner, "import_seconds", lambda: 1.0)
    with pytest.raises(SystemExit) as e:
        run_cli(planner.main, [str(char_dataset), "--threads=1", "--dtype=float32", *args])
    assert e.value.code == 2
    last = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]  # after the measuring bar
    assert last.startswith("error: ") and message in last


def test_plan_refuses_a_dataset_that_is_not_prepared(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run_cli(planner.main, [str(tmp_path / "nothing"), "--minutes=1"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "is not prepared" in err and "\n" not in err
