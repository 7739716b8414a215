"""`python -m minigpt params`: the table train.py logs (minigpt/params.py), plus per-head figures, tied vs
untied totals, memory for training and FLOPs per token.

Counts come from the module itself (its named parameters, a tied tensor counted once), so they can
never drift from the model. For big presets the model is built on the `meta` device: no memory.

    python -m minigpt params gpt2                       # a preset: per-block table, per head, memory
    python -m minigpt params configs/baby.toml --n_layer=8
    python -m minigpt params out                        # the model of a checkpoint (or --model=out)
    python -m minigpt params gpt3 --matrices_only       # GPT-3 matrix by matrix, as 3Blue1Brown counts it
    python -m minigpt params gpt2 --format=json         # for scripts
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from .. import checkpoint, flops
from ..config import build_config, model_config, opt, parse_cli, train_sections
from ..data import TokenDataset, resolve_dataset
from ..errors import UserError, run_cli
from ..model import GPT, GPTConfig
from ..params import (BLOCK_COLUMNS, HEAD_PARTS, MATRIX_KINDS, ParamCounts, _columns, _share,  # noqa: F401
                      attention_per_block, count_params, describe, format_table)


def attention_pattern(config: GPTConfig) -> dict[str, int]:
    """Scores in the attention pattern of one full sequence (T x T per head, summed over heads and
    layers): activations, not parameters, and they grow with the square of the context."""
    per_head = config.block_size**2
    return {"per_head": per_head, "per_sequence": per_head * config.n_head * config.n_layer}


def count_config(config: GPTConfig, untied: bool = False) -> ParamCounts:
    """Counts for a config without allocating it (built on the meta device). `untied` gives the LM head
    its own matrix (as GPT-3 is counted in the lectures); the model itself always ties."""
    with torch.device("meta"):
        model = GPT(config)
        if untied:
            model.lm_head.weight = nn.Parameter(torch.empty_like(model.transformer.wte.weight))
    return count_params(model)


def memory(n_params: int) -> dict[str, dict[str, int]]:
    """Bytes for weights, gradients and AdamW's two moments, all kept in fp32 or all in bf16.
    (train.py's autocast keeps weights, grads and optimizer state in fp32: the fp32 row.)"""
    out = {}
    for dtype, size in (("fp32", 4), ("bf16", 2)):
        row = {"weights": n_params * size, "grads": n_params * size, "adamw": 2 * n_params * size}
        out[dtype] = {**row, "total": sum(row.values())}
    return out


def _human(n_bytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n_bytes < 1024 or unit == "TiB":
            return f"{n_bytes:,.0f} {unit}" if unit == "B" else f"{n_bytes:,.1f} {unit}"
        n_bytes /= 1024
    raise AssertionError


def format_per_head(c: ParamCounts, config: GPTConfig) -> str:
    """One head's parameters with 3Blue1Brown's value-down / value-up factoring, then the size of the
    attention pattern. Shapes are (out x in), as nn.Linear stores them and the lecture draws them."""
    hs, C, L = config.n_embd // config.n_head, config.n_embd, len(c.blocks)
    b = "" if not config.bias else " + bias"
    shapes = {"query": f"hs x C{b}", "key": f"hs x C{b}", "value-down": f"hs x C{b}", "value-up": "C x hs"}
    what = {"query": "its rows of W_q", "key": "its rows of W_k", "value-down": "its rows of W_v: C -> hs",
            "value-up": "its columns of the output matrix W_o: hs -> C"}
    rows = [[part, shapes[part], f"{c.per_head[part]:,}"] for part in HEAD_PARTS]
    rows.append(["one head", "", f"{sum(c.per_head.values()):,}"])
    rows.append([f"all {c.n_head * L:,} heads", "", f"{sum(c.per_head.values()) * c.n_head * L:,}"])
    table = _columns(["", "shape", "parameters"], rows, left=2)
    table[2:2 + len(HEAD_PARTS)] = [f"{line}  {what[part]}" for line, part in zip(table[2:], HEAD_PARTS)]
    T, pattern = config.block_size, attention_pattern(config)
    return "\n".join([
        f"per head (n_head {config.n_head}, head size hs {hs}, C {C}; the output bias is shared):",
        *table,
        f"the {config.n_head} heads' value-ups side by side (C x hs each) are the output matrix W_o (C x C)",
        f"attention pattern per sequence: T x T = {T:,}^2 = {pattern['per_head']:,} scores per head; "
        f"x {config.n_head} heads x {L} layers = {pattern['per_sequence']:,} (activations, not parameters)",
    ])


def format_tying(c: ParamCounts) -> str:
    saved = c.matrices["unembedding"]
    if c.tied:
        return (f"tied: yes, the lm head is wte ({saved:,} parameters counted once); "
                f"untied the total would be {c.untied_total:,}")
    return f"tied: no, the lm head has its own {saved:,} parameters; tied the total would be {c.total - saved:,}"


def format_memory(c: ParamCounts) -> str:
    mem = memory(c.total)
    rows = [[dtype] + [_human(m[k]) for k in ("weights", "grads", "adamw", "total")] for dtype, m in mem.items()]
    head = f"memory for {c.total:,} parameters (activations not included):"
    return "\n".join([head] + _columns(["", "weights", "grads", "AdamW state", "total"], rows, left=1))


def format_matrices(c: ParamCounts, config: GPTConfig) -> str:
    """Weight matrices only, one row per kind, as 3Blue1Brown tabulates GPT-3: no biases, norms or
    position embeddings, and the unembedding counted as a matrix of its own."""
    C, L, hs, V = config.n_embd, config.n_layer, config.n_embd // config.n_head, c.matrices["embedding"] // config.n_embd
    shapes = {
        "embedding": f"{C:,} x {V:,}",
        "key": f"{hs} x {C:,} x {config.n_head} heads x {L} layers",
        "query": f"{hs} x {C:,} x {config.n_head} heads x {L} layers",
        "value": f"{hs} x {C:,} x {config.n_head} heads x {L} layers",
        "output": f"{C:,} x {hs} x {config.n_head} heads x {L} layers",
        "up-projection": f"{4 * C:,} x {C:,} x {L} layers",
        "down-projection": f"{C:,} x {4 * C:,} x {L} layers",
        "unembedding": f"{V:,} x {C:,}" + (" (tied: the embedding's tensor)" if c.tied else ""),
    }
    total = sum(c.matrices.values())
    rows = [[k, shapes[k], f"{v:,}", _share(v, total)] for k, v in c.matrices.items()]
    rows.append(["total", "", f"{total:,}", _share(total, total)])
    out = _columns(["matrix", "shape", "weights", "share"], rows, left=2)
    if c.tied:
        out.append(f"(stored with the unembedding tied to the embedding: {total - c.matrices['unembedding']:,})")
    return "\n".join(out)


def flops_per_token(c: ParamCounts, config: GPTConfig) -> dict[str, int]:
    """Training and inference FLOPs per token at the full context (see minigpt.flops for the formulas)."""
    n = flops.matmul_params(c.total, config, c.tied)
    return {"matmul_params": n, "training": flops.train_flops_per_token(n, config),
            "inference": flops.inference_flops_per_token(n, config)}


def format_flops(c: ParamCounts, config: GPTConfig) -> str:
    f = flops_per_token(c, config)
    return "\n".join([
        f"FLOPs per token at T = {config.block_size} (N = {f['matmul_params']:,} parameters in matmuls; minigpt.flops):",
        f"  training   6N + 12 L C T = {f['training']:,}",
        f"  inference  2N +  4 L C T = {f['inference']:,}",
    ])


def report(c: ParamCounts, config: GPTConfig) -> str:
    """Everything `python -m minigpt params` prints: the train.py table, per head, tying, memory, FLOPs."""
    return "\n\n".join([format_table(c), format_per_head(c, config), format_tying(c), format_memory(c),
                         format_flops(c, config)])


def to_json(c: ParamCounts, config: GPTConfig) -> dict:
    d = asdict(c)
    d.update(untied_total=c.untied_total, matrices_total=sum(c.matrices.values()), memory=memory(c.total),
             attention_per_block=attention_per_block(c), attention_pattern=attention_pattern(config),
             flops_per_token=flops_per_token(c, config), model_config=asdict(config))
    return d


# ---------------------------------------------------------------------------------------------------
# The command line

@dataclass
class ParamsConfig:
    source: str = opt("", "what to count: a preset name (gpt2), a .toml config file, or a checkpoint (a file, "
                          "or a folder holding ckpt.pt); empty counts --model's checkpoint if given, else the "
                          "--key=value settings")
    format: str = opt("text", "'text' (tables) or 'json' (for scripts)", choices=("text", "json"))
    matrices_only: bool = opt(False, "weight matrices only, one row per kind (3Blue1Brown's GPT-3 count)")
    untied: bool = opt(False, "count the LM head as its own matrix instead of tied to the token embedding")


ABOUT = ("Parameter tables for a preset, a config file or a checkpoint, with --key=value overrides: per block, "
         "per head, tying, memory, FLOPs per token; --matrices_only for the per-matrix view.")
SECTIONS = {**train_sections(), "params": ParamsConfig}


def _overrides(cfg) -> dict:
    """The settings given on the command line, as typed values (to merge them again over a file or preset)."""
    return {k: getattr(sec, k) for sec in cfg.sections.values() for k in cfg.explicit if hasattr(sec, k)}


def _checkpoint_config(cfg, path: str) -> tuple[GPTConfig, str]:
    shape_keys = cfg.explicit & set(GPTConfig.__dataclass_fields__)
    if shape_keys:
        raise UserError(f"a checkpoint is counted with its own model; drop {', '.join(sorted(shape_keys))}")
    header = checkpoint.read_header(path)  # the config only: the weights are never read
    return header.config, header.description


def _model_config(cfg) -> tuple[GPTConfig, str]:
    """(model config, where it came from). SOURCE is a config file when it ends in .toml; a checkpoint when
    it is a file or folder, or looks like a path (a '/', a .pt); else a preset name (config says if unknown).
    Without SOURCE: --model's checkpoint when given, else the settings. A config's vocabulary is the
    configured dataset's when that is prepared, as train.py takes it."""
    src = cfg.params.source
    overrides = {k: v for k, v in _overrides(cfg).items() if k != "source"}
    if "out_dir" in cfg.explicit:  # params reads a model, and --model names it in every command
        raise UserError(f"--out_dir is now --model, as --model={cfg.train.out_dir}")
    if src and "model" in cfg.explicit:
        raise UserError(f"give one model to count: '{src}' or --model={cfg.train.model}, not both")
    if src and not src.endswith(".toml") and (Path(src).exists() or "/" in src or src.endswith(".pt")):
        return _checkpoint_config(cfg, src)
    if not src and "model" in cfg.explicit:
        return _checkpoint_config(cfg, cfg.train.model)
    if src.endswith(".toml"):
        cfg = build_config(SECTIONS, file=src, overrides=overrides)
    elif src:
        cfg = build_config(SECTIONS, overrides={"preset": src, **overrides})
    m = cfg.model
    if "dataset" in cfg.explicit and "vocab_size" not in cfg.explicit:
        try:  # train.py takes the vocabulary from the dataset; so do we when it is prepared
            vocab_size = TokenDataset(resolve_dataset(cfg.train.dataset)).vocab_size
        except UserError:
            return m, f"config; dataset '{cfg.train.dataset}' is not prepared, so vocab_size is {m.vocab_size}"
        return model_config(cfg, vocab_size=vocab_size), f"config, vocab_size from dataset '{cfg.train.dataset}'"
    return m, "config"


def main(argv: list[str]) -> int:
    cfg = parse_cli(argv, SECTIONS, "python -m minigpt params", ABOUT, positional="source")
    p = cfg.params
    config, source = _model_config(cfg)
    c = count_config(config, untied=p.untied)
    if p.format == "json":
        print(json.dumps(to_json(c, config), indent=2))
        return 0
    shape = ", ".join(f"{k}={getattr(config, k)}" for k in ("n_layer", "n_head", "n_embd", "block_size",
                                                                "vocab_size", "bias"))
    print(f"model ({source}): {shape}\n")
    print(format_matrices(c, config) if p.matrices_only else report(c, config))
    return 0


if __name__ == "__main__":
    run_cli(main)
