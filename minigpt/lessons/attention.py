"""Attention step by step, as the lectures build it; teaching code, never imported by the model.

    (a) simplified self-attention: no weights, scores = x x^T, softmax, context vectors (loop and matrices);
        how similar two words are: the dot product against the cosine similarity
    (b) self-attention with trainable W_q, W_k, W_v and 1/sqrt(d_k) scaling
    (c) causal attention: the future masked out before the softmax, dropout on the weights
    (d) multi-head attention: first a wrapper around single heads, then one fused projection split
        into heads, with an output projection -- the layout of `minigpt.model.CausalSelfAttention`
    (e) bidirectional attention (the causal mask switched off, as in an encoder) and cross-attention
        (queries from one sequence, keys and values from another, as a translation decoder reads its source)
    (f) positions: without them self-attention is blind to word order; position vectors added to the
        embeddings make order matter

Each step marks what is NEW against the one before. tests/test_lessons.py ties the steps together
(loop == matrix form, wrapper == fused, cross-attention on (x, x) == self-attention, shuffled tokens give
shuffled outputs until positions are added) and the fused one to the model's SDPA attention, forward and
backward, masked and unmasked. `python -m minigpt.lessons.attention` walks through them on a six-word
example sentence. minigpt/lessons/seq2seq.py builds a translating transformer from (d), (e) and (f).

Shapes: T tokens, d_in input width, d_out output width, B batch, nh heads, hs = d_out // nh head size,
S tokens of the second sequence in cross-attention.
"""

from __future__ import annotations

import torch
import torch.nn as nn

# "Your journey starts with one step": one 3-d embedding per word, the example sentence of chapter 3 of
# Raschka's "Build a Large Language Model (From Scratch)" (rasbt/LLMs-from-scratch), not of the lectures.
WORDS = ["Your", "journey", "starts", "with", "one", "step"]
INPUTS = torch.tensor([
    [0.43, 0.15, 0.89],  # Your
    [0.55, 0.87, 0.66],  # journey
    [0.57, 0.85, 0.64],  # starts
    [0.22, 0.58, 0.33],  # with
    [0.77, 0.25, 0.10],  # one
    [0.05, 0.80, 0.55],  # step
])


# ---------------------------------------------------------------------------------------------------
# (a) Simplified self-attention: no trainable weights.
#     Each token's context vector is a weighted average of all token vectors, the weights being how
#     similar (dot product) the token is to each of them, normalised by a softmax.

def simplified_attention_loop(x: torch.Tensor) -> torch.Tensor:
    """(T, d) -> (T, d), one query at a time, the way one computes it by hand."""
    T = x.shape[0]
    context = torch.zeros_like(x)
    for i in range(T):
        scores = torch.empty(T)
        for j in range(T):
            scores[j] = torch.dot(x[i], x[j])  # attention score of query i for token j
        weights = torch.softmax(scores, dim=0)  # positive, sums to 1
        for j in range(T):
            context[i] += weights[j] * x[j]
    return context


def simplified_attention(x: torch.Tensor) -> torch.Tensor:
    """The same in three matrix operations."""
    scores = x @ x.T  # (T, T): every query against every token at once
    weights = torch.softmax(scores, dim=-1)  # each row sums to 1
    return weights @ x  # (T, d)


# How similar are two words? The dot product a . b = |a| |b| cos(angle) grows with both lengths; the
# cosine similarity a . b / (|a| |b|) keeps only the angle: 1 for the same direction, 0 for orthogonal,
# -1 for opposite, whatever the lengths. On the six words they disagree: by dot product "Your" is closer
# to "step" than to "with", by cosine it is the other way round ("step" is simply the longer vector).
# Attention uses the dot product: a length the model can learn to grow or shrink is one more knob
# (how sure a query is), and dividing by sqrt(d_k) in (b) keeps its size in check instead.

def dot_products(x: torch.Tensor) -> torch.Tensor:
    """(T, d) -> (T, T): every pair's dot product, the scores of (a)."""
    return x @ x.T


def cosine_similarities(x: torch.Tensor) -> torch.Tensor:
    """(T, d) -> (T, T): every pair's cosine similarity, the dot products of the vectors scaled to length 1."""
    unit = x / x.norm(dim=-1, keepdim=True)  # (T, d), each row of length 1
    return unit @ unit.T


# ---------------------------------------------------------------------------------------------------
# (b) Self-attention with trainable weights.
#     NEW: the token vectors are first projected into queries, keys and values by learned matrices, so
#     the model learns what to look for (query), what to be found by (key) and what to hand over (value).
#     NEW: scores are divided by sqrt(d_k), keeping the softmax out of its flat, tiny-gradient regime.

class SelfAttention(nn.Module):
    def __init__(self, d_in: int, d_out: int, qkv_bias: bool = False):
        super().__init__()
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        queries, keys, values = self.W_query(x), self.W_key(x), self.W_value(x)  # (..., T, d_out)
        scores = queries @ keys.transpose(-2, -1)  # (..., T, T)
        weights = torch.softmax(scores / keys.shape[-1] ** 0.5, dim=-1)
        return weights @ values  # (..., T, d_out)


# ---------------------------------------------------------------------------------------------------
# (c) Causal attention.
#     NEW: a language model predicts the next token, so position t must not see tokens after t: the
#     scores above the diagonal are set to -inf before the softmax, which gives them weight exactly 0
#     and renormalises each row over the visible tokens.
#     NEW: dropout on the attention weights while training (some links randomly dropped).
#     NEW: batches of sequences, (B, T, d_in).
#     (causal=False skips the mask: bidirectional attention, step (e).)

class CausalAttention(nn.Module):
    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float = 0.0, qkv_bias: bool = False,
                 causal: bool = True):
        super().__init__()
        self.causal = causal
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.dropout = nn.Dropout(dropout)
        # True above the diagonal: the future. A buffer moves with the module (.to(device)) but is not trained.
        self.register_buffer("mask", torch.triu(torch.ones(context_length, context_length, dtype=torch.bool), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        queries, keys, values = self.W_query(x), self.W_key(x), self.W_value(x)  # (B, T, d_out)
        scores = queries @ keys.transpose(1, 2)  # (B, T, T)
        if self.causal:
            scores = scores.masked_fill(self.mask[:T, :T], float("-inf"))  # future -> -inf -> weight 0
        weights = torch.softmax(scores / keys.shape[-1] ** 0.5, dim=-1)
        weights = self.dropout(weights)
        return weights @ values  # (B, T, d_out)


# ---------------------------------------------------------------------------------------------------
# (d1) Multi-head attention as a wrapper.
#     NEW: several causal heads side by side, each with its own smaller W_q, W_k, W_v, attending in its
#     own way; their outputs are concatenated. Clear, but num_heads separate small matmuls.

class MultiHeadAttentionWrapper(nn.Module):
    def __init__(self, d_in: int, d_out: int, context_length: int, num_heads: int, dropout: float = 0.0,
                 qkv_bias: bool = False, causal: bool = True):
        super().__init__()
        assert d_out % num_heads == 0, "d_out must be divisible by num_heads"
        self.heads = nn.ModuleList(
            [CausalAttention(d_in, d_out // num_heads, context_length, dropout, qkv_bias, causal)
             for _ in range(num_heads)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([head(x) for head in self.heads], dim=-1)  # (B, T, d_out)


# (d2) Multi-head attention, fused.
#     NEW: one projection computes the queries, keys and values of every head at once (d_in -> 3 d_out),
#     and a view + transpose splits them into heads, so all heads run as one batched matmul.
#     NEW: an output projection W_o mixes what the heads found.
#     This is minigpt.model.CausalSelfAttention, which hands the masked softmax to SDPA instead.

class MultiHeadAttention(nn.Module):
    def __init__(self, d_in: int, d_out: int, context_length: int, num_heads: int, dropout: float = 0.0,
                 qkv_bias: bool = False, causal: bool = True):
        super().__init__()
        assert d_out % num_heads == 0, "d_out must be divisible by num_heads"
        self.d_out, self.num_heads, self.head_dim, self.causal = d_out, num_heads, d_out // num_heads, causal
        self.W_qkv = nn.Linear(d_in, 3 * d_out, bias=qkv_bias)  # W_q, W_k, W_v stacked: the model's c_attn
        self.out_proj = nn.Linear(d_out, d_out, bias=qkv_bias)  # W_o: the model's c_proj
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("mask", torch.triu(torch.ones(context_length, context_length, dtype=torch.bool), 1))

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, d_in) -> (B, T, d_out); pad (B, T), True at padding, is explained in (e1)."""
        B, T, _ = x.shape
        nh, hs = self.num_heads, self.head_dim
        q, k, v = self.W_qkv(x).split(self.d_out, dim=-1)  # 3 x (B, T, d_out)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs): heads become a batch dimension
        k = k.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        scores = q @ k.transpose(2, 3)  # (B, nh, T, T): every head at once
        if self.causal:
            scores = scores.masked_fill(self.mask[:T, :T], float("-inf"))
        if pad is not None:
            scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))  # (B, 1, 1, T): no key is padding
        weights = self.dropout(torch.softmax(scores / hs**0.5, dim=-1))
        y = (weights @ v).transpose(1, 2).contiguous().view(B, T, self.d_out)  # heads side by side: (B, T, d_out)
        return self.out_proj(y)


def fuse_wrapper_weights(wrapper: MultiHeadAttentionWrapper, fused: MultiHeadAttention) -> None:
    """Copy a wrapper's per-head W_q, W_k, W_v into the fused projection (head h's rows go to block h of
    each third) and make the output projection the identity: then both compute the same thing."""
    with torch.no_grad():
        for i, name in enumerate(("W_query", "W_key", "W_value")):
            rows = slice(i * fused.d_out, (i + 1) * fused.d_out)
            fused.W_qkv.weight[rows] = torch.cat([getattr(h, name).weight for h in wrapper.heads])
            if fused.W_qkv.bias is not None:
                fused.W_qkv.bias[rows] = torch.cat([getattr(h, name).bias for h in wrapper.heads])
        fused.out_proj.weight.copy_(torch.eye(fused.d_out))
        if fused.out_proj.bias is not None:
            fused.out_proj.bias.zero_()


# ---------------------------------------------------------------------------------------------------
# (e1) Bidirectional attention: causal=False in (c) and (d).
#     NEW: no mask. Every token sees the tokens after it as well as before: right for an encoder (BERT,
#     the original transformer's encoder) that reads a whole given sentence, where there is no future to
#     hide; wrong for a language model, which would learn to copy the next token instead of predicting it.
#     NEW: with nothing masked, the padding that evens out a batch of sentences of different lengths would
#     be seen too; `pad` (B, T), True at padding, masks those keys to -inf as the causal mask does the future.
#
# (e2) Cross-attention.
#     NEW: the queries come from one sequence x (T tokens), the keys and values from another, `source`
#     (S tokens, maybe of another width): each token of x asks which source tokens it needs. The weights
#     are (T, S), no mask, since the source is given whole. This is how a translation decoder reads the
#     encoded source sentence; minigpt/lessons/seq2seq.py does the same step with RNN states, and its
#     transformer runs several of these heads side by side, as the wrapper (d1) does.

class CrossAttention(nn.Module):
    def __init__(self, d_in: int, d_out: int, d_source: int | None = None, qkv_bias: bool = False):
        super().__init__()
        d_source = d_in if d_source is None else d_source
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)  # reads x
        self.W_key = nn.Linear(d_source, d_out, bias=qkv_bias)  # reads the source
        self.W_value = nn.Linear(d_source, d_out, bias=qkv_bias)  # reads the source

    def weights(self, x: torch.Tensor, source: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        """(..., T, S): how much each token of x reads each source token; pad (..., S) True at source padding."""
        queries, keys = self.W_query(x), self.W_key(source)  # (..., T, d_out), (..., S, d_out)
        scores = queries @ keys.transpose(-2, -1)  # (..., T, S): every token of x against every source token
        if pad is not None:
            scores = scores.masked_fill(pad.unsqueeze(-2), float("-inf"))  # (..., 1, S): the same for every query
        return torch.softmax(scores / keys.shape[-1] ** 0.5, dim=-1)  # each row sums to 1 over the source

    def forward(self, x: torch.Tensor, source: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        return self.weights(x, source, pad) @ self.W_value(source)  # (..., T, d_out): made of source values


# ---------------------------------------------------------------------------------------------------
# (f) Positions.
#     Nothing above knows where a token stands: a score x_i . x_j depends on the two vectors only. Shuffle
#     the tokens and bidirectional self-attention returns the same output vectors, shuffled the same way
#     (it is permutation-equivariant): "dog bites man" and "man bites dog" make the same set of vectors.
#     (A causal mask does depend on order, but only through which tokens each one may see.) An RNN
#     knows order by construction, reading word after word; a transformer must be told.
#     NEW: add a position vector to each token's embedding before the first attention: the same word at
#     another place becomes another vector, so the shuffled outputs differ. The vectors are either
#     learned, one per position (GPT-2, minigpt.model's wpe, the seq2seq lesson's transformer), or the
#     fixed sines and cosines of the original transformer (Vaswani et al. 2017), below.

def sinusoidal_positions(T: int, d: int) -> torch.Tensor:
    """(T, d): PE[t, 2i] = sin(t / 10000^(2i/d)), PE[t, 2i+1] = cos(t / 10000^(2i/d)); each pair of columns
    turns at its own speed, so every position gets its own pattern and nearby positions look alike."""
    t = torch.arange(T, dtype=torch.float32).unsqueeze(1)  # (T, 1)
    speed = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)  # (ceil(d/2),): fast to slow
    pe = torch.zeros(T, d)
    pe[:, 0::2] = torch.sin(t * speed)
    pe[:, 1::2] = torch.cos(t * speed)[:, : d // 2]  # an odd d has one sine more than cosines
    return pe


class LearnedPositions(nn.Module):
    """x + one trained vector per position, as GPT-2: (..., T, d) -> (..., T, d)."""

    def __init__(self, context_length: int, d: int):
        super().__init__()
        self.pos = nn.Embedding(context_length, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pos(torch.arange(x.shape[-2], device=x.device))  # (T, d) broadcast over the batch


# ---------------------------------------------------------------------------------------------------
# The walk-through: `python -m minigpt.lessons.attention`

def _show(title: str, t: torch.Tensor, rows: list[str] | None = None) -> None:
    print(f"\n{title}  {tuple(t.shape)}")
    t = t.detach()
    t = t.unsqueeze(0) if t.dim() == 1 else t
    for i, row in enumerate(t.reshape(-1, t.shape[-1])):
        label = rows[i] if rows and i < len(rows) else ""
        print(f"  {label:>8} " + " ".join(f"{v:7.4f}" for v in row.tolist()))


def main() -> None:
    torch.set_printoptions(precision=4, sci_mode=False)
    x = INPUTS
    print('Attention, step by step, on "Your journey starts with one step" (3-d embeddings):')
    _show("inputs x, one row per word", x, WORDS)

    print("\n=== (a) simplified self-attention: no weights ===")
    scores = x @ x.T
    _show("scores = x x^T (dot products; row i: how much word i matches each word)", scores, WORDS)
    weights = torch.softmax(scores, dim=-1)
    _show("weights = softmax(scores) per row (each row sums to 1)", weights, WORDS)
    context = weights @ x
    _show("context vectors = weights x (row i: word i's weighted average of all words)", context, WORDS)
    print(f"\nloop form equals matrix form: {torch.allclose(simplified_attention_loop(x), context, atol=1e-6)}")
    print("\nHow similar are two words? The dot product grows with the vectors' lengths; the cosine keeps the angle.")
    _show("lengths |x_i|", x.norm(dim=-1), ["length"])
    dots, cosines = dot_products(x), cosine_similarities(x)
    _show("dot products (the scores above)", dots, WORDS)
    _show("cosine similarities: dot products of the vectors scaled to length 1", cosines, WORDS)
    print(f'\n"Your" . "step" = {dots[0, 5]:.4f} > "Your" . "with" = {dots[0, 3]:.4f}, but '
          f'cos("Your", "step") = {cosines[0, 5]:.4f} < cos("Your", "with") = {cosines[0, 3]:.4f}: '
          '"step" is the longer vector, not the closer direction')

    print("\n=== (b) self-attention with trainable W_q, W_k, W_v (d_in 3 -> d_out 2) ===")
    torch.manual_seed(123)
    sa = SelfAttention(3, 2)
    q, k, v = sa.W_query(x), sa.W_key(x), sa.W_value(x)
    _show("NEW queries = x W_q", q, WORDS)
    _show("NEW keys = x W_k", k, WORDS)
    _show("NEW values = x W_v", v, WORDS)
    scores = q @ k.T
    _show("scores = queries keys^T", scores, WORDS)
    weights = torch.softmax(scores / k.shape[-1] ** 0.5, dim=-1)
    _show("NEW weights = softmax(scores / sqrt(d_k)), d_k = 2", weights, WORDS)
    _show("context = weights values", sa(x), WORDS)

    print("\n=== (c) causal attention: the future masked before the softmax ===")
    T = x.shape[0]
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
    masked = scores.masked_fill(future, float("-inf"))
    _show("NEW masked scores (above the diagonal: -inf)", masked, WORDS)
    weights = torch.softmax(masked / k.shape[-1] ** 0.5, dim=-1)
    _show("weights: zero on the future, rows still sum to 1", weights, WORDS)
    torch.manual_seed(123)
    _show("NEW dropout(p=0.5) on the weights while training: survivors scaled by 2", nn.Dropout(0.5)(weights), WORDS)
    ca = CausalAttention(3, 2, context_length=T).eval()
    ca.load_state_dict(sa.state_dict(), strict=False)  # same W_q, W_k, W_v as (b)
    _show("context = weights values (batch of one)", ca(x.unsqueeze(0))[0], WORDS)

    print("\n=== (d) multi-head attention: 2 heads, d_out 4 ===")
    torch.manual_seed(123)
    batch = torch.stack([x, x])  # (B=2, T=6, d_in=3)
    wrapper = MultiHeadAttentionWrapper(3, 4, context_length=T, num_heads=2).eval()
    out = wrapper(batch)
    _show("NEW wrapper: head 0 and head 1 outputs concatenated (first sequence)", out[0], WORDS)
    fused = MultiHeadAttention(3, 4, context_length=T, num_heads=2).eval()
    fuse_wrapper_weights(wrapper, fused)
    print("\nNEW fused: one W_qkv (3 -> 12) split into 2 heads of 2, output projection (here the identity)")
    _show("W_qkv weight, rows: q of heads 0,1 | k of heads 0,1 | v of heads 0,1", fused.W_qkv.weight)
    _show("fused output (first sequence)", fused(batch)[0], WORDS)
    print(f"\nwrapper equals fused: {torch.allclose(out, fused(batch), atol=1e-6)}")
    print("minigpt.model.CausalSelfAttention is the fused form with SDPA doing the masked softmax; "
          "tests/test_lessons.py checks they agree, gradients included.")

    print("\n=== (e) bidirectional and cross-attention ===")
    _show("NEW bidirectional: causal=False, no mask; every word sees every word (the weights of (b))",
          torch.softmax(scores / k.shape[-1] ** 0.5, dim=-1), WORDS)
    bi = CausalAttention(3, 2, context_length=T, causal=False).eval()
    bi.load_state_dict(sa.state_dict(), strict=False)  # (b)'s W_q, W_k, W_v again
    print(f"\n(c) with causal=False equals (b): {torch.allclose(bi(x.unsqueeze(0))[0], sa(x), atol=1e-6)}")
    torch.manual_seed(123)
    source = torch.rand(4, 5)  # a second sequence: 4 tokens of width 5, e.g. an encoded source sentence
    cross = CrossAttention(3, 2, d_source=5)
    _show("NEW cross-attention weights: queries from the 6 words, keys from 4 source tokens (rows sum to 1)",
          cross.weights(x, source), WORDS)
    _show("cross-attention output: one vector per word, mixed from the source's values", cross(x, source), WORDS)
    same = CrossAttention(3, 2)
    same.load_state_dict(sa.state_dict())
    print(f"\ncross-attention on (x, x) equals self-attention (b): {torch.allclose(same(x, x), sa(x), atol=1e-6)}")

    print("\n=== (f) positions: self-attention alone is blind to word order ===")
    order = [5, 1, 2, 3, 4, 0]  # "step journey starts with one Your": first and last word swapped
    shuffled = [WORDS[i] for i in order]
    _show("bidirectional self-attention (b) of the sentence", sa(x), WORDS)
    _show("of the shuffled sentence: the same rows, shuffled the same way", sa(x[order]), shuffled)
    same = torch.allclose(sa(x[order]), sa(x)[order], atol=1e-6)
    print(f"\noutputs of the shuffled sentence == shuffled outputs: {same}")
    pe = sinusoidal_positions(T, 3)
    _show("NEW sinusoidal position vectors, one row per position", pe,
          [f"pos {t}" for t in range(T)])
    with_pos, shuffled_with_pos = sa(x + pe), sa(x[order] + pe)
    _show("self-attention of x + positions", with_pos, WORDS)
    _show("of the shuffled words + positions: new vectors, since each word now stands elsewhere",
          shuffled_with_pos, shuffled)
    print(f"\nwith positions, outputs of the shuffled sentence == shuffled outputs: "
          f"{torch.allclose(shuffled_with_pos, with_pos[order], atol=1e-6)}")


if __name__ == "__main__":
    main()
