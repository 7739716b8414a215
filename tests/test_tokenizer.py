import pytest

from conftest import needs_gpt2
from minigpt.errors import UserError
from minigpt.tokenizer import CharTokenizer, TiktokenTokenizer, build, from_spec


def test_char_round_trip_and_spec():
    tok = CharTokenizer.from_text("hello world\n")
    ids = tok.encode("hello\nworld")
    assert tok.decode(ids) == "hello\nworld"
    assert tok.vocab_size == len(set("hello world\n"))
    again = from_spec(tok.spec())
    assert again.encode("hello") == tok.encode("hello")


def test_char_unknown_character_names_it():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(UserError, match="'z'"):
        tok.encode("abz")


def test_unknown_spec_and_encoding():
    with pytest.raises(UserError):
        from_spec({"kind": "sentencepiece"})
    with pytest.raises(UserError, match="unknown tiktoken encoding"):
        build("no_such_encoding")


@needs_gpt2
def test_gpt2_round_trip():
    tok = TiktokenTokenizer("gpt2")
    assert tok.vocab_size == 50257 and tok.eot_id == 50256
    assert tok.encode("hello world") == [31373, 995]
    text = "Unicode ✓ naïve — 日本語 <|endoftext|>"
    assert tok.decode(tok.encode(text)) == text
    assert from_spec(tok.spec()).encode(text) == tok.encode(text)


def test_char_end_of_text_comes_after_the_characters():
    plain, with_eot = CharTokenizer.from_text("hello world\n"), CharTokenizer.from_text("hello world\n", eot=True)
    assert with_eot.eot_id == plain.vocab_size and with_eot.vocab_size == plain.vocab_size + 1
    assert with_eot.encode("hello") == plain.encode("hello")  # the characters keep their ids
    assert "eot" not in plain.spec() and from_spec(with_eot.spec()).eot_id == with_eot.eot_id
    assert with_eot.decode(with_eot.encode("he ") + [with_eot.eot_id]) == "he <|endoftext|>"


def test_char_batch_encoding_equals_encode():
    tok = CharTokenizer.from_text("abc ünï✓\n🎉")
    texts = ["abc", "", "ünï✓ 🎉\n", "c" * 1000]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    with pytest.raises(UserError, match="'z'"):
        tok.encode_batch(["abc", "abz"])
