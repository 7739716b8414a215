"""Pretrain a GPT: `python train.py [CONFIG.toml] [--key=value ...]`, the same as `python -m minigpt train`."""

from minigpt.errors import run_cli
from minigpt.trainer import main

if __name__ == "__main__":
    run_cli(main)
