"""The optimizers and the learning-rate schedule.

AdamW (the default) decays every matrix and embedding, never biases or LayerNorm gains. `MuonAdamW`
(`--optimizer=muon`) trains the transformer blocks' weight matrices with Muon and everything else
(embeddings, the tied head, norms, biases) with AdamW, as nanochat and the modded-nanogpt speedruns do.
The schedule (`lr_at`) is linear warmup, then cosine decay or warmup-stable-decay (flat, then a linear
cooldown to min_lr); Muon's learning rate follows the same curve, scaled to its own peak. A run with a
time budget (`--max_minutes`) follows `lr_at_fraction`, warmup-stable-decay over its elapsed share of the budget.
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn as nn
from torch.optim.adamw import adamw


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay every >= 2-D tensor (matmul weights, embeddings); never biases or LayerNorm gains."""
    params = {id(p): p for p in model.parameters() if p.requires_grad}.values()  # tied weights once
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def hidden_matrices(model: nn.Module) -> list[torch.Tensor]:
    """The 2-D weights inside the transformer blocks (attention and MLP matrices): what Muon trains.
    Embeddings and the head stay with AdamW: a lookup table's rows are not a linear map to orthogonalise."""
    return [p for p in model.transformer.h.parameters() if p.dim() == 2 and p.requires_grad]


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                   device: torch.device, *, muon_lr: float | None = None, muon_momentum: float = 0.95,
                   muon_weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """AdamW over all weights, or with `muon_lr` set, Muon over the hidden matrices and AdamW over the rest.
    Muon's groups are marked "muon": True; `set_lr` moves both rates along the schedule together."""
    # The fused kernel does the whole update in one pass per tensor; supported on CUDA and CPU in torch >= 2.4
    fused = device.type in ("cuda", "cpu")
    if muon_lr is None:
        return AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, fused=fused)
    muon = hidden_matrices(model)
    in_muon = {id(p) for p in muon}
    groups = [{"params": muon, "muon": True, "lr": muon_lr, "weight_decay": muon_weight_decay}]
    for g in param_groups(model, weight_decay):  # AdamW keeps the rest, decayed as without Muon
        groups.append({**g, "params": [p for p in g["params"] if id(p) not in in_muon], "lr": lr})
    return MuonAdamW(groups, betas=betas, momentum=muon_momentum, ns_dtype=newton_schulz_dtype(device), fused=fused)


def set_lr(optimizer: torch.optim.Optimizer, lr: float, scale: float, muon_lr: float | None = None) -> None:
    """AdamW's groups to `lr`, Muon's to `scale` x `muon_lr` (`scale`: where the schedule is, as a share of
    its peak). Taken from the settings at every step, so a resumed run follows a changed rate."""
    for g in optimizer.param_groups:
        g["lr"] = muon_lr * scale if g.get("muon") else lr


def clip_and_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, params, max_norm: float) -> bool:
    """The optimizer step (through `scaler`), the gradients' global norm clipped to `max_norm` first (0: no
    clipping), as torch.nn.utils.clip_grad_norm_ clips it. Returns False, having changed no weight and no
    optimizer state, when a gradient is NaN or inf (with the scaler on, its scale is lowered as GradScaler does).

    The norm that clips is also the finiteness check: one reduction over every gradient, read once. Under
    DDP every rank holds the same all-reduced gradients and under FSDP the norm is the full one, so every
    rank reaches the same answer without another collective.

    Fused AdamW without a loss scale takes the clip factor inside its step, as the `grad_scale` it divides
    every gradient by (the attribute GradScaler hands fused optimizers): a separate pass multiplying every
    gradient cost 0.6 s of a 2,048-token GPT-2 step on 2 busy cores, the norms alone 34 ms."""
    scaler.unscale_(optimizer)  # the true gradients: check and clip those, not the fp16-scaled ones
    params = [p for p in params if p.grad is not None]
    grads = [p.grad for p in params]
    norm = torch.nn.utils.get_total_norm(grads, foreach=_foreach(grads))
    full = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP: a DTensor of per-shard parts
    if not torch.isfinite(full).item():
        if scaler.is_enabled():
            scaler.update()  # unscale_ recorded the inf: the scale halves, as after a skipped scaler.step
        return False
    if max_norm > 0:
        coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)  # clip_grad_norm_'s factor
        if (not scaler.is_enabled() and type(norm) is torch.Tensor and isinstance(optimizer, torch.optim.AdamW)
                and optimizer.defaults.get("fused")):  # plain tensors: FSDP's DTensors take the general path
            optimizer.grad_scale = 1.0 / coef
            try:
                optimizer.step()
            finally:
                del optimizer.grad_scale
            return True
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm, foreach=_foreach(grads))  # scales p.grad
    scaler.step(optimizer)
    scaler.update()
    return True


def _foreach(tensors: list[torch.Tensor]) -> bool | None:
    """foreach kernels on the CPU too (torch's default takes them only on CUDA): one call, not one per tensor."""
    return True if tensors and tensors[0].device.type in ("cpu", "cuda") else None


def newton_schulz_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the hardware multiplies it natively (CUDA, CPUs with AVX512-BF16 or AMX), else fp32:
    torch.optim.Muon always iterates in bf16, which an AVX2-only CPU emulates ~100x slower than fp32."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu":
        from .runtime import cpu_bf16_native  # the one place that reads the CPU's flags

        return torch.bfloat16 if cpu_bf16_native() else torch.float32
    return torch.float32


# Keller Jordan's quintic coefficients (also torch.optim.Muon's): a steep slope at zero, so 5 steps
# bring every singular value into roughly [0.7, 1.2]; exact orthogonality is not needed.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.float32,
                  eps: float = 1e-7) -> torch.Tensor:
    """Newton-Schulz iteration towards U V^T for each matrix of `g` ((..., rows, cols), batched), i.e.
    the update with its singular values pushed to ~1. Runs in `dtype`, returns g's dtype.

    Each step is X <- a X + (b A + c A A) X with A = X X^T, written as two fused multiply-adds (baddbmm):
    the scalings and sums ride inside the products instead of four more passes over the matrices."""
    a, b, c = NS_COEFFICIENTS
    x = g.to(dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the wide side: X X^T is then the smaller Gram matrix
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)  # spectral norm <= Frobenius norm = 1
    batch = x.shape[:-2]
    x = x.reshape(-1, *x.shape[-2:])  # (n, rows, cols): baddbmm takes one batch dimension
    for _ in range(steps):
        gram = x @ x.mT  # A
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b A + c A A
        x = torch.baddbmm(x, poly, x, beta=a)  # a X + poly X
    x = x.reshape(*batch, *x.shape[-2:])
    return (x.mT if tall else x).to(g.dtype)


class _PlainMethods:
    """torch.optim.Optimizer wraps add_param_group, zero_grad, state_dict, load_state_dict (and Adam's step)
    in helpers whose first call imports torch._dynamo: 1.0 s of start-up here, a fourteenth of the CPU
    speedrun, in a run that compiles nothing. These optimizers are never traced (the model is what
    train.py compiles), so they call the plain functions."""

    add_param_group = inspect.unwrap(torch.optim.Optimizer.add_param_group)
    zero_grad = inspect.unwrap(torch.optim.Optimizer.zero_grad)
    state_dict = inspect.unwrap(torch.optim.Optimizer.state_dict)
    load_state_dict = inspect.unwrap(torch.optim.Optimizer.load_state_dict)


class AdamW(_PlainMethods, torch.optim.AdamW):
    """torch.optim.AdamW: the same update, state and checkpoints, without importing torch._dynamo."""

    _plain_step = staticmethod(inspect.unwrap(torch.optim.AdamW.step))

    @torch.no_grad()  # what torch's wrapper does for differentiable=False, the default
    def step(self, closure=None):
        return self._plain_step(self, closure)


class MuonAdamW(_PlainMethods, torch.optim.Optimizer):
    """Muon for groups with "muon": True, AdamW for the others: one optimizer, one state dict, one step.

    Muon (Jordan et al. 2024): SGD momentum with Nesterov's look-ahead, the update orthogonalised by
    Newton-Schulz and scaled by sqrt(max(1, rows / cols)) (torch.optim.Muon's default), decoupled weight
    decay. Matrices of the same shape, once laid wide, are orthogonalised together as one batch (a 12-layer
    model makes 3 batched iterations per step, not 48). The iteration runs in `ns_dtype`: bf16 only where
    it is native.
    """

    def __init__(self, groups: list[dict], *, betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
                 momentum: float = 0.95, ns_steps: int = 5, ns_dtype: torch.dtype = torch.float32,
                 fused: bool | None = None):
        super().__init__(groups, dict(betas=betas, eps=eps, momentum=momentum, muon=False, weight_decay=0.0))
        self.ns_steps, self.ns_dtype, self.fused = ns_steps, ns_dtype, fused

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                (self._muon if group["muon"] else self._adamw)(group, params)
        return loss

    def _adamw(self, group: dict, params: list[torch.Tensor]) -> None:
        for p in params:
            if not self.state[p]:
                self.state[p].update(step=torch.zeros((), dtype=torch.float32, device=p.device),
                                     exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
        st = [self.state[p] for p in params]
        beta1, beta2 = group["betas"]
        adamw(params, [p.grad for p in params], [s["exp_avg"] for s in st], [s["exp_avg_sq"] for s in st], [],
              [s["step"] for s in st], fused=self.fused, amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"],
              weight_decay=group["weight_decay"], eps=group["eps"], maximize=False)

    def _muon(self, group: dict, params: list[torch.Tensor]) -> None:
        # matrices that are the same once laid wide (a block's c_fc (4C, C) and MLP c_proj (C, 4C)) make one batch
        by_shape: dict[tuple, list[torch.Tensor]] = {}
        for p in params:
            if p.dim() != 2:
                raise ValueError(f"Muon trains matrices only, got a parameter of shape {tuple(p.shape)}")
            by_shape.setdefault((min(p.shape), max(p.shape)), []).append(p)
        lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
        for ps in by_shape.values():
            bufs = []
            for p in ps:
                if not self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p)
                bufs.append(self.state[p]["momentum_buffer"])
            grads = [p.grad for p in ps]
            torch._foreach_lerp_(bufs, grads, 1 - mu)  # buf = mu buf + (1 - mu) g
            nesterov = torch._foreach_lerp(grads, bufs, mu)  # (1 - mu) g + mu buf
            wide = torch.stack([u.mT if u.size(0) > u.size(1) else u for u in nesterov])  # (n, small, large)
            updates = orthogonalize(wide, self.ns_steps, self.ns_dtype).unbind(0)
            if wd:
                torch._foreach_mul_(ps, 1 - lr * wd)
            for p, u in zip(ps, updates):
                rows, cols = p.shape
                p.add_(u.mT if rows > cols else u, alpha=-lr * math.sqrt(max(1.0, rows / cols)))


def lr_at(step: int, lr: float, min_lr: float, warmup_iters: int, decay_iters: int, decay: bool = True,
          schedule: str = "cosine", cooldown_iters: int = 0) -> float:
    """Linear warmup to `lr`, then down to `min_lr` at `decay_iters` and flat after it. `schedule`:
    'cosine' decays from the end of warmup; 'wsd' (warmup-stable-decay) holds `lr` and decays linearly
    over the last `cooldown_iters` steps before `decay_iters`. `decay=False`: a constant `lr`."""
    if not decay:
        return lr
    if step < warmup_iters:
        return lr * (step + 1) / (warmup_iters + 1)
    if step >= decay_iters:
        return min_lr
    if schedule == "wsd":
        start = decay_iters - cooldown_iters
        if step < start:
            return lr
        return lr + (step - start) / max(1, cooldown_iters) * (min_lr - lr)
    progress = (step - warmup_iters) / max(1, decay_iters - warmup_iters)  # 0 -> 1
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def lr_at_fraction(frac: float, lr: float, min_lr: float, warmup: float, cooldown: float) -> float:
    """Warmup-stable-decay over a run's elapsed share of its time budget (`frac`, 0 at the first step,
    1 when the budget's training time is spent): linear from 0 to `lr` over the first `warmup`, `lr`
    until 1 - `cooldown`, then linear to `min_lr` at 1, and `min_lr` after. The trainer asks for the
    rate at the moment a step will end (the last one ends near 1, so near `min_lr`)."""
    frac = max(0.0, frac)
    if frac < warmup:
        return lr * frac / warmup
    if frac >= 1.0:
        return min_lr
    start = 1.0 - cooldown
    if frac < start:
        return lr
    return lr + (frac - start) / cooldown * (min_lr - lr)
