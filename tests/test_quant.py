"""Int8 weight-only quantization: the error bound of one Linear, generation, the compiled decode step,
the --quantize setting, and the float checkpoint left as it was."""

import copy
import hashlib

import pytest
import torch

from minigpt import checkpoint, quant
from minigpt.config import RuntimeConfig, SampleConfig
from minigpt.errors import UserError
from minigpt.generate import GREEDY, compile_step, decode_steps, generate
from minigpt.model import GPT, GPTConfig, KVCache
from minigpt.sample import sample
from minigpt.tokenizer import CharTokenizer

CFG = GPTConfig(block_size=16, vocab_size=40, n_layer=2, n_head=2, n_embd=32)
CPU_RUN = RuntimeConfig(device="cpu", dtype="float32")


def sharp_model() -> GPT:
    torch.manual_seed(0)
    m = GPT(CFG).eval()
    with torch.no_grad():  # x2: logits far enough apart that greedy picks are not near-ties
        for p in m.parameters():
            p.mul_(2.0)
    return m


def test_int8_linear_is_within_half_a_step_per_weight():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 96)
    q = quant.Int8Linear(lin)
    assert q.weight.dtype == torch.int8 and q.weight.abs().max() == 127  # each row's largest weight maps to +-127
    x = torch.randn(5, 64)
    with torch.no_grad():
        err = (q(x) - lin(x)).abs()  # (5, 96)
    # rounding moves each weight by at most scale/2, so output j moves by at most scale_j / 2 * sum_i |x_i|;
    # 1e-5 covers fp32's own rounding of the two sums
    bound = q.scale / 2 * x.abs().sum(-1, keepdim=True) + 1e-5
    assert (err <= bound).all()
    assert err.max() > 1e-4  # it is quantized: not the float weights
    assert (err.max() < 0.01 * lin(x).abs().max())  # and close: ~0.2% of the output scale


def test_quantize_swaps_every_linear_including_the_tied_head():
    m = quant.quantize(copy.deepcopy(sharp_model()), "int8")
    linears = [n for n, mod in m.named_modules() if isinstance(mod, quant.Int8Linear)]
    assert len(linears) == 4 * CFG.n_layer + 1 and "lm_head" in linears
    assert not any(isinstance(mod, torch.nn.Linear) for mod in m.modules())
    assert m.transformer.wte.weight.dtype == torch.float32  # the embedding lookup keeps its float table


def test_int8_greedy_generation_follows_fp32():
    fp32 = sharp_model()
    int8 = quant.quantize(copy.deepcopy(fp32), "int8")
    idx = torch.randint(0, 40, (4, 3), generator=torch.Generator().manual_seed(3))
    out = generate(int8, idx, max_new_tokens=12, sampling=GREEDY)  # cached decode, one row per step
    with torch.no_grad():
        ref = fp32(out[:, :-1])[:, 2:]  # fp32 logits (B, 12, V) at the positions int8 chose tokens at
    # each weight moves by at most half a step, 1/254 of its row's largest; through two layers the logits
    # stay within 3% of their scale (measured: 1.2%), so each int8 pick is within 2 x 3% of fp32's best
    tol = 0.03 * ref.abs().max()
    chosen = ref.gather(-1, out[:, 3:, None])[..., 0]  # (B, 12)
    assert (chosen >= ref.max(-1).values - 2 * tol).all()
    with torch.no_grad():
        assert (int8(out) - fp32(out)).abs().max() <= tol


def test_compiled_decode_step_equals_eager():
    # the compiled step takes other paths (inductor's packed GEMM template for fp32 / bf16 weights,
    # Int8Linear's fused dequantize): it must give the eager tokens and, up to summation order, the eager
    # logits: fp32 and int8 to 1e-5; bf16 to one bf16 step at the logits' scale (2^-7 x max |logit|;
    # measured: 0.0059 of a 0.0095 bound), since both paths round each layer's output to bf16
    fp32 = sharp_model()
    int8 = quant.quantize(copy.deepcopy(fp32), "int8")
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    idx = torch.randint(0, 40, (2, 3), generator=torch.Generator().manual_seed(4))
    for m in (fp32, int8, bf16):
        step = compile_step(m)
        eager = torch.cat(list(decode_steps(m, idx, max_new_tokens=6, sampling=GREEDY)), 1)
        compiled = torch.cat(list(decode_steps(m, idx, max_new_tokens=6, sampling=GREEDY, step=step)), 1)
        assert torch.equal(eager, compiled)
        with torch.inference_mode():
            dtype = m.transformer.wte.weight.dtype
            caches = [KVCache(CFG, 1, 8, dtype=dtype) for _ in range(2)]
            m(idx[:1], caches[0]), m(idx[:1], caches[1])
            got, want = step(idx[:1, :1], caches[0]).float(), m(idx[:1, :1], caches[1]).float()
            atol = 2**-7 * want.abs().max().item() if dtype == torch.bfloat16 else 1e-5
            torch.testing.assert_close(got, want, atol=atol, rtol=0 if dtype == torch.bfloat16 else 1e-5)


def test_compiled_step_compiles_once_from_a_one_token_prompt_past_a_full_cache():
    # a one-token prompt (position 0) and the step that fills the cache (its slice the whole tensor) were
    # cases of their own for compiled code: 30 s of GPT-2 compile each, mid-generation. One graph serves all.
    from torch._dynamo.utils import counters

    m = sharp_model()
    step = compile_step(m)
    idx = torch.randint(0, 40, (1, 1), generator=torch.Generator().manual_seed(5))
    before = counters["stats"]["unique_graphs"]
    compiled = generate(m, idx, max_new_tokens=CFG.block_size + 3, sampling=GREEDY, step=step)
    assert counters["stats"]["unique_graphs"] - before == 1
    assert torch.equal(compiled, generate(m, idx, max_new_tokens=CFG.block_size + 3, sampling=GREEDY))


def test_compiled_step_packs_float_weights_and_keeps_int8_fused():
    # fp32 / bf16 weights go through inductor's packed GEMM template (frozen into the step) where it has kernels
    # (bf16 on x86 only); int8 weights keep the fused multiply-and-sum, and fp16 (not measured) the plain compile
    from torch._inductor import cpu_vec_isa

    from minigpt.generate import _cpu_gemm_template_runs
    fp32 = sharp_model()
    x86 = isinstance(cpu_vec_isa.pick_vec_isa(), (cpu_vec_isa.VecAVX2, cpu_vec_isa.VecAVX512))
    arm = isinstance(cpu_vec_isa.pick_vec_isa(), (cpu_vec_isa.VecNEON, cpu_vec_isa.VecSVE))
    assert _cpu_gemm_template_runs(fp32) == (x86 or arm)
    assert _cpu_gemm_template_runs(copy.deepcopy(fp32).to(torch.bfloat16)) == x86
    assert not _cpu_gemm_template_runs(quant.quantize(copy.deepcopy(fp32), "int8"))
    assert not _cpu_gemm_template_runs(copy.deepcopy(fp32).half())


@pytest.fixture
def char_ckpt(tmp_path):
    tok = CharTokenizer("abcdefghijklmnopqrstuvwxyz ,.:\n!?ABCDEFGH")
    checkpoint.save(tmp_path / "ckpt.pt", GPT(GPTConfig(**{**CFG.__dict__, "vocab_size": tok.vocab_size})), tok.spec())
    return tmp_path


def test_bad_quantize_setting_is_one_clear_error(char_ckpt):
    for bad in ("int4", "INT8", ""):
        with pytest.raises(UserError, match=r"^--quantize must be one of none, int8, got '.*'$"):
            sample(SampleConfig(model=str(char_ckpt), quantize=bad), CPU_RUN)
    with pytest.raises(ValueError, match="quantize must be one of"):
        quant.quantize(GPT(CFG), "fp8")


def test_sampling_int8_leaves_the_float_checkpoint_as_it_was(char_ckpt, capsys):
    path = char_ckpt / "ckpt.pt"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    before = checkpoint.load_model(char_ckpt).model.state_dict()
    texts = sample(SampleConfig(model=str(char_ckpt), start="ab", num_samples=2, max_new_tokens=8,
                                temperature=0.0, quantize="int8"), CPU_RUN)
    assert len(texts) == 2 and all(len(t) == 10 for t in texts)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    after = checkpoint.load_model(char_ckpt).model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert all(v.dtype == torch.float32 for v in after.values())
