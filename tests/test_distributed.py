"""Data-parallel training with torchrun on the CPU (gloo): DDP and FSDP2 match a single process."""

import pytest
import torch

from conftest import run

COMMON = dict(preset="tiny", eval_interval=10, eval_iters=2, log_interval=5, max_iters=20, lr_decay_iters=20,
              warmup_iters=2, device="cpu", dropout=0.0, plot=False, threads=1)


def args(**kw):
    return [f"--{k}={v}" for k, v in {**COMMON, **kw}.items()]


def torchrun(*a, check=True):
    return run("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py", *a, check=check)


def state(out):
    return torch.load(out / "ckpt.pt", weights_only=True)


def assert_same_weights(a, b, atol=1e-6):
    """Equal but for fp32 sums in another order (measured: 1.2e-7 after 20 steps, FSDP vs one process)."""
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


# Several micro-steps per rank: 2 ranks x batch 4 x gradient_accumulation_steps 4 (2 micro-steps each)
# see exactly the batches of one process with batch 8 and 2 micro-steps.
SPLIT = dict(batch_size=4, gradient_accumulation_steps=4)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One process, batch 8, 2 micro-steps, no dropout: the reference for 2 ranks."""
    from conftest import TEXT, prepare_text

    tmp = tmp_path_factory.mktemp("dist")
    prepare_text(TEXT, tmp / "ds")
    run("train.py", *args(dataset=tmp / "ds", out_dir=tmp / "single", batch_size=8, gradient_accumulation_steps=2))
    return tmp


def test_ddp_two_ranks_equal_one_process_with_twice_the_batch(single):
    out = single / "ddp"
    p = torchrun(*args(dataset=single / "ds", out_dir=out, **SPLIT))
    assert "x 2" in p.stdout  # world size shown once, by rank 0 only
    ref, got = state(single / "single"), state(out)
    assert_same_weights(ref["model"], got["model"])
    assert got["best_val_loss"] == pytest.approx(ref["best_val_loss"], abs=1e-5)


def test_fsdp_equals_one_process_and_its_checkpoint_loads_in_one_process(single):
    from minigpt.checkpoint import load_model

    out = single / "fsdp"
    torchrun(*args(dataset=single / "ds", out_dir=out, fsdp=True, **SPLIT))
    loaded = load_model(out)
    model, tok, st = loaded.model, loaded.tokenizer, loaded.state
    assert st["iter_num"] == 20 and not any(k.startswith("_fsdp") or "_orig_mod" in k for k in st["model"])
    # AdamW took exactly 20 steps: saving the iteration-0 checkpoint must not run a step of its own
    assert {float(s["step"]) for s in st["optimizer"]["state"].values()} == {20.0}
    assert_same_weights(state(single / "single")["model"], st["model"])
    assert st["best_val_loss"] == pytest.approx(state(single / "single")["best_val_loss"], abs=1e-5)
    x = torch.tensor([tok.encode("Speak")])
    assert torch.isfinite(model(x)).all()


@pytest.fixture(scope="module")
def with_dropout(single):
    """DDP with dropout, 20 iterations straight: each rank draws its own dropout masks."""
    out = single / "ddp_dropout"
    torchrun(*args(dataset=single / "ds", out_dir=out, dropout=0.1, **SPLIT))
    return out


@pytest.mark.parametrize("fsdp", [False, True])
def test_resume_with_dropout_equals_the_straight_run(single, with_dropout, fsdp):
    out = single / f"resumed_{fsdp}"
    common = dict(dataset=single / "ds", out_dir=out, dropout=0.1, fsdp=fsdp, **SPLIT)
    torchrun(*args(**{**common, "max_iters": 10}))
    torchrun(*args(**{**common, "resume": True}))
    got, ref = state(out), state(with_dropout)
    assert len(got["rng"]) == 2  # every rank's random state is kept
    if fsdp:  # FSDP draws the same masks as DDP on each rank: equal up to summation order
        assert_same_weights(ref["model"], got["model"])
    else:  # the same program resumed: bit for bit
        assert all(torch.equal(ref["model"][k], got["model"][k]) for k in ref["model"])


def test_default_accumulation_runs_under_torchrun(single):
    """gradient_accumulation_steps=1 (nanoGPT's CPU setting) with 2 processes: each runs one micro-batch."""
    p = torchrun(*args(dataset=single / "ds", out_dir=single / "default", max_iters=4, eval_interval=4))
    assert "each runs one micro-batch" in p.stdout and state(single / "default")["iter_num"] == 4


def test_accumulation_that_cannot_be_split_is_refused(single):
    p = torchrun(*args(dataset=single / "ds", out_dir=single / "bad", gradient_accumulation_steps=3), check=False)
    assert p.returncode != 0 and "divisible by the number of processes" in p.stderr


NON_FINITE_ON_ONE_RANK = """
import sys, torch, torch.distributed as dist
from minigpt.distributed import exit_process, wrap, World
from minigpt.kernels import lm_loss
from minigpt.model import GPT, GPTConfig
from minigpt.optim import clip_and_step, param_groups
dist.init_process_group("gloo")
rank = dist.get_rank()
fsdp = sys.argv[2] == "fsdp"  # one wrapping per process: both in one process aborted at exit now and then (SIGABRT, "terminate called without an active exception")
torch.manual_seed(0)
model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50))
step_model = wrap(model, World(rank, 2), fsdp, torch.device("cpu"))
opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-2)
x = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(rank))
logits = step_model(x)
if rank == 1:  # one rank's gradient (before DDP's all-reduce; FSDP: its shard) is inf
    logits.register_hook(lambda g: torch.full_like(g, float("inf")))
lm_loss(logits, x).backward()
before = [p.detach().clone() for p in model.parameters()]
stepped = clip_and_step(opt, torch.amp.GradScaler("cpu", enabled=False), model.parameters(), 1.0)
unchanged = all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
with open(f"{sys.argv[1]}/fsdp{fsdp}_rank{rank}.txt", "w") as f:  # a file each: the ranks' stdout interleaves
    f.write(f"fsdp={fsdp} rank={rank} stepped={stepped} unchanged={unchanged}")
dist.barrier()  # neither rank tears the group down while the other still talks to it
dist.destroy_process_group()
exit_process()  # as train.py's workers end: gloo's teardown at finalization aborted a DDP worker now and then
"""


def test_a_non_finite_gradient_on_one_rank_skips_the_step_on_every_rank(tmp_path):
    # the clip's global norm is the check: DDP all-reduces the gradients and FSDP's norm is a replicated
    # DTensor, so every rank sees the inf and skips together, with no collective of its own
    script = tmp_path / "one_rank.py"
    script.write_text(NON_FINITE_ON_ONE_RANK)
    for mode in ("ddp", "fsdp"):
        run("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), str(tmp_path), mode)
    lines = sorted(f.read_text() for f in tmp_path.glob("fsdp*_rank*.txt"))
    assert lines == [f"fsdp={f} rank={r} stepped=False unchanged=True" for f in (False, True) for r in (0, 1)]
