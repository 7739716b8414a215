"""The commands a user runs: prepare -> train -> sample -> evaluate, and one clear line for bad input."""

import pytest
import torch

from conftest import run
from minigpt.data import TokenDataset

TINY = ["--preset=tiny", "--max_iters=20", "--eval_interval=10", "--eval_iters=2", "--log_interval=5",
        "--batch_size=4", "--device=cpu"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny char model trained end to end through the CLIs."""
    from conftest import TEXT

    tmp = tmp_path_factory.mktemp("e2e")
    (tmp / "corpus.txt").write_text(TEXT)
    run("data/prepare.py", str(tmp / "corpus.txt"), f"--out={tmp / 'ds'}")
    out = tmp / "out"
    p = run("train.py", *TINY, f"--dataset={tmp / 'ds'}", f"--out_dir={out}")
    return tmp, out, p


def test_train_logs_param_table_and_saves(trained):
    tmp, out, p = trained
    assert "non-embedding total" in p.stdout and "attn qkv" in p.stdout
    assert "step 20: train loss" in p.stdout
    assert (out / "ckpt.pt").is_file() and (out / "metrics.jsonl").is_file()
    state = torch.load(out / "ckpt.pt", weights_only=True)
    assert state["iter_num"] == 20 and state["tokenizer"]["kind"] == "char"
    assert not any(k.startswith("_orig_mod") for k in state["model"])


def test_the_module_entry_points_and_key_space_value(trained):
    # python -m minigpt sample is sample.py; `--key value` is read as `--key=value`
    tmp, out, _ = trained
    a = run("sample.py", f"--model={out}", "--start=First", "--num_samples=1", "--max_new_tokens=10", "--seed=3").stdout
    b = run("-m", "minigpt", "sample", "--model", str(out), "--start", "First", "--num_samples", "1",
            "--max_new_tokens", "10", "--seed", "3", "--stream", "false").stdout
    assert a == b and a.startswith("First")


def test_sample_is_deterministic_for_a_seed(trained):
    tmp, out, _ = trained
    args = ("sample.py", f"--model={out}", "--start=First", "--num_samples=2", "--max_new_tokens=30", "--seed=3")
    a, b = run(*args).stdout, run(*args).stdout
    assert a == b and a.count("First") >= 2
    c = run(*args[:-1], "--seed=4").stdout
    assert c != a


def test_evaluate_whole_split(trained):
    # the printed numbers against a direct computation: every val token but the first predicted once,
    # in non-overlapping windows of block_size; bits per byte over the bytes of those predicted tokens
    import json
    import math
    import re

    import numpy as np

    from minigpt import checkpoint

    tmp, out, _ = trained
    p = run("-m", "minigpt", "evaluate", f"--model={out}", "--device=cpu", "--dtype=float32")
    printed = re.search(r"([\d,]+) tokens predicted.*\nloss ([\d.]+)  perplexity ([\d.]+)  bits per byte ([\d.]+)",
                        p.stdout)
    n_printed, loss_printed, ppl_printed, bpb_printed = printed.groups()
    loaded = checkpoint.load_model(out)
    model, tok, block = loaded.model, loaded.tokenizer, loaded.model.config.block_size
    val = np.asarray(TokenDataset(tmp / "ds").splits["val"][:])
    nats = 0.0
    with torch.no_grad():
        for s in range(0, len(val) - 1, block):
            w = torch.from_numpy(val[s : s + block + 1].astype(np.int64))[None]
            nats += torch.nn.functional.cross_entropy(model(w[:, :-1])[0], w[0, 1:], reduction="sum").item()
    n = len(val) - 1
    text_bytes = len(tok.decode(val[1:].tolist()).encode("utf-8"))  # the first token is never predicted
    assert int(n_printed.replace(",", "")) == n
    # the command prints 4, 3 and 4 decimals: half a unit of the last printed digit, plus 1e-5 for fp32
    # sums taken in another order (batched windows there, one window at a time here)
    assert float(loss_printed) == pytest.approx(nats / n, abs=5e-5 + 1e-5)
    assert float(ppl_printed) == pytest.approx(math.exp(nats / n), abs=5e-4 + 1e-4)
    assert float(bpb_printed) == pytest.approx(nats / math.log(2) / text_bytes, abs=5e-5 + 1e-5)


def test_long_prompt_is_cropped_with_a_note(trained):
    tmp, out, _ = trained
    p = run("sample.py", f"--model={out}", "--start=" + "Speak, speak. " * 10, "--max_new_tokens=5", "--num_samples=1")
    assert "using its last 32" in p.stdout


@pytest.mark.parametrize("args,needle", [
    (["train.py", "--dataset=nope", "--preset=tiny"], "python data/prepare.py nope"),
    (["train.py", "--n_layr=2"], "did you mean n_layer"),
    (["train.py", "--batch_size=big"], "--batch_size must be an integer"),
    (["train.py", "--n_embd=10", "--n_head=3"], "divisible"),
    (["sample.py", "--model=/nonexistent/dir"], "no model at /nonexistent/dir"),
    (["sample.py", "--temperature=-1"], "temperature"),
    # each setting's range and the old spellings are tested in-process in test_config; here, end to end
    (["train.py", "--seed=-1"], r"command line: --seed must be in [0, 4294967295], got -1"),
    (["train.py", "--learning_rate=nan"], "--learning_rate must be a finite number"),
    (["sample.py", "--out_dir=out-baby"], "--out_dir is now --model, as --model=out-baby"),
    (["data/prepare.py", "/nonexistent/file.txt"], "neither"),
])
def test_bad_input_gives_one_clear_line(args, needle, tmp_path):
    p = run(*args, check=False, cwd=None)
    assert p.returncode != 0
    assert needle in p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_a_prompt_file_that_is_not_utf8_or_is_empty_is_one_line(tmp_path):
    from minigpt.errors import UserError
    from minigpt.sample import read_prompt

    latin = tmp_path / "latin.txt"
    latin.write_bytes("Café olé".encode("latin-1"))
    with pytest.raises(UserError, match=r"prompt file .*latin.txt is not UTF-8 text \(byte 0xe9 at offset 3\)"):
        read_prompt(f"FILE:{latin}")
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="prompt file .*empty.txt is empty"):
        read_prompt(f"FILE:{empty}")
    (tmp_path / "ok.txt").write_text("Café", encoding="utf-8")
    assert read_prompt(f"FILE:{tmp_path / 'ok.txt'}") == "Café" and read_prompt("plain") == "plain"


def test_a_bad_prompt_file_is_refused_before_the_model_loads(tmp_path):
    latin = tmp_path / "latin.txt"
    latin.write_bytes("Café".encode("latin-1"))
    p = run("sample.py", "--model=/nonexistent/dir", f"--start=FILE:{latin}", check=False)  # the model is never read
    assert p.returncode == 2 and "is not UTF-8 text" in p.stderr and "Traceback" not in p.stderr


def test_checkpoint_errors(trained, tmp_path):
    _, out, _ = trained
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    torch.save({"model": {}}, foreign / "ckpt.pt")
    p = run("sample.py", f"--model={foreign}", check=False)
    assert p.returncode != 0 and "not a minigpt checkpoint" in p.stderr
    truncated = tmp_path / "trunc"
    truncated.mkdir()
    (truncated / "ckpt.pt").write_bytes((out / "ckpt.pt").read_bytes()[:5000])
    p = run("sample.py", f"--model={truncated}", check=False)
    assert p.returncode != 0 and "truncated or corrupt" in p.stderr and "Traceback" not in p.stderr


def test_unknown_prompt_character_and_small_dataset(trained, tmp_path):
    _, out, _ = trained
    p = run("sample.py", f"--model={out}", "--start=Zebra\u00e9", check=False)
    assert p.returncode != 0 and "not in this model's character vocabulary" in p.stderr
    (tmp_path / "small.txt").write_text("tiny text " * 5)
    run("data/prepare.py", str(tmp_path / "small.txt"), f"--out={tmp_path / 'small'}")
    p = run("train.py", "--preset=tiny", f"--dataset={tmp_path / 'small'}", f"--out_dir={tmp_path / 'o'}", check=False)
    assert p.returncode != 0 and "fewer than block_size" in p.stderr


def test_one_entry_point_for_every_tool():
    p = run("-m", "minigpt", "--help")
    assert all(name in p.stdout for name in ("train", "sample", "prepare", "params", "evaluate", "attention", "export",
                                             "bpe", "verify"))
    for command, setting in [("train", "--max_iters=1000"), ("sample", "--model='out'"), ("prepare", "--shard_size")]:
        p = run("-m", "minigpt", command, "--help")
        assert setting in p.stdout, command
    bad = run("-m", "minigpt", "parms", check=False)
    assert bad.returncode == 2 and "unknown command 'parms'" in bad.stderr
    p = run("-m", "minigpt", "params", "tiny")  # the same parser as train.py: a misspelt setting is refused
    assert "total" in p.stdout
    bad = run("-m", "minigpt", "params", "tiny", "--n_layr=3", check=False)
    assert bad.returncode == 2 and "did you mean n_layer" in bad.stderr


def test_export_takes_key_space_value_and_its_folder(tmp_path, capsys):
    pytest.importorskip("safetensors")
    from minigpt import checkpoint
    from minigpt.errors import UserError
    from minigpt.model import GPT, GPTConfig
    from minigpt.tools.export import main

    checkpoint.save(tmp_path / "ckpt.pt", GPT(GPTConfig(block_size=8, vocab_size=3, n_layer=1, n_head=1, n_embd=8)),
                    {"kind": "char", "chars": "abc"})
    assert main(["--model", str(tmp_path), "--to", "hf", str(tmp_path / "hf")]) == 0  # `--model DIR` was a folder
    assert (tmp_path / "hf" / "config.json").is_file()
    with pytest.raises(UserError, match="give one folder to write"):
        main(["--model", str(tmp_path)])
