"""Atomic file writes: readers see the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import secrets
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from .errors import UserError


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temp file beside `path`; on success fsync it and rename it over `path`, else delete it.

    The file gets the permissions a plain open() would give it: an existing file's mode, else 0666 less
    the umask (os.open applies it; tempfile.mkstemp would make every file 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:  # hidden, beside the file: `.NAME.<random>.tmp`, the name the stale-temp sweeps look for
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            pass
    try:
        with os.fdopen(fd, mode) as f:
            if path.exists():
                os.fchmod(f.fileno(), stat.S_IMODE(path.stat().st_mode))
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_json(path: str | Path, obj) -> None:
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def save_png(fig, path: str | Path, what: str = "the figure") -> Path:
    """Write a matplotlib figure as a PNG atomically and close it; an unwritable path is one line."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format="png", dpi=100)
    except OSError as e:
        raise UserError(f"cannot write {what} to {path} ({e.strerror}); choose another path") from None
    finally:
        plt.close(fig)
    return path
