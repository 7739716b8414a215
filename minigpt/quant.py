"""Int8 weight-only quantization for inference: every Linear's weight (the tied LM head included) held
as int8 with one fp32 scale per output row, so a decoded token reads a quarter of fp32's bytes.

    quantize(model, "int8")   # after loading, before generating or evaluating; in place, never saved

Per-row symmetric: scale = max|w_row| / 127, q = round(w / scale) in [-127, 127]. Each weight moves
by at most scale / 2, so an output y = sum_i w_i x_i moves by at most scale / 2 * sum_i |x_i|.
Activations, LayerNorms and the embeddings stay in the model's dtype. The speed comes with the
compiled decode step (`generate.compile_step`), where inductor fuses int8 -> float into one pass over
the weight for all the step's rows (`kernels.int8_linear`); eager, each call dequantizes the whole
weight (smaller, not faster).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .kernels import int8_linear

MODES = ("none", "int8")


class Int8Linear(nn.Module):
    """A Linear with an int8 weight (out, in) and an fp32 scale per output row; inference only."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127  # (out,); an all-zero row keeps a usable scale
        self.register_buffer("weight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_linear(x, self.weight, self.scale, self.bias)  # the fast paths: minigpt.kernels


def quantize(model: nn.Module, mode: str) -> nn.Module:
    """`model` with every nn.Linear swapped for an Int8Linear (mode 'int8'), or unchanged ('none').

    In place, for inference: the embedding keeps its float weight (a lookup reads one row), while the
    tied head gets its own int8 copy. Never save a quantized model; reload the checkpoint instead.
    """
    if mode not in MODES:
        raise ValueError(f"quantize must be one of {', '.join(MODES)}, got '{mode}'")
    if mode == "none":
        return model
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, Int8Linear(child))
    return model
