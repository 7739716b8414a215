"""train-baby: the baby model's full training step (configs/baby.toml's shape, tinyshakespeare's 65
characters) in fp32 and bf16, eager and compiled; see benchmarks/training.py."""

from .training import Shape, run_train

ABOUT = "training steps of the baby model (4 x 128, context 64, batch 12)"
NEEDS = ("matmul",)  # ceilings: the matmul peaks, for MFU
SHAPE = Shape("baby", batch=12, T=64, overrides={"vocab_size": 65})


def run(settings, ceilings) -> list[dict]:
    return run_train("train-baby", SHAPE, settings, ceilings)
