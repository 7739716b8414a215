"""Attention maps: the explicit-softmax path equals the model's SDPA path; the CLI draws and prints; bad input."""

import pytest
import torch

from conftest import needs_gpt2
from minigpt import checkpoint
from minigpt.tools.attention_maps import check_attention_weights, forward_with_attention, main, pick_token, top_attended
from minigpt.config import PRESETS
from minigpt.errors import UserError
from minigpt.model import GPT, GPTConfig
from minigpt.tokenizer import CharTokenizer, TiktokenTokenizer

TEXT = "The cat sat on the mat"


def tiny_model(vocab_size: int, **kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**PRESETS["tiny"], "vocab_size": vocab_size, "bias": True, **kw})).eval()


def test_explicit_softmax_gives_the_models_logits():
    model = tiny_model(50)
    idx = torch.randint(0, 50, (2, 32))
    logits, att = forward_with_attention(model, idx)
    with torch.no_grad():
        assert torch.allclose(logits, model(idx), atol=1e-5)
    assert att.shape == (2, 2, 2, 32, 32)  # (n_layer, B, nh, T, T)
    assert torch.allclose(att.sum(-1), torch.ones(2, 2, 2, 32))  # each row a distribution
    assert (att.triu(1) == 0).all()  # nothing attends to the future


def test_pick_token_and_top_attended():
    pieces = list("the cat sat")
    assert pick_token("", pieces) == 10
    assert pick_token("cat", pieces) == 6  # the token ending the word
    assert pick_token("3", pieces) == 3 and pick_token("-2", pieces) == 9
    with pytest.raises(UserError, match="does not occur"):
        pick_token("dog", pieces)
    with pytest.raises(UserError, match="out of range"):
        pick_token("11", pieces)
    att = torch.zeros(1, 1, 1, 3, 3)
    att[0, 0, 0, 2] = torch.tensor([0.2, 0.7, 0.1])
    assert [j for j, _ in top_attended(att, 2, 2)[0][0]] == [1, 0]


@pytest.fixture
def char_ckpt(tmp_path):
    tok = CharTokenizer(TEXT + "xyz")
    checkpoint.save(tmp_path / "ckpt.pt", tiny_model(tok.vocab_size), tok.spec())
    return tmp_path


def test_cli_draws_the_grid_and_prints_the_chosen_token(char_ckpt, tmp_path, capsys):
    out = tmp_path / "maps.png"
    assert main([f"--model={char_ckpt}", f"--text={TEXT}", "--token=cat", f"--out={out}"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "'t' (cat) #6 attends most to" in printed
    assert "layer 1 head 1:" in printed and "2 layers x 2 heads" in printed
    main([f"--model={char_ckpt}", f"--text={TEXT}", "--layer=1", "--head=0", f"--out={out}"])
    printed = capsys.readouterr().out
    assert "layer 1, head 0" in printed and "layer 0 head" not in printed


def test_cli_takes_the_runtime_section_every_command_shares(char_ckpt, tmp_path, capsys):
    from minigpt.tools.attention_maps import AttentionConfig
    from minigpt.config import RuntimeConfig

    assert not set(AttentionConfig.__dataclass_fields__) & set(RuntimeConfig.__dataclass_fields__)
    main([f"--model={char_ckpt}", f"--text={TEXT}", f"--out={tmp_path / 'a.png'}", "--device=cpu",
          "--dtype=bfloat16", "--threads=1"])
    assert "heatmaps written" in capsys.readouterr().out
    with pytest.raises(UserError, match="--dtype must be one of auto, float32, bfloat16, float16, got .fp8."):
        main([f"--model={char_ckpt}", f"--text={TEXT}", "--dtype=fp8"])


@needs_gpt2
def test_cli_on_a_bpe_checkpoint(tmp_path, capsys):
    tok = TiktokenTokenizer("gpt2")
    checkpoint.save(tmp_path / "ckpt.pt", tiny_model(tok.vocab_size), tok.spec())
    main([f"--model={tmp_path}", "--text=The cat that was sitting on the mat jumped", "--token=jumped",
          f"--out={tmp_path / 'a.png'}"])
    assert "' jumped' #" in capsys.readouterr().out and (tmp_path / "a.png").is_file()


@needs_gpt2
def test_cli_on_imported_gpt2_weights(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    folder = tmp_path / "hf-gpt2"
    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64)).save_pretrained(folder)
    main([f"--model={folder}", "--text=The cat sat on the mat", "--layer=1", f"--out={tmp_path / 'a.png'}",
          "--dtype=float32"])  # the 1e-4 below is fp32's; auto may pick bf16
    printed = capsys.readouterr().out
    diff = float(printed.split("logits match the model's to ")[1].split(")")[0])
    assert diff < 1e-4 and "' mat' #5 attends most to" in printed


@pytest.mark.parametrize("args,msg", [
    (["--layer=2"], r"--layer=2 is out of range: the model has 2 layers \(0 to 1\)"),
    (["--head=-1"], "--head must be in \\[0, inf\\), got -1"),
    (["--text=" + "the cat " * 5], "--text has 40 tokens, more than the model's context of 32; shorten it"),
    (["--text="], "--text is empty"),
    (["--token=dog"], "does not occur in the text"),
    (["--text=Q"], "not in this model's character vocabulary"),
    (["--out=/proc/nope/x.png"], "cannot write the heatmaps"),
    (["--top=0"], r"--top must be in \[1, inf\), got 0"),
    (["--init_from=gpt2"], "--init_from is now --model, as --model=gpt2"),
    (["--out_dir=out"], "--out_dir is now --model, as --model=out"),
])
def test_cli_bad_input_is_one_clear_error(char_ckpt, tmp_path, args, msg):
    with pytest.raises(UserError, match=msg):
        main([f"--model={char_ckpt}", f"--text={TEXT}", f"--out={tmp_path / 'x.png'}", *args])


def test_checkpoint_without_the_expected_attention_weights(tmp_path):
    model = tiny_model(20)
    model.transformer.h[1].attn.c_attn = torch.nn.Linear(32, 32)  # not a fused q/k/v projection
    with pytest.raises(UserError, match="block 1 of this checkpoint has no attention weights of the expected"):
        check_attention_weights(model)
    state = tiny_model(20).state_dict()
    del state["transformer.h.0.attn.c_attn.weight"]
    checkpoint.save(tmp_path / "ckpt.pt", tiny_model(20), CharTokenizer("abc").spec(), model_state=state)
    with pytest.raises(UserError, match="do not fit"):
        main([f"--model={tmp_path}", "--text=abc"])
