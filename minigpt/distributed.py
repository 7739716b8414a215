"""Data-parallel training under torchrun: process groups, DDP / FSDP2 wrapping, cross-rank averages.

A run started by `torchrun --nproc_per_node=N train.py ...` sees RANK / WORLD_SIZE / LOCAL_RANK in
its environment; a plain `python train.py` is a world of one, and every helper here is then a no-op.
The model itself knows nothing of this: wrapping happens here, checkpoints see the plain module.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from .errors import UserError


@dataclass
class World:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init(device_name: str) -> tuple[World, str]:
    """Join the process group torchrun set up (if any); returns the world and the device name to use."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return World(), device_name
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    backend = "nccl" if use_cuda else "gloo"  # NCCL between GPUs, gloo between CPU processes
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device_name = f"cuda:{local_rank}"
    elif device_name == "auto":
        device_name = "cpu"
    dist.init_process_group(backend=backend)
    return World(rank, world_size), device_name


def barrier(world: World) -> None:
    """Wait for every rank (a no-op in one process)."""
    if world.distributed and dist.is_initialized():
        dist.barrier()


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def exit_process() -> None:
    """End a torchrun worker after `shutdown`, skipping the interpreter's finalization. On the CPU with
    gloo, tearing down what FSDP2 leaves behind aborted a finished worker in about 1 run in 20 here
    ("terminate called without an active exception", exit code -6) after its checkpoint was written."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def wrap(model: nn.Module, world: World, fsdp: bool, device: torch.device) -> nn.Module:
    """DDP (gradients all-reduced) or FSDP2 (parameters, grads and optimizer state sharded)."""
    if not world.distributed:
        if fsdp:
            raise UserError("--fsdp=true needs several processes; launch with torchrun --nproc_per_node=N")
        return model
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in model.transformer.h:
            fully_shard(block)  # each block gathers its weights just in time, frees them after
        fully_shard(model)  # the rest: embeddings (tied with the head), final norm
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def no_sync(model: nn.Module, last_micro_step: bool):
    """Skip the gradient all-reduce on every micro-step but the last (forward and backward inside)."""
    if last_micro_step:
        return contextlib.nullcontext()
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2: reduce-scatter only on the last micro-step
        return _fsdp_no_sync(model)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp_no_sync(model):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def mean(value: float | torch.Tensor, world: World, device: torch.device) -> float:
    """The average of a scalar across ranks (the value itself in a world of one)."""
    if not world.distributed:
        return float(value)
    t = torch.as_tensor(value, dtype=torch.float64, device=device).clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return (t / world.world_size).item()


def any_flag(flag: bool, world: World, device: torch.device) -> bool:
    """True on every rank if it is true on any rank (so all ranks stop or skip together)."""
    if not world.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_objects(obj, world: World) -> list:
    """[rank 0's obj, rank 1's, ...] on rank 0 (collective: every rank calls it); [obj] in one process."""
    if not world.distributed:
        return [obj]
    out = [None] * world.world_size if world.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer, fsdp: bool) -> tuple[dict, dict]:
    """Unsharded model and optimizer state dicts (collective under FSDP: every rank must call it)."""
    if not fsdp:
        return model.state_dict(), optimizer.state_dict()
    if not optimizer.state:
        # Before the first step: get_optimizer_state_dict would initialise the empty state by running a
        # zero-gradient step(), advancing AdamW's step counter, so the first real update would get step 2's
        # bias correction (0.74x). There is nothing to save yet; every rank takes this branch together.
        return _fsdp_model_state(model), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=opts), get_optimizer_state_dict(model, optimizer, options=opts)


def _fsdp_model_state(model: nn.Module) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optim_state: dict | None,
                    fsdp: bool) -> None:
    """Load unsharded state into a (possibly FSDP-sharded) model and its optimizer (None: the model only)."""
    if not fsdp:
        model.load_state_dict(model_state)
        if optim_state is not None:
            optimizer.load_state_dict(optim_state)
        return
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_state, options=opts)
    if optim_state and optim_state.get("state"):  # saved before the first step: nothing to load (see full_state)
        set_optimizer_state_dict(model, optimizer, optim_state, options=opts)
