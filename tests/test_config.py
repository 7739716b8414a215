import pytest

from minigpt.config import SampleConfig, TrainConfig, build_config, parse_cli, train_sections
from minigpt.errors import UserError
from minigpt.model import GPTConfig

SECTIONS = train_sections()


def test_precedence_defaults_preset_file_cli(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('preset = "baby"\nn_layer = 3\nlearning_rate = 1\n[train]\nbatch_size = 7\n')
    cfg = parse_cli([str(f), "--n_layer=5", "--compile"], SECTIONS, "p", "a")
    assert cfg.model.n_layer == 5 and cfg.model.n_embd == 128  # CLI > file > preset
    assert cfg.train.learning_rate == 1.0 and cfg.train.batch_size == 7 and cfg.runtime.compile is True
    assert {"n_layer", "learning_rate", "batch_size", "compile"} <= cfg.explicit


def test_unknown_key_suggests_the_closest():
    with pytest.raises(UserError, match="did you mean learning_rate"):
        build_config(SECTIONS, overrides={"learnig_rate": "1"})


def test_wrong_type_names_key_and_type(tmp_path):
    with pytest.raises(UserError, match="--batch_size must be an integer"):
        build_config(SECTIONS, overrides={"batch_size": "many"})
    f = tmp_path / "c.toml"
    f.write_text('dropout = "lots"\n')
    with pytest.raises(UserError, match="c.toml: dropout must be a number"):
        build_config(SECTIONS, f)


def test_invalid_model_shape_and_unknown_preset():
    with pytest.raises(UserError, match="divisible"):
        build_config(SECTIONS, overrides={"n_embd": "100", "n_head": "3"})
    with pytest.raises(UserError, match="unknown preset 'gpt5'.*gpt2"):
        build_config(SECTIONS, overrides={"preset": "gpt5"})


def test_missing_or_broken_config_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        build_config(SECTIONS, tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("n_layer = = 3")
    with pytest.raises(UserError, match="not valid TOML"):
        build_config(SECTIONS, bad)


def test_sample_config_has_no_model_keys():
    with pytest.raises(UserError, match="unknown setting 'n_layer'"):
        build_config({"sample": SampleConfig}, overrides={"n_layer": "2"})
