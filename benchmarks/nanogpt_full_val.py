"""A nanoGPT checkpoint's loss over the whole shakespeare_char val split, in the windows minigpt's
evaluate uses (consecutive block_size windows, every position predicted once): run inside a
karpathy/nanoGPT checkout, `python PATH/TO/nanogpt_full_val.py CKPT`; prints the mean loss."""

import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.getcwd())  # nanoGPT's model.py, in the checkout this runs from (not ours)
from model import GPT, GPTConfig  # noqa: E402

ck = torch.load(sys.argv[1], map_location="cpu")
m = GPT(GPTConfig(**ck["model_args"]))
m.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in ck["model"].items()})
m.eval()
data = np.fromfile("data/shakespeare_char/val.bin", dtype=np.uint16).astype(np.int64)
T, n, total = m.config.block_size, len(data) - 1, 0.0
with torch.no_grad():
    for s in range(0, n, T):
        e = min(s + T, n)
        _, loss = m(torch.from_numpy(data[s:e])[None], torch.from_numpy(data[s + 1:e + 1])[None])
        total += loss.item() * (e - s)
print(total / n)
