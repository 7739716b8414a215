"""Sample text from a trained checkpoint or GPT-2's weights: `python -m minigpt sample` (and sample.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from . import checkpoint
from .config import SAMPLE_SECTIONS, RuntimeConfig, SampleConfig, parse_cli
from .errors import UserError, run_cli
from .generate import Sampling, compile_step, decode_steps


def read_prompt(start: str) -> str:
    """The prompt: `start` itself, or with FILE:path the text of a UTF-8 file (a file that is not UTF-8 or is
    empty is refused in one line: a prompt read with the wrong encoding would be silently wrong text)."""
    if not start.startswith("FILE:"):
        return start
    path = Path(start[5:])
    if not path.is_file():
        raise UserError(f"prompt file {path} does not exist; pass --start=FILE:path with an existing file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"prompt file {path} is not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start}); save "
                        f"it as UTF-8, e.g. `iconv -f latin1 -t utf-8 {path} > prompt.txt`") from None
    if not text:
        raise UserError(f"prompt file {path} is empty; write the prompt into it, or pass --start=TEXT "
                        f"(--start='' starts from the end-of-text token)")
    return text


def check_settings(cfg: SampleConfig) -> Sampling:
    """The sampling settings as one object, or one clear error naming the bad flag. (Each setting's range is
    declared in config.SampleConfig; Sampling checks again for callers that build it in code.)"""
    try:
        return Sampling(cfg.temperature, cfg.top_k, cfg.top_p, cfg.repetition_penalty)
    except ValueError as e:  # Sampling's messages start with the setting's name
        raise UserError(f"--{e}") from None


class TextDecoder:
    """The text of one growing sample, released only once it is final.

    Held back: a character whose bytes are split over BPE tokens (the decoder shows it as U+FFFD until
    it is complete) and a tail that could still become a stop string. A stop string ends the sample
    before it.
    """

    def __init__(self, tok, stops: list[str]):
        self.tok, self.stops = tok, [s for s in stops if s]
        self.ids: list[int] = []
        self.text = ""  # decoded so far (cut at a stop string once one appears)
        self.sent = 0  # characters of text already released
        self.done = False

    def add(self, token: int) -> str:
        """Append a token; returns the text that became final."""
        self.ids.append(token)
        self.text = self.tok.decode(self.ids)
        hits = [i for i in (self.text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            return self.finish()
        end = len(self.text.rstrip("\ufffd"))  # an incomplete multi-byte character decodes as U+FFFD
        end -= self._stop_prefix(end)
        piece, self.sent = self.text[self.sent : end], max(self.sent, end)
        return piece

    def _stop_prefix(self, end: int) -> int:
        """Length of the longest tail of text[:end] that is the beginning of a stop string."""
        held = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, end), held, -1):
                if self.text.startswith(s[:n], end - n):
                    held = n
                    break
        return held

    def finish(self) -> str:
        """End the sample; returns whatever was still held back."""
        self.done = True
        piece, self.sent = self.text[self.sent :], len(self.text)
        return piece


def unescape(stop: str) -> str:
    """`--stop='\\n\\n'` means two newlines: the shell passes backslashes through."""
    return stop.replace("\\n", "\n").replace("\\t", "\t")


def sample(cfg: SampleConfig, rc: RuntimeConfig) -> list[str]:
    """Draw `num_samples` continuations of the prompt as one batch; prints them and returns them.
    With `cfg.stream`, the first sample is printed as it is generated."""
    sampling = check_settings(cfg)
    prompt = read_prompt(cfg.start)  # before the slow load: a bad prompt file is said at once
    loaded, rt = checkpoint.load_for_inference(cfg.model, rc, cfg.quantize)
    model, tok, device = loaded.model, loaded.tokenizer, rt.device
    sampling = dataclasses.replace(sampling, vocab_size=tok.vocab_size)  # padded ids decode to nothing
    ids = tok.encode(prompt)
    if not ids:
        if tok.eot_id is not None:
            print("note: empty prompt; starting from the end-of-text token")
            ids = [tok.eot_id]
        else:
            print("note: empty prompt, and a character-level model has no end-of-text token; starting from a newline")
            ids, prompt = tok.encode("\n"), "\n"
    block = model.config.block_size
    if len(ids) > block:
        print(f"note: the prompt has {len(ids)} tokens, more than the model's context of {block}; "
              f"using its last {block}")
        ids = ids[-block:]
        prompt = tok.decode(ids)
    torch.manual_seed(rc.seed)
    gen = torch.Generator(device=device).manual_seed(rc.seed)
    idx = torch.tensor([ids] * cfg.num_samples, dtype=torch.long, device=device)
    step = compile_step(model) if rt.compile else None
    if cfg.quantize == "int8" and device.type == "cpu" and step is None:
        print("note: --quantize=int8 decodes fast only compiled (--compile=true, ~20 s to compile); "
              "eager, the int8 weights are a quarter of the memory but not faster")
    texts = [TextDecoder(tok, [unescape(s) for s in cfg.stop]) for _ in range(cfg.num_samples)]
    if cfg.stream:
        print(prompt, end="", flush=True)
    steps = decode_steps(model, idx, max_new_tokens=cfg.max_new_tokens, sampling=sampling, generator=gen,
                         use_cache=cfg.kv_cache, step=step)
    for next_ids in steps:
        for i, (text, token) in enumerate(zip(texts, next_ids[:, 0].tolist())):
            if text.done:
                continue
            piece = text.finish() if token == tok.eot_id else text.add(token)  # end-of-text always stops
            if cfg.stream and i == 0:
                print(piece, end="", flush=True)
        if all(text.done for text in texts):
            break
    results = []
    for i, text in enumerate(texts):
        rest = text.finish()
        if cfg.stream and i == 0:
            print(rest)
        else:
            print(prompt + text.text)
        print("---------------")
        results.append(prompt + text.text)
    return results


def main(argv: list[str]) -> int:
    cfg = parse_cli(argv, SAMPLE_SECTIONS, "python -m minigpt sample",
                    "Sample from a trained model or GPT-2: --model=SOURCE [--start=TEXT | --start=FILE:path] ...")
    sample(cfg.sample, cfg.runtime)
    return 0


if __name__ == "__main__":
    run_cli(main)
