"""minigpt: a small, fast, readable framework for pretraining GPT-style language models."""
