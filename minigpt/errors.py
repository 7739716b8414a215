"""User-facing errors: one clear sentence, a non-zero exit, no traceback."""

from __future__ import annotations

import sys
from typing import Callable


class UserError(Exception):
    """Something the user gave us is wrong; the message says what and how to fix it."""


def run_cli(main: Callable[[list[str]], int | None], argv: list[str] | None = None) -> None:
    """Run a CLI entry point, turning a UserError into one line on stderr and exit status 2."""
    try:
        code = main(sys.argv[1:] if argv is None else argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
