"""Attention maps: what every head of a trained checkpoint looks at, as a PNG grid and a printout.

    python -m minigpt attention --model=out --text="The cat sat on the mat" [--layer=L] [--head=H]
                                [--token=WORD_OR_INDEX] [--top=3] [--out=attention.png]
    python -m minigpt attention --model=gpt2 --text="..."    # OpenAI's GPT-2 (or a local HF folder)

The model's own forward pass hands the masked softmax to SDPA, which never materialises the weights.
`forward_with_attention` runs the same modules and weights with the softmax written out,
softmax(q k^T / sqrt(hs) + causal mask), and returns the weights of every layer and head; a test
shows its logits equal the model's. Layers and heads are numbered from 0.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from typing import ClassVar
from pathlib import Path

import torch

from .. import checkpoint
from ..config import MODEL_HELP, RuntimeConfig, opt, parse_cli
from ..errors import UserError, run_cli
from ..fileio import save_png
from ..model import GPT


@dataclass
class AttentionConfig:
    model: str = opt("out", MODEL_HELP)
    text: str = opt("", "the text to run through the model (at most block_size tokens)")
    layer: int | None = opt(None, "draw only this layer (0-based); default all", range="[0, inf)")
    head: int | None = opt(None, "draw only this head (0-based); default all", range="[0, inf)")
    token: str = opt("", "the token whose attention to print: a word of the text (its last token) or an index; "
                         "default the last token")
    top: int = opt(3, "how many attended tokens to print per head", range="[1, inf)")
    out: str = opt("attention.png", "where to write the PNG grid of heatmaps")

    RENAMED: ClassVar[dict[str, str]] = {"out_dir": "model", "init_from": "model"}


def check_attention_weights(model: GPT) -> None:
    """Every block must have the fused q/k/v projection (3C, C) and output projection (C, C) we run."""
    C, nh = model.config.n_embd, model.config.n_head
    for i, block in enumerate(model.transformer.h):
        attn = getattr(block, "attn", None)
        shapes = {name: tuple(getattr(getattr(attn, name, None), "weight", torch.empty(0)).shape)
                  for name in ("c_attn", "c_proj")}
        if shapes != {"c_attn": (3 * C, C), "c_proj": (C, C)} or C % nh:
            raise UserError(f"block {i} of this checkpoint has no attention weights of the expected shapes "
                            f"(c_attn {(3 * C, C)}, c_proj {(C, C)}; found {shapes}); attention maps need a "
                            f"minigpt GPT checkpoint")


@torch.no_grad()
def forward_with_attention(model: GPT, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (B, T, V), attention weights (n_layer, B, nh, T, T)) with the softmax computed explicitly."""
    check_attention_weights(model)
    B, T = idx.shape
    C, nh = model.config.n_embd, model.config.n_head
    hs = C // nh
    tr = model.transformer
    future = torch.triu(torch.ones(T, T, dtype=torch.bool, device=idx.device), 1)  # True above the diagonal
    x = tr.drop(tr.wte(idx) + tr.wpe(torch.arange(T, device=idx.device)))  # (B, T, C)
    maps = []
    for block in tr.h:
        attn = block.attn
        q, k, v = attn.c_attn(block.ln_1(x)).split(C, dim=2)  # 3 x (B, T, C)
        q, k, v = (t.view(B, T, nh, hs).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(hs)  # (B, nh, T, T)
        weights = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
        maps.append(weights)
        y = (weights @ v).transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        x = x + attn.resid_dropout(attn.c_proj(y))
        x = x + block.mlp(block.ln_2(x))
    logits = model.lm_head(tr.ln_f(x))  # (B, T, V)
    return logits, torch.stack(maps)  # (n_layer, B, nh, T, T)


def token_pieces(tok, ids: list[int]) -> list[str]:
    """The text of each token (a byte-level BPE piece of a multi-byte character decodes to U+FFFD)."""
    return [tok.decode([i]) for i in ids]


def label(piece: str) -> str:
    """A token as a tick label: spaces as a middle dot, newlines as \\n."""
    return piece.replace(" ", "\u00b7").replace("\n", "\\n").replace("\t", "\\t") or "\u2205"


def word_at(text: str, start: int, end: int) -> str:
    """The word (run of letters and digits) around the characters start..end of `text`; '' for a token
    with no letters or digits (a space, punctuation)."""
    if not any(ch.isalnum() for ch in text[start:end]):
        return ""
    while not text[start].isalnum():  # ' cat': the word starts after the space
        start += 1
    while not text[end - 1].isalnum():
        end -= 1
    while start > 0 and text[start - 1].isalnum():
        start -= 1
    while end < len(text) and text[end].isalnum():
        end += 1
    return text[start:end].strip()


def pick_token(spec: str, pieces: list[str]) -> int:
    """The index of the token named by --token: '' (the last), an integer (negative from the end), or a
    word of the text, meaning the token that ends its last occurrence."""
    T = len(pieces)
    if spec == "":
        return T - 1
    if re.fullmatch(r"-?\d+", spec):
        i = int(spec)
        if not -T <= i < T:
            raise UserError(f"--token={spec} is out of range: the text has {T} tokens (0 to {T - 1})")
        return i % T
    text = "".join(pieces)
    at = text.rfind(spec)
    if at < 0:
        raise UserError(f"--token='{spec}' does not occur in the text; give a word of the text or a token index")
    last_char, pos = at + len(spec) - 1, 0
    for i, piece in enumerate(pieces):
        pos += len(piece)
        if pos > last_char:
            return i
    return T - 1


def top_attended(att: torch.Tensor, pos: int, k: int) -> list[list[list[tuple[int, float]]]]:
    """For the query at `pos`: per layer, per head, the k (key index, weight) pairs of largest weight."""
    row = att[:, 0, :, pos, : pos + 1]  # (n_layer, nh, pos+1): what token `pos` attends to
    w, j = row.topk(min(k, pos + 1), dim=-1)
    return [[list(zip(j[l, h].tolist(), w[l, h].tolist())) for h in range(row.shape[1])] for l in range(row.shape[0])]


def plot(att: torch.Tensor, labels: list[str], layers: list[int], heads: list[int], path: str | Path,
         title: str, highlight: int | None = None) -> Path:
    """A grid of heatmaps, one per (layer, head): rows the attending token, columns the attended one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    T = len(labels)
    cell = max(2.2, 0.13 * min(T, 128) + 1.0)  # inches per heatmap: ~9 pt per token row for 7 pt labels
    step = 1 if T <= 128 else math.ceil(T / 128)  # past 128 tokens, label every step-th one
    fig, axes = plt.subplots(len(layers), len(heads), figsize=(cell * len(heads), cell * len(layers) + 0.6),
                             squeeze=False)
    ticks = list(range(0, T, step))
    for r, l in enumerate(layers):
        for c, h in enumerate(heads):
            ax = axes[r][c]
            ax.imshow(att[l, 0, h].float().cpu().numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_title(f"layer {l}, head {h}", fontsize=9)
            ax.set_xticks(ticks, [labels[i] for i in ticks], rotation=90, fontsize=7)
            ax.set_yticks(ticks, [labels[i] for i in ticks], fontsize=7)
            ax.tick_params(length=0)
            if highlight is not None:  # outline the row of the token whose attention is printed
                ax.add_patch(Rectangle((-0.5, highlight - 0.5), T, 1, fill=False, edgecolor="red", linewidth=0.8))
    height = fig.get_figheight()
    fig.suptitle(title, fontsize=11, y=1 - 0.3 / height)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / height))  # the top 0.6 inch is the title's
    return save_png(fig, path, "the heatmaps")


def _select(value: int | None, n: int, what: str) -> list[int]:
    if value is None:
        return list(range(n))
    if not 0 <= value < n:
        raise UserError(f"--{what}={value} is out of range: the model has {n} {what}s (0 to {n - 1})")
    return [value]


def main(argv: list[str]) -> int:
    both = parse_cli(argv, {"attention": AttentionConfig, "runtime": RuntimeConfig}, "python -m minigpt attention",
                     __doc__.splitlines()[0])
    cfg = both.attention
    if not cfg.text:
        raise UserError('--text is empty; pass the text to look at, as --text="The cat sat on the mat"')
    loaded, rt = checkpoint.load_for_inference(cfg.model, both.runtime)
    model, tok, device = loaded.model, loaded.tokenizer, rt.device
    check_attention_weights(model)
    n_layer, n_head, block = model.config.n_layer, model.config.n_head, model.config.block_size
    layers, heads = _select(cfg.layer, n_layer, "layer"), _select(cfg.head, n_head, "head")
    ids = tok.encode(cfg.text)
    if len(ids) > block:
        raise UserError(f"--text has {len(ids)} tokens, more than the model's context of {block}; shorten it")
    pieces = token_pieces(tok, ids)
    pos = pick_token(cfg.token, pieces)

    idx = torch.tensor([ids], dtype=torch.long, device=device)
    logits, att = forward_with_attention(model, idx)
    with torch.no_grad():
        diff = (logits - model(idx)).abs().max().item()  # the explicit path against the model's SDPA path
    labels = [label(p) for p in pieces]
    where = f"layer {layers[0]}" if len(layers) == 1 else f"{n_layer} layers"
    where += f", head {heads[0]}" if len(heads) == 1 else f" x {n_head} heads"
    path = plot(att, labels, layers, heads, cfg.out, f"attention weights, {where} ({len(ids)} tokens; rows attend "
                f"to columns)", highlight=pos)
    print(f"{len(ids)} tokens, {where}; heatmaps written to {path} "
          f"(explicit-softmax logits match the model's to {diff:.1e})")

    text = "".join(pieces)
    starts = [0, *itertools.accumulate(len(p) for p in pieces)]  # where each token's text begins

    def describe(i: int) -> str:
        word = word_at(text, starts[i], starts[i] + len(pieces[i]))
        return f"{pieces[i]!r}" + (f" ({word})" if word and word != pieces[i].strip() else "") + f" #{i}"

    print(f"\ntoken {describe(pos)} attends most to:")
    tops = top_attended(att, pos, cfg.top)
    for l in layers:
        for h in heads:
            print(f"  layer {l} head {h}:  " + "   ".join(f"{describe(j)} {w:.2f}" for j, w in tops[l][h]))
    mean = att[:, 0, :, pos, : pos + 1].mean(dim=(0, 1))  # (pos+1,): over every layer and head
    w, j = mean.topk(min(cfg.top, pos + 1))
    print("  all layers and heads, averaged:  " + "   ".join(f"{describe(a)} {b:.2f}" for a, b in zip(j.tolist(), w.tolist())))
    return 0


if __name__ == "__main__":
    run_cli(main)
