"""Shared test fixtures: small corpora made on the spot, the offline GPT-2 vocabulary where present."""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
TIKTOKEN_CACHE = SHARED / "tiktoken_cache"
TINYSHAKESPEARE = SHARED / "data" / "tinyshakespeare" / "input.txt"
if TIKTOKEN_CACHE.is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(TIKTOKEN_CACHE))

# Tests never write to the user's home: the caches and logs of the libraries they drive (datasets,
# wandb, matplotlib) go to a folder of this test process, which subprocesses inherit.
_CACHES = tempfile.mkdtemp(prefix="minigpt-test-caches-")
atexit.register(shutil.rmtree, _CACHES, ignore_errors=True)
for _var, _sub in {"HF_HOME": "huggingface", "WANDB_CACHE_DIR": "wandb", "WANDB_CONFIG_DIR": "wandb",
                   "WANDB_DATA_DIR": "wandb", "MPLCONFIGDIR": "matplotlib"}.items():
    os.environ[_var] = os.path.join(_CACHES, _sub)

# dtype=auto on a CPU with native bf16 is decided by a timing probe (minigpt.runtime.choose_dtype): the
# suite pins it to float32 so no test's numbers depend on the moment's load (subprocesses inherit it);
# the policy's own tests unset it.
os.environ.setdefault("MINIGPT_CPU_AUTO_DTYPE", "float32")

# Tests of the CUDA paths: marked `cuda` (scripts/gpu_check.sh runs `pytest -m cuda`), skipped without a GPU.
needs_cuda = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; "
                                                   "scripts/gpu_check.sh runs these on one")]

needs_gpt2 = pytest.mark.skipif(
    not (TIKTOKEN_CACHE.is_dir() or os.environ.get("TIKTOKEN_CACHE_DIR")),
    reason="GPT-2 BPE files not found: ../shared/tiktoken_cache is absent and TIKTOKEN_CACHE_DIR is unset",
)

TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "All:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\n"
) * 60


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory):
    """MINIGPT_CACHE in a temporary folder for the whole session (subprocesses inherit it): tests never
    write to, nor read a stale file from, the user's ~/.cache/minigpt."""
    old = os.environ.get("MINIGPT_CACHE")
    os.environ["MINIGPT_CACHE"] = str(tmp_path_factory.mktemp("minigpt_cache"))
    yield Path(os.environ["MINIGPT_CACHE"])
    if old is None:
        os.environ.pop("MINIGPT_CACHE", None)
    else:
        os.environ["MINIGPT_CACHE"] = old


@pytest.fixture
def corpus_file(tmp_path) -> Path:
    p = tmp_path / "corpus.txt"
    p.write_text(TEXT)
    return p


def run(*args, cwd=ROOT, check=True, env=None):
    """Run a project command the way a user does; returns the CompletedProcess."""
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)
    if check and proc.returncode != 0:
        stderr = "\n".join(line for line in proc.stderr.replace("\r", "\n").splitlines() if line.strip()
                           and not line.startswith(("training:", "evaluating:")))  # progress bars
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{stderr[-6000:]}")
    return proc


def prepare_text(text: str, out: Path, tokenizer: str = "char", **kw) -> Path:
    """A dataset prepared from one text (a single document) by the one pipeline, as data/prepare.py does it."""
    from minigpt import corpus, prepare, tokenizer as tokenizers

    source = corpus.Source(lambda: iter([corpus.text_document(text)]), "test text")
    tok = prepare.char_tokenizer(source) if tokenizer == "char" else tokenizers.build(tokenizer)
    prepare.prepare_dataset(source, tok, out, **kw)
    return out


@pytest.fixture
def char_dataset(tmp_path, corpus_file) -> Path:
    """TEXT prepared at character level: the first 90% of its characters train, the rest val."""
    return prepare_text(corpus_file.read_text(), tmp_path / "ds")
