"""Parameter counts per block and per matrix of a GPT module, and the table train.py logs at the start of a run.

Counts come from the module itself (its named parameters, a tied tensor counted once), so they can
never drift from the model. `python -m minigpt params` (minigpt/tools/params.py) adds per-head
figures, tying, memory and FLOPs per token around this table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn

from .model import GPT

BLOCK_COLUMNS = ("attn qkv", "attn out", "mlp up", "mlp down", "norms")
_KIND = {  # parameter-name fragment inside a block -> column
    "attn.c_attn": "attn qkv",
    "attn.c_proj": "attn out",
    "mlp.c_fc": "mlp up",
    "mlp.c_proj": "mlp down",
    "ln_": "norms",
}
# The weight matrices a forward pass multiplies by, in the order of 3Blue1Brown's GPT-3 table.
# No biases, norms or position embeddings; the unembedding is its own row even when tied.
MATRIX_KINDS = ("embedding", "key", "query", "value", "output", "up-projection", "down-projection", "unembedding")
_MATRIX = {"attn.c_proj.weight": "output", "mlp.c_fc.weight": "up-projection", "mlp.c_proj.weight": "down-projection"}
# One head's share of a block's attention, named as 3Blue1Brown factors it: the value map is value-up
# after value-down (C -> hs -> C), and the heads' value-ups side by side are the output matrix.
HEAD_PARTS = ("query", "key", "value-down", "value-up")


@dataclass
class ParamCounts:
    blocks: list[dict[str, int]]  # per block: column -> count
    wte: int
    wpe: int
    ln_f: int
    head: int  # parameters of the LM head not shared with wte (0 when tied)
    tied: bool
    matrices: dict[str, int] = field(default_factory=dict)  # MATRIX_KINDS -> weights, summed over blocks
    per_head: dict[str, int] = field(default_factory=dict)  # HEAD_PARTS -> weights (+ biases) of one head
    n_head: int = 0
    total: int = field(init=False)
    non_embedding: int = field(init=False)

    def __post_init__(self):
        self.total = self.wte + self.wpe + self.ln_f + self.head + sum(sum(b.values()) for b in self.blocks)
        self.non_embedding = self.total - self.wte - self.wpe

    @property
    def untied_total(self) -> int:
        """The total with a separate unembedding matrix (what tying saves, added back)."""
        return self.total + (self.matrices["unembedding"] if self.tied else 0)


def count_params(model: GPT) -> ParamCounts:
    seen: set[int] = set()
    blocks = [dict.fromkeys(BLOCK_COLUMNS, 0) for _ in model.transformer.h]
    other = {"wte": 0, "wpe": 0, "ln_f": 0, "lm_head": 0}
    matrices = dict.fromkeys(MATRIX_KINDS, 0)
    for name, p in model.named_parameters(remove_duplicate=False):
        if name == "lm_head.weight":
            matrices["unembedding"] = p.numel()  # listed even when tied: the lectures count it
        if id(p) in seen:
            continue  # the tied lm_head.weight is wte.weight
        seen.add(id(p))
        if name.startswith("transformer.h."):
            i = int(name.split(".")[2])
            col = next(c for frag, c in _KIND.items() if frag in name)
            blocks[i][col] += p.numel()
            if name.endswith("attn.c_attn.weight"):  # W_q, W_k, W_v stacked: (3C, C)
                for kind in ("query", "key", "value"):
                    matrices[kind] += p.numel() // 3
            kind = next((k for frag, k in _MATRIX.items() if name.endswith(frag)), None)
            if kind:
                matrices[kind] += p.numel()
        else:
            key = next(k for k in other if k in name)
            other[key] += p.numel()
            if name == "transformer.wte.weight":
                matrices["embedding"] = p.numel()
    tied = model.lm_head.weight is model.transformer.wte.weight
    return ParamCounts(blocks, other["wte"], other["wpe"], other["ln_f"], other["lm_head"], tied,
                       matrices, _per_head(model), model.config.n_head)


def _per_head(model: GPT) -> dict[str, int]:
    """One head's share of one block's attention: its rows of W_q, W_k, W_v (and their biases; W_v's rows
    are its value-down) and its columns of W_o (its value-up). The output bias (C numbers) belongs to no
    single head and is left out."""
    if not len(model.transformer.h):
        return dict.fromkeys(HEAD_PARTS, 0)
    attn, nh = model.transformer.h[0].attn, model.config.n_head
    qkv = attn.c_attn.weight.numel() + (attn.c_attn.bias.numel() if attn.c_attn.bias is not None else 0)
    return {"query": qkv // 3 // nh, "key": qkv // 3 // nh, "value-down": qkv // 3 // nh,
            "value-up": attn.c_proj.weight.numel() // nh}


def attention_per_block(c: ParamCounts) -> dict[str, int]:
    """One block's attention parameters (W_q, W_k, W_v, W_o), with and without biases: 3Blue1Brown's
    "around 600 million" per block of GPT-3."""
    if not c.blocks:
        return {"with_biases": 0, "weights": 0}
    weights = sum(c.matrices[k] for k in ("query", "key", "value", "output")) // len(c.blocks)
    return {"with_biases": c.blocks[0]["attn qkv"] + c.blocks[0]["attn out"], "weights": weights}


def _share(n: int, total: int) -> str:
    return f"{100 * n / total:5.1f}%" if total else ""


def _block_rows(c: ParamCounts) -> list[list[str]]:
    """One row per run of identical blocks ('0-11' when all twelve are the same)."""
    rows, start = [], 0
    for i in range(1, len(c.blocks) + 1):
        if i == len(c.blocks) or c.blocks[i] != c.blocks[start]:
            b = c.blocks[start]
            label = str(start) if i - 1 == start else f"{start}-{i - 1}"
            rows.append([label] + [f"{b[k]:,}" for k in BLOCK_COLUMNS] + [f"{sum(b.values()):,}"])
            start = i
    return rows


def _columns(header: list[str], rows: list[list[str]], left: int = 0) -> list[str]:
    """Right-aligned columns (the first `left` ones left-aligned), two spaces apart."""
    widths = [max(len(r[j]) for r in rows + [header]) for j in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(x.ljust(w) if j < left else x.rjust(w) for j, (x, w) in enumerate(zip(r, widths)))

    return [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]


def format_table(c: ParamCounts) -> str:
    """A plain-text table: one row per block (runs of identical blocks merged), then embeddings, final
    norm, head and totals with their share of the total."""
    out = _columns(["block", *BLOCK_COLUMNS, "total"], _block_rows(c))
    attn = attention_per_block(c)
    out.append(f"attention of one block (attn qkv + attn out): {attn['with_biases']:,} parameters, "
               f"{attn['weights']:,} in its weight matrices")
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
    out += [f"{k.ljust(w)}  {v:>{nw},}  {_share(v, c.total)}" for k, v in summary]
    return "\n".join(out)


def describe(model: nn.Module) -> str:
    return format_table(count_params(model))
