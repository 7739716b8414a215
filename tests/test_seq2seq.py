"""The translation lesson: the toy language, each attention step by hand, StatQuest's numbers,
attention beating the bottleneck on long sentences (GRU and LSTM), the transformer's masks (no leak from
the target into the encoder, causal decoder, cross-attention rows summing to 1), and the command's
figures and errors."""

import random
import re

import pytest
import torch

from conftest import ROOT, run
from minigpt.lessons.seq2seq import (
    ADJECTIVES, ALL_MODES, EOS, MAX_LEN, MIN_LEN, MODES, PAD, AdditiveScore, DotScore, GeneralScore, Seq2Seq,
    Transformer, accuracy_by_source_position, attention_weights, by_bucket, context_vector, evaluate, head_alignment,
    held_out, main, make_pairs, score_translations, sentence, statquest, to_batch, train, translate_by_rule, word_order,
)
from minigpt.errors import UserError


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small sequential RNN ops run fastest on one thread (the command's default too), more so on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------------
# The toy language


def test_noun_phrases_are_reordered_like_french():
    assert translate_by_rule("the european economic area".split()) == "le zone économique européenne".split()
    assert translate_by_rule("a big red old cat sees dog".split()) == "un chat vieux rouge grand voit chien".split()
    assert translate_by_rule("quiet horse with the book".split()) == "cheval calme avec le livre".split()
    # as positions: target word t translates source word word_order[t]
    assert word_order("a big red old cat sees dog".split()) == [0, 4, 3, 2, 1, 5, 6]


def test_sentences_have_every_length_and_depend_only_on_the_seed():
    rng = random.Random(3)
    for n in range(MIN_LEN, MAX_LEN + 1):
        words = sentence(rng, n)
        assert len(words) == n and len(translate_by_rule(words)) == n
    assert held_out(0, per_length=2) == held_out(0, per_length=2)
    assert held_out(0, per_length=2) != held_out(1, per_length=2)
    long = [s for s, _ in held_out(0, per_length=5) if len(s) >= 20]
    assert all(sum(w in ADJECTIVES for w in s) >= 3 for s in long)  # enough adjectives to reorder


def test_training_never_sees_a_held_out_sentence():
    short = [s for s, _ in held_out(0) if len(s) == 3]
    exclude = {tuple(s) for s in short}
    drawn = {tuple(s) for s, _ in make_pairs(random.Random(0), 2000, range(3, 4))}
    assert drawn & exclude  # 3-word sentences repeat often: without exclusion some come back
    drawn = {tuple(s) for s, _ in make_pairs(random.Random(0), 2000, range(3, 4), exclude)}
    assert not drawn & exclude


def test_batches_are_padded_and_end_in_eos():
    src, lengths, tgt = to_batch(make_pairs(random.Random(0), 5, range(3, 9)))
    assert lengths.tolist() == (src != PAD).sum(dim=1).tolist()
    ends = (tgt != PAD).sum(dim=1) - 1
    assert (tgt.gather(1, ends[:, None]) == EOS).all() and (ends == lengths).all()


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_padding_does_not_reach_the_encoder_states_or_final_state(cell):
    torch.manual_seed(0)
    model = Seq2Seq("dot", hidden=16, cell=cell)
    pairs = make_pairs(random.Random(2), 4, range(3, 12))
    src, lengths, _ = to_batch(pairs)
    enc, final = model.encoder(src, lengths)
    finals = final if cell == "lstm" else (final,)  # an LSTM's state is (h, c): the cell must be right too
    assert len(finals) == (2 if cell == "lstm" else 1)
    for b, (words, target) in enumerate(pairs):
        alone_src, alone_len, _ = to_batch([(words, target)])
        alone_enc, alone_final = model.encoder(alone_src, alone_len)
        n = len(words)
        assert torch.allclose(enc[b, :n], alone_enc[0], atol=1e-6)
        for state, alone in zip(finals, alone_final if cell == "lstm" else (alone_final,)):
            assert torch.allclose(state[0, b], alone[0, 0], atol=1e-6)
    assert (lengths < src.shape[1]).any()  # the batch really was padded


def test_transformer_padding_does_not_reach_the_encoder_states():
    torch.manual_seed(0)
    model = Transformer(16, 2, 2).eval()
    pairs = make_pairs(random.Random(2), 4, range(3, 12))
    src, lengths, _ = to_batch(pairs)
    enc, pad = model.encode(src)
    assert (pad == (src == PAD)).all() and pad.any()
    for b, (words, target) in enumerate(pairs):
        alone, _ = model.encode(to_batch([(words, target)])[0])
        assert torch.allclose(enc[b, : len(words)], alone[0], atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# One attention step, by hand: decoder state h = [1, 2] against encoder states [1, 0], [0, 1], [1, 1]

H = torch.tensor([[[1.0, 2.0]]])  # (B=1, T=1, H=2)
ENC = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # (B=1, S=3, H=2)


def one_step(score):
    scores = score(H, score.keys(ENC))  # (1)
    weights = attention_weights(scores)  # (2)
    return scores[0, 0], weights[0, 0], context_vector(weights, ENC)[0, 0]  # (3)


def test_dot_step_by_hand():
    scores, weights, context = one_step(DotScore())
    assert torch.allclose(scores, torch.tensor([1.0, 2.0, 3.0]))  # h . e
    assert torch.allclose(weights, torch.tensor([0.0900, 0.2447, 0.6652]), atol=1e-4)
    assert torch.allclose(context, torch.tensor([0.7553, 0.9100]), atol=1e-4)  # .09 [1,0] + .2447 [0,1] + .6652 [1,1]


def test_general_step_by_hand():
    score = GeneralScore(2)
    with torch.no_grad():
        score.W.weight.copy_(torch.tensor([[1.0, 2.0], [0.0, 1.0]]))  # not symmetric: W e, not W^T e
    scores, weights, context = one_step(score)
    assert torch.allclose(scores, torch.tensor([1.0, 4.0, 5.0]))  # W e = [1,0], [2,1], [3,1]; h . W e
    assert torch.allclose(weights, torch.tensor([0.0132, 0.2654, 0.7214]), atol=1e-4)
    assert torch.allclose(context, torch.tensor([0.7346, 0.9868]), atol=1e-4)


def test_additive_step_by_hand():
    score = AdditiveScore(2, width=2)
    with torch.no_grad():
        score.W1.weight.copy_(torch.eye(2))
        score.W2.weight.copy_(-torch.eye(2))
        score.v.weight.copy_(torch.tensor([[1.0, 1.0]]))
    scores, weights, context = one_step(score)
    # v . tanh(h - e): tanh([0, 2]), tanh([1, 1]), tanh([0, 1]) summed
    assert torch.allclose(scores, torch.tensor([0.9640, 1.5232, 0.7616]), atol=1e-4)
    assert torch.allclose(weights, torch.tensor([0.2804, 0.4905, 0.2290]), atol=1e-4)
    assert torch.allclose(context, torch.tensor([0.5095, 0.7196]), atol=1e-4)


def test_padding_gets_no_weight():
    weights = attention_weights(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), pad=torch.tensor([[False, False, True, True]]))
    assert torch.allclose(weights, torch.tensor([[0.2689, 0.7311, 0.0, 0.0]]), atol=1e-4)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_without_attention_the_decoder_sees_only_the_final_state(cell):
    torch.manual_seed(0)
    src, lengths, tgt = to_batch(make_pairs(random.Random(0), 4, range(6, 7)))  # one length: no padding
    for mode in MODES:
        model = Seq2Seq(mode, hidden=16, cell=cell).eval()
        enc, state = model.encoder(src, lengths)
        final = state[0] if cell == "lstm" else state  # the final output h
        keys = model.decoder.score.keys(enc) if model.decoder.score else None
        changed = enc.clone()
        changed[:, :-1] += 1.0  # every encoder state but the last one
        keys2 = model.decoder.score.keys(changed) if model.decoder.score else None
        a, _, _ = model.decoder(tgt, state, enc, final, keys, src == PAD)
        b, _, _ = model.decoder(tgt, state, changed, final, keys2, src == PAD)
        assert torch.allclose(a, b) == (mode == "none")


# ---------------------------------------------------------------------------------------------------
# The transformer's masks


@pytest.fixture(scope="module")
def transformer_batch():
    torch.manual_seed(0)
    src, lengths, tgt = to_batch(make_pairs(random.Random(4), 6, range(4, 15)))  # mixed lengths: padding
    return Transformer(32, 4, 2).eval(), src, lengths, tgt


def test_transformer_encoder_never_sees_the_target(transformer_batch):
    model, src, lengths, tgt = transformer_batch
    seen = []
    hook = model.ln_enc.register_forward_hook(lambda module, args, out: seen.append(out))
    changed = tgt.clone()
    changed[:, 2] = torch.where(tgt[:, 2] == 3, 4, 3)  # a later target word, another in every sentence
    try:
        a, b = model(src, lengths, tgt), model(src, lengths, changed)
    finally:
        hook.remove()
    assert torch.equal(seen[0], seen[1])  # the encoder's output did not move
    assert not torch.allclose(a[:, 3], b[:, 3])  # while the decoder, which reads word 2 at step 3, did


def test_transformer_encoder_is_bidirectional(transformer_batch):
    model, src, _, _ = transformer_batch
    changed = src.clone()
    changed[:, 3] = torch.where(src[:, 3] == 3, 4, 3)  # another real word at position 3 (ids 0-2 are special)
    a, b = model.encode(src)[0], model.encode(changed)[0]
    assert not torch.isclose(a[:, 2], b[:, 2], atol=1e-6).all(dim=-1).any()  # word 2 sees word 3 after it


def test_transformer_decoder_at_step_t_does_not_see_target_t_plus_1(transformer_batch):
    model, src, lengths, tgt = transformer_batch
    for t in (0, 2, 3):
        changed = tgt.clone()
        changed[:, t + 1] = torch.where(tgt[:, t + 1] == 3, 4, 3)  # target word t+1, another in every sentence
        a, b = model(src, lengths, tgt), model(src, lengths, changed)  # (B, T, V) teacher-forced logits
        assert torch.allclose(a[:, : t + 2], b[:, : t + 2], atol=1e-6)  # up to step t+1, which predicts word t+1
        assert not torch.isclose(a[:, t + 2], b[:, t + 2], atol=1e-6).all(dim=-1).any()  # step t+2 reads it


def test_transformer_cross_attention_rows_sum_to_one_and_skip_padding(transformer_batch):
    model, src, lengths, tgt = transformer_batch
    pred, weights = model.translate(src, lengths, tgt.shape[1])  # (B, T, L, nh, S)
    assert pred.shape == tgt.shape and weights.shape == (*tgt.shape, 2, 4, src.shape[1])
    assert torch.allclose(weights.sum(dim=-1), torch.ones(weights.shape[:-1]), atol=1e-5)
    assert (weights.masked_select((src == PAD)[:, None, None, None, :].expand_as(weights)) == 0).all()
    assert (src == PAD).any()
    # the greedy loop's weights are those of one teacher-forced pass over what it wrote
    _, again = model.decode(torch.cat([torch.full_like(pred[:, :1], 1), pred[:, :-1]], dim=1), *model.encode(src))
    assert torch.allclose(weights, again, atol=1e-6)


def test_head_alignment_counts_where_each_head_looks():
    pairs = make_pairs(random.Random(5), 3, range(8, 12))
    src, _, tgt = to_batch(pairs)

    class Stub:  # a transformer whose layer-1 heads read the translated word, layer 2's their own position
        def eval(self):
            pass

        def translate(self, src, lengths, max_len):
            weights = torch.zeros(len(pairs), max_len, 2, 3, src.shape[1])
            for b, (words, _) in enumerate(pairs):
                for t, j in enumerate(word_order(words)):
                    weights[b, t, 0, :, j] = 1.0
                    weights[b, t, 1, :, t] = 1.0
            return None, weights

    aligned, own = head_alignment(Stub(), pairs)
    assert torch.equal(aligned[0], torch.ones(3)) and torch.equal(own[1], torch.ones(3))
    moved = sum(t != j for words, _ in pairs for t, j in enumerate(word_order(words)))  # reordered words
    words = sum(len(w) for w, _ in pairs)
    assert moved > 0
    assert torch.allclose(aligned[1], torch.full((3,), 1 - moved / words))  # own position = right word if not moved
    assert torch.allclose(own[0], torch.full((3,), 1 - moved / words))


# ---------------------------------------------------------------------------------------------------
# StatQuest's "Let's go" -> "vamos"


def test_statquest_numbers():
    assert torch.allclose(attention_weights(torch.tensor([-0.41, 0.01])), torch.tensor([0.3965, 0.6035]), atol=5e-5)
    n = statquest()
    assert torch.allclose(n["scores"], torch.tensor([-0.41, 0.01]))  # the lesson's dot products, rounded
    assert torch.allclose(n["weights"], torch.tensor([0.3965, 0.6035]), atol=5e-5)
    assert torch.allclose(n["rounded"], torch.tensor([0.4, 0.6]))
    lets, go = n["enc"]
    assert torch.allclose(n["context"], 0.4 * lets + 0.6 * go)
    assert torch.allclose(n["context"], torch.tensor([-0.298, 0.294]), atol=1e-6)  # .4 [-.76, .75] + .6 [.01, -.01]


# ---------------------------------------------------------------------------------------------------
# Scoring, training, alignment


def test_scores_count_words_and_whole_sentences():
    tgt = torch.tensor([[5, 6, 7, EOS], [5, 6, EOS, PAD]])
    pred = torch.tensor([[5, 9, 7, EOS, 4], [5, 6, EOS, 8, 8]])  # what follows <eos> does not count
    acc, exact = score_translations(pred, tgt)
    assert torch.allclose(acc, torch.tensor([2 / 3, 1.0])) and exact.tolist() == [0.0, 1.0]
    assert by_bucket({3: (1.0, 1.0), 5: (0.5, 0.0), 6: (0.2, 0.0)}) == {"3-5": (0.75, 0.5), "6-10": (0.2, 0.0)}


@pytest.fixture(scope="module")
def tiny_runs():
    """none and dot with a GRU and with an LSTM, trained 300 steps on sentences of 3-16 words (seconds each),
    scored on 13-16 words."""
    pairs = held_out(0, per_length=10)
    long = [p for p in pairs if len(p[0]) >= 13 and len(p[0]) <= 16]
    models, accuracy = {}, {}
    for mode, cell in (("none", "gru"), ("dot", "gru"), ("none", "lstm"), ("dot", "lstm")):
        name = mode if cell == "gru" else f"{mode} {cell}"
        torch.manual_seed(0)
        models[name] = Seq2Seq(mode, emb=16, hidden=32, cell=cell)
        train(models[name], 300, 0, batch_size=32, exclude={tuple(s) for s, _ in pairs}, lengths=range(3, 17),
              progress=False)
        per_length = evaluate(models[name], long)
        accuracy[name] = sum(a for a, _ in per_length.values()) / len(per_length)
    return models, accuracy, long


def test_attention_beats_the_bottleneck_on_long_sentences(tiny_runs):
    _, accuracy, _ = tiny_runs
    assert accuracy["dot"] > accuracy["none"] + 0.3, accuracy  # seeds 0-3 measured 0.45-0.6 apart


def test_lstm_trains_and_attention_beats_its_bottleneck_on_long_sentences(tiny_runs):
    models, accuracy, _ = tiny_runs
    assert isinstance(models["dot lstm"].encoder.rnn, torch.nn.LSTM)
    assert accuracy["dot lstm"] > accuracy["none lstm"] + 0.3, accuracy  # seeds 0-1 measured 0.46-0.48 apart


def test_accuracy_by_source_position_counts_each_target_word_once(tiny_runs):
    models, accuracy, long = tiny_runs
    for forced in (False, True):
        by_position = accuracy_by_source_position(models["none"], long, teacher_forced=forced)
        assert list(by_position) == ["11-15", "16-20"] and len(by_position["16-20"]) == 16
        assert all(0 <= a <= 1 for accs in by_position.values() for a in accs)
    # greedy, the words of 16-word sentences by source position average to the token accuracy at length 16
    sixteen = [p for p in long if len(p[0]) == 16]
    greedy = accuracy_by_source_position(models["none"], sixteen)["16-20"]
    assert sum(greedy) / 16 == pytest.approx(evaluate(models["none"], sixteen)[16][0], abs=1e-6)


def test_alignment_weights_of_every_decoder_step_sum_to_one(tiny_runs):
    models, _, _ = tiny_runs
    src, lengths, tgt = to_batch(make_pairs(random.Random(1), 8, range(3, 17)))  # mixed lengths: padding
    for model in [models["dot"], Seq2Seq("general", hidden=16), Seq2Seq("additive", hidden=16)]:
        _, weights = model.translate(src, lengths, tgt.shape[1])  # (B, T, S)
        assert torch.allclose(weights.sum(dim=-1), torch.ones(weights.shape[:2]), atol=1e-5)
        assert (weights.masked_select((src == PAD)[:, None, :].expand_as(weights)) == 0).all()
    assert models["none"].translate(src, lengths, 3)[1] is None


# ---------------------------------------------------------------------------------------------------
# The command


def test_command_prints_the_table_and_writes_the_figures(tmp_path):
    p = run("-m", "minigpt.lessons.seq2seq", "--steps=3", f"--out={tmp_path}", env={"PYTHONPATH": str(ROOT)})
    for s in ("0.3965, 0.6035", "[-0.298, 0.294]", "length", "3-5", "26-30"):
        assert s in p.stdout
    assert all(mode in p.stdout for mode in ALL_MODES)
    assert "training s, wall / CPU" in p.stdout and re.search(r"layer \d head \d", p.stdout)
    names = sorted(f.name for f in tmp_path.iterdir())
    assert names == ["accuracy_by_length.png", "alignment_additive.png", "alignment_dot.png", "alignment_general.png",
                     "alignment_transformer.png", "position_accuracy_none.png"]
    assert all((tmp_path / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in names)


@pytest.mark.parametrize("flag,needles", [
    ("--mode=luong", ["luong", "transformer"]),  # the message names the bad value and the valid ones
    ("--cell=rnn", ["rnn", "lstm"]),
    ("--out={file}/figures", ["cannot write to --out="]),
    ("--stpes=5", ["did you mean steps"]),
])
def test_bad_flags_give_one_line_and_exit_2(tmp_path, flag, needles):
    (tmp_path / "file").write_text("not a folder")
    p = run("-m", "minigpt.lessons.seq2seq", flag.format(file=tmp_path / "file"), check=False,
            env={"PYTHONPATH": str(ROOT)})
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and all(n in lines[0] for n in needles), p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""


@pytest.mark.parametrize("flag,needles", [
    ("--mode=transformers", ["transformers", "additive"]),
    ("--cell=LSTM", ["LSTM", "gru"]),
    ("--steps=0", ["--steps must be at least 1"]),
    ("--hidden=30", ["--hidden=30", "--heads=4"]),
])
def test_bad_settings_are_refused_before_training(tmp_path, flag, needles):
    """The same checks in-process (the command turns the UserError into one line and exit 2, above)."""
    with pytest.raises(UserError) as e:
        main([flag, f"--out={tmp_path}"])
    assert all(n in str(e.value) for n in needles), e.value
    assert not list(tmp_path.iterdir())  # nothing written
