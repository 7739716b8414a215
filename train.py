"""Pretrain a GPT: `python train.py [CONFIG.toml] [--key=value ...]` (see --help for every setting)."""

from minigpt.config import TrainConfig, parse_cli
from minigpt.errors import run_cli
from minigpt.model import GPTConfig
from minigpt.trainer import train


def main(argv: list[str]) -> int:
    cfg = parse_cli(argv, {"model": GPTConfig, "train": TrainConfig}, "python train.py", __doc__.splitlines()[0])
    train(cfg)
    return 0


if __name__ == "__main__":
    run_cli(main)
