import json

import pytest

from minigpt.config import PRESETS
from minigpt.errors import UserError
from minigpt.model import GPT, GPTConfig
from minigpt.tools.params import count_config, count_params, format_matrices, format_table, main, memory


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


# ---- the inspector: per matrix, per head, tying, memory, the command line ----

GPT3_175B_MATRICES = {  # 3Blue1Brown's table, matrix by matrix
    "embedding": 617_558_016, "key": 14_495_514_624, "query": 14_495_514_624, "value": 14_495_514_624,
    "output": 14_495_514_624, "up-projection": 57_982_058_496, "down-projection": 57_982_058_496,
    "unembedding": 617_558_016,
}


def test_gpt3_matrices_match_3blue1brown():
    c = count_config(GPTConfig(**PRESETS["gpt3"]), untied=True)
    assert c.matrices == GPT3_175B_MATRICES
    assert sum(c.matrices.values()) == 175_181_291_520
    assert not c.tied and c.head == 617_558_016
    table = format_matrices(c, GPTConfig(**PRESETS["gpt3"]))
    assert "175,181,291,520" in table and "57,982,058,496" in table


@pytest.mark.parametrize("name,billions", [
    ("gpt3-small", 0.125), ("gpt3-medium", 0.35), ("gpt3-large", 0.76), ("gpt3-xl", 1.3), ("gpt3-2.7b", 2.7),
    ("gpt3-6.7b", 6.7), ("gpt3-13b", 13), ("gpt3", 175),
])
def test_gpt3_family_is_near_the_paper_sizes(name, billions):
    assert abs(count_config(GPTConfig(**PRESETS[name])).total / 1e9 / billions - 1) < 0.05


def test_matrices_per_head_and_tying_come_from_the_module():
    cfg = GPTConfig(**{**PRESETS["tiny"], "vocab_size": 70, "bias": True})  # C 32, 2 heads of 16, 2 layers
    c = count_params(GPT(cfg))
    assert c.matrices["query"] == c.matrices["key"] == c.matrices["value"] == 2 * 32 * 32
    assert c.matrices["up-projection"] == 2 * 32 * 128 and c.matrices["embedding"] == c.matrices["unembedding"] == 70 * 32
    assert c.per_head == {"query": 32 * 16 + 16, "key": 32 * 16 + 16, "value-down": 32 * 16 + 16, "value-up": 16 * 32}
    untied = count_config(cfg, untied=True)
    assert untied.total == c.untied_total == c.total + 70 * 32
    assert memory(c.total)["fp32"]["total"] == 16 * c.total and memory(c.total)["bf16"]["adamw"] == 4 * c.total


def test_identical_blocks_share_one_row():
    table = format_table(count_config(GPTConfig(**PRESETS["gpt2"])))
    assert " 0-11 " in table and "\n 1 " not in table


def test_cli_prints_the_gpt2_report(capsys):
    assert main(["gpt2"]) == 0
    out = capsys.readouterr().out
    for s in ("124,439,808", "7,087,872", "per head", "196,800", "tied: yes", "163,037,184", "AdamW", "1.9 GiB",
              "855,166,464"):
        assert s in out


def test_gpt3_attention_as_the_lecture_counts_it(capsys):
    """3Blue1Brown: value-down and value-up per head, the value-ups side by side are the output matrix,
    'around 600 million' attention parameters per block, a 2048 x 2048 pattern per head."""
    main(["gpt3"])
    out = capsys.readouterr().out
    assert "value-down       hs x C + bias       1,572,992" in out
    assert "value-up         C x hs              1,572,864" in out
    assert "the 96 heads' value-ups side by side (C x hs each) are the output matrix W_o (C x C)" in out
    assert "attention of one block (attn qkv + attn out): 604,028,928 parameters, 603,979,776 in its weight" in out
    assert f"{2048**2:,} scores per head; x 96 heads x 96 layers = {2048**2 * 96 * 96:,}" in out
    main(["gpt3", "--format=json"])
    d = json.loads(capsys.readouterr().out)
    assert 603_979_776 == 4 * 12288**2 and 38_654_705_664 == 2048**2 * 96 * 96
    assert d["attention_per_block"] == {"with_biases": 604_028_928, "weights": 603_979_776}
    assert d["attention_pattern"] == {"per_head": 4_194_304, "per_sequence": 38_654_705_664}
    assert d["per_head"]["value-down"] == 128 * 12288 + 128 and d["per_head"]["value-up"] == 12288 * 128


def test_cli_gpt3_matrices_only_and_json(capsys):
    main(["gpt3", "--matrices_only"])
    assert "175,181,291,520" in capsys.readouterr().out
    main(["gpt2-xl", "--format=json"])
    d = json.loads(capsys.readouterr().out)
    assert d["total"] == 1_557_611_200 and d["tied"] and d["memory"]["fp32"]["weights"] == 4 * 1_557_611_200
    assert d["flops_per_token"]["matmul_params"] == 1_557_611_200 - 1024 * 1600


def test_cli_config_file_overrides_and_checkpoint(tmp_path, capsys, char_dataset):
    from minigpt import checkpoint
    from minigpt.tokenizer import CharTokenizer

    main(["configs/baby.toml", "--vocab_size=65", "--n_layer=6", "--format=json"])
    d = json.loads(capsys.readouterr().out)
    assert len(d["blocks"]) == 6 and d["model_config"]["n_embd"] == 128
    model = GPT(GPTConfig(**{**PRESETS["tiny"], "vocab_size": 65}))
    checkpoint.save(tmp_path / "ckpt.pt", model, CharTokenizer("ab").spec())
    total = sum(p.numel() for p in model.parameters())
    for argv in ([f"--model={tmp_path}"], [str(tmp_path)], [str(tmp_path / "ckpt.pt")]):
        main([*argv, "--format=json"])
        assert json.loads(capsys.readouterr().out)["total"] == total


@pytest.mark.parametrize("argv,msg", [
    (["gpt5"], "unknown preset 'gpt5'; choose one of tiny, baby"),
    (["--preset=gpt5"], "unknown preset 'gpt5'"),
    (["gpt2", "--format=xml"], "--format must be one of text, json, got 'xml'"),
    (["gpt2", "--n_layr=3"], "did you mean n_layer"),
    (["--model=/nonexistent/ckpt"], "no model at"),
    (["/nonexistent/ckpt"], "no model at"),
    (["/nonexistent/baby.toml"], "config file /nonexistent/baby.toml does not exist"),
    (["gpt2", "gpt3"], "unexpected argument 'gpt3'"),
    (["gpt2", "--model=out"], "give one model to count: 'gpt2' or --model=out, not both"),
    (["--out_dir=out"], "--out_dir is now --model, as --model=out"),
])
def test_cli_bad_input_is_one_clear_error(argv, msg):
    with pytest.raises(UserError, match=msg):
        main(argv)
