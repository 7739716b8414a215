"""Typed settings and the one place where a TOML file and command-line overrides are merged into them.

Every setting is a dataclass field declared with `opt(default, help, choices=..., range=...)`
(`minigpt.settings`): `--help` shows what it accepts, and `build_config` refuses any other value in one
line, whether it came from the command line or a file. A command declares which sections it reads (e.g.
{"model": GPTConfig, "train": TrainConfig}); keys are flat on the command line (`--key=value` or
`--key value`) and in TOML files (`n_layer = 4`), and may also be grouped under `[model]`, `[train]`
tables. Precedence, lowest first: dataclass defaults < `preset` < TOML file < command line. A setting
renamed since an earlier version is listed in its section's RENAMED, and giving the old name says the new.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .errors import UserError
from .model import GPTConfig
from .settings import describe, opt, problem  # opt: every command declares its settings with config.opt

# Ranges used by many settings
COUNT = "[1, inf)"  # a positive integer
NONNEG = "[0, inf)"  # zero or more (integers and floats)


# Named model shapes. `tiny` trains in seconds on a CPU (tests use it); `baby` is nanoGPT's CPU
# shakespeare_char config; the gpt2 family matches OpenAI's released checkpoints; gpt3-* the GPT-3 paper.
_GPT2 = dict(vocab_size=50257, bias=True, block_size=1024)
_GPT3 = dict(_GPT2, block_size=2048)  # GPT-3 paper, table 2.1: too big to train here, for `minigpt params`


def _shape(base: dict, n_layer: int, n_head: int, n_embd: int) -> dict:
    return dict(base, n_layer=n_layer, n_head=n_head, n_embd=n_embd)


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(n_layer=2, n_head=2, n_embd=32, block_size=32, dropout=0.0, bias=False),
    "baby": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0, bias=False),
    "shakespeare_char": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2, bias=False),
    "gpt2": _shape(_GPT2, 12, 12, 768),
    "gpt2-medium": _shape(_GPT2, 24, 16, 1024),
    "gpt2-large": _shape(_GPT2, 36, 20, 1280),
    "gpt2-xl": _shape(_GPT2, 48, 25, 1600),
    # The paper's table does not multiply out twice: 13B's d_model 5140 is 40 heads x 128 = 5120, and
    # XL's 24 heads of 128 do not make d_model 2048; we keep d_model and head size 128, so 16 heads.
    "gpt3-small": _shape(_GPT3, 12, 12, 768),
    "gpt3-medium": _shape(_GPT3, 24, 16, 1024),
    "gpt3-large": _shape(_GPT3, 24, 16, 1536),
    "gpt3-xl": _shape(_GPT3, 24, 16, 2048),
    "gpt3-2.7b": _shape(_GPT3, 32, 32, 2560),
    "gpt3-6.7b": _shape(_GPT3, 32, 32, 4096),
    "gpt3-13b": _shape(_GPT3, 40, 40, 5120),
    "gpt3": _shape(_GPT3, 96, 96, 12288),  # 175B
}


@dataclass
class TrainConfig:
    out_dir: str = opt("out", "folder for checkpoints and logs")
    dataset: str = opt("shakespeare", "name of a prepared dataset under data/, or a path to one")
    align_to_doc: bool = opt(False, "start training windows right after an end-of-text token (document starts)")
    model: str = opt("", "the weights a fresh run starts from (fine-tuning): a checkpoint folder or .pt file, a GPT-2 "
                         "name (gpt2, gpt2-medium, gpt2-large, gpt2-xl) or a local HF folder; empty: random weights")
    resume: bool = opt(False, "continue from out_dir/ckpt.pt if it exists, else start fresh (from --model if given)")
    overwrite: bool = opt(False, "allow a fresh run to replace the checkpoint already in out_dir")
    keep_last: int = opt(0, "also keep the last N checkpoints as ckpt_<iter>.pt; 0 keeps only ckpt.pt/best.pt",
                          range=NONNEG)
    batch_size: int = opt(24, "sequences per micro-batch", range=COUNT)
    gradient_accumulation_steps: int = opt(1, "micro-batches per optimizer step", range=COUNT)
    max_iters: int = opt(1000, "optimizer steps to train for", range=NONNEG)
    learning_rate: float = opt(1.5e-3, "peak learning rate", range=NONNEG)
    min_lr: float = opt(1.5e-4, "learning rate at the end of the cosine decay", range=NONNEG)
    warmup_iters: int = opt(50, "steps of linear warmup from 0 to learning_rate", range=NONNEG)
    lr_decay_iters: int = opt(1000, "step at which the cosine decay reaches min_lr", range=NONNEG)
    decay_lr: bool = opt(True, "use warmup + cosine decay; if false, a constant learning_rate")
    lr_schedule: str = opt("cosine", "after warmup: 'cosine' decay to min_lr at lr_decay_iters, or 'wsd' (warmup-"
                                     "stable-decay): flat, then linear to min_lr over the last cooldown_iters",
                           choices=("cosine", "wsd"))
    cooldown_iters: int = opt(0, "with lr_schedule='wsd': steps of linear decay ending at lr_decay_iters",
                               range=NONNEG)
    max_minutes: float = opt(0.0, "train to a wall-clock budget: stop this many minutes after launch with the "
                                  "checkpoint saved, the schedule timed by warmup_frac and cooldown_frac (max_iters "
                                  "and the *_iters schedule settings then do not apply); 0: train max_iters steps",
                              range=NONNEG)
    warmup_frac: float = opt(0.05, "with max_minutes: share of the training time spent warming up", range="[0, 1]")
    cooldown_frac: float = opt(0.4, "with max_minutes: share of the training time of the final linear cooldown",
                              range="[0, 1]")
    optimizer: str = opt("adamw", "'adamw', or 'muon': Muon for the blocks' weight matrices, AdamW for the rest",
                         choices=("adamw", "muon"))
    muon_lr: float = opt(0.02, "with optimizer='muon': Muon's peak learning rate (follows the same schedule)",
                         range=NONNEG)
    muon_momentum: float = opt(0.95, "with optimizer='muon': Muon's Nesterov momentum", range="[0, 1)")
    muon_weight_decay: float = opt(0.0, "with optimizer='muon': decoupled weight decay on Muon's matrices",
                                   range=NONNEG)
    weight_decay: float = opt(0.1, "AdamW weight decay on 2-D weights (embeddings and matrices)", range=NONNEG)
    beta1: float = opt(0.9, "AdamW beta1", range="[0, 1)")
    beta2: float = opt(0.99, "AdamW beta2", range="[0, 1)")
    grad_clip: float = opt(1.0, "clip the global gradient norm to this value; 0 disables", range=NONNEG)
    eval_interval: int = opt(200, "estimate train/val loss every this many steps", range=COUNT)
    eval_iters: int = opt(20, "batches per loss estimate", range=COUNT)
    eval_only: bool = opt(False, "estimate the losses of out_dir's checkpoint (or, without one, of --model's weights) "
                                 "once and exit; writes nothing")
    log_interval: int = opt(50, "print a log line every this many steps", range=COUNT)
    mfu: bool = opt(True, "probe the CPU's matmul peak at the start (~0.7 s) and log MFU against it")
    always_save_checkpoint: bool = opt(True, "save at every eval, not only when val loss improves")
    fsdp: bool = opt(False, "under torchrun, shard the model with FSDP2 instead of DDP")
    on_nan: str = opt("stop", "on a NaN/inf loss: 'stop' (keep the last good checkpoint) or 'skip' the step",
                      choices=("stop", "skip"))
    wandb_log: bool = opt(False, "log to Weights & Biases (WANDB_MODE=offline works without network)")
    wandb_project: str = opt("minigpt", "wandb project")
    wandb_run_name: str = opt("", "wandb run name; empty lets wandb pick one")
    plot: bool = opt(True, "write out_dir/loss.png at the end of the run")

    RENAMED: ClassVar[dict[str, str]] = {"init_from": "model"}


@dataclass
class RuntimeConfig:
    """Where and how every command runs; the same section, defaults and meaning for all of them."""

    device: str = opt("auto", "'auto' (cuda, else mps, else cpu), 'cpu', 'cuda', 'cuda:N' or 'mps'")
    dtype: str = opt("auto", "compute precision: 'auto' (bf16 on CUDA, fp16 without bf16; on a CPU with native "
                             "bf16, bf16 where a start-up probe (well under a second: a block's MLP forward and backward at "
                             "the model's width, timed in both) finds it >= 1.1x faster than fp32; else fp32, "
                             "never probed without native bf16), 'float32', 'bfloat16' or 'float16'. "
                             "Training autocasts over fp32 weights; inference holds the weights in this dtype",
                       choices=("auto", "float32", "bfloat16", "float16"))
    compile: bool | None = opt(None, "torch.compile the model (training) or the decode step (sampling): true, false, "
                                     "or auto (unset): on for CUDA, off on the CPU")
    seed: int = opt(1337, "random seed (same seed, same run); numpy and torch take 32-bit seeds",
                    range="[0, 4294967295]")
    threads: int = opt(0, "CPU threads for torch; 0 picks them from the cores that are free now", range=NONNEG)


# Every command that reads a model takes it as --model (resolved by checkpoint.resolve)
MODEL_HELP = ("the model to read: a checkpoint folder (holding ckpt.pt) or .pt file, a GPT-2 name (gpt2, gpt2-medium, "
              "gpt2-large, gpt2-xl) or a local Hugging Face GPT-2 folder")


@dataclass
class SampleConfig:
    model: str = opt("out", MODEL_HELP)
    start: str = opt("\n", "prompt text, or FILE:path to read the prompt from a UTF-8 text file")
    num_samples: int = opt(3, "number of samples to draw (generated together as one batch)", range=COUNT)
    max_new_tokens: int = opt(500, "tokens to generate per sample", range=NONNEG)
    temperature: float = opt(0.8, "softmax temperature; 0 means greedy", range=NONNEG)
    top_k: int = opt(200, "sample from the k most likely tokens; 0 disables", range=NONNEG)
    top_p: float = opt(1.0, "nucleus sampling: the fewest most likely tokens whose probability reaches top_p; "
                            "1 disables", range="(0, 1]")
    repetition_penalty: float = opt(1.0, "> 1 makes tokens already in the text less likely (CTRL's rule); 1 disables",
                                    range="(0, inf)")
    stop: list[str] = opt([], "stop a sample before this text (repeatable); the end-of-text token always stops")
    stream: bool = opt(True, "print the first sample token by token as it is generated")
    kv_cache: bool = opt(True, "reuse keys and values of earlier tokens; false recomputes the context every step")
    quantize: str = opt("none", "'int8': weight-only int8 Linears (a quarter of fp32's bytes per token; fast with "
                                "--compile), or 'none'", choices=("none", "int8"))

    RENAMED: ClassVar[dict[str, str]] = {"out_dir": "model", "init_from": "model"}


# The sections each command reads, in --help order.
def train_sections() -> dict[str, type]:
    return {"model": GPTConfig, "train": TrainConfig, "runtime": RuntimeConfig}


SAMPLE_SECTIONS = {"sample": SampleConfig, "runtime": RuntimeConfig}


@dataclass
class Config:
    """The merged sections of one command, plus which keys the user set (file or command line) and which
    a --preset set."""

    sections: dict[str, Any]
    explicit: set[str]
    preset: set[str] = field(default_factory=set)

    def __getattr__(self, name: str):
        sections = self.__dict__.get("sections", {})
        if name in sections:
            return sections[name]
        raise AttributeError(name)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dataclasses.asdict(obj) for name, obj in self.sections.items()}


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _convert(key: str, value: Any, tp: Any, source: str) -> Any:
    """Convert a TOML value or a command-line string to the field's type, or say what is wrong.

    One rule for both: an int setting takes an integral number written as a float (1e3, 1000.0, in TOML
    too), never a fractional one; a float setting takes an int; a bool takes true/false (or yes/no, on/off, 1/0
    as text)."""
    origin = typing.get_origin(tp)
    if origin is list:
        (inner,) = typing.get_args(tp)
        items = value if isinstance(value, list) else [value]
        return [_convert(key, v, inner, source) for v in items]
    if origin in (typing.Union, types.UnionType):  # Optional[X]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "auto")):
            return None
        return _convert(key, value, args[0], source)
    want = {int: "an integer", float: "a number", bool: "true or false", str: "text"}.get(tp, str(tp))
    bad = UserError(f"{source}: {_name(key, source)} must be {want}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                try:
                    value = float(value)
                except ValueError:
                    raise bad from None
        if isinstance(value, float) and value.is_integer():  # 1e3, 1000.0
            return int(value)
        if isinstance(value, int):
            return value
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    raise TypeError(f"unsupported config type {tp!r} for {key}")


def _name(key: str, source: str) -> str:
    """A setting as the user wrote it: --key on the command line, key in a file."""
    return f"--{key}" if source == "command line" else key


def _unknown(key: str, value: Any, sections: dict[str, type], known: list[str], source: str) -> UserError:
    for cls in sections.values():
        new = getattr(cls, "RENAMED", {}).get(key)
        if new is None:
            continue
        if value == "resume" and "resume" in known:
            return UserError(f"{source}: {_name(key, source)}=resume is now {_name('resume', source)} "
                             f"(continue out_dir's checkpoint)")
        return UserError(f"{source}: {_name(key, source)} is now {_name(new, source)}"
                         + (f", as {_name(new, source)}={value}" if isinstance(value, str) and value else ""))
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; run with --help to list the settings"
    return UserError(f"{source}: unknown setting '{key}'{hint}")


def build_config(
    sections: dict[str, type],
    file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Merge defaults < preset < TOML file < overrides into typed section objects; the one merge point.
    Every value is converted to its field's type and checked against its declared choices or range."""
    owner: dict[str, tuple[str, dataclasses.Field]] = {}
    for sec, cls in sections.items():
        for name, f in _fields(cls).items():
            if name in owner:  # a programming error: the command line could only ever set one of them
                raise ValueError(f"setting '{name}' is in both the {owner[name][0]} and {sec} sections")
            owner[name] = (sec, f)
    known = sorted(owner) + (["preset"] if "model" in sections else [])
    values: dict[str, tuple[Any, str]] = {}  # key -> (raw value, where it came from)

    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise UserError(f"config file {path} does not exist; pass an existing .toml file (see configs/)")
        try:
            data = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"config file {path} is not valid TOML: {e}") from None
        for key, value in data.items():
            if isinstance(value, dict) and key in sections:  # a [model] / [train] table
                for k, v in value.items():
                    values[k] = (v, str(path))
            else:
                values[key] = (value, str(path))
    for key, value in (overrides or {}).items():
        values[key] = (value, "command line")

    for key, (value, source) in values.items():
        if key not in known:
            raise _unknown(key, value, sections, known, source)

    raw: dict[str, dict[str, Any]] = {sec: {} for sec in sections}
    preset: set[str] = set()
    if "preset" in values:
        name, source = values.pop("preset")
        if name not in PRESETS:
            raise UserError(f"{source}: unknown preset '{name}'; choose one of {', '.join(PRESETS)}")
        raw["model"].update(PRESETS[name])
        preset = set(PRESETS[name])
    for key, (value, source) in values.items():
        sec, f = owner[key]
        typed = _convert(key, value, _hint(sections[sec], key), source)
        if (p := problem(f, typed)) is not None:
            raise UserError(f"{source}: {_name(key, source)} {p}, got {typed!r}")
        raw[sec][key] = typed

    built = {}
    for sec, cls in sections.items():
        try:
            built[sec] = cls(**raw[sec])
        except ValueError as e:
            raise UserError(f"invalid {sec} settings: {e}") from None
    return Config(sections=built, explicit=set(values), preset=preset)


def _hint(cls, key: str):
    return typing.get_type_hints(cls)[key]


_BOOL_WORDS = ("true", "false", "yes", "no", "on", "off", "1", "0")


def parse_cli(argv: list[str], sections: dict[str, type], prog: str, about: str,
              positional: str | None = None) -> Config:
    """Parse `[CONFIG.toml] [--key=value | --key value ...]`; `--help` lists every setting with its default.

    Every command goes through here. A bool setting given bare (`--resume`) is true; it takes the next
    argument as its value only when that is a bool word (`--compile false`, and `auto` for an unset-able
    one). A list setting is repeated (`--stop=A --stop=B`). With `positional`, a bare argument sets that
    setting instead of naming a TOML file (`python data/prepare.py shakespeare` sets `source`).
    """
    file = None
    overrides: dict[str, Any] = {}
    hints = {name: _hint(cls, name) for cls in sections.values() for name in _fields(cls)}
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg in ("-h", "--help"):
            print(usage(sections, prog, about, positional))
            raise SystemExit(0)
        if arg.startswith("--"):
            key, eq, value = arg[2:].partition("=")
            key = key.replace("-", "_")
            nxt = args[i] if i < len(args) else None
            if not eq and hints.get(key) in (bool, bool | None):
                words = _BOOL_WORDS + (("auto", "none") if hints[key] == bool | None else ())
                if nxt is not None and nxt.lower() in words:
                    value, i = nxt, i + 1
                else:
                    value = "true"
            elif not eq:
                if nxt is None or nxt.startswith("--"):
                    raise UserError(f"command line: --{key} needs a value, as --{key}=VALUE or --{key} VALUE")
                value, i = nxt, i + 1
            if typing.get_origin(hints.get(key)) is list:  # repeatable flags collect into a list
                overrides.setdefault(key, []).append(value)
            else:
                overrides[key] = value
        elif positional is not None and typing.get_origin(hints.get(positional)) is list:
            overrides.setdefault(positional, []).append(arg)  # a list positional takes every bare argument
        elif positional is not None and positional not in overrides:
            overrides[positional] = arg
        elif positional is None and file is None:
            file = arg
        else:
            raise UserError(f"command line: unexpected argument '{arg}'; settings are given as --key=value")
    return build_config(sections, file, overrides)


def usage(sections: dict[str, type], prog: str, about: str, positional: str | None = None) -> str:
    first = positional.upper() if positional else "[CONFIG.toml]"
    lines = [f"usage: {prog} {first} [--key=value ...]", "", about, "",
             "Settings are --key=value or --key value; a bool alone (--resume) is true. Every value is checked "
             "against the type, choices or range shown beside it."]
    if "model" in sections:
        lines.append(f"  --preset=NAME  model shape preset: {', '.join(PRESETS)}")
    for sec, cls in sections.items():
        lines.append(f"\n{sec} settings:")
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            tp = getattr(hints[f.name], "__name__", str(hints[f.name]))
            shown = "auto" if default is None and hints[f.name] == bool | None else repr(default)
            accepts = describe(f)
            lines.append(f"  --{f.name}={shown} ({tp}{': ' + accepts if accepts else ''})  "
                         f"{f.metadata.get('help', '')}")
    return "\n".join(lines)


# ---- which model a training run builds: the one place its settings meet the dataset, a checkpoint
# or pretrained weights ------------------------------------------------------------------------------

def on_weights(own: GPTConfig, changes: dict[str, Any], where: str, *, resuming: bool = False) -> GPTConfig:
    """The one rule for a model built on weights trained as `own`: `own` with `changes` applied, or one
    error naming what the weights cannot take. Dropout may change (it shapes no tensor); block_size may
    shrink when fine-tuning (the first positions' embeddings are kept), never when resuming (the data and
    schedule continue as saved); every other field describes the weights and must stay."""
    free = {"dropout"} | (set() if resuming else {"block_size"})
    fixed = {k: v for k, v in changes.items() if k not in free and v != getattr(own, k)}
    if fixed:
        said = ", ".join(f"{k}={getattr(own, k)!r}" for k in fixed)
        fix = "drop those settings to resume it, or train into another --out_dir" if resuming else \
            "drop those settings (command line, config file or preset) to build on its weights"
        raise UserError(f"{where} has {said}, which differs from the settings given ("
                        f"{', '.join(f'{k}={v!r}' for k, v in fixed.items())}); {fix}")
    block_size = changes.get("block_size", own.block_size)
    if block_size > own.block_size:
        raise UserError(f"block_size={block_size} is longer than the context of {where} ({own.block_size}); "
                        f"use block_size <= {own.block_size}")
    return GPTConfig(**{**dataclasses.asdict(own), **changes})


def model_config(cfg: Config, *, vocab_size: int, resumed: GPTConfig | None = None,
                 pretrained: GPTConfig | None = None, pretrained_name: str = "") -> GPTConfig:
    """The GPTConfig a training run builds, settling precedence once:
    - resuming: the checkpoint's config (`resumed`) with the model settings the user or a preset gives,
      as far as `on_weights` allows them;
    - fine-tuning (`pretrained`, the --model's config): the same, with dropout 0 unless given;
    - from scratch: defaults < preset < file < command line, the vocabulary from the dataset's tokenizer
      (`vocab_size`) unless vocab_size was typed (then at least the tokenizer's)."""
    m = cfg.model
    given = cfg.explicit | (cfg.preset - {"vocab_size"})  # a preset's vocabulary yields to the dataset's
    changes = {k: getattr(m, k) for k in sorted(given) if k in GPTConfig.__dataclass_fields__}
    if resumed is not None:
        return on_weights(resumed, changes, "the checkpoint in out_dir", resuming=True)
    if pretrained is not None:
        return on_weights(pretrained, {"dropout": 0.0, **changes}, pretrained_name)
    if "vocab_size" in cfg.explicit:
        if m.vocab_size < vocab_size:
            raise UserError(f"vocab_size={m.vocab_size} is smaller than the dataset's tokenizer vocabulary "
                            f"({vocab_size}); drop --vocab_size or raise it")
        return m
    return GPTConfig(**{**m.__dict__, "vocab_size": vocab_size})
