"""GPT-2 weights in and out of Hugging Face's format: OpenAI's checkpoints by name, local folders, conversion.

A Hugging Face GPT-2 folder holds `config.json` and `model.safetensors` (or `pytorch_model.bin`). Its
architecture is ours with `bias=True`: the same module names under `transformer.`, except that the
four projections are `Conv1D` layers, whose weight is (in, out), the transpose of nn.Linear's
(out, in). OpenAI's MLP uses GELU's tanh approximation (`activation_function: gelu_new`), which
minigpt has as `activation="gelu_tanh"`. The tokenizer is tiktoken's `gpt2` BPE, unless the folder holds
`minigpt_tokenizer.json`: the tokenizer spec `python -m minigpt export` writes beside the weights of a model
trained with its own tokenizer (a character vocabulary, a BPE trained by `python -m minigpt bpe`).

This module converts; `checkpoint.load_model` is the loader every command uses (it calls `read`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import torch

from .errors import UserError
from .model import GPT, GPTConfig

GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")  # OpenAI's releases on the hub
GPT2_VOCAB = 50257
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")  # stored (in, out)
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}  # HF name -> ours
MASK_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")  # causal-mask buffers older versions saved
TOKENIZER_FILE = "minigpt_tokenizer.json"  # the tokenizer spec an export writes beside the weights
GPT2_TOKENIZER = {"kind": "tiktoken", "name": "gpt2"}


def read(source: str) -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    """(our model config, our state dict) for GPT-2 weights named by `source`."""
    folder = locate(source)
    config = read_config(folder)
    return config, from_hf_state_dict(_read_weights(folder), config, folder)


def tokenizer_spec(source: str) -> dict:
    """The tokenizer spec of the GPT-2 weights named by `source`: the one a minigpt export wrote beside them,
    else GPT-2's BPE (OpenAI's releases, folders saved by transformers)."""
    if source in GPT2_NAMES and not Path(source).exists():
        return dict(GPT2_TOKENIZER)
    f = Path(source) / TOKENIZER_FILE
    if not f.is_file():
        return dict(GPT2_TOKENIZER)
    try:
        spec = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{f} cannot be read ({e}); export the checkpoint again") from None
    if not isinstance(spec, dict) or "kind" not in spec:
        raise UserError(f"{f} is not a minigpt tokenizer spec; export the checkpoint again")
    return spec


def locate(source: str) -> Path:
    """The folder holding `source`: a hub download for OpenAI's names, else a local folder."""
    if source in GPT2_NAMES:
        return _download(source)
    if Path(source).is_dir():
        return Path(source)
    raise UserError(f"unknown model '{source}'; use a checkpoint, {', '.join(GPT2_NAMES)} "
                    f"or a folder holding a Hugging Face GPT-2 (config.json + model.safetensors)")


def read_config(folder: Path) -> GPTConfig:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise UserError(f"{folder} has no config.json, so it is not a Hugging Face model folder; pass a folder "
                        f"written by save_pretrained or `python -m minigpt export`")
    try:
        hf_config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{config_file} is not valid JSON ({e})") from None
    spec = tokenizer_spec(str(folder))
    if spec == GPT2_TOKENIZER:
        return config_from_hf(hf_config, folder)
    from .tokenizer import from_spec

    return config_from_hf(hf_config, folder, vocab=from_spec(spec).vocab_size, tokenizer=spec.get("name", spec["kind"]))


def _download(name: str) -> Path:
    """The hub snapshot of OpenAI's `name` (cached by huggingface_hub after the first download)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise UserError(f"--model={name} needs the optional Hugging Face packages: pip install -e '.[hf]'") from None
    try:
        return Path(snapshot_download(f"openai-community/{name}", allow_patterns=["config.json", "*.safetensors",
                                                                                   "*.safetensors.index.json"]))
    except Exception as e:  # offline, hub down, no disk space: all the same to the user
        raise UserError(f"could not fetch {name} from the Hugging Face hub ({type(e).__name__}); without network, "
                        f"pass --model=PATH to a local folder holding config.json and model.safetensors") from None


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file():
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise UserError(f"reading {folder}'s safetensors needs the optional packages: pip install -e '.[hf]'") from None
        if (folder / "model.safetensors").is_file():
            return load_file(folder / "model.safetensors")
        index_file = folder / "model.safetensors.index.json"  # a sharded checkpoint
        try:
            shards = sorted(set(json.loads(index_file.read_text())["weight_map"].values()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise UserError(f"{index_file} is not a readable safetensors index ({type(e).__name__}: {e}); "
                            f"download or save the model again") from None
        state = {}
        for shard in shards:
            path = folder / str(shard)
            if Path(str(shard)).is_absolute() or not path.resolve().is_relative_to(folder.resolve()):
                raise UserError(f"{index_file} names the shard '{shard}', outside {folder}; an index may only name "
                                f"files in its own folder")
            state.update(load_file(path))
        return state
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise UserError(f"{folder} holds no model.safetensors or pytorch_model.bin; pass a complete Hugging Face GPT-2 folder")


def config_from_hf(hf: dict, where: str | Path = "the config", *, vocab: int = GPT2_VOCAB,
                   tokenizer: str = "GPT-2's BPE") -> GPTConfig:
    """Our GPTConfig for a Hugging Face GPT2Config dict whose tokenizer has `vocab` tokens; anything GPT-2-like
    we cannot express is refused."""
    kind = hf.get("model_type")
    if kind != "gpt2":
        raise UserError(f"{where} holds a '{kind}' model, not GPT-2; --model takes Hugging Face GPT-2 folders only")
    act = hf.get("activation_function", "gelu_new")
    n_embd = hf.get("n_embd", 768)
    unsupported = {
        "activation_function": act not in ACTIVATIONS,
        "n_inner": hf.get("n_inner") not in (None, 4 * n_embd),
        "layer_norm_epsilon": not math.isclose(hf.get("layer_norm_epsilon", 1e-5), 1e-5),
        "scale_attn_weights": not hf.get("scale_attn_weights", True),
        "scale_attn_by_inverse_layer_idx": hf.get("scale_attn_by_inverse_layer_idx", False),
        "add_cross_attention": hf.get("add_cross_attention", False),
        "tie_word_embeddings": not hf.get("tie_word_embeddings", True),
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise UserError(f"{where} is a GPT-2 variant minigpt cannot represent ({', '.join(f'{k}={hf.get(k)!r}' for k in bad)})")
    n_vocab = hf.get("vocab_size", GPT2_VOCAB)
    if n_vocab < vocab:
        raise UserError(f"{where} has a vocabulary of {n_vocab} tokens, fewer than {tokenizer} needs ({vocab})")
    return GPTConfig(block_size=hf.get("n_positions", 1024), vocab_size=n_vocab, n_layer=hf.get("n_layer", 12),
                     n_head=hf.get("n_head", 12), n_embd=n_embd, dropout=0.0, bias=True, activation=ACTIVATIONS[act])


def from_hf_state_dict(hf_state: dict[str, torch.Tensor], config: GPTConfig, where: str | Path = "the weights") -> dict:
    """Our state dict from a Hugging Face GPT-2 one (with or without the `transformer.` prefix)."""
    state = {}
    for key, tensor in hf_state.items():
        key = key.removeprefix("transformer.")
        if MASK_BUFFER.fullmatch(key) or key == "lm_head.weight":
            continue  # masks are rebuilt by SDPA; the head is tied to wte (checked below)
        state["transformer." + key] = tensor.t().contiguous() if key.endswith(CONV1D) else tensor
    wte = state.get("transformer.wte.weight")
    head = hf_state.get("lm_head.weight")
    if head is not None and wte is not None and not torch.equal(head, hf_state.get("transformer.wte.weight", wte)):
        raise UserError(f"{where} has an LM head separate from its token embedding; minigpt ties the two")
    state["lm_head.weight"] = wte
    missing = _missing_or_extra(state, config)
    if missing:
        raise UserError(f"{where}'s weights do not match its config.json ({missing}); the folder may be incomplete")
    return state


def _missing_or_extra(state: dict, config: GPTConfig) -> str:
    """'' when `state` has exactly the keys and shapes of a GPT with `config`, else a short description."""
    with torch.device("meta"):  # shapes only, no memory
        want = {k: tuple(v.shape) for k, v in GPT(config).state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state.items() if v is not None}
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    wrong = [k for k in set(want) & set(have) if want[k] != have[k]]
    parts = [f"missing {missing[0]}" if missing else "", f"unexpected {extra[0]}" if extra else "",
             f"{wrong[0]} is {have[wrong[0]]}, expected {want[wrong[0]]}" if wrong else ""]
    return ", ".join(p for p in parts if p)


def to_hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Hugging Face GPT2LMHeadModel's state dict for our model (a model without biases gets zero biases)."""
    state = {}
    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight":
            continue  # tied: GPT2LMHeadModel rebuilds it from wte
        name = key.removeprefix("transformer.")
        state[key] = (tensor.t() if name.endswith(CONV1D) else tensor).detach().float().contiguous()
    if not model.config.bias:  # GPT-2 always has biases; zeros make them no-ops
        for name, module in model.named_modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.LayerNorm)) and name != "lm_head":
                out = module.weight.shape[0] if isinstance(module, torch.nn.Linear) else module.weight.shape[-1]
                state[f"{name}.bias"] = torch.zeros(out)
    return state


def hf_config(config: GPTConfig, eot_id: int | None = None) -> dict:
    """A Hugging Face GPT2Config dict for our model config; `eot_id` is the tokenizer's end-of-text token
    (bos and eos for transformers), None for a vocabulary without one."""
    defaults = GPTConfig()
    extra = [f.name for f in dataclasses.fields(config)
             if f.name not in {"block_size", "vocab_size", "n_layer", "n_head", "n_embd", "dropout", "bias", "activation"}
             and getattr(config, f.name) != getattr(defaults, f.name)]
    if extra:
        raise UserError(f"this model has {', '.join(f'{k}={getattr(config, k)!r}' for k in extra)}, which GPT-2's "
                        f"architecture cannot express; only GPT-2-shaped checkpoints can be exported")
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": "gelu_new" if config.activation == "gelu_tanh" else "gelu",
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "bos_token_id": eot_id,  # the tokenizer's <|endoftext|> (50256 for GPT-2's, 100257 for cl100k_base)
        "eos_token_id": eot_id,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
    }
