"""The preparation pipeline: every source, the split, worker processes, resume, one line for bad input."""

import json
import os

import pytest

from conftest import needs_gpt2, run
from minigpt import corpus, prepare, shards
from minigpt.data import TokenDataset
from minigpt.errors import UserError
from minigpt.prepare import STATE, char_tokenizer, prepare_dataset

DOCS = [f"Document {i}: " + "the quick brown fox jumps over the lazy dog. " * (3 + i % 7) + "ünïcödé ✓\n"
        for i in range(60)]
EOT = "<|endoftext|>"
SPLITS = ("train", "val")


@pytest.fixture(scope="module")
def gpt2():
    from minigpt.tokenizer import TiktokenTokenizer

    return TiktokenTokenizer("gpt2")


def tokens(path) -> dict[str, list[int]]:
    ds = TokenDataset(path)
    return {s: ds.splits[s][:].tolist() for s in ("train", "val")}


def texts(path) -> dict[str, str]:
    ds = TokenDataset(path)
    return {s: ds.tokenizer.decode(ids) for s, ids in tokens(path).items()}


def files(path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(path.glob("*.bin"))}


def numbered_lines(first: int, n: int) -> str:
    return "".join(f"{i:06d} line of text\n" for i in range(first, first + n))


@pytest.mark.parametrize("tokenizer", ["char", pytest.param("gpt2", marks=needs_gpt2)])
def test_split_ranges_are_contiguous_source_text(tmp_path, monkeypatch, tokenizer):
    """Bug #9: no split may join text that was not adjacent in the source, except at an end-of-text."""
    monkeypatch.setattr(corpus, "PIECE_CHARS", 200)  # many pieces per file
    monkeypatch.setattr(prepare, "LONG_DOC", 2000)
    src = tmp_path / "src"
    src.mkdir()
    sources = [numbered_lines(k * 10_000, 300 if k < 3 else 5) for k in range(23)]  # 3 long files, 20 short
    for k, text in enumerate(sources):
        (src / f"{k:02d}.txt").write_text(text)
    source = corpus.open_source(str(src))
    tok = char_tokenizer(source) if tokenizer == "char" else prepare.tokenizers.build("gpt2")
    assert tok.eot_id is not None  # several documents: a char vocabulary gets an end-of-text id too
    prepare_dataset(source, tok, tmp_path / "ds", shard_size=1000)
    got = texts(tmp_path / "ds")
    for split, text in got.items():
        assert text.endswith(EOT)
        for part in text.split(EOT)[:-1]:  # every range is one piece of one source file
            assert part and any(part in s for s in sources), (split, part[:80])
    for text in sources[:3]:  # a long file: its first 90% of characters train, the rest val
        cut = int(len(text) * 0.9)
        assert text[:cut] + EOT in got["train"] and text[cut:] + EOT in got["val"]
    assert [s for s in sources[3:] if s + EOT in got["val"]] == [sources[k] for k in (9, 19)]  # documents 9, 19


@needs_gpt2
def test_one_long_text_is_cut_once(tmp_path, gpt2, monkeypatch):
    monkeypatch.setattr(corpus, "PIECE_CHARS", 200)
    f = tmp_path / "long.txt"
    text = numbered_lines(0, 500)
    f.write_text(text)
    assert "".join(corpus.open_source(str(f)).documents().__next__().pieces()) == text
    meta = prepare_dataset(corpus.open_source(str(f)), gpt2, tmp_path / "ds", shard_size=1000)
    cut = int(len(text) * 0.9)
    # the pieces were cut where no token changes: the ids are those of the whole text's two parts
    assert tokens(tmp_path / "ds") == {"train": gpt2.encode(text[:cut]) + [gpt2.eot_id],
                                       "val": gpt2.encode(text[cut:]) + [gpt2.eot_id]}
    assert meta["train_bytes"] + meta["val_bytes"] == len(text.encode())


@needs_gpt2
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
        meta = prepare_dataset(corpus.open_source(source), gpt2, tmp_path / name, shard_size=300)
        assert meta["splits"]["val"]["documents"] == 6 and meta["splits"]["train"]["documents"] == 54
        results.append(tokens(tmp_path / name))
    assert all(r == results[0] for r in results)
    val_docs = gpt2.decode(results[0]["val"]).split(EOT)
    assert val_docs[:-1] == [DOCS[i] for i in range(9, 60, 10)]  # held out by document, every 10th
    assert meta["train_bytes"] == sum(len(d.encode()) for i, d in enumerate(DOCS) if i % 10 != 9)


@pytest.mark.parametrize("tokenizer", ["char", pytest.param("gpt2", marks=needs_gpt2)])
def test_worker_processes_write_the_same_shards(tmp_path, tokenizer):
    src = tmp_path / "src"
    src.mkdir()
    for i, d in enumerate(DOCS):
        (src / f"{i:03d}.txt").write_text(d)
    source = corpus.open_source(str(src))
    tok = char_tokenizer(source) if tokenizer == "char" else prepare.tokenizers.build(tokenizer)
    prepare_dataset(source, tok, tmp_path / "one", shard_size=250, num_proc=1, batch_chars=500)
    prepare_dataset(source, tok, tmp_path / "two", shard_size=250, num_proc=2, batch_chars=500)
    assert files(tmp_path / "one") == files(tmp_path / "two") and len(files(tmp_path / "one")) > 4


def interrupted(source: corpus.Source, after: int) -> corpus.Source:
    def documents():
        for i, doc in enumerate(source.documents()):
            if i == after:
                raise KeyboardInterrupt
            yield doc
    return corpus.Source(documents, source.description)


@needs_gpt2
def test_resumed_preparation_equals_uninterrupted(tmp_path, gpt2, num_proc=2):
    import datasets

    source = corpus.open_source(datasets.Dataset.from_dict({"text": DOCS}))
    prepare_dataset(source, gpt2, tmp_path / "straight", shard_size=200, batch_chars=400)
    out = tmp_path / "resumed"
    for after in (17, 41):  # two interruptions, the second after more shards were finished
        with pytest.raises(UserError, match="run the same command again"):
            prepare_dataset(interrupted(source, after), gpt2, out, shard_size=200, num_proc=num_proc, batch_chars=400)
        state = json.loads((out / STATE).read_text())
        assert 0 < state["pieces"] <= after and state["splits"]["train"]["shards"]
    finished = {e["file"]: (out / e["file"]).stat().st_mtime_ns for e in state["splits"]["train"]["shards"]}
    prepare_dataset(source, gpt2, out, shard_size=200, num_proc=num_proc, batch_chars=400)
    assert files(out) == files(tmp_path / "straight")
    assert all((out / f).stat().st_mtime_ns == t for f, t in finished.items())  # finished shards not redone
    assert not (out / STATE).exists() and not list(out.glob("*.partial"))
    assert json.loads((out / "meta.json").read_text())["splits"] == \
        json.loads((tmp_path / "straight" / "meta.json").read_text())["splits"]


class Faults:
    """Raises KeyboardInterrupt at the `at`-th call of any file operation the pipeline makes (a write, flush,
    truncate or close of a shard file, os.fsync / os.replace / os.unlink, a shard's sha256): "before" the
    operation (a write is torn: half its bytes land) or "after" it. `at=0` only counts and names them."""

    def __init__(self, at: int = 0, mode: str = "before"):
        self.at, self.mode, self.names = at, mode, []

    def __call__(self, name, fn, *args, torn=None):
        self.names.append(name)
        hit = len(self.names) == self.at
        if hit and self.mode == "before":
            if torn:
                torn()
            raise KeyboardInterrupt
        out = fn(*args)
        if hit:
            raise KeyboardInterrupt
        return out

    def patch(self, m):
        faults = self

        class File:  # a shard file whose operations are boundaries
            def __init__(self, f):
                self._f = f

            def write(self, data):
                return faults("write", self._f.write, data, torn=lambda: self._f.write(bytes(data)[:len(data) // 2]))

            def flush(self):
                return faults("flush", self._f.flush)

            def truncate(self, *a):
                return faults("truncate", self._f.truncate, *a)

            def close(self):
                return faults("close", self._f.close)

            def __getattr__(self, name):
                return getattr(self._f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self._f.close()

        real_open = open
        m.setattr(shards, "open", lambda *a, **k: File(real_open(*a, **k)), raising=False)
        real_sha = shards.file_sha256
        m.setattr(shards, "file_sha256", lambda *a: faults("sha256", real_sha, *a))
        m.setattr(os, "fsync", lambda fd: faults("os.fsync", lambda _: None, fd))  # a boundary, not a slow disk flush
        for name in ("replace", "unlink"):
            real = getattr(os, name)
            m.setattr(os, name, lambda *a, _real=real, _name=name: faults(f"os.{_name}", _real, *a))


def twenty_documents(tmp_path):
    """A folder source of DOCS[:20], one file each, and its char tokenizer."""
    src = tmp_path / "src"
    src.mkdir()
    for i, d in enumerate(DOCS[:20]):
        (src / f"{i:03d}.txt").write_text(d)
    source = corpus.open_source(str(src))
    return source, char_tokenizer(source)


@pytest.mark.parametrize("mode, twice", [("before", False), ("after", False), ("before", True)])
def test_an_interrupt_at_any_file_operation_resumes_to_the_same_dataset(tmp_path, monkeypatch, mode, twice):
    """Bug 1: Ctrl-C between a batch's train and val writes gave a resumed dataset with that batch twice, and
    one while a finished shard was hashed gave `ValueError: flush of closed file` and a folder no rerun would
    take. Interrupt at every file operation in turn (`twice`: and the rerun too, at one of its first
    operations, where it rolls the files back); the next run must give the uninterrupted run's files."""
    source, tok = twenty_documents(tmp_path)
    kw = dict(shard_size=800, val_fraction=0.3, batch_chars=1200)  # 5 train and 3 val shards, batches of both
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # durability is not what is tested; fsync is slow here
    count = Faults()
    with monkeypatch.context() as m:
        count.patch(m)
        prepare_dataset(source, tok, tmp_path / "straight", **kw)
    straight = files(tmp_path / "straight")
    want = [sum(len(v) - shards.HEADER.size for k, v in straight.items() if k.startswith(s)) // 2 for s in SPLITS]
    assert sorted(straight) == [f"{s}_{i:06d}.bin" for s, n in (("train", 5), ("val", 3)) for i in range(n)]
    assert len(count.names) > 90

    def interrupted_run(out, faults) -> str | None:
        """A run interrupted by `faults`: None if it stopped as it should, else what went wrong."""
        try:
            with monkeypatch.context() as m:
                faults.patch(m)
                prepare_dataset(source, tok, out, **kw)
        except (UserError, KeyboardInterrupt):
            return None  # "interrupted ...; run the same command again", or Ctrl-C once meta.json is written
        except Exception as e:
            return f"{type(e).__name__}: {e}"
        return None if len(faults.names) < faults.at else "the interrupt was lost"

    failures = []
    for at in range(1, len(count.names) + 1):
        out = tmp_path / f"at{at}"
        where = f"{at} ({count.names[at - 1]})"
        problem = interrupted_run(out, Faults(at, mode))
        if problem is None and twice and not (out / "meta.json").is_file():
            problem = interrupted_run(out, Faults(1 + at % 7, mode))
            where += f", then {1 + at % 7}"
        if problem:
            failures.append(f"{where}: {problem}")
            continue
        try:
            prepare_dataset(source, tok, out, **kw)
        except UserError as e:
            if not (out / "meta.json").is_file():  # refused only because it is whole already
                failures.append(f"{where}: rerun refused: {e}")
                continue
        got = files(out)
        if got != straight:
            n = [sum(len(v) - shards.HEADER.size for k, v in got.items() if k.startswith(s)) // 2 for s in SPLITS]
            failures.append(f"{where}: resumed to {n[0]} train and {n[1]} val tokens, not {want[0]} and {want[1]}")
        elif sorted(p.name for p in out.iterdir()) != sorted([*straight, "meta.json"]):
            failures.append(f"{where}: leftovers {sorted(p.name for p in out.iterdir())}")
        else:
            shards.verify(out)
    assert not failures, f"{len(failures)} of {len(count.names)} interrupt points:\n" + "\n".join(failures)


@needs_gpt2
def test_resume_with_other_settings_and_prepared_folder_are_refused(tmp_path, gpt2):
    import datasets

    source = corpus.open_source(datasets.Dataset.from_dict({"text": DOCS}))
    with pytest.raises(UserError):
        prepare_dataset(interrupted(source, 30), gpt2, tmp_path / "d", shard_size=200, batch_chars=400)
    with pytest.raises(UserError, match="other settings"):
        prepare_dataset(source, gpt2, tmp_path / "d", shard_size=300)
    prepare_dataset(source, gpt2, tmp_path / "d", shard_size=300, overwrite=True)
    with pytest.raises(UserError, match="already holds"):
        prepare_dataset(source, gpt2, tmp_path / "d", shard_size=300)


def test_overwrite_removes_only_what_a_preparation_wrote(tmp_path, capsys):
    """Bug 3: --overwrite deleted every *.bin in --out (a user's my_model.bin too). It deletes the shards,
    meta.json, the progress record and their temporaries, leaves every other file alone and says so."""
    source, tok = twenty_documents(tmp_path)
    out = tmp_path / "ds"
    prepare_dataset(source, tok, out, shard_size=300)
    assert len(files(out)) > 10
    mine = {"my_model.bin": b"\x00weights", "train.bin": b"a user's file", "notes.txt": b"keep me",
            "val_000002.bin.bak": b"a copy"}
    for name, data in mine.items():
        (out / name).write_bytes(data)
    (out / "runs").mkdir()
    (out / ".meta.json.1a2b3c4d.tmp").write_text("{")  # a temporary of a killed meta.json write: ours
    capsys.readouterr()
    meta = prepare_dataset(source, tok, out, shard_size=2000, overwrite=True)
    new = {f"{s}_{i:06d}.bin" for s in ("train", "val") for i in range(len(meta["splits"][s]["shards"]))}
    assert sorted(p.name for p in out.iterdir()) == sorted([*new, "meta.json", *mine, "runs"])
    assert all((out / name).read_bytes() == data for name, data in mine.items())
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if "--overwrite" in ln]
    assert "left alone 5 file(s)" in line and "my_model.bin" in line and "runs" in line
    shards.verify(out)

    # a file with a shard's name that is not a shard is never overwritten nor deleted: refused, nothing touched
    (out / "val_000007.bin").write_bytes(b"not a shard at all")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(UserError, match="val_000007.bin has the name of a minigpt shard but is not one"):
        prepare_dataset(source, tok, out, shard_size=300, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    (out / "val_000007.bin").unlink()

    # train.bin / val.bin go only with the old single-file dataset they belong to
    old = tmp_path / "old"
    old.mkdir()
    (old / "meta.json").write_text(json.dumps({"format": "minigpt-tokens", "dtype": "uint16"}))
    for name in ("train.bin", "val.bin", "my_model.bin"):
        (old / name).write_bytes(b"\x01\x02")
    prepare_dataset(source, tok, old, shard_size=2000, overwrite=True)
    assert sorted(p.name for p in old.iterdir()) == sorted([*new, "meta.json", "my_model.bin"])

    # a meta.json that is not a minigpt dataset's is not replaced
    other = tmp_path / "other"
    other.mkdir()
    (other / "meta.json").write_text('{"project": "something else"}')
    for overwrite in (False, True):
        with pytest.raises(UserError, match="not the meta.json of a minigpt dataset"):
            prepare_dataset(source, tok, other, shard_size=2000, overwrite=overwrite)
    assert sorted(p.name for p in other.iterdir()) == ["meta.json"]


def _bad(tmp_path, source: str, tokenizer: str = "char") -> str:
    with pytest.raises(UserError) as e:
        prepare.prepare(prepare.PrepareConfig(source=source, tokenizer=tokenizer, out=str(tmp_path / "out")))
    return str(e.value)


@pytest.mark.parametrize("tokenizer", ["char", pytest.param("gpt2", marks=needs_gpt2)])
def test_empty_sources_are_one_line_and_leave_nothing(tmp_path, tokenizer):
    """Bug 7: an empty .jsonl said "cannot be read as json (StopIteration)"; every empty source says it holds no
    text, and nothing is left in --out."""
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "blank.jsonl").write_text('{"text": ""}\n' * 3)
    (tmp_path / "folder").mkdir()
    for name in ("a.txt", "b.txt"):
        (tmp_path / "folder" / name).write_text("")
    for source in ("empty.txt", "empty.jsonl", "blank.jsonl", "folder"):
        line = _bad(tmp_path, str(tmp_path / source), tokenizer)
        assert "holds no text" in line and source in line, line
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_bad_input_one_clear_line_each(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    assert "holds no text" in _bad(tmp_path, str(tmp_path / "empty.txt"))
    (tmp_path / "blob.txt").write_bytes(bytes(range(256)) * 10)
    assert "binary" in _bad(tmp_path, str(tmp_path / "blob.txt"))
    (tmp_path / "late_nul.txt").write_bytes(b"some text\n" * 2000 + b"\0" + b"more text\n")  # past 8 KB
    assert "binary" in _bad(tmp_path, str(tmp_path / "late_nul.txt"))
    (tmp_path / "latin.txt").write_bytes("caf\xe9\n".encode("latin-1") * 10)
    assert "not UTF-8" in _bad(tmp_path, str(tmp_path / "latin.txt"))
    (tmp_path / "rows.jsonl").write_text('{"content": "hello"}\n' * 5)
    line = _bad(tmp_path, str(tmp_path / "rows.jsonl"))
    assert "no column 'text'" in line and "content" in line and "--text_field" in line
    (tmp_path / "fake.parquet").write_bytes(b"\x00\x01 not parquet" * 100)
    assert "cannot be read" in _bad(tmp_path, str(tmp_path / "fake.parquet"))
    (tmp_path / "few").mkdir()
    for i in range(3):  # three short documents: none is the 10th
        (tmp_path / "few" / f"{i}.txt").write_text(f"document {i}\n")
    assert "too little text for a validation split" in _bad(tmp_path, str(tmp_path / "few"))


def test_cli_prepares_and_refuses_in_one_line(tmp_path, corpus_file):
    out = tmp_path / "ds"
    (tmp_path / "empty.txt").write_text("")
    proc = run("data/prepare.py", str(corpus_file), f"--out={out}")
    assert "vocabulary" in proc.stdout and TokenDataset(out).meta["source"].startswith("file:")
    for args, words in [([str(corpus_file), f"--out={out}"], "--overwrite"),
                        ([str(corpus_file), "--out", str(out)], "--overwrite"),  # `--key value` is --key=value
                        ([str(corpus_file), f"--out={tmp_path / 'x'}", "--val_fraction=1"], "(0, 1)"),
                        ([str(tmp_path / "empty.txt"), f"--out={tmp_path / 'x'}"], "holds no text"),
                        ([str(corpus_file), "--tokenizr=gpt2"], "tokenizer")]:
        bad = run("data/prepare.py", *args, check=False)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
        assert words in bad.stderr.strip().splitlines()[-1]


def test_unknown_hf_dataset_offline_is_one_line(tmp_path):
    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = run("data/prepare.py", "hf:nobody-here/no-such-dataset", "--tokenizer=gpt2", f"--out={tmp_path / 'o'}",
               check=False, env=offline)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert "no-such-dataset" in line and ("network" in line or "not found" in line)
