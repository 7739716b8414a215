"""Sample text from a trained checkpoint, the logic behind sample.py."""

from __future__ import annotations

from pathlib import Path

import torch

from . import checkpoint, runtime
from .config import SampleConfig
from .errors import UserError
from .generate import generate


def read_prompt(start: str) -> str:
    if start.startswith("FILE:"):
        path = Path(start[5:])
        if not path.is_file():
            raise UserError(f"prompt file {path} does not exist; pass --start=FILE:path with an existing file")
        return path.read_text(encoding="utf-8")
    return start


def sample(cfg: SampleConfig) -> list[str]:
    """Draw `num_samples` continuations of the prompt; prints them and returns them."""
    if cfg.temperature < 0:
        raise UserError(f"--temperature must be >= 0 (0 is greedy), got {cfg.temperature}")
    if cfg.max_new_tokens < 0 or cfg.num_samples < 1:
        raise UserError("--max_new_tokens must be >= 0 and --num_samples >= 1")
    device = runtime.pick_device(cfg.device)
    dtype = runtime.pick_dtype(cfg.dtype, device)
    model, tok, _ = checkpoint.load_model(cfg.out_dir, device)
    model.to(dtype)  # weights kept in the generation precision
    prompt = read_prompt(cfg.start)
    ids = tok.encode(prompt)
    if not ids:
        ids = [tok.eot_id] if tok.eot_id is not None else tok.encode("\n")
    block = model.config.block_size
    if len(ids) > block:
        print(f"note: the prompt has {len(ids)} tokens, more than the model's context of {block}; "
              f"using its last {block}")
        ids = ids[-block:]
    torch.manual_seed(cfg.seed)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    idx = torch.tensor([ids] * cfg.num_samples, dtype=torch.long, device=device)
    out = generate(model, idx, cfg.max_new_tokens, cfg.temperature, cfg.top_k, gen)
    texts = []
    for row in out.tolist():
        text = tok.decode(row)
        texts.append(text)
        print(text)
        print("---------------")
    return texts
