"""Why attention: an encoder-decoder translating a toy language, without attention, with it, and all attention.

Teaching code, never imported by the model. An RNN encoder (GRU or LSTM) reads the source sentence word
by word; an RNN decoder writes the translation word by word. How the decoder sees the source is the lesson:

    none         only the encoder's final state: the whole sentence squeezed into one vector (the bottleneck)
    dot          Luong:    score(h, e) = h . e
    general      Luong:    score(h, e) = h . W e
    additive     Bahdanau: score(h, e) = v . tanh(W1 h + W2 e)
    transformer  no RNN at all: self-attention, cross-attention and positions (section 6)

With attention, each decoder step (1) scores every encoder state against its own state h, (2) turns
the scores into weights with a softmax, (3) takes the weighted sum of the encoder states, the context,
and (4) predicts the next word from the context and h. The weights of all steps form the alignment:
which source word each target word was read from. The transformer keeps exactly these three steps as
its cross-attention and replaces the recurrence with self-attention (minigpt/lessons/attention.py).

    python -m minigpt.lessons.seq2seq [--mode=all|none|dot|general|additive|transformer] [--cell=gru|lstm]
                                      [--steps=N] [--seed=S] [--out=DIR]

trains each mode on the CPU, prints StatQuest's "Let's go" arithmetic, token accuracy and exact match
by sentence length on held-out sentences and each mode's training time, and writes
accuracy_by_length.png, one alignment heat map per attention mode and, for `none`, which source
positions it gets right (position_accuracy_none.png). tests/test_seq2seq.py checks every step by hand.

Shapes: B batch, S source length, T target length, E embedding width, H hidden width, V vocabulary,
A width of the additive score's hidden layer; D, nh, L in section 6.
"""

from __future__ import annotations

import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from ..config import opt, parse_cli
from ..errors import UserError, run_cli
from ..fileio import save_png
from .attention import CrossAttention, LearnedPositions, MultiHeadAttention

# ---------------------------------------------------------------------------------------------------
# 1. The toy language: English words in, French-like words out, in French order.
#    A noun phrase "the big red cat" becomes "le chat rouge grand": the noun moves to the front and the
#    adjectives follow it reversed, as "European Economic Area" -> "zone économique européenne". Every
#    word has one translation, so the task is all about order: the decoder must find, for each target
#    word, which source word to read, and that jumps backwards inside every noun phrase.

DETERMINERS = {"the": "le", "a": "un", "this": "ce", "every": "chaque"}
ADJECTIVES = {
    "european": "européenne", "economic": "économique", "big": "grand", "small": "petit", "red": "rouge",
    "green": "vert", "old": "vieux", "new": "neuf", "quick": "rapide", "lazy": "paresseux", "happy": "heureux",
    "dark": "sombre", "blue": "bleu", "young": "jeune", "strange": "étrange", "quiet": "calme",
}
NOUNS = {
    "area": "zone", "cat": "chat", "dog": "chien", "house": "maison", "car": "voiture", "tree": "arbre",
    "river": "rivière", "city": "ville", "bird": "oiseau", "book": "livre", "garden": "jardin", "door": "porte",
    "window": "fenêtre", "boat": "bateau", "horse": "cheval", "child": "enfant", "friend": "ami", "road": "route",
    "bridge": "pont", "market": "marché",
}
LINKS = {  # verbs and prepositions: they join noun phrases and keep their place
    "sees": "voit", "likes": "aime", "finds": "trouve", "follows": "suit", "paints": "peint", "buys": "achète",
    "near": "près", "with": "avec", "under": "sous", "behind": "derrière", "and": "et", "without": "sans",
}
DICTIONARY = {**DETERMINERS, **ADJECTIVES, **NOUNS, **LINKS}
MIN_LEN, MAX_LEN = 3, 30  # sentence lengths in words, source and target alike

# Token ids. Index 0 pads a batch of sentences of different lengths; the decoder starts from <bos> and
# ends a translation with <eos>.
PAD, BOS, EOS = 0, 1, 2
SPECIALS = ["<pad>", "<bos>", "<eos>"]
SRC_WORDS = SPECIALS + list(DICTIONARY)
TGT_WORDS = SPECIALS + list(DICTIONARY.values())
SRC_ID = {w: i for i, w in enumerate(SRC_WORDS)}
TGT_ID = {w: i for i, w in enumerate(TGT_WORDS)}


def noun_phrase(rng: random.Random, size: int) -> list[str]:
    """`size` words (1-5): a determiner (always in 5 words, else half the time), adjectives, the noun last."""
    det = size >= 2 and (size == 5 or rng.random() < 0.5)
    words = [rng.choice(list(DETERMINERS))] if det else []
    words += rng.sample(list(ADJECTIVES), size - 1 - det)
    return words + [rng.choice(list(NOUNS))]


def sentence(rng: random.Random, length: int) -> list[str]:
    """A source sentence of exactly `length` words: noun phrases (1-5 words) joined by verbs/prepositions."""
    words: list[str] = []
    while True:
        left = length - len(words)
        # a phrase may end the sentence, or leave room for a link word and another phrase (>= 2 words)
        sizes = [s for s in range(1, min(5, left) + 1) if s == left or s <= left - 2]
        size = rng.choice(sizes)
        words += noun_phrase(rng, size)
        if size == left:
            return words
        words.append(rng.choice(list(LINKS)))


def word_order(words: list[str]) -> list[int]:
    """The rule the models must learn, as positions: for each target word, the position of the source
    word it translates. In each noun phrase the noun moves right after the determiner and the
    adjectives follow it in reverse order; link words keep their place."""
    order, phrase = [], []  # phrase: positions of the determiner and adjectives waiting for their noun
    for i, w in enumerate(words):
        if w in LINKS:
            order.append(i)
        elif w in NOUNS:
            det = [phrase.pop(0)] if phrase and words[phrase[0]] in DETERMINERS else []
            order += det + [i] + phrase[::-1]
            phrase = []
        else:
            phrase.append(i)
    return order


def translate_by_rule(words: list[str]) -> list[str]:
    """The reference translation: the words in `word_order`, each replaced by its dictionary entry."""
    return [DICTIONARY[words[i]] for i in word_order(words)]


def make_pairs(rng: random.Random, n: int, lengths: range = range(MIN_LEN, MAX_LEN + 1),
               exclude: set[tuple[str, ...]] = frozenset()) -> list[tuple[list[str], list[str]]]:
    """n (source, target) pairs, lengths uniform in `lengths`, none of them in `exclude`."""
    pairs = []
    while len(pairs) < n:
        src = sentence(rng, rng.choice(lengths))
        if tuple(src) not in exclude:
            pairs.append((src, translate_by_rule(src)))
    return pairs


def held_out(seed: int, per_length: int = 30) -> list[tuple[list[str], list[str]]]:
    """The evaluation sentences: per_length of every length, from their own random stream."""
    rng = random.Random(f"held-out {seed}")
    return [pair for n in range(MIN_LEN, MAX_LEN + 1) for pair in make_pairs(rng, per_length, range(n, n + 1))]


def to_batch(pairs: list[tuple[list[str], list[str]]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad a list of pairs into (source (B, S), source lengths (B,), target (B, T+1) ending in <eos>)."""
    S = max(len(s) for s, _ in pairs)
    T = max(len(t) for _, t in pairs) + 1
    src = torch.full((len(pairs), S), PAD)
    tgt = torch.full((len(pairs), T), PAD)
    for b, (s, t) in enumerate(pairs):
        src[b, : len(s)] = torch.tensor([SRC_ID[w] for w in s])
        tgt[b, : len(t) + 1] = torch.tensor([TGT_ID[w] for w in t] + [EOS])
    return src, torch.tensor([len(s) for s, _ in pairs]), tgt


# ---------------------------------------------------------------------------------------------------
# 2. Attention in three steps; only the first differs between the modes.
#    (1) scores: one number per source position, how well encoder state e_j matches the decoder state h
#    (2) weights = softmax(scores): positive, summing to 1 over the source (padding gets exactly 0)
#    (3) context = sum_j weights_j e_j: the encoder states mixed in those proportions
#
# (1) Each score function has keys(enc), what a source position offers to be matched on, computed once
#     per sentence, and forward(h, keys), the scores of the decoder states h against every source
#     position: (B, T, H), (B, S, H) -> (B, T, S). T is 1 while translating word by word.

class DotScore(nn.Module):
    """Luong's dot: score = h . e. No parameters: the encoder and decoder must learn to share a space."""

    def keys(self, enc: torch.Tensor) -> torch.Tensor:
        return enc

    def forward(self, h: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return h @ keys.transpose(1, 2)  # (B, T, H) @ (B, H, S) -> (B, T, S)


class GeneralScore(DotScore):
    """Luong's general. NEW: a learned matrix between them, score = h . W e, so decoder and encoder
    states may live in different spaces; W e is the transformer's key projection in embryo."""

    def __init__(self, hidden: int):
        super().__init__()
        self.W = nn.Linear(hidden, hidden, bias=False)

    def keys(self, enc: torch.Tensor) -> torch.Tensor:
        return self.W(enc)  # (B, S, H)


class AdditiveScore(nn.Module):
    """Bahdanau's additive. NEW: a small network scores each pair instead of a product,
    score = v . tanh(W1 h + W2 e); W2 e does not depend on the decoder, so it is computed once.
    W1 and W2 map into a space of their own width A (the paper's n'): 32 keeps the (B, T, S, A) tanh cheap."""

    def __init__(self, hidden: int, width: int = 32):
        super().__init__()
        self.W1 = nn.Linear(hidden, width, bias=False)
        self.W2 = nn.Linear(hidden, width, bias=False)
        self.v = nn.Linear(width, 1, bias=False)

    def keys(self, enc: torch.Tensor) -> torch.Tensor:
        return self.W2(enc)  # (B, S, A)

    def forward(self, h: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(self.W1(h).unsqueeze(2) + keys.unsqueeze(1))  # (B,T,1,A) + (B,1,S,A) -> (B,T,S,A)
        return self.v(hidden).squeeze(-1)  # (B, T, S)


MODES = ["none", "dot", "general", "additive"]


def make_score(mode: str, hidden: int) -> nn.Module | None:
    return {"none": None, "dot": DotScore(), "general": GeneralScore(hidden), "additive": AdditiveScore(hidden)}[mode]


# (2) and (3), shared by every score function.

def attention_weights(scores: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
    """(2) (..., S) scores -> (..., S) weights. Padding positions (pad True) are set to -inf first, so
    they get weight 0, as the causal mask hides the future in a transformer."""
    if pad is not None:
        scores = scores.masked_fill(pad, float("-inf"))
    return torch.softmax(scores, dim=-1)


def context_vector(weights: torch.Tensor, enc: torch.Tensor) -> torch.Tensor:
    """(3) weights (S,) or (B, T, S) and encoder states (S, H) or (B, S, H) -> context (H,) or (B, T, H):
    row t of the weights mixes the S encoder states into one vector."""
    return weights @ enc


# ---------------------------------------------------------------------------------------------------
# 3. The encoder: torch's GRU or LSTM reads the source left to right and keeps its state after every
#    word. enc[:, j] is "the sentence up to word j"; the final state is all a decoder without attention gets.
#    A GRU's state is one vector h; an LSTM's (Hochreiter & Schmidhuber 1997) is a pair: the output h and
#    a cell c, a memory that gates add to and erase from, which the decoder receives whole. Both pass h
#    on as the encoder state attention reads.

CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}


def final_output(state: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The h of a GRU's state h or an LSTM's state (h, c): (1, B, H)."""
    return state[0] if isinstance(state, tuple) else state


class Encoder(nn.Module):
    def __init__(self, vocab: int, emb: int, hidden: int, cell: str = "gru"):
        super().__init__()
        self.embed = nn.Embedding(vocab, emb, padding_idx=PAD)
        self.rnn = CELLS[cell](emb, hidden, batch_first=True)

    def forward(self, src: torch.Tensor, lengths: torch.Tensor):
        """(B, S) ids -> (every state (B, S, H), final state: (1, B, H), for an LSTM the pair (h, c))."""
        # Packing runs each sentence only up to its own last word, so the final state (the LSTM's cell
        # too, which is not among the outputs) is that of its last word, never of the padding after it.
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(src), lengths, batch_first=True, enforce_sorted=False)
        enc, final = self.rnn(packed)
        enc, _ = nn.utils.rnn.pad_packed_sequence(enc, batch_first=True, total_length=src.shape[1])  # (B, S, H)
        return enc, final  # (1, B, H) or a pair of them: the layout nn.GRU / nn.LSTM take as an initial state


# ---------------------------------------------------------------------------------------------------
# 4. The decoder: an RNN (GRU or LSTM) that starts from the encoder's final state and reads the previous target word;
#    each of its states h_t is joined with a context vector c_t, and an output layer predicts word t.
#    mode "none": c_t is the encoder's final state for every t (Cho et al. 2014): one fixed vector
#    must carry the whole sentence, however long.
#    NEW with attention: c_t is made afresh for every target word: h_t scores every encoder state,
#    scores -> weights -> context (section 2). The decoder states are the queries, the encoder states
#    the keys and values: a transformer decoder's cross-attention, with one head.

class Decoder(nn.Module):
    def __init__(self, vocab: int, emb: int, hidden: int, mode: str, cell: str = "gru"):
        super().__init__()
        self.score = make_score(mode, hidden)
        self.embed = nn.Embedding(vocab, emb, padding_idx=PAD)
        self.rnn = CELLS[cell](emb, hidden, batch_first=True)
        self.combine = nn.Linear(2 * hidden, hidden)  # [c_t; h_t] -> one vector
        self.out = nn.Linear(hidden, vocab)

    def forward(self, y_prev: torch.Tensor, state: torch.Tensor, enc: torch.Tensor, final: torch.Tensor,
                keys: torch.Tensor | None, pad: torch.Tensor):
        """Previous words (B, T), the RNN state and the encoder's final output `final` (1, B, H) -> (logits
        (B, T, V), new state, attention weights (B, T, S) or None). Training passes the whole target at
        once; translating, one word."""
        h, state = self.rnn(self.embed(y_prev), state)  # (B, T, H): one state per target position
        if self.score is None:
            weights = None
            context = final.transpose(0, 1).expand_as(h)  # (1, B, H) -> (B, T, H): the same for every t
        else:
            scores = self.score(h, keys)  # (1) (B, T, S)
            weights = attention_weights(scores, pad.unsqueeze(1))  # (2) (B, T, S); pad (B, 1, S) hides padding
            context = context_vector(weights, enc)  # (3) (B, T, H)
        out = torch.tanh(self.combine(torch.cat([context, h], dim=-1)))  # (4) (B, T, H)
        return self.out(out), state, weights


# ---------------------------------------------------------------------------------------------------
# 5. Encoder + decoder. Training feeds the true previous word at every step (teacher forcing), so all
#    steps run as one RNN call; translating feeds the model's own previous guess (greedy decoding).

def shift_right(tgt: torch.Tensor) -> torch.Tensor:
    """Targets (B, T) -> the decoder's inputs (B, T): <bos>, then the true words; position t reads word t-1."""
    return torch.cat([torch.full_like(tgt[:, :1], BOS), tgt[:, :-1]], dim=1)


class Seq2Seq(nn.Module):
    def __init__(self, mode: str, emb: int = 32, hidden: int = 64, cell: str = "gru"):
        super().__init__()
        self.mode, self.cell = mode, cell
        self.encoder = Encoder(len(SRC_WORDS), emb, hidden, cell)
        self.decoder = Decoder(len(TGT_WORDS), emb, hidden, mode, cell)

    def _encode(self, src: torch.Tensor, lengths: torch.Tensor):
        enc, state = self.encoder(src, lengths)
        keys = self.decoder.score.keys(enc) if self.decoder.score else None
        return enc, state, final_output(state), keys, src == PAD

    def forward(self, src: torch.Tensor, lengths: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B, T, V) for targets (B, T): position t reads the true word t-1."""
        enc, state, final, keys, pad = self._encode(src, lengths)
        logits, _, _ = self.decoder(shift_right(tgt), state, enc, final, keys, pad)
        return logits

    @torch.no_grad()
    def translate(self, src: torch.Tensor, lengths: torch.Tensor, max_len: int):
        """Greedy: (predicted ids (B, max_len), attention weights (B, max_len, S) or None)."""
        enc, state, final, keys, pad = self._encode(src, lengths)
        y_prev = torch.full((src.shape[0], 1), BOS)  # (B, 1)
        ids, alignment = [], []
        for _ in range(max_len):
            logits, state, weights = self.decoder(y_prev, state, enc, final, keys, pad)
            y_prev = logits.argmax(dim=-1)  # (B, 1): the best word, fed back in
            ids.append(y_prev)
            alignment.append(weights)
        return torch.cat(ids, dim=1), (torch.cat(alignment, dim=1) if self.decoder.score else None)


# ---------------------------------------------------------------------------------------------------
# 6. The transformer: "we don't need the LSTMs". The same encoder-decoder, the same data and decoding,
#    with every recurrence replaced by attention (Vaswani et al. 2017), built from the attention lesson's
#    modules (minigpt/lessons/attention.py, tested against minigpt.model's attention) and torch layers:
#    NEW: positions (f). Nothing reads the words in order any more, so each embedding gets a learned
#         vector for its place; without it "the big cat" and "cat big the" would encode alike.
#    NEW: the encoder is a stack of bidirectional self-attention blocks (e1): each source word's state is
#         mixed from the whole sentence at once, instead of "the sentence up to word j" from an RNN.
#    NEW: the decoder reads the previous target words through causal self-attention (c, d) instead of
#         an RNN state; the mask keeps the training-time view equal to the word-by-word one.
#    the same: cross-attention (e2) is section 2's attention with the decoder states as queries and the
#         encoder states as keys and values, now with learned W_q, W_k, W_v and several heads per block.
#    NEW: around every attention, what GPT has around it: a LayerNorm before it, a residual connection
#         across it, and a two-layer MLP after it (minigpt.model.Block).
#    Shapes: D model width, nh heads, L layers.

class CrossAttentionHeads(nn.Module):
    """nh of the lesson's CrossAttention heads side by side, then an output projection, as the wrapper (d1)
    does for self-attention. Returns the output (B, T, D) and each head's weights (B, nh, T, S)."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = nn.ModuleList(CrossAttention(d, d // heads) for _ in range(heads))
        self.proj = nn.Linear(d, d)

    def forward(self, y: torch.Tensor, enc: torch.Tensor, pad: torch.Tensor):
        weights = [head.weights(y, enc, pad) for head in self.heads]  # nh x (B, T, S)
        out = torch.cat([w @ head.W_value(enc) for w, head in zip(weights, self.heads)], dim=-1)  # (B, T, D)
        return self.proj(out), torch.stack(weights, dim=1)


def mlp(d: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))


class EncoderBlock(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = MultiHeadAttention(d, d, MAX_LEN, heads, causal=False)  # bidirectional (e1)
        self.mlp = mlp(d)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), pad)  # every word reads every word of its sentence, never the padding
        return x + self.mlp(self.ln2(x))


class DecoderBlock(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = MultiHeadAttention(d, d, MAX_LEN + 1, heads, causal=True)  # (d), target words + <eos>
        self.cross = CrossAttentionHeads(d, heads)
        self.mlp = mlp(d)

    def forward(self, y: torch.Tensor, enc: torch.Tensor, pad: torch.Tensor):
        y = y + self.attn(self.ln1(y))  # the words written so far; padding only follows <eos>, masked as future
        read, weights = self.cross(self.ln2(y), enc, pad)  # the source
        y = y + read
        return y + self.mlp(self.ln3(y)), weights


class Transformer(nn.Module):
    """The Seq2Seq interface (forward, translate) with attention everywhere."""

    def __init__(self, d: int = 64, heads: int = 4, layers: int = 2):
        super().__init__()
        self.mode = "transformer"
        self.src_embed = nn.Embedding(len(SRC_WORDS), d, padding_idx=PAD)
        self.tgt_embed = nn.Embedding(len(TGT_WORDS), d, padding_idx=PAD)
        self.src_pos = LearnedPositions(MAX_LEN, d)  # NEW (f)
        self.tgt_pos = LearnedPositions(MAX_LEN + 1, d)  # the decoder reads <bos> + up to MAX_LEN words
        self.encoder = nn.ModuleList(EncoderBlock(d, heads) for _ in range(layers))
        self.decoder = nn.ModuleList(DecoderBlock(d, heads) for _ in range(layers))
        self.ln_enc, self.ln_dec = nn.LayerNorm(d), nn.LayerNorm(d)
        self.out = nn.Linear(d, len(TGT_WORDS))

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S) ids -> (encoder states (B, S, D), padding (B, S)). It never sees the target."""
        pad = src == PAD
        x = self.src_pos(self.src_embed(src))  # (B, S, D)
        for block in self.encoder:
            x = block(x, pad)
        return self.ln_enc(x), pad

    def decode(self, y_prev: torch.Tensor, enc: torch.Tensor, pad: torch.Tensor):
        """Previous words (B, T) -> (logits (B, T, V), cross-attention weights (B, T, L, nh, S))."""
        y = self.tgt_pos(self.tgt_embed(y_prev))  # (B, T, D)
        weights = []
        for block in self.decoder:
            y, w = block(y, enc, pad)
            weights.append(w)
        return self.out(self.ln_dec(y)), torch.stack(weights, dim=1).permute(0, 3, 1, 2, 4)

    def forward(self, src: torch.Tensor, lengths: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B, T, V): all T positions in one pass, the causal mask hiding the future."""
        enc, pad = self.encode(src)
        return self.decode(shift_right(tgt), enc, pad)[0]

    @torch.no_grad()
    def translate(self, src: torch.Tensor, lengths: torch.Tensor, max_len: int):
        """Greedy: (ids (B, max_len), cross-attention weights (B, max_len, L, nh, S)). With no state to carry,
        each step runs the decoder over all the words so far (a KV cache would save that, see generate.py)."""
        enc, pad = self.encode(src)
        max_len = min(max_len, MAX_LEN + 1)  # the positions there are; no translation is longer
        ys = torch.full((src.shape[0], 1), BOS)  # (B, 1)
        for _ in range(max_len):
            logits, weights = self.decode(ys, enc, pad)
            ys = torch.cat([ys, logits[:, -1:].argmax(dim=-1)], dim=1)  # the best word, fed back in
        return ys[:, 1:], weights  # the last step's weights hold every step's row, causal as they are


# ---------------------------------------------------------------------------------------------------
# 7. Training and scoring.

def train(model: Seq2Seq | Transformer, steps: int, seed: int, batch_size: int = 64, lr: float = 1e-2,
          exclude: set[tuple[str, ...]] = frozenset(), lengths: range = range(MIN_LEN, MAX_LEN + 1),
          progress: bool = True) -> list[float]:
    """Adam on fresh random sentences of the given lengths every step, none of them in `exclude` (the
    same sentences for every mode with the same seed); returns the losses."""
    rng = random.Random(f"train {seed}")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    bar = tqdm(range(steps), desc=f"training {model.mode:>8}", unit="step", disable=not progress, leave=False)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr * (1 - step / steps)  # linear decay to 0: big steps early, fine ones at the end
        src, src_len, tgt = to_batch(make_pairs(rng, batch_size, lengths, exclude))
        logits = model(src, src_len, tgt)  # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=PAD)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # RNN gradients can spike on long sentences
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return losses


def score_translations(pred: torch.Tensor, tgt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sentence: (fraction of target words right at their position, 1.0 if every word and the
    <eos> are right else 0.0). pred (B, >= T), tgt (B, T) padded with PAD; what follows <eos> is ignored."""
    right = pred[:, : tgt.shape[1]] == tgt  # (B, T)
    words = (tgt != PAD) & (tgt != EOS)
    token_acc = (right & words).sum(dim=1) / words.sum(dim=1)
    exact = (right | (tgt == PAD)).all(dim=1).float()
    return token_acc, exact


@torch.no_grad()
def evaluate(model: Seq2Seq | Transformer, pairs: list, batch_size: int = 256) -> dict[int, tuple[float, float]]:
    """{source length: (token accuracy, exact-match rate)} over the pairs, greedy decoding."""
    model.eval()
    sums: dict[int, list[float]] = {}
    for i in range(0, len(pairs), batch_size):
        src, lengths, tgt = to_batch(pairs[i: i + batch_size])
        pred, _ = model.translate(src, lengths, tgt.shape[1])
        acc, exact = score_translations(pred, tgt)
        for n, a, e in zip(lengths.tolist(), acc.tolist(), exact.tolist()):
            s = sums.setdefault(n, [0.0, 0.0, 0])
            s[0], s[1], s[2] = s[0] + a, s[1] + e, s[2] + 1
    return {n: (a / c, e / c) for n, (a, e, c) in sorted(sums.items())}


@torch.no_grad()
def translate_sentence(model: Seq2Seq | Transformer, words: list[str]) -> tuple[list[str], torch.Tensor | None]:
    """One sentence, greedy: (target words up to <eos>, attention weights (steps, S), for the transformer
    (steps, L, nh, S), or None)."""
    model.eval()
    src, lengths, _ = to_batch([(words, [])])
    pred, weights = model.translate(src, lengths, min(len(words) + 5, MAX_LEN + 1))
    out = [TGT_WORDS[i] for i in pred[0].tolist()]
    steps = out.index("<eos>") + 1 if "<eos>" in out else len(out)
    return out[:steps], (weights[0, :steps] if weights is not None else None)


BUCKETS = [(3, 5), (6, 10), (11, 15), (16, 20), (21, 25), (26, 30)]  # source lengths, for the table
BUCKETS_ORDER = {f"{lo}-{hi}": i for i, (lo, hi) in enumerate(BUCKETS)}


def by_bucket(per_length: dict[int, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """Per-length results averaged over each bucket of lengths: {"3-5": (token acc, exact), ...}."""
    out = {}
    for lo, hi in BUCKETS:
        rows = [per_length[n] for n in range(lo, hi + 1) if n in per_length]
        if rows:
            out[f"{lo}-{hi}"] = (sum(a for a, _ in rows) / len(rows), sum(e for _, e in rows) / len(rows))
    return out


@torch.no_grad()
def accuracy_by_source_position(model: Seq2Seq | Transformer, pairs: list, teacher_forced: bool = False,
                                 batch_size: int = 256) -> dict[str, list[float]]:
    """{bucket of source lengths: [accuracy of the target words translating source word 1, 2, ...]}:
    which source positions the model gets right. Greedy decoding lets one wrong word derail the rest;
    teacher-forced, every word is predicted from the true words before it, which shows what the
    model still knows of each source word without the derailing."""
    model.eval()
    right, count = {}, {}  # (bucket, source position) -> sums
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i: i + batch_size]
        src, lengths, tgt = to_batch(chunk)
        pred = model(src, lengths, tgt).argmax(dim=-1) if teacher_forced else model.translate(src, lengths,
                                                                                             tgt.shape[1])[0]
        hits = (pred[:, : tgt.shape[1]] == tgt).tolist()  # (B, T)
        for (words, _), row in zip(chunk, hits):
            bucket = next(f"{lo}-{hi}" for lo, hi in BUCKETS if lo <= len(words) <= hi)
            for t, j in enumerate(word_order(words)):  # target word t translates source word j
                right[bucket, j] = right.get((bucket, j), 0) + row[t]
                count[bucket, j] = count.get((bucket, j), 0) + 1
    out: dict[str, list[float]] = {}
    for (bucket, j), n in sorted(count.items(), key=lambda kv: (BUCKETS_ORDER[kv[0][0]], kv[0][1])):
        out.setdefault(bucket, []).append(right[bucket, j] / n)
    return out


@torch.no_grad()
def head_alignment(model: Transformer, pairs: list) -> tuple[torch.Tensor, torch.Tensor]:
    """What each cross-attention head reads, (L, nh) twice: how often its largest weight falls on the
    source word the target word translates (the rule's word_order: the alignment), and how often on the
    source word at the target word's own position. Over the pairs' words, greedy decoding."""
    model.eval()
    src, lengths, tgt = to_batch(pairs)
    _, weights = model.translate(src, lengths, tgt.shape[1])  # (B, T, L, nh, S)
    top = weights.argmax(dim=-1)  # (B, T, L, nh): the source position each head reads most
    aligned = torch.full(tgt.shape, -1)  # (B, T): the source position of each target word; -1 at <eos>, padding
    for b, (words, _) in enumerate(pairs):
        aligned[b, : len(words)] = torch.tensor(word_order(words))
    real = (aligned >= 0)[:, :, None, None]  # (B, T, 1, 1)
    own = torch.arange(tgt.shape[1]).view(1, -1, 1, 1)  # (1, T, 1, 1): the target word's own position
    words = real.sum()
    reads_aligned = ((top == aligned[:, :, None, None]) & real).sum(dim=(0, 1)) / words
    return reads_aligned, ((top == own) & real).sum(dim=(0, 1)) / words


def mark_errors(words: list[str], reference: list[str]) -> list[str]:
    """The words of a translation, each one that differs from the reference (with <eos>) marked with a trailing *."""
    ref = reference + ["<eos>"]
    return [w if i < len(ref) and w == ref[i] else f"{w}*" for i, w in enumerate(words)]


# ---------------------------------------------------------------------------------------------------
# 8. StatQuest's "Let's go" -> "vamos", on this file's own functions. The scores -0.41 and 0.01 and
#    the weights 0.4 and 0.6 are the video's; the two-unit states are illustrative values whose dot
#    products round to those scores.

LETS_GO = {"Let's": [-0.76, 0.75], "go": [0.01, -0.01]}  # encoder output after each word
DECODER_EOS = [0.91, 0.38]  # the decoder's output after reading <EOS>, its first step


def statquest() -> dict[str, torch.Tensor]:
    """Every number of the example: scores, weights, the rounded weights and both contexts."""
    enc = torch.tensor(list(LETS_GO.values()))  # (S=2, H=2)
    h = torch.tensor(DECODER_EOS)  # (H=2,)
    scores = torch.round(enc @ h, decimals=2)  # (1) dot products, rounded as the video shows them
    weights = attention_weights(scores)  # (2)
    rounded = torch.round(weights, decimals=1)  # the video's 0.4 and 0.6
    return {"enc": enc, "h": h, "scores": scores, "weights": weights, "rounded": rounded,
            "context": context_vector(rounded, enc), "exact_context": context_vector(weights, enc)}


def print_statquest() -> None:
    n = statquest()

    def vec(t: torch.Tensor) -> str:
        return "[" + ", ".join(f"{v:.4g}" for v in t.tolist()) + "]"

    print("StatQuest's \"Let's go\" -> \"vamos\", first decoder step, on this lesson's functions:")
    for (word, e), s in zip(LETS_GO.items(), n["scores"].tolist()):
        print(f"  (1) score(\"{word}\") = {vec(n['h'])} . {vec(torch.tensor(e))} = {s:.2f}")
    w = n["weights"].tolist()
    print(f"  (2) attention_weights({vec(n['scores'])}) = [{w[0]:.4f}, {w[1]:.4f}]  (the video rounds: 0.4, 0.6)")
    print(f"  (3) context_vector: 0.4 x enc(\"Let's\") + 0.6 x enc(\"go\") = 0.4 x {vec(n['enc'][0])} + 0.6 x "
          f"{vec(n['enc'][1])} = {vec(n['context'])}  (unrounded weights: {vec(n['exact_context'])})")
    print("  (4) the output layer reads [context; decoder state] and predicts the first word, \"vamos\" in the video\n")


# ---------------------------------------------------------------------------------------------------
# 9. Figures.

def plot_accuracy(results: dict[str, dict[int, tuple[float, float]]], path: Path) -> Path:
    """Token accuracy and exact match against source length, one line per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, what in enumerate(("token accuracy", "exact match")):
        ax = axes[i]
        for mode, per_length in results.items():
            ax.plot(list(per_length), [r[i] for r in per_length.values()], marker=".", label=mode)
        ax.set_xlabel("source length (words)")
        ax.set_ylabel(what)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(title="attention")
    fig.suptitle("held-out translations, greedy decoding")
    fig.tight_layout()
    save_png(fig, path)
    return path


def plot_positions(greedy: dict[str, list[float]], forced: dict[str, list[float]], path: Path, mode: str) -> Path:
    """Accuracy of the target words by the position of the source word they translate, a line per bucket of
    sentence lengths; greedy decoding on the left, teacher-forced on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, results, what in ((axes[0], greedy, "greedy decoding"), (axes[1], forced, "teacher-forced")):
        for bucket, acc in results.items():
            ax.plot(range(1, len(acc) + 1), acc, marker=".", label=bucket)
        ax.set_xlabel("position of the source word (1 = first)")
        ax.set_title(what, fontsize=10)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy of its translation")
    axes[1].legend(title="source length")
    fig.suptitle(f"{mode}: which source words get translated right (held-out sentences)")
    fig.tight_layout()
    save_png(fig, path)
    return path


def plot_alignment(weights: torch.Tensor, source: list[str], target: list[str], path: Path, title: str) -> Path:
    """The attention weights of one sentence: a row per decoder step (target word), a column per source word."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    T, S = weights.shape
    fig, ax = plt.subplots(figsize=(0.24 * S + 2.2, 0.24 * T + 2.0))
    ax.imshow(weights.numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(S), source, rotation=90, fontsize=8)
    ax.set_yticks(range(T), target, fontsize=8)
    ax.tick_params(length=0)
    ax.set_xlabel("source word (encoder state)")
    ax.set_ylabel("translation, one decoder step per row")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    save_png(fig, path)
    return path


def showcase(pairs: list) -> tuple[list[str], list[str]]:
    """The held-out sentence drawn in the heat maps: among the 25-word ones, the one with the most
    adjectives (each noun phrase with adjectives is reordered)."""
    return max((p for p in pairs if len(p[0]) == 25), key=lambda p: sum(w in ADJECTIVES for w in p[0]))


# ---------------------------------------------------------------------------------------------------
# The command: `python -m minigpt.lessons.seq2seq`

ALL_MODES = MODES + ["transformer"]
STEPS = {"transformer": 300}  # default steps, else 1000: the transformer's 300 take about the CPU time of dot's 1000


@dataclass
class Seq2SeqConfig:
    mode: str = opt("all", "what the decoder reads: all (each in turn), none, dot, general, additive or transformer")
    cell: str = opt("gru", "the RNN of the none/dot/general/additive modes: gru or lstm")
    steps: int | None = opt(None, "training steps per mode (batches of fresh random sentences); "
                                  "default 1000, 300 for the transformer")
    seed: int = opt(0, "random seed of the sentences and the initial weights")
    out: str = opt("out/seq2seq", "folder for the PNGs")
    batch_size: int = opt(64, "sentences per step")
    lr: float = opt(1e-2, "Adam's learning rate, decayed linearly to 0")
    hidden: int = opt(64, "width of the RNN states and of the transformer's vectors")
    heads: int = opt(4, "the transformer's attention heads per block")
    layers: int = opt(2, "the transformer's encoder blocks, and its decoder blocks")
    threads: int = opt(1, "CPU threads for torch; these small sequential ops run fastest on one")


def check(cfg: Seq2SeqConfig) -> list[str]:
    """The modes to train; a UserError for any bad setting, before anything is trained."""
    if cfg.mode != "all" and cfg.mode not in ALL_MODES:
        raise UserError(f"--mode={cfg.mode} is not a mode; use all, {', '.join(ALL_MODES)}")
    if cfg.cell not in CELLS:
        raise UserError(f"--cell={cfg.cell} is not a cell; use {' or '.join(CELLS)}")
    for name in ("steps", "batch_size", "hidden", "heads", "layers", "threads"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.hidden % cfg.heads:
        raise UserError(f"--hidden={cfg.hidden} must be a multiple of --heads={cfg.heads}: each head gets an equal share")
    if not cfg.lr > 0:
        raise UserError(f"--lr must be positive, got {cfg.lr}")
    out = Path(cfg.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise UserError(f"cannot write to --out={cfg.out} ({e.strerror}); choose a folder you can write to") from None
    return ALL_MODES if cfg.mode == "all" else [cfg.mode]


def build(mode: str, cfg: Seq2SeqConfig) -> Seq2Seq | Transformer:
    if mode == "transformer":
        return Transformer(cfg.hidden, cfg.heads, cfg.layers)
    return Seq2Seq(mode, hidden=cfg.hidden, cell=cfg.cell)


def main(argv: list[str]) -> int:
    cfg = parse_cli(argv, {"seq2seq": Seq2SeqConfig}, "python -m minigpt.lessons.seq2seq",
                    __doc__.splitlines()[0]).seq2seq
    modes = check(cfg)
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    print_statquest()

    pairs = held_out(cfg.seed)
    exclude = {tuple(s) for s, _ in pairs}  # never train on an evaluation sentence
    longest = [p for p in pairs if len(p[0]) >= BUCKETS[-1][0]]
    source, reference = showcase(pairs)
    print(f"{len(pairs)} held-out sentences, {len(pairs) // (MAX_LEN - MIN_LEN + 1)} of each length "
          f"{MIN_LEN}-{MAX_LEN}; the heat-map sentence ({len(source)} words):\n  {' '.join(source)}\n"
          f"  reference: {' '.join(reference)}")
    if any(m in MODES for m in modes):
        print(f"RNN cell: {cfg.cell}")
    results, times, started = {}, {}, time.time()
    for mode in modes:
        torch.manual_seed(cfg.seed)  # every mode starts from the same seed and sees the same batches
        model = build(mode, cfg)
        steps = cfg.steps or STEPS.get(mode, 1000)
        wall, cpu = time.time(), time.process_time()
        losses = train(model, steps, cfg.seed, cfg.batch_size, cfg.lr, exclude)
        times[mode] = (time.time() - wall, time.process_time() - cpu)
        results[mode] = evaluate(model, pairs)
        words, weights = translate_sentence(model, source)
        marked = mark_errors(words, reference)
        loss = sum(losses[-20:]) / len(losses[-20:])
        print(f"{mode:>11}: {steps} steps, trained in {times[mode][0]:.0f} s ({times[mode][1]:.0f} s of CPU), "
              f"final loss {loss:.3f}; the heat-map sentence (* wrong):\n             {' '.join(marked)}")
        if mode == "none":
            path = plot_positions(accuracy_by_source_position(model, pairs),
                                  accuracy_by_source_position(model, pairs, teacher_forced=True),
                                  out / "position_accuracy_none.png", f"none ({cfg.cell})")
            print(f"             accuracy by source position: {path}")
        if mode == "transformer":
            # The map shows the head that reads the word being translated most often, to compare with the
            # RNNs' alignments; the printout says what the other heads read.
            aligned, own = head_alignment(model, longest)  # (L, nh) each
            layer, head = divmod(int(aligned.argmax()), aligned.shape[1])
            for name, share in (("the word it translates", aligned), ("the word at its own position", own)):
                print(f"             how often each cross-attention head reads {name} most, 26-30-word "
                      "sentences:\n" + "\n".join(f"               layer {i + 1}: " + " ".join(f"{v:.2f}" for v in row)
                                                 for i, row in enumerate(share.tolist())))
            weights = weights[:, layer, head]  # (steps, S)
            what = f"transformer cross-attention, layer {layer + 1} head {head + 1}"
        else:
            what = f"{mode} attention ({cfg.cell})"
        if weights is not None:
            path = plot_alignment(weights, source, marked, out / f"alignment_{mode}.png",
                                  f"{what}: which source word each target word reads")
            print(f"             alignment heat map ({what}): {path}")

    print(f"\nheld-out token accuracy / exact match by source length, greedy decoding "
          f"({time.time() - started:.0f} s for {len(modes)} mode{'s' if len(modes) > 1 else ''}):\n")
    buckets = {mode: by_bucket(r) for mode, r in results.items()}
    print("| source length | " + " | ".join(buckets) + " |")
    print("|---" * (len(buckets) + 1) + "|")
    for b in next(iter(buckets.values())):
        print(f"| {b} | " + " | ".join(f"{buckets[m][b][0]:.3f} / {buckets[m][b][1]:.2f}" for m in buckets) + " |")
    print("| training s, wall / CPU | " + " | ".join(f"{w:.0f} / {c:.0f}" for w, c in times.values()) + " |")
    print(f"\naccuracy by length: {plot_accuracy(results, out / 'accuracy_by_length.png')}")
    return 0


if __name__ == "__main__":
    run_cli(main)
