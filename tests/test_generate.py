"""Generation: the KV cache equals recomputing everything, the sampling rules, streaming text, bad input."""

import copy
import math

import pytest
import torch

from conftest import needs_gpt2
from minigpt import checkpoint
from minigpt.config import RuntimeConfig, SampleConfig
from minigpt.errors import UserError
from minigpt.generate import GREEDY, Sampling, generate, next_token_probs, sample_next
from minigpt.model import GPT, GPTConfig, KVCache
from minigpt.sample import TextDecoder, sample
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
    # In float64, so that only a wrong cache could make the two differ. In float32 they differ by 3e-5
    # here (7e-4 for other token draws): a 2-row decode step and the 32-row forward take different MKL
    # GEMM kernels (the first difference is at layer 0's c_attn, whose inputs are bit-identical), and
    # the 8x weights (LayerNorm gains of 8) put activations at ~25, where fp32's ulp is 2e-6; both paths
    # are then equally far from the float64 result. float64 shrinks that rounding by 2^-29 (measured:
    # 7e-14 here, at most 3e-12 over 8 draws), while one stale cached key moves logits by 2e-2.
    m = copy.deepcopy(model).double()
    torch.manual_seed(1)
    seq = torch.randint(0, 40, (2, 16))
    cache = KVCache(CFG, 2, 16, dtype=torch.float64)
    with torch.no_grad():
        chunks = [seq[:, :5], seq[:, 5:9], *[seq[:, t : t + 1] for t in range(9, 16)]]  # prefill, chunk, steps
        got = torch.cat([m(c, cache) for c in chunks], dim=1)
        want = m(seq)
    assert cache.pos == 16
    torch.testing.assert_close(got, want, atol=1e-9, rtol=0)


@pytest.mark.parametrize("prompt_len", [1, 7, 16, 23])
def test_cached_greedy_equals_reference_past_block_size(model, prompt_len):
    # 30 new tokens from a context of 16: every case but the first slides the window
    torch.manual_seed(prompt_len)
    idx = torch.randint(0, 40, (3, prompt_len))
    fast = generate(model, idx, max_new_tokens=30, sampling=GREEDY)
    slow = generate(model, idx, max_new_tokens=30, sampling=GREEDY, use_cache=False)
    assert fast.shape == (3, prompt_len + 30)
    assert torch.equal(fast, slow)


def test_sliding_window_sees_the_last_block_size_tokens(model):
    idx = torch.randint(0, 40, (1, 14))
    out = generate(model, idx, max_new_tokens=6, sampling=GREEDY)  # positions 14..19: the window slides at 16
    for t in range(14, 20):
        with torch.no_grad():
            want = model(out[:, max(0, t - 16) : t])[:, -1].argmax(-1)
        assert out[0, t] == want


def _native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@pytest.mark.skipif(not _native_bf16(), reason="no native bf16 on this CPU: emulated bf16 is ~100x slower")
def test_bf16_greedy_generation_follows_fp32():
    # weights x2, not x8: at x8 the LayerNorm gains amplify bf16's rounding past any useful bound
    torch.manual_seed(0)
    fp32 = GPT(CFG).eval()
    with torch.no_grad():
        for p in fp32.parameters():
            p.mul_(2.0)
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    idx = torch.randint(0, 40, (4, 3), generator=torch.Generator().manual_seed(3))
    out = generate(bf16, idx, max_new_tokens=12, sampling=GREEDY)  # the cached, single-row mv decode path
    with torch.no_grad():
        ref = fp32(out[:, :-1])[:, 2:]  # fp32 logits (B, 12, V) for the positions bf16 chose tokens at
    # bf16 keeps 8 significant bits (rounding 2^-9 = 0.2%); two layers of ~10 roundings stay within 3% of
    # the logit scale (measured: 0.6%), so each bf16 pick is within 2 x 3% of fp32's best logit
    tol = 0.03 * ref.abs().max()
    chosen = ref.gather(-1, out[:, 3:, None])[..., 0]  # (B, 12)
    assert (chosen >= ref.max(-1).values - 2 * tol).all()
    assert (bf16(out)[0].float() - fp32(out)[0]).abs().max() <= tol  # the full forward too


@pytest.mark.parametrize("shape", [(2, 0), (0,), (3,)])
def test_an_empty_or_unbatched_prompt_is_a_clear_error(model, shape):
    # an empty prompt raised IndexError from deep inside the decode loop
    with pytest.raises(ValueError, match=r"shape \(batch, length\) with length >= 1.*one token per row"):
        generate(model, torch.zeros(shape, dtype=torch.long), max_new_tokens=3, sampling=GREEDY)


def test_seed_gives_same_tokens_and_batch_rows_differ(model):
    idx = torch.zeros(4, 2, dtype=torch.long)
    a = generate(model, idx, max_new_tokens=20, sampling=Sampling(), generator=torch.Generator().manual_seed(5))
    b = generate(model, idx, max_new_tokens=20, sampling=Sampling(), generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert len({tuple(r) for r in a.tolist()}) > 1  # one batch, independent samples


def test_eot_pads_finished_rows_and_stops_early(model):
    logits = model(torch.zeros(1, 1, dtype=torch.long))[0, -1]
    eot = int(logits.argmax())  # greedy produces it at once
    out = generate(model, torch.zeros(2, 1, dtype=torch.long), max_new_tokens=10, sampling=GREEDY, eot_id=eot)
    assert out.shape == (2, 2) and (out[:, 1] == eot).all()


@pytest.mark.parametrize("temperature", [1e-30, 1e-8, 1e-3, 1.0, 1e6])
def test_sampling_never_nans(temperature):
    logits = torch.tensor([[1e4, -1e4, 3.0, -math.inf], [-math.inf] * 4, [math.nan, 2.0, math.inf, 0.0]])
    for _ in range(20):
        ids = sample_next(logits, Sampling(temperature, top_k=3, top_p=0.5))
        assert ids.shape == (3, 1) and ids.min() >= 0 and ids.max() < 4
        assert not next_token_probs(logits, Sampling(temperature, top_k=3, top_p=0.5)).isnan().any()
    assert sample_next(logits[:1], Sampling(1e-30)).item() == 0  # tiny temperature is greedy


def test_top_k_top_p_and_greedy():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    draws = lambda **kw: {sample_next(logits, Sampling(**kw), generator=g).item() for _ in range(300)}  # noqa: E731
    assert draws(top_p=0.7) == {0, 1}  # 0.5 < 0.7 so the second token is needed, the third is not
    assert draws(top_p=0.5) == {0}
    assert draws(top_k=3) == {0, 1, 2}
    assert draws(top_k=1) == {0}
    assert sample_next(logits, GREEDY).item() == 0


def test_top_k_keeps_exactly_k_tokens_on_ties():
    logits = torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    assert {sample_next(logits, Sampling(top_k=1), generator=g).item() for _ in range(100)} == {1}  # the lowest id
    assert (next_token_probs(logits, Sampling(top_k=2)) > 0).tolist() == [[False, True, True, False, False]]
    above = torch.tensor([[5.0, 3.0, 3.0, 3.0, 0.0]])  # one above the tie, one place left for the tied three
    assert (next_token_probs(above, Sampling(top_k=2)) > 0).tolist() == [[True, True, False, False, False]]


@pytest.mark.parametrize("weights,top_p,kept", [
    ([5, 3, 2], 0.8, 2),  # the example
    ([5, 4, 1], 0.5, 1),  # cumsum - probs rounded 0.5 down and kept a second token
    ([7, 6, 3], 0.8125, 2),
    ([8, 6, 5, 4, 1, 1], 0.92, 4),
    ([5, 3, 2], 1e-9, 1),  # the most likely token always stays
])
def test_top_p_keeps_the_smallest_prefix_reaching_it(weights, top_p, kept):
    logits = torch.log(torch.tensor([weights], dtype=torch.float32) / sum(weights))
    assert int((next_token_probs(logits, Sampling(top_p=top_p)) > 0).sum()) == kept


def test_temperature_flattens_or_sharpens_the_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, -3.0]])
    entropy = lambda t: float(-(lambda p: (p * p.log()).sum())(next_token_probs(logits, Sampling(t))))  # noqa: E731
    h = [entropy(t) for t in (0.25, 0.5, 1.0, 2.0, 4.0)]
    assert h == sorted(h) and h[0] < h[2] < h[-1]  # higher temperature, higher entropy
    assert entropy(1e3) == pytest.approx(math.log(5), abs=1e-3)  # very hot: uniform
    assert next_token_probs(logits, Sampling(1e-3))[0, 0] == pytest.approx(1.0)  # very cold: the argmax
    torch.testing.assert_close(next_token_probs(logits, Sampling(1.0)), torch.softmax(logits, -1))


def test_repetition_penalty_demotes_seen_tokens():
    seen = torch.tensor([[True, False]])
    assert sample_next(torch.tensor([[2.0, 1.0]]), GREEDY).item() == 0
    penalty = Sampling(0.0, repetition_penalty=3.0)
    assert sample_next(torch.tensor([[2.0, 1.0]]), penalty, seen=seen).item() == 1  # 2/3 < 1
    assert sample_next(torch.tensor([[-1.0, -2.0]]), penalty, seen=seen).item() == 1  # -3 < -2


def constant_logits_model(logits: list[float], vocab_size: int | None = None) -> GPT:
    """A GPT whose every position predicts `logits`: ln_f outputs its bias e_0, so logits = wte[:, 0]."""
    V = vocab_size or len(logits)
    m = GPT(GPTConfig(block_size=8, vocab_size=V, n_layer=1, n_head=1, n_embd=8, bias=True)).eval()
    with torch.no_grad():
        m.transformer.ln_f.weight.zero_()
        m.transformer.ln_f.bias.zero_()
        m.transformer.ln_f.bias[0] = 1.0
        m.transformer.wte.weight[:, 0] = torch.tensor(logits + [-10.0] * (V - len(logits)))
    return m


@pytest.mark.parametrize("use_cache", [True, False])
def test_repetition_penalty_through_generate(use_cache):
    m = constant_logits_model([4.0, 3.0, 2.5, 0.0])
    prompt = torch.tensor([[0]])
    plain = generate(m, prompt, max_new_tokens=3, sampling=GREEDY, use_cache=use_cache)
    assert plain[0, 1:].tolist() == [0, 0, 0]
    out = generate(m, prompt, max_new_tokens=3, sampling=Sampling(0.0, repetition_penalty=2.0), use_cache=use_cache)
    # step 1: 0 is in the prompt (4 -> 2), so 1 (3); step 2: 1 was generated (3 -> 1.5), so 2 (2.5);
    # step 3: all three seen (2, 1.5, 1.25), so 0 again
    assert out[0, 1:].tolist() == [1, 2, 0]


def _decoded_pieces(tok, ids, stops):
    s = TextDecoder(tok, stops)
    pieces = []
    for i in ids:
        if s.done:
            break
        pieces.append(s.add(i))
    pieces.append(s.finish())
    return pieces, s.text


@needs_gpt2
def test_decoder_releases_multibyte_characters_whole():
    from minigpt.tokenizer import TiktokenTokenizer

    tok = TiktokenTokenizer("gpt2")
    text = "naïve café → 世界 🎉 done"
    ids = tok.encode(text)
    assert len(ids) > len(text.split())  # some characters are split over several tokens
    pieces, full = _decoded_pieces(tok, ids, [])
    assert "".join(pieces) == text == full
    assert not any("\ufffd" in p for p in pieces)


def test_stop_string_ends_before_it_and_is_never_printed():
    tok = CharTokenizer("abcdefghijklmnopqrstuvwxyz \n")
    pieces, full = _decoded_pieces(tok, tok.encode("the end\n\nmore text"), ["\n\n", "zzz"])
    assert full == "the end" and "".join(pieces) == "the end"
    pieces, full = _decoded_pieces(tok, tok.encode("stop at wor world"), ["world"])
    assert full == "stop at wor " and "".join(pieces) == full


@pytest.fixture
def char_ckpt(tmp_path, model):
    tok = CharTokenizer("abcdefghijklmnopqrstuvwxyz ,.:\n!?ABCDEFGH")
    m = GPT(GPTConfig(**{**CFG.__dict__, "vocab_size": tok.vocab_size}))
    checkpoint.save(tmp_path / "ckpt.pt", m, tok.spec())
    return tmp_path


def test_sample_streams_batch_and_stops(char_ckpt, capsys):
    texts = sample(SampleConfig(model=str(char_ckpt), start="ab", num_samples=3, max_new_tokens=40,
                                temperature=1.0, top_p=0.9, stop=["e"]), CPU_RUN)
    out = capsys.readouterr().out
    assert len(texts) == 3 and all(t.startswith("ab") and "e" not in t[2:] for t in texts)
    assert out.count("---------------") == 3 and texts[1] in out
    again = sample(SampleConfig(model=str(char_ckpt), start="ab", num_samples=3, max_new_tokens=40,
                                temperature=1.0, top_p=0.9, stop=["e"], stream=False), CPU_RUN)
    assert again == texts  # same seed, same text, streamed or not


def test_empty_prompt_on_a_char_model_starts_from_a_newline(char_ckpt, capsys):
    sample(SampleConfig(model=str(char_ckpt), start="", num_samples=1, max_new_tokens=3), CPU_RUN)
    assert "starting from a newline" in capsys.readouterr().out


@pytest.mark.parametrize("kw,needle", [
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(temperature=-1.0), "temperature"),
    (dict(start="FILE:/nonexistent/prompt.txt"), "does not exist"), (dict(model="gpt3"), "no model at gpt3"),
    (dict(repetition_penalty=0.0), "repetition_penalty"), (dict(top_k=-1), "top_k"),
])
def test_bad_sample_settings_are_one_clear_error(char_ckpt, kw, needle):
    with pytest.raises(UserError, match=needle):
        sample(SampleConfig(**{"model": str(char_ckpt), **kw}), CPU_RUN)


def test_not_gpt2_folder_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(UserError, match="not GPT-2"):
        sample(SampleConfig(model=str(tmp_path)), CPU_RUN)


def test_non_ascii_characters_of_a_char_model_are_sampled_and_streamed(tmp_path, capsys):
    tok = CharTokenizer("ab\u00e9\u2014\n")
    likely = [5.0 if ch in "\u00e9\u2014" else 0.0 for ch in tok.chars]  # é and — are by far the likeliest
    m = constant_logits_model(likely)
    checkpoint.save(tmp_path / "ckpt.pt", m, tok.spec())
    texts = sample(SampleConfig(model=str(tmp_path), start="a\u00e9", num_samples=2, max_new_tokens=30,
                                temperature=1.0, top_k=2), CPU_RUN)
    out = capsys.readouterr().out
    assert all(t.startswith("a\u00e9") and set(t[2:]) == {"\u00e9", "\u2014"} for t in texts)
    assert out.startswith(texts[0] + "\n---------------\n")  # the first sample, streamed as generated
    assert texts[1] in out


def test_ids_past_the_sampling_vocabulary_are_never_drawn():
    # a model padded past its tokenizer (50257 -> 50304) has logits for ids no tokenizer decodes
    logits = torch.zeros(4, 10)
    logits[:, 7:] = 50.0  # the padding ids are by far the likeliest
    for sampling in (Sampling(temperature=1.0, vocab_size=7), Sampling(temperature=0.0, vocab_size=7)):
        ids = sample_next(logits, sampling, generator=torch.Generator().manual_seed(0))
        assert ids.max().item() < 7
    assert sample_next(logits, Sampling(temperature=0.0)).min().item() >= 7  # without the limit they win
