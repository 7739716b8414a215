"""The lectures' attention variants agree with each other and with the model's SDPA attention."""

import torch

from minigpt.lessons.attention import (
    INPUTS, CausalAttention, MultiHeadAttention, MultiHeadAttentionWrapper, SelfAttention, fuse_wrapper_weights,
    simplified_attention, simplified_attention_loop,
)
from minigpt.model import CausalSelfAttention, GPTConfig


def test_loop_form_equals_matrix_form():
    torch.manual_seed(0)
    for x in (INPUTS, torch.randn(9, 5)):
        assert torch.allclose(simplified_attention_loop(x), simplified_attention(x), atol=1e-6)
    # the lectures' context vector for "journey"
    assert torch.allclose(simplified_attention(INPUTS)[1], torch.tensor([0.4419, 0.6515, 0.5683]), atol=1e-4)


def test_trainable_attention_weights_are_scaled_softmax_rows():
    torch.manual_seed(0)
    sa = SelfAttention(3, 2)
    q, k = sa.W_query(INPUTS), sa.W_key(INPUTS)
    w = torch.softmax(q @ k.T / 2**0.5, dim=-1)
    assert torch.allclose(sa(INPUTS), w @ sa.W_value(INPUTS), atol=1e-6)


def test_causal_output_at_t_ignores_tokens_after_t():
    torch.manual_seed(0)
    for layer in (CausalAttention(3, 4, context_length=6), MultiHeadAttention(3, 4, context_length=6, num_heads=2)):
        x = torch.rand(2, 6, 3)
        y = x.clone()
        t = 2
        y[:, t + 1:] = torch.rand(2, 6 - t - 1, 3)  # change only the future
        a, b = layer(x), layer(y)
        assert torch.allclose(a[:, : t + 1], b[:, : t + 1], atol=1e-6)
        assert not torch.allclose(a[:, t + 1:], b[:, t + 1:])


def test_causal_dropout_only_while_training():
    torch.manual_seed(0)
    layer = CausalAttention(3, 4, context_length=6, dropout=0.5)
    x = torch.rand(1, 6, 3)
    assert not torch.allclose(layer(x), layer(x))  # training: different links dropped each call
    layer.eval()
    assert torch.allclose(layer(x), layer(x))


def test_wrapper_equals_fused_once_weights_are_copied():
    torch.manual_seed(0)
    wrapper = MultiHeadAttentionWrapper(5, 8, context_length=7, num_heads=4, qkv_bias=True)
    fused = MultiHeadAttention(5, 8, context_length=7, num_heads=4, qkv_bias=True)
    fuse_wrapper_weights(wrapper, fused)
    x = torch.rand(3, 7, 5)
    assert torch.allclose(wrapper(x), fused(x), atol=1e-6)


def test_fused_equals_the_models_sdpa_attention_forward_and_backward():
    torch.manual_seed(0)
    config = GPTConfig(n_embd=16, n_head=4, block_size=10, bias=True, dropout=0.0)
    model_attn = CausalSelfAttention(config)
    lesson = MultiHeadAttention(16, 16, context_length=10, num_heads=4, qkv_bias=True)
    with torch.no_grad():
        lesson.W_qkv.weight.copy_(model_attn.c_attn.weight)
        lesson.W_qkv.bias.copy_(model_attn.c_attn.bias)
        lesson.out_proj.weight.copy_(model_attn.c_proj.weight)
        lesson.out_proj.bias.copy_(model_attn.c_proj.bias)
    x = torch.randn(2, 10, 16)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = model_attn(xa), lesson(xb)
    assert torch.allclose(ya, yb, atol=1e-5)
    g = torch.randn_like(ya)  # an arbitrary upstream gradient
    ya.backward(g)
    yb.backward(g)
    assert torch.allclose(xa.grad, xb.grad, atol=1e-5)
    assert torch.allclose(model_attn.c_attn.weight.grad, lesson.W_qkv.weight.grad, atol=1e-5)
    assert torch.allclose(model_attn.c_attn.bias.grad, lesson.W_qkv.bias.grad, atol=1e-5)
    assert torch.allclose(model_attn.c_proj.weight.grad, lesson.out_proj.weight.grad, atol=1e-5)


def test_the_model_does_not_import_the_lessons():
    import minigpt.model

    assert "lessons" not in open(minigpt.model.__file__).read()


def test_walkthrough_prints_each_step(capsys):
    from minigpt.lessons.attention import main

    main()
    out = capsys.readouterr().out
    for s in ("(a) simplified", "(b) self-attention", "(c) causal", "(d) multi-head", "0.4419", "-inf",
              "loop form equals matrix form: True", "wrapper equals fused: True"):
        assert s in out
