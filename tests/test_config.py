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


# ---- choices and ranges declared with each setting (minigpt.settings) ------------------------------

def all_setting_classes():
    from minigpt.config import RuntimeConfig
    from minigpt.tools.attention_maps import AttentionConfig
    from minigpt.tools.evaluate import EvalConfig
    from minigpt.tools.export import ExportConfig
    from minigpt.tools.params import ParamsConfig

    return [GPTConfig, TrainConfig, RuntimeConfig, SampleConfig, EvalConfig, AttentionConfig, ExportConfig,
            ParamsConfig]


def test_every_default_is_accepted_by_its_own_declaration():
    import dataclasses

    from minigpt.settings import problem

    checked = 0
    for cls in all_setting_classes():
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            assert problem(f, default) is None, (cls.__name__, f.name, default)
            checked += "range" in f.metadata or "choices" in f.metadata
    assert checked >= 40  # the declarations are really there


def test_every_numeric_setting_declares_its_range():
    import dataclasses
    import typing

    for cls in all_setting_classes():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if tp in (int, float, int | None, float | None):
                assert "range" in f.metadata, f"{cls.__name__}.{f.name} has no declared range"


@pytest.mark.parametrize("key,value,msg", [
    ("seed", "-1", r"--seed must be in \[0, 4294967295\], got -1"),
    ("seed", "4294967296", r"--seed must be in \[0, 4294967295\], got 4294967296"),
    ("beta2", "1.5", r"--beta2 must be in \[0, 1\), got 1.5"),
    ("beta1", "1", r"--beta1 must be in \[0, 1\)"),
    ("learning_rate", "nan", "--learning_rate must be a finite number, got nan"),
    ("learning_rate", "-1", r"--learning_rate must be in \[0, inf\), got -1.0"),
    ("min_lr", "inf", "--min_lr must be a finite number"),
    ("weight_decay", "-0.1", r"--weight_decay must be in \[0, inf\)"),
    ("grad_clip", "-1", r"--grad_clip must be in \[0, inf\)"),
    ("dropout", "1.0", r"--dropout must be in \[0, 1\)"),
    ("batch_size", "0", r"--batch_size must be in \[1, inf\), got 0"),
    ("max_iters", "-5", r"--max_iters must be in \[0, inf\)"),
    ("n_layer", "0", r"--n_layer must be in \[1, inf\)"),
    ("threads", "-2", r"--threads must be in \[0, inf\)"),
    ("on_nan", "halt", "--on_nan must be one of stop, skip, got 'halt'"),
    ("lr_schedule", "linear", "--lr_schedule must be one of cosine, wsd"),
    ("optimizer", "sgd", "--optimizer must be one of adamw, muon"),
    ("activation", "relu", "--activation must be one of gelu, gelu_tanh"),
    ("dtype", "fp8", "--dtype must be one of auto, float32, bfloat16, float16"),
])
def test_out_of_range_and_unknown_choices_are_one_line_from_command_line_and_toml(tmp_path, key, value, msg):
    with pytest.raises(UserError, match="^command line: " + msg):
        build_config(SECTIONS, overrides={key: value})
    f = tmp_path / "c.toml"
    toml_value = value if value.lstrip("-").replace(".", "").isdigit() else f'"{value}"'
    if value in ("nan", "inf"):
        toml_value = value  # TOML has nan and inf literals
    f.write_text(f"{key} = {toml_value}\n")
    with pytest.raises(UserError, match=f"^{f}: " + msg.replace("--", "", 1)):
        build_config(SECTIONS, f)


def test_the_sample_sections_check_their_settings_too():
    from minigpt.config import SAMPLE_SECTIONS

    for key, value, msg in [("top_p", "0", r"--top_p must be in \(0, 1\]"), ("num_samples", "0", "--num_samples"),
                            ("max_new_tokens", "-1", "--max_new_tokens"), ("temperature", "-1", "--temperature"),
                            ("repetition_penalty", "0", "--repetition_penalty"),
                            ("quantize", "int4", "--quantize must be one of none, int8")]:
        with pytest.raises(UserError, match=msg):
            build_config(SAMPLE_SECTIONS, overrides={key: value})


def test_a_train_config_built_in_code_is_checked_by_the_trainer():
    from minigpt import distributed
    from minigpt.trainer import check_settings

    world = distributed.World()  # one process
    with pytest.raises(UserError, match=r"beta2 must be in \[0, 1\), got 1.5"):
        check_settings(TrainConfig(beta2=1.5), world)
    with pytest.raises(UserError, match="cooldown_iters"):  # the cross-setting rule stays in the trainer
        check_settings(TrainConfig(lr_schedule="wsd", cooldown_iters=2000), world)


def test_help_prints_each_settings_choices_and_range(capsys):
    with pytest.raises(SystemExit):
        parse_cli(["--help"], SECTIONS, "p", "a")
    out = capsys.readouterr().out
    assert "--beta2=0.99 (float: in [0, 1))" in out
    assert "--seed=1337 (int: in [0, 4294967295])" in out
    assert "--on_nan='stop' (str: stop | skip)" in out
    assert "--activation='gelu' (str: gelu | gelu_tanh)" in out


def test_an_int_setting_takes_an_integral_float_in_both_sources(tmp_path):
    assert build_config(SECTIONS, overrides={"max_iters": "1e3"}).train.max_iters == 1000
    f = tmp_path / "c.toml"
    f.write_text("max_iters = 1e3\nbatch_size = 8.0\n")
    cfg = build_config(SECTIONS, f)
    assert cfg.train.max_iters == 1000 and type(cfg.train.max_iters) is int and cfg.train.batch_size == 8
    f.write_text("max_iters = 1.5\n")
    with pytest.raises(UserError, match="max_iters must be an integer, got 1.5"):
        build_config(SECTIONS, f)
    with pytest.raises(UserError, match="--max_iters must be an integer, got '1.5'"):
        build_config(SECTIONS, overrides={"max_iters": "1.5"})


# ---- the parser: --key value besides --key=value ----------------------------------------------------

def test_key_space_value_bare_bools_and_repeated_lists():
    cfg = parse_cli(["--out_dir", "run1", "--resume", "--max_iters", "7", "--compile", "false", "--seed", "3",
                     "--plot", "--dataset=d"], SECTIONS, "p", "a")
    assert cfg.train.out_dir == "run1" and cfg.train.resume is True and cfg.train.max_iters == 7
    assert cfg.runtime.compile is False and cfg.runtime.seed == 3 and cfg.train.plot is True
    assert parse_cli(["--compile", "auto"], SECTIONS, "p", "a").runtime.compile is None
    assert parse_cli(["--max_iters=3", "--resume"], SECTIONS, "p", "a").train.resume is True  # bare, last
    s = parse_cli(["--stop", "a", "--stop=b"], {"sample": SampleConfig}, "p", "a")
    assert s.sample.stop == ["a", "b"]
    with pytest.raises(UserError, match="--max_iters needs a value"):
        parse_cli(["--max_iters"], SECTIONS, "p", "a")
    with pytest.raises(UserError, match="--out_dir needs a value"):
        parse_cli(["--out_dir", "--resume"], SECTIONS, "p", "a")
    with pytest.raises(UserError, match=r"--seed must be in \[0, 4294967295\], got -1"):
        parse_cli(["--seed", "-1"], SECTIONS, "p", "a")  # a negative number is a value, not a flag


def test_a_positional_and_key_space_value_together():
    from minigpt.tools.params import SECTIONS as PARAMS

    cfg = parse_cli(["tiny", "--n_layer", "3", "--untied"], PARAMS, "p", "a", positional="source")
    assert cfg.params.source == "tiny" and cfg.model.n_layer == 3 and cfg.params.untied is True


# ---- one word for "which model" ------------------------------------------------------------------------

def test_old_spellings_of_the_model_say_the_new_one(tmp_path):
    from minigpt.config import SAMPLE_SECTIONS
    from minigpt.tools.evaluate import EvalConfig

    with pytest.raises(UserError, match="^command line: --init_from is now --model, as --model=gpt2$"):
        build_config(SECTIONS, overrides={"init_from": "gpt2"})
    with pytest.raises(UserError, match="--init_from=resume is now --resume"):
        build_config(SECTIONS, overrides={"init_from": "resume"})
    with pytest.raises(UserError, match="--out_dir is now --model, as --model=out-baby"):
        build_config(SAMPLE_SECTIONS, overrides={"out_dir": "out-baby"})
    with pytest.raises(UserError, match="--out_dir is now --model"):
        build_config({"eval": EvalConfig}, overrides={"out_dir": "out"})
    f = tmp_path / "c.toml"
    f.write_text('init_from = "gpt2"\n')
    with pytest.raises(UserError, match="c.toml: init_from is now model"):
        build_config(SECTIONS, f)


def test_one_shape_rule_for_weights_given():
    from minigpt.config import on_weights

    own = GPTConfig(block_size=64, vocab_size=10, n_layer=2, n_head=2, n_embd=16, dropout=0.1)
    tuned = on_weights(own, {"block_size": 32, "dropout": 0.0}, "gpt2")
    assert tuned.block_size == 32 and tuned.dropout == 0.0 and tuned.n_layer == 2
    with pytest.raises(UserError, match=r"gpt2 has n_layer=2, .*\(n_layer=3\)"):
        on_weights(own, {"n_layer": 3}, "gpt2")
    with pytest.raises(UserError, match="activation='gelu'"):
        on_weights(own, {"activation": "gelu_tanh"}, "gpt2")
    with pytest.raises(UserError, match="block_size=128 is longer than the context of gpt2 .64."):
        on_weights(own, {"block_size": 128}, "gpt2")
    resumed = on_weights(own, {"dropout": 0.3}, "the checkpoint", resuming=True)
    assert resumed.dropout == 0.3  # dropout shapes no tensor: it takes effect
    with pytest.raises(UserError, match="block_size=64.*train into another --out_dir"):
        on_weights(own, {"block_size": 32}, "the checkpoint", resuming=True)


def test_the_loader_and_the_trainer_share_the_shape_rule(tmp_path):
    from minigpt import checkpoint
    from minigpt.model import GPT

    own = GPTConfig(block_size=16, vocab_size=5, n_layer=1, n_head=1, n_embd=8)
    checkpoint.save(tmp_path / "ckpt.pt", GPT(own), {"kind": "char", "chars": "abcde"})
    shorter = GPTConfig(**{**own.__dict__, "block_size": 8, "dropout": 0.2})
    assert checkpoint.load_model(tmp_path, config=shorter).model.transformer.wpe.weight.shape[0] == 8
    with pytest.raises(UserError, match=r"activation='gelu'"):  # not a shape key once, and refused by both now
        checkpoint.load_model(tmp_path, config=GPTConfig(**{**own.__dict__, "activation": "gelu_tanh"}))
    cfg = build_config(SECTIONS, overrides={"activation": "gelu_tanh"})
    from minigpt.config import model_config

    with pytest.raises(UserError, match=r"activation='gelu'"):
        model_config(cfg, vocab_size=5, pretrained=own, pretrained_name="the checkpoint")


def test_resolve_is_the_one_reading_of_a_model_source(tmp_path):
    from minigpt import checkpoint
    from minigpt.model import GPT

    run = tmp_path / "run"
    run.mkdir()
    checkpoint.save(run / "ckpt.pt", GPT(GPTConfig(block_size=8, vocab_size=5, n_layer=1, n_head=1, n_embd=8)),
                    {"kind": "char", "chars": "abcde"})
    assert checkpoint.resolve(run) == checkpoint.Source("checkpoint", str(run / "ckpt.pt"))
    assert checkpoint.resolve(run / "ckpt.pt").kind == "checkpoint"
    assert checkpoint.resolve("gpt2-medium") == checkpoint.Source("gpt2", "gpt2-medium")
    hf_folder = tmp_path / "hf"
    hf_folder.mkdir()
    (hf_folder / "config.json").write_text("{}")
    assert checkpoint.resolve(hf_folder).kind == "gpt2"
    with pytest.raises(UserError, match="no model at gpt3: give --model a checkpoint folder"):
        checkpoint.resolve("gpt3")
    with pytest.raises(UserError, match="--model is empty"):
        checkpoint.resolve("")
    with pytest.raises(UserError, match="no checkpoint at"):
        checkpoint.resolve(tmp_path)  # a folder without ckpt.pt


def test_an_interval_reads_as_written_and_a_malformed_one_fails_at_declaration():
    from minigpt.settings import interval, opt

    half_open = interval("(0, 1]")
    assert 0 not in half_open and 1e-9 in half_open and 1 in half_open and 1.0000001 not in half_open
    assert 10**12 in interval("[1, inf)") and 0 not in interval("[1, inf)")
    for bad in ("[0 1)", "0, 1", "[2, 1]", "[a, 1)"):
        with pytest.raises(ValueError):
            opt(0, "x", range=bad)
