"""Sample from a trained model or GPT-2: `python sample.py [--out_dir=out | --init_from=gpt2] [--start=TEXT] ...`."""

from minigpt.config import SAMPLE_SECTIONS, parse_cli
from minigpt.errors import run_cli
from minigpt.sample import sample


def main(argv: list[str]) -> int:
    cfg = parse_cli(argv, SAMPLE_SECTIONS, "python sample.py", __doc__.splitlines()[0])
    sample(cfg.sample, cfg.runtime)
    return 0


if __name__ == "__main__":
    run_cli(main)
