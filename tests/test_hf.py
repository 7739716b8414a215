"""Our GPT-2 against Hugging Face's on the same weights: import, export, fine-tuning start, bad folders."""

import json

import pytest
import torch

from conftest import needs_gpt2, run

transformers = pytest.importorskip("transformers")
from minigpt import checkpoint  # noqa: E402
from minigpt.errors import UserError  # noqa: E402
from minigpt.tools.export import export_hf  # noqa: E402
from minigpt.generate import GREEDY, generate  # noqa: E402
from minigpt.model import GPT, GPTConfig  # noqa: E402

SMALL = dict(n_layer=2, n_head=2, n_embd=32, n_positions=64)
# Our logits against transformers' on the same weights. Importing OpenAI's architecture, HF's NewGELU and
# torch's tanh GELU round differently: max |gap| measured 2.4e-6 to 4.3e-6 (three seeds, these sharpened
# random weights, fp32 CPU). An export of our own model measured 0 (the same kernels on both sides).
IMPORT_ATOL = 1e-5
EXPORT_ATOL = 1e-6


def _sharpen(model):
    with torch.no_grad():  # larger weights than the 0.02 init: logits far from zero, greedy far from ties
        for p in model.parameters():
            p.mul_(4.0)
    return model


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A random-weight GPT2LMHeadModel saved locally (OpenAI's architecture, tanh GELU, small dims)."""
    torch.manual_seed(0)
    ref = _sharpen(transformers.GPT2LMHeadModel(transformers.GPT2Config(**SMALL))).eval()
    folder = tmp_path_factory.mktemp("hf") / "gpt2-small-random"
    ref.save_pretrained(folder)
    return folder, ref


def _hf_greedy(ref, idx, n):
    out = ref.generate(idx, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0,
                       attention_mask=torch.ones_like(idx))
    return out


def test_import_matches_transformers_logits_and_greedy_tokens(hf_folder):
    folder, ref = hf_folder
    loaded = checkpoint.load_model(str(folder))
    model = loaded.model
    assert loaded.state is None and loaded.tokenizer.spec() == {"kind": "tiktoken", "name": "gpt2"}
    assert model.config.activation == "gelu_tanh" and model.config.bias and model.config.block_size == 64
    idx = torch.randint(0, 50257, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), ref(idx).logits, atol=IMPORT_ATOL, rtol=0)
    prompt = idx[:1, :8]
    assert torch.equal(generate(model, prompt, max_new_tokens=20, sampling=GREEDY), _hf_greedy(ref, prompt, 20))


def test_greedy_matches_transformers_past_the_context_limit(hf_folder):
    # GPT2LMHeadModel stops at n_positions; the reference slides the window by hand: at each step the
    # last block_size tokens, from position 0, argmax. minigpt's cached generation must pick the same.
    folder, ref = hf_folder
    model = checkpoint.load_model(str(folder)).model
    block = model.config.block_size
    prompt = torch.randint(0, 50257, (1, 10), generator=torch.Generator().manual_seed(2))
    ids = prompt
    with torch.no_grad():
        for _ in range(block + 20):
            logits = ref(ids[:, -block:]).logits[:, -1]
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generate(model, prompt, max_new_tokens=block + 20, sampling=GREEDY), ids)


@pytest.mark.parametrize("bias", [True, False])
def test_export_round_trip(tmp_path, bias):
    torch.manual_seed(1)
    model = _sharpen(GPT(GPTConfig(block_size=32, vocab_size=50257, n_layer=2, n_head=2, n_embd=32, bias=bias))).eval()
    checkpoint.save(tmp_path / "ckpt.pt", model, {"kind": "tiktoken", "name": "gpt2"})
    dest = export_hf(tmp_path, tmp_path / "hf")
    ref = transformers.GPT2LMHeadModel.from_pretrained(dest).eval()
    idx = torch.randint(0, 50257, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(ref(idx).logits, model(idx), atol=EXPORT_ATOL, rtol=0)
    prompt = idx[:1, :4]
    assert torch.equal(_hf_greedy(ref, prompt, 16), generate(model, prompt, max_new_tokens=16, sampling=GREEDY))
    again = checkpoint.load_model(str(dest)).model  # and back: the same model
    with torch.no_grad():
        torch.testing.assert_close(again(idx), model(idx), atol=1e-6, rtol=0)


def test_export_cli_and_bad_format(tmp_path):
    tok = {"kind": "char", "chars": "abc"}
    checkpoint.save(tmp_path / "ckpt.pt", GPT(GPTConfig(block_size=8, vocab_size=3, n_layer=1, n_head=1, n_embd=8)), tok)
    p = run("-m", "minigpt", "export", f"--model={tmp_path}", "--to=hf", str(tmp_path / "out"))
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert "not GPT-2's" in p.stdout and config["vocab_size"] == 3 and config["eos_token_id"] is None
    assert json.loads((tmp_path / "out" / "minigpt_tokenizer.json").read_text()) == tok
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "out" / "model.safetensors")
    assert weights["transformer.wte.weight"].shape == (3, 8) and "lm_head.weight" not in weights  # tied
    p = run("-m", "minigpt", "export", f"--model={tmp_path}", "--to=onnx", str(tmp_path / "o2"), check=False)
    assert p.returncode == 2 and "--to must be one of hf, got 'onnx'" in p.stderr and "Traceback" not in p.stderr


@needs_gpt2
@pytest.mark.parametrize("kind", ["gpt2", "bytes"])
def test_export_writes_the_tokenizers_end_of_text_id(tmp_path, kind):
    # a byte-level BPE's <|endoftext|> follows its 256 tokens; the model's vocabulary is padded past
    # GPT-2's 50257, where the export used to write GPT-2's 50256 whatever the tokenizer
    from minigpt.bpe import PATTERNS
    from minigpt.tokenizer import BPETokenizer, TiktokenTokenizer

    tok = TiktokenTokenizer("gpt2") if kind == "gpt2" else BPETokenizer([bytes([i]) for i in range(256)], PATTERNS["gpt2"])
    model = GPT(GPTConfig(block_size=8, vocab_size=50304, n_layer=1, n_head=1, n_embd=8))
    checkpoint.save(tmp_path / "ckpt.pt", model, tok.spec())
    config = json.loads((export_hf(tmp_path, tmp_path / "hf") / "config.json").read_text())
    assert config["eos_token_id"] == config["bos_token_id"] == tok.eot_id == (50256 if kind == "gpt2" else 256)


@needs_gpt2
def test_sample_from_a_local_gpt2_folder(hf_folder, capsys):
    from minigpt.config import RuntimeConfig, SampleConfig
    from minigpt.sample import sample

    folder, _ = hf_folder
    texts = sample(SampleConfig(model=str(folder), start="", num_samples=2, max_new_tokens=8), RuntimeConfig(device="cpu"))
    assert len(texts) == 2 and "end-of-text" in capsys.readouterr().out


@pytest.mark.parametrize("change,needle", [
    ({"model_type": "bert"}, "not GPT-2"),
    ({"activation_function": "relu"}, "cannot represent"),
    ({"vocab_size": 1000}, "fewer than GPT-2's"),
])
def test_foreign_configs_are_refused(hf_folder, tmp_path, change, needle):
    folder, _ = hf_folder
    config = {**json.loads((folder / "config.json").read_text()), **change}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=needle):
        checkpoint.load_model(str(tmp_path))
    with pytest.raises(UserError, match=needle):
        checkpoint.read_config(str(tmp_path))


def test_folder_without_weights_is_refused(hf_folder, tmp_path):
    folder, _ = hf_folder
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(UserError, match="no model.safetensors"):
        checkpoint.load_model(str(tmp_path))


@needs_gpt2
def test_fine_tuning_starts_from_the_imported_weights(hf_folder, tmp_path, corpus_file, char_dataset):
    from conftest import prepare_text
    from minigpt.config import build_config, train_sections
    from minigpt.trainer import train

    folder, ref = hf_folder
    ds = tmp_path / "ds_gpt2"
    prepare_text(corpus_file.read_text(), ds, "gpt2")
    args = {"dataset": str(ds), "model": str(folder), "max_iters": 0, "eval_iters": 1, "batch_size": 2,
            "block_size": 16, "device": "cpu", "plot": False, "out_dir": str(tmp_path / "out")}
    train(build_config(train_sections(), None, args))
    loaded = checkpoint.load_model(tmp_path / "out")
    model, tok = loaded.model, loaded.tokenizer
    assert model.config.block_size == 16 and tok.spec()["name"] == "gpt2"
    idx = torch.randint(0, 50257, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), ref(idx).logits, atol=IMPORT_ATOL, rtol=0)
    with pytest.raises(UserError, match="trained with the gpt2 tokenizer"):
        train(build_config(train_sections(), None,
                           {**args, "dataset": str(char_dataset), "out_dir": str(tmp_path / "o2")}))


def test_load_model_crops_to_a_shorter_context_and_reads_configs_alone(hf_folder, tmp_path):
    import dataclasses

    folder, ref = hf_folder
    own = checkpoint.read_config(str(folder))
    assert own == checkpoint.load_model(str(folder)).model.config and own.block_size == 64
    short = dataclasses.replace(own, block_size=16, dropout=0.1)
    model = checkpoint.load_model(str(folder), config=short).model
    assert model.config == short and model.transformer.wpe.weight.shape[0] == 16
    idx = torch.randint(0, 50257, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), ref(idx).logits, atol=IMPORT_ATOL, rtol=0)  # eval mode: no dropout
    with pytest.raises(UserError, match="longer than the context"):
        checkpoint.load_model(str(folder), config=dataclasses.replace(own, block_size=128))
    with pytest.raises(UserError, match="n_layer=2"):
        checkpoint.load_model(str(folder), config=dataclasses.replace(own, n_layer=3))
    checkpoint.save(tmp_path / "ckpt.pt", model, {"kind": "tiktoken", "name": "gpt2"}, iter_num=7)
    assert checkpoint.read_config(tmp_path) == short  # a checkpoint: from its header, weights left unread
    assert checkpoint.load_model(tmp_path / "ckpt.pt").description.endswith("(iter 7)")


def _own_tokenizer(kind):
    from conftest import TEXT
    from minigpt.bpe import PATTERNS, train_bpe
    from minigpt.tokenizer import BPETokenizer, CharTokenizer

    if kind == "char":
        return CharTokenizer.from_text(TEXT, eot=True)
    if kind == "bpe":  # a small BPE of our own, trained by minigpt.bpe
        pytest.importorskip("tokenizers")
        return train_bpe([TEXT], 300)
    return BPETokenizer([bytes([i]) for i in range(256)], PATTERNS["gpt2"], name="bytes")  # model vocab padded below


@pytest.mark.parametrize("kind", ["char", "bpe", "padded"])
def test_export_round_trip_keeps_the_models_own_tokenizer(tmp_path, kind, capsys):
    # It came back with GPT-2's BPE: silently for a vocabulary of >= 50257 (the padded one here, as a
    # 50,301-token BPE), refused as "fewer than GPT-2's BPE needs" for a small one.
    from minigpt.config import RuntimeConfig, SampleConfig
    from minigpt.sample import sample

    tok = _own_tokenizer(kind)
    torch.manual_seed(2)
    vocab = 50304 if kind == "padded" else tok.vocab_size
    model = _sharpen(GPT(GPTConfig(block_size=16, vocab_size=vocab, n_layer=1, n_head=2, n_embd=16, bias=True))).eval()
    checkpoint.save(tmp_path / "ckpt.pt", model, tok.spec())
    dest = export_hf(tmp_path, tmp_path / "hf")
    assert json.loads((dest / "minigpt_tokenizer.json").read_text()) == tok.spec()
    assert "not GPT-2's" in capsys.readouterr().out
    loaded = checkpoint.load_model(str(dest))
    assert loaded.tokenizer.spec() == tok.spec() and checkpoint.read_header(str(dest)).tokenizer == tok.spec()
    idx = torch.tensor([tok.encode("Speak, speak.")[:16]])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(idx), model(idx), atol=1e-6, rtol=0)
        ref = transformers.GPT2LMHeadModel.from_pretrained(dest).eval()
        torch.testing.assert_close(ref(idx).logits, model(idx), atol=EXPORT_ATOL, rtol=0)
    # the padded model's ids past its tokenizer's are never drawn (they were, and decoding them raised KeyError)
    texts = sample(SampleConfig(model=str(dest), start="Speak", num_samples=2, max_new_tokens=40, stream=False,
                                temperature=2.0, top_k=0), RuntimeConfig(device="cpu"))
    assert all(text.startswith("Speak") for text in texts)
    if kind == "char":
        assert set(texts[0]) <= set(tok.chars)  # the char vocabulary's own characters, not GPT-2 words
    (dest / "minigpt_tokenizer.json").write_text("{not json")
    with pytest.raises(UserError, match="minigpt_tokenizer.json cannot be read"):
        checkpoint.load_model(str(dest))


def test_a_sharded_index_may_name_only_files_in_its_folder(hf_folder, tmp_path):
    from safetensors.torch import load_file, save_file

    folder, ref = hf_folder
    weights = load_file(folder / "model.safetensors")
    names = sorted(weights)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text((folder / "config.json").read_text())
    save_file({k: weights[k] for k in names[:5]}, model / "part-1.safetensors")
    save_file({k: weights[k] for k in names[5:]}, tmp_path / "elsewhere.safetensors")  # beside the folder
    for outside in ["../elsewhere.safetensors", str(tmp_path / "elsewhere.safetensors")]:
        index = {"weight_map": {**{k: "part-1.safetensors" for k in names[:5]}, **{k: outside for k in names[5:]}}}
        (model / "model.safetensors.index.json").write_text(json.dumps(index))
        with pytest.raises(UserError, match="names the shard .*elsewhere.safetensors', outside"):
            checkpoint.load_model(str(model))
    save_file({k: weights[k] for k in names[5:]}, model / "part-2.safetensors")  # inside: loads, the same model
    index = {"weight_map": {**{k: "part-1.safetensors" for k in names[:5]}, **{k: "part-2.safetensors" for k in names[5:]}}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    idx = torch.randint(0, 50257, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(checkpoint.load_model(str(model)).model(idx), ref(idx).logits, atol=IMPORT_ATOL, rtol=0)
