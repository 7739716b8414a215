"""Atomic writes: the old file or the new one, never half of one, with the permissions a plain open() gives."""

import os
import stat

import pytest

from minigpt.fileio import atomic_open, atomic_write_bytes, atomic_write_json


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    """Set the process umask for one test, restoring it afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_new_files_respect_the_umask_like_open(tmp_path, umask, mask):
    """Bug 8: mkstemp made every atomically written file (meta.json, ckpt.pt, loss.png, ...) mode 0600."""
    umask(mask)
    with open(tmp_path / "plain.txt", "w") as f:
        f.write("x")
    atomic_write_json(tmp_path / "meta.json", {"a": 1})
    atomic_write_bytes(tmp_path / "ckpt.pt", b"weights")
    assert mode(tmp_path / "meta.json") == mode(tmp_path / "ckpt.pt") == mode(tmp_path / "plain.txt") == 0o666 & ~mask


def test_replacing_a_file_keeps_its_mode(tmp_path, umask):
    """Like open(path, 'w') on an existing file: a file the user made private stays private."""
    umask(0o022)
    path = tmp_path / "ckpt.pt"
    path.write_bytes(b"old")
    path.chmod(0o600)
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new" and mode(path) == 0o600


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "meta.json"
    atomic_write_json(path, {"old": True})
    with pytest.raises(RuntimeError):
        with atomic_open(path, "w") as f:
            f.write('{"new": ')
            raise RuntimeError("interrupted half way")
    assert path.read_text() == '{\n  "old": true\n}\n' and sorted(os.listdir(tmp_path)) == ["meta.json"]
