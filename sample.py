"""Sample from a trained model or GPT-2: `python sample.py [--model=out | --model=gpt2] [--start=TEXT] ...`,
the same as `python -m minigpt sample`."""

from minigpt.errors import run_cli
from minigpt.sample import main

if __name__ == "__main__":
    run_cli(main)
