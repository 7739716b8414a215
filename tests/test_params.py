import pytest

from minigpt.config import PRESETS
from minigpt.model import GPT, GPTConfig
from minigpt.params import count_config, count_params, format_table


@pytest.mark.parametrize("name,total", [
    ("gpt2", 124_439_808), ("gpt2-medium", 354_823_168), ("gpt2-large", 774_030_080), ("gpt2-xl", 1_557_611_200),
])
def test_gpt2_family_counts_match_openai(name, total):
    assert count_config(GPTConfig(**PRESETS[name])).total == total


def test_gpt2_breakdown():
    c = count_config(GPTConfig(**PRESETS["gpt2"]))
    assert c.non_embedding == 85_056_000
    assert all(sum(b.values()) == 7_087_872 for b in c.blocks)
    assert c.blocks[0]["attn qkv"] == 768 * 2304 + 2304
    assert c.tied and c.head == 0
    table = format_table(c)
    assert "124,439,808" in table and "85,056,000" in table and "7,087,872" in table


def test_counts_equal_the_model_parameters():
    model = GPT(GPTConfig(**{**PRESETS["tiny"], "vocab_size": 70, "bias": True}))
    assert count_params(model).total == sum(p.numel() for p in model.parameters())
