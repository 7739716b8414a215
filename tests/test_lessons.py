"""The attention lesson's variants agree with each other and with the model's SDPA attention; without
positions self-attention is blind to word order, with them it is not; dot product against cosine."""

import pytest
import torch
import torch.nn.functional as F

from minigpt.lessons.attention import (
    INPUTS, WORDS, CausalAttention, CrossAttention, LearnedPositions, MultiHeadAttention, MultiHeadAttentionWrapper,
    SelfAttention, cosine_similarities, dot_products, fuse_wrapper_weights, simplified_attention,
    simplified_attention_loop, sinusoidal_positions,
)
from minigpt.model import CausalSelfAttention, GPTConfig


def test_loop_form_equals_matrix_form():
    torch.manual_seed(0)
    for x in (INPUTS, torch.randn(9, 5)):
        assert torch.allclose(simplified_attention_loop(x), simplified_attention(x), atol=1e-6)
    # the context vector for "journey" of Raschka's chapter 3
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


@pytest.mark.parametrize("causal", [True, False])
def test_wrapper_equals_fused_once_weights_are_copied(causal):
    torch.manual_seed(0)
    wrapper = MultiHeadAttentionWrapper(5, 8, context_length=7, num_heads=4, qkv_bias=True, causal=causal)
    fused = MultiHeadAttention(5, 8, context_length=7, num_heads=4, qkv_bias=True, causal=causal)
    fuse_wrapper_weights(wrapper, fused)
    x = torch.rand(3, 7, 5)
    assert torch.allclose(wrapper(x), fused(x), atol=1e-6)


def _model_and_lesson_attention(causal: bool):
    """The model's attention and the lesson's fused multi-head attention holding the same weights."""
    torch.manual_seed(0)
    model_attn = CausalSelfAttention(GPTConfig(n_embd=16, n_head=4, block_size=10, bias=True, dropout=0.0))
    lesson = MultiHeadAttention(16, 16, context_length=10, num_heads=4, qkv_bias=True, causal=causal)
    with torch.no_grad():
        lesson.W_qkv.weight.copy_(model_attn.c_attn.weight)
        lesson.W_qkv.bias.copy_(model_attn.c_attn.bias)
        lesson.out_proj.weight.copy_(model_attn.c_proj.weight)
        lesson.out_proj.bias.copy_(model_attn.c_proj.bias)
    return model_attn, lesson


def test_fused_equals_the_models_sdpa_attention_forward_and_backward():
    model_attn, lesson = _model_and_lesson_attention(causal=True)
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


def test_bidirectional_output_at_t_changes_with_token_t_plus_1_causal_does_not():
    torch.manual_seed(0)
    x = torch.rand(2, 6, 3)
    y = x.clone()
    t = 2
    y[:, t + 1] = torch.rand(2, 3)  # change only token t+1
    for causal in (True, False):
        for layer in (CausalAttention(3, 4, context_length=6, causal=causal),
                      MultiHeadAttention(3, 4, context_length=6, num_heads=2, causal=causal)):
            a, b = layer(x)[:, t], layer(y)[:, t]
            assert torch.allclose(a, b, atol=1e-6) == causal


def test_a_bidirectional_head_is_unmasked_self_attention():
    torch.manual_seed(0)
    wrapper = MultiHeadAttentionWrapper(5, 8, context_length=7, num_heads=4, causal=False)
    x = torch.rand(3, 7, 5)
    head = wrapper.heads[0]
    sa = SelfAttention(5, 2)
    sa.load_state_dict(head.state_dict(), strict=False)  # (b) has no mask at all
    assert torch.allclose(head(x), sa(x), atol=1e-6)


def test_cross_attention_on_x_x_equals_self_attention():
    torch.manual_seed(0)
    sa = SelfAttention(5, 4, qkv_bias=True)
    cross = CrossAttention(5, 4, qkv_bias=True)
    cross.load_state_dict(sa.state_dict())  # the same W_q, W_k, W_v
    for x in (torch.rand(7, 5), torch.rand(2, 7, 5)):
        assert torch.allclose(cross(x, x), sa(x), atol=1e-6)


def test_cross_attention_reads_a_source_of_another_length_and_width():
    torch.manual_seed(0)
    cross = CrossAttention(3, 4, d_source=5)
    x, source = torch.rand(2, 6, 3), torch.rand(2, 9, 5)
    out = cross(x, source)
    assert out.shape == (2, 6, 4)
    weights = torch.softmax(cross.W_query(x) @ cross.W_key(source).transpose(1, 2) / 2, dim=-1)  # sqrt(d_out) = 2
    assert torch.allclose(out, weights @ cross.W_value(source), atol=1e-6)
    # every query sees the whole source: changing its last token changes every output
    changed = source.clone()
    changed[:, -1] = torch.rand(2, 5)
    assert not torch.isclose(cross(x, changed), out, atol=1e-6).all(dim=-1).any()


def test_bidirectional_fused_equals_the_models_attention_without_the_mask():
    model_attn, lesson = _model_and_lesson_attention(causal=False)
    x = torch.randn(2, 10, 16)

    def model_sdpa(x, is_causal):
        """The model's own projections and SDPA call, with the mask switch exposed."""
        B, T, C = x.shape
        q, k, v = (t.view(B, T, 4, 4).transpose(1, 2) for t in model_attn.c_attn(x).split(C, dim=2))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)  # (B, nh, T, hs)
        return model_attn.c_proj(y.transpose(1, 2).reshape(B, T, C))

    assert torch.allclose(model_sdpa(x, True), model_attn(x), atol=1e-6)  # the reference is the model's computation
    unmasked = model_sdpa(x, False)
    assert torch.allclose(lesson(x), unmasked, atol=1e-5)
    assert not torch.allclose(unmasked, model_attn(x), atol=1e-3)  # and the mask did matter


def test_walkthrough_prints_each_step(capsys):
    from minigpt.lessons.attention import main

    main()
    out = capsys.readouterr().out
    for s in ("(a) simplified", "(b) self-attention", "(c) causal", "(d) multi-head", "(e) bidirectional", "0.4419",
              "-inf", "loop form equals matrix form: True", "wrapper equals fused: True",
              "(c) with causal=False equals (b): True", "cross-attention on (x, x) equals self-attention (b): True",
              "cosine similarities", "(f) positions", "outputs of the shuffled sentence == shuffled outputs: True",
              "with positions, outputs of the shuffled sentence == shuffled outputs: False"):
        assert s in out


def test_padding_mask_makes_a_padded_sentence_encode_as_the_sentence_alone():
    torch.manual_seed(0)
    attn = MultiHeadAttention(6, 8, context_length=9, num_heads=2, causal=False)
    x = torch.rand(1, 5, 6)
    padded = torch.cat([x, torch.rand(1, 4, 6)], dim=1)  # four padding tokens after the sentence
    pad = torch.tensor([[False] * 5 + [True] * 4])
    assert torch.allclose(attn(padded, pad)[:, :5], attn(x), atol=1e-6)
    assert not torch.allclose(attn(padded)[:, :5], attn(x), atol=1e-3)  # unmasked, the padding leaks in
    cross = CrossAttention(6, 4)
    w = cross.weights(torch.rand(1, 3, 6), padded, pad)  # (1, 3, 9)
    assert torch.allclose(w.sum(dim=-1), torch.ones(1, 3)) and (w[..., 5:] == 0).all()


# ---------------------------------------------------------------------------------------------------
# (f) positions

SHUFFLE = [5, 1, 2, 3, 4, 0]  # first and last word swapped


def _unmasked_attentions():
    torch.manual_seed(0)
    cross = CrossAttention(3, 4)
    return [SelfAttention(3, 4), MultiHeadAttention(3, 4, context_length=6, num_heads=2, causal=False),
            lambda x: cross(x, x)]


def test_without_positions_shuffled_tokens_give_the_same_outputs_shuffled():
    for attn in _unmasked_attentions():
        for x in (INPUTS, torch.rand(6, 3)):
            out = attn(x.unsqueeze(0))[0]
            assert torch.allclose(attn(x[SHUFFLE].unsqueeze(0))[0], out[SHUFFLE], atol=1e-6)
            perm = torch.randperm(6)
            assert torch.allclose(attn(x[perm].unsqueeze(0))[0], out[perm], atol=1e-6)


def test_with_positions_the_shuffled_outputs_differ():
    torch.manual_seed(0)
    learned = LearnedPositions(6, 3)
    for add_positions in (lambda x: x + sinusoidal_positions(6, 3), learned):
        for attn in _unmasked_attentions():
            out = attn(add_positions(INPUTS).unsqueeze(0))[0]
            shuffled = attn(add_positions(INPUTS[SHUFFLE]).unsqueeze(0))[0]
            assert not torch.allclose(shuffled, out[SHUFFLE], atol=1e-3)
            # every row changed, not only those of the two words that moved: each reads the whole sentence
            assert not torch.isclose(shuffled, out[SHUFFLE], atol=1e-6).all(dim=-1).any()


def test_sinusoidal_positions_follow_the_formula():
    pe = sinusoidal_positions(50, 8)
    t = torch.arange(50.0)
    assert torch.allclose(pe[:, 0], torch.sin(t)) and torch.allclose(pe[:, 1], torch.cos(t))  # i = 0: speed 1
    assert torch.allclose(pe[:, 6], torch.sin(t / 10000 ** (6 / 8)), atol=1e-6)
    assert torch.allclose(pe[:, 7], torch.cos(t / 10000 ** (6 / 8)), atol=1e-6)
    assert len({tuple(row) for row in pe.round(decimals=4).tolist()}) == 50  # every position its own vector
    assert sinusoidal_positions(6, 3).shape == (6, 3)  # an odd width: one more sine than cosines


def test_cosine_keeps_the_angle_dot_product_grows_with_length():
    x = INPUTS
    cos, dot = cosine_similarities(x), dot_products(x)
    assert torch.allclose(cos, F.cosine_similarity(x[:, None], x[None, :], dim=-1), atol=1e-6)
    assert torch.allclose(cos.diagonal(), torch.ones(6))
    assert torch.allclose(dot, x @ x.T)  # the scores of (a)
    longer = x.clone()
    longer[5] *= 3  # "step", three times as long, same direction
    assert torch.allclose(cosine_similarities(longer), cos, atol=1e-6)
    assert torch.allclose(dot_products(longer)[0, 5], 3 * dot[0, 5])
    # the walkthrough's example: by dot product "Your" is closer to "step" than to "with", by cosine not
    your, with_, step = WORDS.index("Your"), WORDS.index("with"), WORDS.index("step")
    assert dot[your, step] > dot[your, with_] and cos[your, step] < cos[your, with_]
