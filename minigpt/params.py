"""Parameter counts per block and per matrix: the table train.py logs at the start of every run.

Counts come from the module itself (its named parameters, a tied tensor counted once), so they can
never drift from the model. For big presets the model is built on the `meta` device: no memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .model import GPT, GPTConfig

BLOCK_COLUMNS = ("attn qkv", "attn out", "mlp up", "mlp down", "norms")
_KIND = {  # parameter-name fragment inside a block -> column
    "attn.c_attn": "attn qkv",
    "attn.c_proj": "attn out",
    "mlp.c_fc": "mlp up",
    "mlp.c_proj": "mlp down",
    "ln_": "norms",
}


@dataclass
class ParamCounts:
    blocks: list[dict[str, int]]  # per block: column -> count
    wte: int
    wpe: int
    ln_f: int
    head: int  # parameters of the LM head not shared with wte (0 when tied)
    tied: bool
    total: int = field(init=False)
    non_embedding: int = field(init=False)

    def __post_init__(self):
        self.total = self.wte + self.wpe + self.ln_f + self.head + sum(sum(b.values()) for b in self.blocks)
        self.non_embedding = self.total - self.wte - self.wpe


def count_params(model: GPT) -> ParamCounts:
    seen: set[int] = set()
    blocks = [dict.fromkeys(BLOCK_COLUMNS, 0) for _ in model.transformer.h]
    other = {"wte": 0, "wpe": 0, "ln_f": 0, "lm_head": 0}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue  # the tied lm_head.weight is wte.weight
        seen.add(id(p))
        if name.startswith("transformer.h."):
            i = int(name.split(".")[2])
            col = next(c for frag, c in _KIND.items() if frag in name)
            blocks[i][col] += p.numel()
        else:
            key = next(k for k in other if k in name)
            other[key] += p.numel()
    tied = model.lm_head.weight is model.transformer.wte.weight
    return ParamCounts(blocks, other["wte"], other["wpe"], other["ln_f"], other["lm_head"], tied)


def count_config(config: GPTConfig) -> ParamCounts:
    """Counts for a config without allocating it (built on the meta device)."""
    with torch.device("meta"):
        model = GPT(config)
    return count_params(model)


def format_table(c: ParamCounts) -> str:
    """A plain-text table: one row per block, then embeddings, final norm, head and totals."""
    cols = ("block",) + BLOCK_COLUMNS + ("total",)
    rows = [[str(i)] + [f"{b[k]:,}" for k in BLOCK_COLUMNS] + [f"{sum(b.values()):,}"] for i, b in enumerate(c.blocks)]
    widths = [max(len(r[j]) for r in rows + [list(cols)]) for j in range(len(cols))]
    line = lambda r: "  ".join(x.rjust(w) for x, w in zip(r, widths))  # noqa: E731
    out = [line(cols), line(["-" * w for w in widths])] + [line(r) for r in rows]
    blocks_total = sum(sum(b.values()) for b in c.blocks)
    summary = [
        ("token embedding (wte)", c.wte),
        ("position embedding (wpe)", c.wpe),
        (f"{len(c.blocks)} blocks", blocks_total),
        ("final norm (ln_f)", c.ln_f),
        ("lm head" + (" (tied to wte, counted once)" if c.tied else ""), c.head),
        ("total", c.total),
        ("non-embedding total", c.non_embedding),
    ]
    w = max(len(k) for k, _ in summary)
    nw = max(len(f"{v:,}") for _, v in summary)
    out.append("")
    out += [f"{k.ljust(w)}  {v:>{nw},}" for k, v in summary]
    return "\n".join(out)


def describe(model: nn.Module) -> str:
    return format_table(count_params(model))
