"""Export a checkpoint for other tools: `python -m minigpt export --model=out --to=hf DIR`.

`--to=hf` writes a Hugging Face GPT-2 folder (config.json + model.safetensors) that
`transformers.GPT2LMHeadModel.from_pretrained(DIR)` loads and that gives the same logits as minigpt.
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
    atomic_write_bytes(dest / "model.safetensors", save(hf.to_hf_state_dict(model), metadata={"format": "pt"}))
    atomic_write_json(dest / "config.json", config)
    spec = tok.spec()
    if spec != {"kind": "tiktoken", "name": "gpt2"}:
        print(f"note: this model's tokenizer is '{spec.get('name', spec.get('kind'))}', not GPT-2's; encode text "
              f"with minigpt's tokenizer before passing ids to transformers")
    return dest


def main(argv: list[str]) -> int:
    folders = [a for a in argv if not a.startswith("-")]
    flags = [a for a in argv if a.startswith("-")]
    cfg = parse_cli(flags, {"export": ExportConfig}, "python -m minigpt export", __doc__.splitlines()[0]).export
    if len(folders) != 1:
        raise UserError("give one folder to write, as: python -m minigpt export --model=out --to=hf DIR")
    dest = export_hf(cfg.model, folders[0])
    print(f"wrote {dest} (config.json, model.safetensors); load it with "
          f"transformers.GPT2LMHeadModel.from_pretrained('{dest}')")
    return 0


if __name__ == "__main__":
    run_cli(main)
