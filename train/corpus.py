"""Where article text comes from: one `Corpus` per `--source`, iterated as plain strings.

Sources (`open_corpus(spec)`):

- `stdlib`: the running Python's standard library, needing no network. Every `.py` file under
  `sysconfig.get_paths()["stdlib"]` (site-packages and dist-packages left out), in sorted
  relative-path order, decoded as UTF-8 with replacement (a few test files are not valid
  UTF-8), then the bundled documentation topics (`pydoc_data.topics`) in sorted key order.
  The files differ between Python versions, so the manifest records the version.
- `hf:NAME[:CONFIG][/SPLIT]`: a Hugging Face dataset, streamed (a Pile-sized source never has to
  fit on disk). NAME is `org/name`, a bare `name`, or a local folder `datasets` can read.
  `hf:org/name/SPLIT` and `hf:org/name:CONFIG/SPLIT` pick a split (default `train`); a bare
  name with a split but no config is written `hf:name:/SPLIT`.
- local files: `.jsonl` (one JSON object per line), `.json` (an array of objects, or one
  object), `.parquet`, `.txt` (the whole file is one document); a folder (every such file under
  it, recursively, sorted) or a glob (`data/*.jsonl`, `**` allowed, sorted).

Documents come out in source order; several specs are read one after the other. Records whose
text is null count as empty documents. A record without the text field, or with a non-string
text, is an error naming the file and line (or row).
"""

from __future__ import annotations

import glob
import json
import os
import platform
import socket
import sysconfig
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path


class DataError(ValueError):
    """A problem with the data set's inputs (source, tokenizer, options): one clear line."""


FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".txt")
GLOB_CHARS = "*?["
HF_DEFAULT_SPLIT = "train"
HF_DEFAULT_ENDPOINT = "https://huggingface.co"


class Corpus:
    """A source of documents. Iterating yields each document's text, in source order."""

    spec: str

    def __iter__(self) -> Iterator[str]:
        raise NotImplementedError

    def describe(self) -> dict:
        """What the manifest records about this source."""
        raise NotImplementedError


def open_corpus(source: str | Sequence[str] | Corpus, text_field: str = "text") -> Corpus:
    """The corpus for one spec, or for several read one after the other. Fails on a bad spec."""
    if isinstance(source, Corpus):
        return source
    specs = [source] if isinstance(source, str) else list(source)
    if not specs:
        raise DataError("no --source given")
    corpora = [_open_one(spec, text_field) for spec in specs]
    return corpora[0] if len(corpora) == 1 else ChainCorpus(corpora)


def _open_one(spec: str, text_field: str) -> Corpus:
    if spec == "stdlib":
        return StdlibCorpus()
    if spec.startswith("hf:"):
        return HFCorpus(spec, text_field)
    return FilesCorpus(spec, text_field)


class ChainCorpus(Corpus):
    """Several sources, one after the other."""

    def __init__(self, corpora: list[Corpus]):
        self.corpora = corpora
        self.spec = " + ".join(c.spec for c in corpora)

    def __iter__(self) -> Iterator[str]:
        for corpus in self.corpora:
            yield from corpus

    def describe(self) -> dict:
        return {"kind": "chain", "parts": [c.describe() for c in self.corpora]}


# --- stdlib -----------------------------------------------------------------------------------


class StdlibCorpus(Corpus):
    """The standard library's source files, then its bundled documentation topics."""

    spec = "stdlib"

    def __init__(self):
        self.root = Path(sysconfig.get_paths()["stdlib"])
        skip = {"site-packages", "dist-packages", "__pycache__"}
        relative = []
        for folder, subfolders, names in os.walk(self.root):
            subfolders[:] = [d for d in subfolders if d not in skip]  # never walk into installed packages
            prefix = Path(folder).relative_to(self.root)
            relative.extend((prefix / n).as_posix() for n in names if n.endswith(".py"))
        self.files = [self.root / r for r in sorted(relative)]

    @staticmethod
    def _topics() -> dict[str, str]:
        try:
            from pydoc_data.topics import topics
        except ImportError:  # some distributions strip the docs
            return {}
        return topics

    def __iter__(self) -> Iterator[str]:
        for path in self.files:
            yield path.read_bytes().decode("utf-8", errors="replace")
        topics = self._topics()
        for key in sorted(topics):
            yield topics[key]

    def describe(self) -> dict:
        return {
            "kind": "stdlib",
            "python_version": platform.python_version(),
            "python_implementation": platform.python_implementation(),
            "n_files": len(self.files),
            "n_doc_topics": len(self._topics()),
            "order": "stdlib .py files by sorted relative path (site-packages excluded), then "
            "pydoc_data.topics by sorted key; UTF-8 decoded with errors='replace'",
        }


# --- local files ------------------------------------------------------------------------------


class FilesCorpus(Corpus):
    """Local .jsonl/.json/.parquet/.txt files, from a path, a folder or a glob."""

    def __init__(self, spec: str, text_field: str):
        self.spec = spec
        self.text_field = text_field
        self.files = _expand_files(spec)

    def __iter__(self) -> Iterator[str]:
        for path in self.files:
            match path.suffix.lower():
                case ".jsonl":
                    yield from _read_jsonl(path, self.text_field)
                case ".json":
                    yield from _read_json(path, self.text_field)
                case ".parquet":
                    yield from _read_parquet(path, self.text_field)
                case ".txt":
                    yield path.read_bytes().decode("utf-8", errors="replace")

    def describe(self) -> dict:
        listed = [str(p) for p in self.files[:100]]
        return {"kind": "files", "text_field": self.text_field, "n_files": len(self.files), "files": listed,
                "files_listed": len(listed)}


def _expand_files(spec: str) -> list[Path]:
    path = Path(spec)
    if any(ch in spec for ch in GLOB_CHARS) and not path.exists():
        matches = sorted(glob.glob(spec, recursive=True))
        if not matches:
            raise DataError(f"source {spec!r}: no files match this glob")
        files: list[Path] = []
        for match in matches:
            files.extend(_files_under(Path(match)) if Path(match).is_dir() else [Path(match)])
        files = [f for f in files if f.suffix.lower() in FILE_SUFFIXES]
        if not files:
            raise DataError(f"source {spec!r}: the glob matches no {'/'.join(FILE_SUFFIXES)} files")
        return files
    if path.is_dir():
        files = _files_under(path)
        if not files:
            raise DataError(f"source {spec!r} is empty: no {'/'.join(FILE_SUFFIXES)} files in this folder")
        return files
    if path.is_file():
        if path.suffix.lower() not in FILE_SUFFIXES:
            raise DataError(f"source {spec!r}: unsupported file type {path.suffix or '(none)'!r}; "
                            f"expected one of {', '.join(FILE_SUFFIXES)}")
        return [path]
    raise DataError(f"unknown source {spec!r}: expected stdlib, hf:NAME[:CONFIG][/SPLIT], or an existing "
                    f"file, folder or glob of {'/'.join(FILE_SUFFIXES)} files")


def _files_under(folder: Path) -> list[Path]:
    """Supported files under `folder`, recursively, sorted; hidden files and folders skipped."""
    found = [p for p in folder.rglob("*")
             if p.is_file() and p.suffix.lower() in FILE_SUFFIXES
             and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _text_of(record, field: str, where: str) -> str:
    """The text of one record; `where` names the file and line/row for errors."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object with a {field!r} field, got {type(record).__name__}")
    if field not in record:
        fields = ", ".join(map(str, list(record)[:20])) or "none"
        raise DataError(f"{where}: no field {field!r} (fields: {fields}); pass --text-field")
    text = record[field]
    if text is None:
        return ""
    if not isinstance(text, str):
        raise DataError(f"{where}: field {field!r} is a {type(text).__name__}, not a string")
    return text


def _read_jsonl(path: Path, field: str) -> Iterator[str]:
    with open(path, encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{line_no}: not valid JSON ({err.msg})") from None
            yield _text_of(record, field, f"{path}:{line_no}")


def _read_json(path: Path, field: str) -> Iterator[str]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8", errors="replace"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}); "
                        "a .json source is an array of objects or one object (use .jsonl for JSON lines)") from None
    records = data if isinstance(data, list) else [data]
    for i, record in enumerate(records):
        yield _text_of(record, field, f"{path}[{i}]")


def _read_parquet(path: Path, field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    names = parquet.schema_arrow.names
    if field not in names:
        raise DataError(f"{path}: no column {field!r} (columns: {', '.join(names)}); pass --text-field")
    row = 0
    for batch in parquet.iter_batches(columns=[field], batch_size=4096):
        for text in batch.column(0).to_pylist():
            if text is not None and not isinstance(text, str):
                raise DataError(f"{path} row {row}: column {field!r} is {type(text).__name__}, not a string")
            row += 1
            yield text or ""


# --- Hugging Face datasets --------------------------------------------------------------------


def parse_hf_spec(spec: str) -> tuple[str, str | None, str]:
    """`hf:NAME[:CONFIG][/SPLIT]` → (name, config or None, split). See the module docstring."""
    rest = spec[len("hf:"):]
    if not rest:
        raise DataError(f"source {spec!r}: expected hf:NAME[:CONFIG][/SPLIT]")
    if ":" in rest:
        name, config_split = rest.split(":", 1)
        config, _, split = config_split.partition("/")
        return name, config or None, split or HF_DEFAULT_SPLIT
    if os.path.exists(rest):  # a local folder or file that `datasets` can read
        return rest, None, HF_DEFAULT_SPLIT
    parts = rest.split("/")
    if len(parts) <= 2:
        return rest, None, HF_DEFAULT_SPLIT
    if len(parts) == 3:
        return "/".join(parts[:2]), None, parts[2]
    raise DataError(f"source {spec!r}: expected hf:NAME[:CONFIG][/SPLIT] with NAME like org/name")


class HFCorpus(Corpus):
    """A Hugging Face dataset, streamed example by example."""

    def __init__(self, spec: str, text_field: str):
        self.spec = spec
        self.text_field = text_field
        self.name, self.config, self.split = parse_hf_spec(spec)

    def _open(self):
        import datasets

        datasets.disable_progress_bars()
        if not os.path.exists(self.name):
            _check_hub_reachable(self.spec)
        try:
            return datasets.load_dataset(self.name, self.config, split=self.split, streaming=True)
        except Exception as err:  # datasets raises many types; all mean "cannot open this source"
            first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise DataError(f"source {self.spec!r}: cannot open it ({type(err).__name__}: {first_line})") from None

    def __iter__(self) -> Iterator[str]:
        stream = self._open()
        for row, example in enumerate(stream):
            yield _text_of(example, self.text_field, f"{self.spec} example {row}")

    def describe(self) -> dict:
        import datasets

        return {"kind": "hf", "name": self.name, "config": self.config, "split": self.split,
                "text_field": self.text_field, "streaming": True, "datasets_version": datasets.__version__}


def _check_hub_reachable(spec: str) -> None:
    """Fail at once, instead of after the Hub client's retries, when the Hub cannot be reached."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise DataError(f"source {spec!r}: streaming from the Hub needs the network, and HF_HUB_OFFLINE is set; "
                        "use --source stdlib or local files")
    endpoint = os.environ.get("HF_ENDPOINT", HF_DEFAULT_ENDPOINT)
    if not network_reachable(endpoint):
        raise DataError(f"source {spec!r}: cannot reach the Hugging Face Hub ({endpoint}); "
                        "use --source stdlib or local files offline")


def network_reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the URL's host (or the HTTPS proxy) opens within `timeout` s.

    Runs in a daemon thread so that a stuck DNS lookup cannot hold the caller past the timeout.
    """
    from urllib.parse import urlsplit

    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    target = urlsplit(proxy if proxy else url)
    host, port = target.hostname, target.port or (443 if target.scheme == "https" else 80)
    if not host:
        return False
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def text_bytes(text: str) -> int:
    """UTF-8 length of `text` (each byte-level token covers at least one byte)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", errors="surrogatepass"))

