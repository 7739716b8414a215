"""A setting's declaration: its default, one line of help, and the values it accepts.

    seed: int = opt(1337, "random seed", range="[0, 4294967295]")      # interval: [ ] closed, ( ) open
    beta2: float = opt(0.99, "AdamW beta2", range="[0, 1)")
    on_nan: str = opt("stop", "on a NaN/inf loss: stop or skip", choices=("stop", "skip"))

`--help` prints the choices and range beside the help (`config.usage`), the one parser (`config.build_config`)
refuses a value outside them in one line, for the command line and TOML files alike, and `check(obj)` tests a
built settings object against its declarations (GPTConfig does, in `__post_init__`). Floats must be finite
(NaN and infinity are refused), and `inf` as a bound only means "no bound". A setting of Optional type also
accepts None, which is never range-checked ("unset"). Rules joining two settings stay with their user (e.g.
n_embd divisible by n_head, in GPTConfig; cooldown between warmup and decay, in the trainer).
This module imports nothing of minigpt, so model.py can declare GPTConfig with it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import field
from typing import Any

_INTERVAL = re.compile(r"^\s*([\[(])\s*([-+\w.]+)\s*,\s*([-+\w.]+)\s*([\])])\s*$")


@dataclasses.dataclass(frozen=True)
class Interval:
    text: str  # as declared, e.g. "[0, 1)"
    low: float
    high: float
    low_open: bool
    high_open: bool

    def __contains__(self, x: float) -> bool:
        above = x > self.low if self.low_open else x >= self.low
        below = x < self.high if self.high_open else x <= self.high
        return above and below


def interval(text: str) -> Interval:
    """The Interval a text such as "[0, 1)" declares; a malformed one is a programming error, raised when the
    field is declared (at import)."""
    m = _INTERVAL.match(text)
    if not m:
        raise ValueError(f"range {text!r} is not an interval such as '[0, 1)' or '(0, inf)'")
    low, high = float(m[2]), float(m[3])
    if not low <= high:
        raise ValueError(f"range {text!r} is empty")
    return Interval(f"{m[1]}{m[2]}, {m[3]}{m[4]}", low, high, m[1] == "(", m[4] == ")")


def opt(default: Any, help: str, *, choices: tuple | None = None, range: str | None = None):
    """A dataclass field with its help text (shown by `--help`) and, optionally, the values it accepts."""
    meta: dict[str, Any] = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if range is not None:
        meta["range"] = interval(range)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def problem(f: dataclasses.Field, value: Any) -> str | None:
    """What is wrong with `value` for the declared field `f` ("must be ..."), or None when it is accepted."""
    if isinstance(value, list):
        return next((p for p in (problem(f, v) for v in value) if p), None)
    if value is None:
        return None
    choices, rng = f.metadata.get("choices"), f.metadata.get("range")
    if choices is not None and value not in choices:
        return f"must be one of {', '.join(map(str, choices))}"
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if rng is not None and isinstance(value, (int, float)) and not isinstance(value, bool) and value not in rng:
        return f"must be in {rng.text}"
    return None


def describe(f: dataclasses.Field) -> str:
    """The accepted values as `--help` shows them: "stop | skip", "in [0, 1)", or ""."""
    if "choices" in f.metadata:
        return " | ".join(map(str, f.metadata["choices"]))
    if "range" in f.metadata:
        return f"in {f.metadata['range'].text}"
    return ""


def check(obj: Any) -> None:
    """Raise ValueError naming the first field of the dataclass `obj` whose value its declaration refuses."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if (p := problem(f, value)) is not None:
            raise ValueError(f"{f.name} {p}, got {value!r}")
