"""Generation: the KV cache equals recomputing everything, the sampling rules, streaming text, bad input."""

import math

import pytest
import torch

from conftest import needs_gpt2
from minigpt import checkpoint
from minigpt.config import RuntimeConfig, SampleConfig
from minigpt.errors import UserError
from minigpt.generate import generate, sample_next
from minigpt.model import GPT, GPTConfig, KVCache
from minigpt.sample import TextStream, sample
from minigpt.tokenizer import CharTokenizer

CFG = GPTConfig(block_size=16, vocab_size=40, n_layer=2, n_head=2, n_embd=32)
CPU_RUN = RuntimeConfig(device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = GPT(CFG).eval()
    with torch.no_grad():  # sharper logits than the 0.02 init, so greedy choices are not near-ties
        for p in m.parameters():
            p.mul_(8.0)
    return m


def test_cached_logits_equal_full_forward(model):
    torch.manual_seed(1)
    seq = torch.randint(0, 40, (2, 16))
    cache = KVCache(CFG, 2, 16)
    with torch.no_grad():
        chunks = [seq[:, :5], seq[:, 5:9], *[seq[:, t : t + 1] for t in range(9, 16)]]  # prefill, chunk, steps
        got = torch.cat([model(c, cache) for c in chunks], dim=1)
        want = model(seq)
    assert cache.pos == 16
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prompt_len", [1, 7, 16, 23])
def test_cached_greedy_equals_reference_past_block_size(model, prompt_len):
    # 30 new tokens from a context of 16: every case but the first slides the window
    torch.manual_seed(prompt_len)
    idx = torch.randint(0, 40, (3, prompt_len))
    fast = generate(model, idx, 30, temperature=0)
    slow = generate(model, idx, 30, temperature=0, use_cache=False)
    assert fast.shape == (3, prompt_len + 30)
    assert torch.equal(fast, slow)


def test_sliding_window_sees_the_last_block_size_tokens(model):
    idx = torch.randint(0, 40, (1, 14))
    out = generate(model, idx, 6, temperature=0)  # positions 14..19: the window slides at 16
    for t in range(14, 20):
        with torch.no_grad():
            want = model(out[:, max(0, t - 16) : t])[:, -1].argmax(-1)
        assert out[0, t] == want


def test_bf16_cache_generation_runs(model):
    m = GPT(CFG).eval().to(torch.bfloat16)
    out = generate(m, torch.zeros(2, 3, dtype=torch.long), 20, temperature=0.8, top_k=5, top_p=0.9)
    assert out.shape == (2, 23) and int(out.max()) < 40


def test_single_row_bf16_linear_matches_the_matrix_path():
    from minigpt.model import Linear

    lin = Linear(64, 96).to(torch.bfloat16)
    x = torch.randn(1, 1, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        fast = lin(x)  # the matrix-vector path
    torch.testing.assert_close(fast, torch.nn.functional.linear(x, lin.weight, lin.bias), atol=2e-2, rtol=2e-2)
    assert fast.shape == (1, 1, 96)


def test_seed_gives_same_tokens_and_batch_rows_differ(model):
    idx = torch.zeros(4, 2, dtype=torch.long)
    a = generate(model, idx, 20, 1.0, generator=torch.Generator().manual_seed(5))
    b = generate(model, idx, 20, 1.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert len({tuple(r) for r in a.tolist()}) > 1  # one batch, independent samples


def test_eot_pads_finished_rows_and_stops_early(model):
    logits = model(torch.zeros(1, 1, dtype=torch.long))[0, -1]
    eot = int(logits.argmax())  # greedy produces it at once
    out = generate(model, torch.zeros(2, 1, dtype=torch.long), 10, temperature=0, eot_id=eot)
    assert out.shape == (2, 2) and (out[:, 1] == eot).all()


@pytest.mark.parametrize("temperature", [1e-30, 1e-8, 1e-3, 1.0, 1e6])
def test_sampling_never_nans(temperature):
    logits = torch.tensor([[1e4, -1e4, 3.0, -math.inf], [-math.inf] * 4, [math.nan, 2.0, math.inf, 0.0]])
    for _ in range(20):
        ids = sample_next(logits, temperature, top_k=3, top_p=0.5)
        assert ids.shape == (3, 1) and ids.min() >= 0 and ids.max() < 4
    assert sample_next(logits[:1], 1e-30).item() == 0  # tiny temperature is greedy


def test_top_k_top_p_and_greedy():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    draws = lambda **kw: {sample_next(logits, 1.0, generator=g, **kw).item() for _ in range(300)}  # noqa: E731
    assert draws(top_p=0.7) == {0, 1}  # 0.5 < 0.7 so the second token is needed, the third is not
    assert draws(top_p=0.5) == {0}
    assert draws(top_k=3) == {0, 1, 2}
    assert draws(top_k=1) == {0}
    assert sample_next(logits, 0.0).item() == 0


def test_repetition_penalty_demotes_seen_tokens():
    seen = torch.tensor([[True, False]])
    assert sample_next(torch.tensor([[2.0, 1.0]]), 0.0).item() == 0
    assert sample_next(torch.tensor([[2.0, 1.0]]), 0.0, seen=seen, repetition_penalty=3.0).item() == 1  # 2/3 < 1
    assert sample_next(torch.tensor([[-1.0, -2.0]]), 0.0, seen=seen, repetition_penalty=3.0).item() == 1  # -3 < -2


def _stream_pieces(tok, ids, stops):
    s = TextStream(tok, stops)
    pieces = []
    for i in ids:
        if s.done:
            break
        pieces.append(s.add(i))
    pieces.append(s.finish())
    return pieces, s.text


@needs_gpt2
def test_stream_decodes_multibyte_characters_across_tokens():
    from minigpt.tokenizer import TiktokenTokenizer

    tok = TiktokenTokenizer("gpt2")
    text = "naïve café → 世界 🎉 done"
    ids = tok.encode(text)
    assert len(ids) > len(text.split())  # some characters are split over several tokens
    pieces, full = _stream_pieces(tok, ids, [])
    assert "".join(pieces) == text == full
    assert not any("\ufffd" in p for p in pieces)


def test_stop_string_ends_before_it_and_is_never_printed():
    tok = CharTokenizer("abcdefghijklmnopqrstuvwxyz \n")
    pieces, full = _stream_pieces(tok, tok.encode("the end\n\nmore text"), ["\n\n", "zzz"])
    assert full == "the end" and "".join(pieces) == "the end"
    pieces, full = _stream_pieces(tok, tok.encode("stop at wor world"), ["world"])
    assert full == "stop at wor " and "".join(pieces) == full


@pytest.fixture
def char_ckpt(tmp_path, model):
    tok = CharTokenizer("abcdefghijklmnopqrstuvwxyz ,.:\n!?ABCDEFGH")
    m = GPT(GPTConfig(**{**CFG.__dict__, "vocab_size": tok.vocab_size}))
    checkpoint.save(tmp_path / "ckpt.pt", m, tok.spec())
    return tmp_path


def test_sample_streams_batch_and_stops(char_ckpt, capsys):
    texts = sample(SampleConfig(out_dir=str(char_ckpt), start="ab", num_samples=3, max_new_tokens=40,
                                temperature=1.0, top_p=0.9, stop=["e"]), CPU_RUN)
    out = capsys.readouterr().out
    assert len(texts) == 3 and all(t.startswith("ab") and "e" not in t[2:] for t in texts)
    assert out.count("---------------") == 3 and texts[1] in out
    again = sample(SampleConfig(out_dir=str(char_ckpt), start="ab", num_samples=3, max_new_tokens=40,
                                temperature=1.0, top_p=0.9, stop=["e"], stream=False), CPU_RUN)
    assert again == texts  # same seed, same text, streamed or not


def test_empty_prompt_on_a_char_model_starts_from_a_newline(char_ckpt, capsys):
    sample(SampleConfig(out_dir=str(char_ckpt), start="", num_samples=1, max_new_tokens=3), CPU_RUN)
    assert "starting from a newline" in capsys.readouterr().out


@pytest.mark.parametrize("kw,needle", [
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(temperature=-1.0), "temperature"),
    (dict(start="FILE:/nonexistent/prompt.txt"), "does not exist"), (dict(init_from="gpt3"), "unknown init_from"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
])
def test_bad_sample_settings_are_one_clear_error(char_ckpt, kw, needle):
    with pytest.raises(UserError, match=needle):
        sample(SampleConfig(out_dir=str(char_ckpt), **kw), CPU_RUN)


def test_not_gpt2_folder_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(UserError, match="not GPT-2"):
        sample(SampleConfig(init_from=str(tmp_path)), CPU_RUN)
