"""Export a checkpoint for other tools: `python -m minigpt export --model=out --to=hf DIR`.

`--to=hf` writes a Hugging Face GPT-2 folder (config.json + model.safetensors) that
`transformers.GPT2LMHeadModel.from_pretrained(DIR)` loads and that gives the same logits as minigpt, and
beside them minigpt_tokenizer.json, the model's tokenizer spec, which minigpt's loader reads back (a model
trained with its own tokenizer comes back with it, not with GPT-2's).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from .. import checkpoint, hf
from ..config import opt, parse_cli
from ..errors import UserError, run_cli
from ..fileio import atomic_write_bytes, atomic_write_json

FORMATS = ("hf",)


@dataclass
class ExportConfig:
    model: str = opt("out", "the checkpoint to export: a folder holding ckpt.pt, or a .pt file")
    to: str = opt("hf", "format to write: 'hf' (a Hugging Face GPT-2 folder for transformers)", choices=FORMATS)
    dest: str = opt("", "the folder to write (also given as the bare argument DEST)")

    RENAMED: ClassVar[dict[str, str]] = {"out_dir": "model"}


def export_hf(out_dir: str | Path, dest: str | Path) -> Path:
    """Write the checkpoint in `out_dir` as a Hugging Face GPT-2 folder `dest`; returns `dest`."""
    try:
        from safetensors.torch import save
    except ImportError:
        raise UserError("exporting to Hugging Face needs the optional packages: pip install -e '.[hf]'") from None
    loaded = checkpoint.load_model(out_dir)
    model, tok = loaded.model, loaded.tokenizer
    config = hf.hf_config(model.config, tok.eot_id)  # refuses models GPT-2's architecture cannot express
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise UserError(f"{dest} exists and is not a folder; choose a folder to export into")
    spec = tok.spec()
    # always written, GPT-2's too: a folder exported over keeps no stale tokenizer; config.json comes last,
    # so an interrupted export is never a complete-looking folder with the wrong tokenizer
    atomic_write_json(dest / hf.TOKENIZER_FILE, spec)
    atomic_write_bytes(dest / "model.safetensors", save(hf.to_hf_state_dict(model), metadata={"format": "pt"}))
    atomic_write_json(dest / "config.json", config)
    if spec != hf.GPT2_TOKENIZER:
        print(f"note: this model's tokenizer is '{spec.get('name', spec.get('kind'))}', not GPT-2's: minigpt loads "
              f"it from {hf.TOKENIZER_FILE}; with transformers, encode text with minigpt's tokenizer first")
    return dest


def main(argv: list[str]) -> int:
    cfg = parse_cli(argv, {"export": ExportConfig}, "python -m minigpt export", __doc__.splitlines()[0],
                    positional="dest").export
    if not cfg.dest:
        raise UserError("give one folder to write, as: python -m minigpt export --model=out --to=hf DIR")
    dest = export_hf(cfg.model, cfg.dest)
    print(f"wrote {dest} (config.json, model.safetensors, {hf.TOKENIZER_FILE}); load it with "
          f"transformers.GPT2LMHeadModel.from_pretrained('{dest}')")
    return 0


if __name__ == "__main__":
    run_cli(main)
