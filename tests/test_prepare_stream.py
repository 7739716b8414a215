"""Streaming preparation: local files and in-memory datasets, worker processes, resume, one line for bad input."""

import json

import pytest

from conftest import needs_gpt2, run
from minigpt import corpus, shards
from minigpt.data import TokenDataset
from minigpt.errors import UserError

pytestmark = needs_gpt2

DOCS = [f"Document {i}: " + "the quick brown fox jumps over the lazy dog. " * (3 + i % 7) + "ünïcödé ✓\n"
        for i in range(60)]


@pytest.fixture(scope="module")
def gpt2():
    from minigpt.tokenizer import TiktokenTokenizer

    return TiktokenTokenizer("gpt2")


def tokens(path) -> dict[str, list[int]]:
    ds = TokenDataset(path)
    return {s: ds.splits[s].tolist() for s in ("train", "val")}


def files(path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(path.glob("*.bin"))}


def test_jsonl_parquet_and_in_memory_dataset_give_the_same_tokens(tmp_path, gpt2):
    import datasets

    ds = datasets.Dataset.from_dict({"id": list(range(len(DOCS))), "text": DOCS})
    ds.to_json(tmp_path / "docs.jsonl")
    (tmp_path / "pq").mkdir()
    ds.select(range(30)).to_parquet(tmp_path / "pq" / "a.parquet")  # a folder of two parquet files
    ds.select(range(30, 60)).to_parquet(tmp_path / "pq" / "b.parquet")
    results = []
    for name, source in [("jsonl", str(tmp_path / "docs.jsonl")), ("parquet", str(tmp_path / "pq")),
                         ("memory", ds), ("iterable", ds.to_iterable_dataset())]:
        meta = shards.prepare(corpus.stream(source), gpt2, tmp_path / name, shard_size=300, val_fraction=0.1)
        assert meta["splits"]["val"]["documents"] == 6 and meta["splits"]["train"]["documents"] == 54
        results.append(tokens(tmp_path / name))
    assert all(r == results[0] for r in results)
    val_docs = gpt2.decode(results[0]["val"]).split("<|endoftext|>")
    assert val_docs[:-1] == [DOCS[i] for i in range(9, 60, 10)]  # held out by document, every 10th
    assert meta["train_bytes"] == sum(len(d.encode()) for i, d in enumerate(DOCS) if i % 10 != 9)


def test_worker_processes_write_the_same_shards(tmp_path, gpt2):
    src = tmp_path / "src"
    src.mkdir()
    for i, d in enumerate(DOCS):
        (src / f"{i:03d}.txt").write_text(d)
    stream = corpus.stream(str(src))
    shards.prepare(stream, gpt2, tmp_path / "one", shard_size=250, num_proc=1, batch_chars=500)
    shards.prepare(stream, gpt2, tmp_path / "two", shard_size=250, num_proc=2, batch_chars=500)
    assert files(tmp_path / "one") == files(tmp_path / "two") and len(files(tmp_path / "one")) > 4


def test_long_text_file_streams_in_pieces(tmp_path, gpt2, monkeypatch):
    monkeypatch.setattr(corpus, "PIECE_CHARS", 200)
    f = tmp_path / "long.txt"
    f.write_text("".join(DOCS))
    pieces = list(corpus.stream(str(f)).pieces())
    assert "".join(p for p, _ in pieces) == "".join(DOCS) and [e for _, e in pieces].count(True) == 1
    meta = shards.prepare(corpus.stream(str(f)), gpt2, tmp_path / "ds", shard_size=1000)
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 1  # one end-of-text


def interrupted(stream: corpus.Stream, after: int) -> corpus.Stream:
    def pieces():
        for i, p in enumerate(stream.pieces()):
            if i == after:
                raise KeyboardInterrupt
            yield p
    return corpus.Stream(pieces, stream.source)


def test_resumed_preparation_equals_uninterrupted(tmp_path, gpt2, num_proc=2):
    import datasets

    stream = corpus.stream(datasets.Dataset.from_dict({"text": DOCS}))
    shards.prepare(stream, gpt2, tmp_path / "straight", shard_size=200, batch_chars=400)
    out = tmp_path / "resumed"
    for after in (17, 41):  # two interruptions, the second after more shards were finished
        with pytest.raises(UserError, match="run the same command again"):
            shards.prepare(interrupted(stream, after), gpt2, out, shard_size=200, num_proc=num_proc, batch_chars=400)
        state = json.loads((out / shards.STATE).read_text())
        assert 0 < state["pieces"] <= after and state["splits"]["train"]["shards"]
    finished = {e["file"]: (out / e["file"]).stat().st_mtime_ns for e in state["splits"]["train"]["shards"]}
    shards.prepare(stream, gpt2, out, shard_size=200, num_proc=num_proc, batch_chars=400)
    assert files(out) == files(tmp_path / "straight")
    assert all((out / f).stat().st_mtime_ns == t for f, t in finished.items())  # finished shards not redone
    assert not (out / shards.STATE).exists() and not list(out.glob("*.partial"))
    assert json.loads((out / "meta.json").read_text())["splits"] == \
        json.loads((tmp_path / "straight" / "meta.json").read_text())["splits"]


def test_resume_with_other_settings_and_prepared_folder_are_refused(tmp_path, gpt2):
    import datasets

    stream = corpus.stream(datasets.Dataset.from_dict({"text": DOCS}))
    with pytest.raises(UserError):
        shards.prepare(interrupted(stream, 30), gpt2, tmp_path / "d", shard_size=200, batch_chars=400)
    with pytest.raises(UserError, match="other settings"):
        shards.prepare(stream, gpt2, tmp_path / "d", shard_size=300)
    shards.prepare(stream, gpt2, tmp_path / "d", shard_size=300, overwrite=True)
    with pytest.raises(UserError, match="already holds"):
        shards.prepare(stream, gpt2, tmp_path / "d", shard_size=300)


def _bad(tmp_path, gpt2, source: str) -> str:
    with pytest.raises(UserError) as e:
        shards.prepare(corpus.stream(source), gpt2, tmp_path / "out")
    return str(e.value)


def test_bad_input_one_clear_line_each(tmp_path, gpt2):
    (tmp_path / "empty.txt").write_text("")
    assert "holds no text" in _bad(tmp_path, gpt2, str(tmp_path / "empty.txt"))
    (tmp_path / "blob.txt").write_bytes(bytes(range(256)) * 10)
    assert "binary" in _bad(tmp_path, gpt2, str(tmp_path / "blob.txt"))
    (tmp_path / "latin.txt").write_bytes("caf\xe9\n".encode("latin-1") * 10)
    assert "not UTF-8" in _bad(tmp_path, gpt2, str(tmp_path / "latin.txt"))
    (tmp_path / "rows.jsonl").write_text('{"content": "hello"}\n' * 5)
    line = _bad(tmp_path, gpt2, str(tmp_path / "rows.jsonl"))
    assert "no column 'text'" in line and "content" in line and "--text_field" in line
    (tmp_path / "fake.parquet").write_bytes(b"\x00\x01 not parquet" * 100)
    assert "cannot be read" in _bad(tmp_path, gpt2, str(tmp_path / "fake.parquet"))
    (tmp_path / "few.txt").write_text("one document only\n")
    assert "too few" in _bad(tmp_path, gpt2, str(tmp_path / "few.txt"))


def test_unknown_hf_dataset_offline_is_one_line(tmp_path):
    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = run("data/prepare.py", "hf:nobody-here/no-such-dataset", "--tokenizer=gpt2", "--out", str(tmp_path / "o"),
               check=False, env=offline)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert "no-such-dataset" in line and ("network" in line or "not found" in line)
