"""Your own byte-level BPE: trained with Hugging Face tokenizers, encoded by tiktoken, carried by its spec."""

import pytest
from hypothesis import given, settings, strategies as st

from conftest import TEXT, run
from minigpt import tokenizer
from minigpt.errors import UserError

CORPUS = TEXT + "Unicode: naïve café — 日本語のテキスト, emoji 🎉🎉, numbers 12345 678.\n" * 20


@pytest.fixture(scope="module")
def bpe():
    return tokenizer.train_bpe([CORPUS[i:i + 500] for i in range(0, len(CORPUS), 500)], vocab_size=400)


def test_trained_vocabulary_is_bytes_then_merges(bpe):
    assert bpe.vocab_size == 400 and bpe.eot_id == 399
    assert bpe.tokens[:256] == [bytes([b]) for b in range(256)]
    assert len(set(bpe.tokens)) == 399 and b" speak" in bpe.tokens  # frequent words became tokens
    assert len(bpe.encode(TEXT)) < len(TEXT.encode()) / 2  # and it compresses


def test_tiktoken_encoding_matches_hugging_face():
    """tiktoken with the converted ranks splits text into the same tokens as HF's own trained BPE."""
    hf = tokenizer.train_hf([CORPUS], vocab_size=400)
    bpe = tokenizer.from_hf(hf, tokenizer.PATTERNS["gpt4"])
    to_byte = tokenizer._unicode_to_byte()
    for sample in (CORPUS[:3000], "A naïve speaker, 12345 ;-) 日本\n\n  x"):
        hf_tokens = [bytes(to_byte[c] for c in t) for t in hf.encode(sample).tokens]
        assert hf_tokens == [bpe.tokens[i] for i in bpe.encode(sample)]


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_round_trip_any_unicode(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


def test_spec_is_self_contained(bpe, tmp_path):
    again = tokenizer.from_spec(bpe.spec())
    assert again.encode(CORPUS) == bpe.encode(CORPUS) and again.eot_id == bpe.eot_id
    bpe.save(tmp_path / "tok.json")
    assert tokenizer.build(str(tmp_path / "tok.json")).encode(CORPUS) == bpe.encode(CORPUS)


def test_gpt2_pattern_trains_too():
    tok = tokenizer.train_bpe([CORPUS], vocab_size=300, pattern="gpt2")
    assert tok.decode(tok.encode(CORPUS)) == CORPUS


def test_bad_input():
    with pytest.raises(UserError, match="at least 256 byte tokens"):
        tokenizer.train_bpe([CORPUS], vocab_size=256)
    with pytest.raises(UserError, match="does not exist"):
        tokenizer.build("missing_tokenizer.json")


def test_cli_train_then_prepare_then_train(tmp_path, corpus_file):
    """train a BPE -> prepare shards with it -> the checkpoint carries it (sampling needs nothing else)."""
    out = tmp_path / "tok.json"
    run("-m", "minigpt.tokenizer", "train", "--input", str(corpus_file), "--vocab_size=300", "--out", str(out))
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(10):
        (docs / f"{i}.txt").write_text(TEXT[i * 300:(i + 1) * 3000])
    run("data/prepare.py", str(docs), "--tokenizer", str(out), "--out", str(tmp_path / "ds"), "--shard_size=2000")
    run("train.py", "--preset=tiny", f"--dataset={tmp_path / 'ds'}", f"--out_dir={tmp_path / 'run'}", "--max_iters=2",
        "--eval_iters=1", "--batch_size=2", "--plot=false", "--device=cpu")
    out.unlink()  # the tokenizer file is gone: the checkpoint alone must do
    proc = run("sample.py", f"--out_dir={tmp_path / 'run'}", "--max_new_tokens=5", "--num_samples=1", "--device=cpu")
    assert proc.returncode == 0
    bad = run("-m", "minigpt.tokenizer", "train", "--input", str(corpus_file), "--vocab_size=100", "--out",
              str(out), check=False)
    assert bad.returncode == 2 and "257" in bad.stderr and "Traceback" not in bad.stderr
