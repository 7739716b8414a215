"""Your own byte-level BPE: trained with Hugging Face tokenizers, encoded by tiktoken, carried by its spec."""

import pytest
from hypothesis import given, settings, strategies as st

from conftest import TEXT, run
from minigpt import bpe, tokenizer
from minigpt.errors import UserError

CORPUS = TEXT + "Unicode: naïve café — 日本語のテキスト, emoji 🎉🎉, numbers 12345 678.\n" * 20


@pytest.fixture(scope="module")
def trained():
    return bpe.train_bpe([CORPUS[i:i + 500] for i in range(0, len(CORPUS), 500)], vocab_size=400)


def test_trained_vocabulary_is_bytes_then_merges(trained):
    assert trained.vocab_size == 400 and trained.eot_id == 399
    assert trained.tokens[:256] == [bytes([b]) for b in range(256)]
    assert len(set(trained.tokens)) == 399 and b" speak" in trained.tokens  # frequent words became tokens
    assert len(trained.encode(TEXT)) < len(TEXT.encode()) / 2  # and it compresses


def test_tiktoken_encoding_matches_hugging_face():
    """tiktoken with the converted ranks splits text into the same tokens as HF's own trained BPE."""
    hf = bpe.train_hf([CORPUS], vocab_size=400)
    ours = bpe.from_hf(hf, bpe.PATTERNS["gpt4"])
    to_byte = bpe._unicode_to_byte()
    for sample in (CORPUS[:3000], "A naïve speaker, 12345 ;-) 日本\n\n  x"):
        hf_tokens = [bytes(to_byte[c] for c in t) for t in hf.encode(sample).tokens]
        assert hf_tokens == [ours.tokens[i] for i in ours.encode(sample)]


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_round_trip_any_unicode(trained, text):
    assert trained.decode(trained.encode(text)) == text


def test_spec_is_self_contained(trained, tmp_path):
    again = tokenizer.from_spec(trained.spec())
    assert again.encode(CORPUS) == trained.encode(CORPUS) and again.eot_id == trained.eot_id
    trained.save(tmp_path / "tok.json")
    assert tokenizer.build(str(tmp_path / "tok.json")).encode(CORPUS) == trained.encode(CORPUS)


def test_the_split_pattern_is_the_one_asked_for():
    """GPT-4's pattern cuts digits in groups of at most 3 and GPT-2's does not, so only a gpt2-pattern BPE
    can learn a 5-digit token; and each tokenizer encodes with the pattern it was trained with."""
    numbers = "the year 12345 and 67890, again 12345 or 67890.\n" * 200
    longest = {}
    for pattern in ("gpt2", "gpt4"):
        tok = bpe.train_bpe([numbers], vocab_size=300, pattern=pattern)
        assert tok.pat_str == bpe.PATTERNS[pattern] and tok.decode(tok.encode(numbers)) == numbers
        longest[pattern] = max(len(t.strip()) for t in tok.tokens if t.strip().isdigit())
    assert longest == {"gpt2": 5, "gpt4": 3}


def test_bad_input():
    with pytest.raises(UserError, match="at least 256 byte tokens"):
        bpe.train_bpe([CORPUS], vocab_size=256)
    with pytest.raises(UserError, match="does not exist"):
        tokenizer.build("missing_tokenizer.json")


def test_empty_corpus_is_refused_and_writes_nothing(tmp_path):
    """Bug 7: an empty corpus trained a 257-token tokenizer (bytes only) and wrote it."""
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.jsonl").write_text('{"text": ""}\n' * 3)
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a.txt").write_text("")
    out = tmp_path / "tok.json"
    for source in ("empty.txt", "blank.jsonl", "folder"):
        with pytest.raises(UserError, match="holds no text"):
            bpe.main([f"--input={tmp_path / source}", "--vocab_size=300", f"--out={out}"])
        assert not out.exists()
    proc = run("-m", "minigpt", "bpe", f"--input={tmp_path / 'empty.txt'}", "--vocab_size=300", f"--out={out}",
               check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and not out.exists()
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: ") and "empty.txt" in line and "holds no text" in line


def test_cli_train_then_prepare_then_train(tmp_path, corpus_file):
    """train a BPE -> prepare shards with it -> the checkpoint carries it (sampling needs nothing else)."""
    import torch

    out = tmp_path / "tok.json"
    run("-m", "minigpt", "bpe", f"--input={corpus_file}", "--vocab_size=300", f"--out={out}")
    trained = tokenizer.build(str(out))
    assert trained.vocab_size == 300 and trained.pat_str == bpe.PATTERNS["gpt4"]
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(10):
        (docs / f"{i}.txt").write_text(TEXT[i * 300:(i + 1) * 3000])
    run("data/prepare.py", str(docs), f"--tokenizer={out}", f"--out={tmp_path / 'ds'}", "--shard_size=2000")
    run("train.py", "--preset=tiny", f"--dataset={tmp_path / 'ds'}", f"--out_dir={tmp_path / 'run'}", "--max_iters=2",
        "--eval_iters=1", "--batch_size=2", "--plot=false", "--device=cpu")
    out.unlink()  # the tokenizer file is gone: the checkpoint alone must do
    state = torch.load(tmp_path / "run" / "ckpt.pt", map_location="cpu", weights_only=False)
    assert state["tokenizer"] == trained.spec()
    proc = run("sample.py", f"--model={tmp_path / 'run'}", "--max_new_tokens=5", "--num_samples=1", "--device=cpu")
    assert "Traceback" not in proc.stderr
    bad = run("-m", "minigpt", "bpe", f"--input={corpus_file}", "--vocab_size=100", f"--out={out}", check=False)
    assert bad.returncode == 2 and "257" in bad.stderr and "Traceback" not in bad.stderr
    missing = run("-m", "minigpt", "bpe", "--vocab_size=300", check=False)
    assert missing.returncode == 2 and "--input=SOURCE" in missing.stderr
