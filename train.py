"""Pretrain a GPT: `python train.py [CONFIG.toml] [--key=value ...]` (see --help for every setting)."""

from minigpt.config import parse_cli, train_sections
from minigpt.errors import run_cli
from minigpt.trainer import process_start, train


def main(argv: list[str]) -> int:
    cfg = parse_cli(argv, train_sections(), "python train.py", __doc__.splitlines()[0])
    train(cfg, launched=process_start())  # a --max_minutes budget counts start-up too
    return 0


if __name__ == "__main__":
    run_cli(main)
