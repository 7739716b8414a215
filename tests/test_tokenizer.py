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
