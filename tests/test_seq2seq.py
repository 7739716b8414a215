"""The RNN translation lesson: the toy language, each attention step by hand, StatQuest's numbers,
attention beating the bottleneck on long sentences, and the command's figures and errors."""

import random

import pytest
import torch

from conftest import ROOT, run
from minigpt.lessons.seq2seq import (
    ADJECTIVES, EOS, MAX_LEN, MIN_LEN, MODES, PAD, AdditiveScore, DotScore, GeneralScore, Seq2Seq, attention_weights,
    by_bucket, context_vector, evaluate, held_out, make_pairs, score_translations, sentence, statquest, to_batch,
    train, translate_by_rule,
)



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


def test_padding_does_not_reach_the_encoder_states_or_final_state():
    torch.manual_seed(0)
    model = Seq2Seq("dot", hidden=16)
    pairs = make_pairs(random.Random(2), 4, range(3, 12))
    src, lengths, _ = to_batch(pairs)
    enc, final = model.encoder(src, lengths)
    for b, (words, target) in enumerate(pairs):
        alone_src, alone_len, _ = to_batch([(words, target)])
        alone_enc, alone_final = model.encoder(alone_src, alone_len)
        n = len(words)
        assert torch.allclose(enc[b, :n], alone_enc[0], atol=1e-6)
        assert torch.allclose(final[0, b], alone_final[0, 0], atol=1e-6)
    assert (lengths < src.shape[1]).any()  # the batch really was padded


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


def test_without_attention_the_decoder_sees_only_the_final_state():
    torch.manual_seed(0)
    src, lengths, tgt = to_batch(make_pairs(random.Random(0), 4, range(6, 7)))  # one length: no padding
    for mode in MODES:
        model = Seq2Seq(mode, hidden=16).eval()
        enc, final = model.encoder(src, lengths)
        keys = model.decoder.score.keys(enc) if model.decoder.score else None
        changed = enc.clone()
        changed[:, :-1] += 1.0  # every encoder state but the last one
        keys2 = model.decoder.score.keys(changed) if model.decoder.score else None
        a, _, _ = model.decoder(tgt, final, enc, final, keys, src == PAD)
        b, _, _ = model.decoder(tgt, final, changed, final, keys2, src == PAD)
        assert torch.allclose(a, b) == (mode == "none")


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
    """none and dot, trained 300 steps on sentences of 3-16 words (seconds), scored on 13-16 words."""
    pairs = held_out(0, per_length=10)
    long = [p for p in pairs if len(p[0]) >= 13 and len(p[0]) <= 16]
    models, accuracy = {}, {}
    for mode in ("none", "dot"):
        torch.manual_seed(0)
        models[mode] = Seq2Seq(mode, emb=16, hidden=32)
        train(models[mode], 300, 0, batch_size=32, exclude={tuple(s) for s, _ in pairs}, lengths=range(3, 17),
              progress=False)
        per_length = evaluate(models[mode], long)
        accuracy[mode] = sum(a for a, _ in per_length.values()) / len(per_length)
    return models, accuracy


def test_attention_beats_the_bottleneck_on_long_sentences(tiny_runs):
    _, accuracy = tiny_runs
    assert accuracy["dot"] > accuracy["none"] + 0.3, accuracy  # seeds 0-3 measured 0.45-0.6 apart


def test_alignment_weights_of_every_decoder_step_sum_to_one(tiny_runs):
    models, _ = tiny_runs
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
    assert all(mode in p.stdout for mode in MODES)
    names = sorted(f.name for f in tmp_path.iterdir())
    assert names == ["accuracy_by_length.png", "alignment_additive.png", "alignment_dot.png", "alignment_general.png"]
    assert all((tmp_path / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in names)


@pytest.mark.parametrize("flag,needle", [
    ("--mode=luong", "--mode=luong is not a mode"),
    ("--steps=0", "--steps must be at least 1"),
    ("--out={file}/figures", "cannot write to --out="),
    ("--stpes=5", "did you mean steps"),
])
def test_bad_flags_give_one_line_and_exit_2(tmp_path, flag, needle):
    (tmp_path / "file").write_text("not a folder")
    p = run("-m", "minigpt.lessons.seq2seq", flag.format(file=tmp_path / "file"), check=False,
            env={"PYTHONPATH": str(ROOT)})
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""
