"""The tools around the core: parameter and FLOP tables, attention maps, evaluation, export, benchmarks.

Each is a command, `python -m minigpt COMMAND` (see minigpt/__main__.py); the core never needs them,
except the trainer, which logs the parameter table and MFU from `params` and `flops`.
"""
