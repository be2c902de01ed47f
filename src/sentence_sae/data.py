"""Text sources: Hugging Face datasets streamed from the hub or local files, and built-in corpora.

Everything is opened with ``datasets.load_dataset(..., streaming=True)`` (the built-in corpus is a
``datasets.IterableDataset`` too), so the rest of the pipeline sees one kind of stream and nothing
is downloaded or held in memory as a whole.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import DataError, DataReadError, first_line
from .files import hash_file

# File suffix -> datasets builder. Compressed files (.gz, .bz2, .xz, .zst) use their inner suffix.
LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}
COMPRESSION_SUFFIXES = {".gz", ".bz2", ".xz", ".zst"}
LOCAL_SPLIT = "train"
"""The one split of local files and built-in corpora."""


# ----------------------------------------------------------------------------------------------
# Built-in corpora


def _clean_paragraph(paragraph: str) -> str:
    text = " ".join(paragraph.split())
    # Section titles in pydoc_data are underlined with runs of '*', '=' or '-'.
    return re.sub(r"\s*([*=\-~^])\1{3,}\s*$", "", text).strip()


def _fixed_rank(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=8).digest()


@lru_cache(maxsize=1)
def python_docs_rows() -> tuple[tuple[str, str], ...]:
    """(paragraph, topic) of every paragraph of the Python language reference in ``pydoc_data.topics``,
    in a fixed pseudo-random order (by a hash of the text). The reference is grouped by topic; taken in
    its own order, the held-out and validation texts a run draws from the start of the corpus would be
    a few topics only. The hash order is the same on every machine and every Python version for the
    paragraphs they share."""
    from pydoc_data.topics import topics

    rows = []
    for topic in sorted(topics):
        for paragraph in re.split(r"\n\s*\n", topics[topic]):
            text = _clean_paragraph(paragraph)
            if text:
                rows.append((text, topic))
    return tuple(sorted(rows, key=lambda row: (_fixed_rank(row[0]), row)))


def python_docs_paragraphs() -> tuple[str, ...]:
    """The paragraphs of the built-in corpus, in its order (see python_docs_rows)."""
    return tuple(text for text, _ in python_docs_rows())


def _python_docs_records() -> Iterator[dict[str, str]]:
    for text, topic in python_docs_rows():
        yield {"text": text, "topic": topic}


BUILTIN_CORPORA: dict[str, Callable[[], Iterator[dict[str, Any]]]] = {
    "python-docs": _python_docs_records,
}


# ----------------------------------------------------------------------------------------------
# Opening a dataset


def _builder_for(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSION_SUFFIXES:
        suffixes = suffixes[:-1]
    return LOCAL_BUILDERS.get(suffixes[-1]) if suffixes else None


def _local_data_files(path: Path) -> tuple[str, list[str]]:
    """(builder, files) for a local file or a folder of files of one format."""
    if path.is_file():
        builder = _builder_for(path)
        if builder is None:
            raise DataError(
                f"cannot read {path}: unknown file type; use one of "
                f"{', '.join(sorted(LOCAL_BUILDERS))} (optionally compressed with .gz)"
            )
        return builder, [str(path)]
    files = sorted(p for p in path.rglob("*") if p.is_file() and _builder_for(p) and not p.name.startswith("."))
    builders = {_builder_for(p) for p in files}
    if not files:
        raise DataError(
            f"folder {path} holds no data files; put {', '.join(sorted(LOCAL_BUILDERS))} files in it"
        )
    if len(builders) > 1:
        raise DataError(
            f"folder {path} mixes file types ({', '.join(sorted(p.suffix for p in files))}); "
            "keep one format per folder"
        )
    return builders.pop(), [str(p) for p in files]


def _open_decompressed(file: Path) -> Any:
    """A binary file object of ``file``'s content, decompressed by its suffix (.gz, .bz2, .xz)."""
    import bz2
    import gzip
    import lzma

    openers = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
    return openers.get(file.suffix.lower(), open)(file, "rb")


def locate_bad_line(path: str | Path) -> str | None:
    """Where a local dataset first stops being readable, found by reading it line by line: the
    file, the line, and the rows before it. The readers of ``datasets`` report positions within
    their own blocks ("row 5", "after 0 rows"), which mislead past the first block.

    Checks UTF-8 for every text format and JSON for JSON-lines files; None when no line is bad
    (the problem is elsewhere) or the format is not line-based.
    """
    try:
        builder, files = _local_data_files(Path(path))
    except DataError:
        return None
    if builder not in ("json", "csv", "text"):
        return None
    import json

    for name in files:
        file = Path(name)
        if file.suffix.lower() == ".zst":
            continue
        json_lines = builder == "json"
        rows = 0
        with _open_decompressed(file) as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    return (f"line {number} of {file} is not UTF-8 (byte 0x{raw[exc.start]:02x} at column "
                            f"{exc.start + 1}), after {rows} good rows; save the file as UTF-8")
                if not line.strip():
                    continue
                if json_lines:
                    try:
                        json.loads(line)
                    except ValueError as exc:
                        if number == 1 and ".jsonl" not in [x.lower() for x in file.suffixes]:
                            # a JSON document, not JSON lines: its lines are not rows
                            json_lines = False
                        else:
                            return (f"line {number} of {file} is not valid JSON ({exc}), after {rows} good "
                                    "rows; fix or remove that line")
                rows += 1
    return None


def _fingerprint_files(path: Path) -> str:
    """A hash of a local file's, or a folder's data files', names and contents."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    hasher = hashlib.sha256()
    for file in files:
        if path.is_dir() and not any(s in LOCAL_BUILDERS for s in (x.lower() for x in file.suffixes)):
            continue
        hasher.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        hash_file(file, hasher)
    return hasher.hexdigest()


DATA_FILE_SUFFIXES = {*LOCAL_BUILDERS, *COMPRESSION_SUFFIXES, ".tsv", ".xml", ".arrow", ".zip", ".tar", ".xlsx"}


def _looks_local(dataset_path: str) -> bool:
    """Whether a path that does not exist names a local file (so the error says it is missing)
    rather than a hub dataset id (owner/name, without a file suffix)."""
    path = Path(dataset_path).expanduser()
    return (dataset_path.startswith((".", "/", "~")) or path.suffix.lower() in DATA_FILE_SUFFIXES
            or (bool(path.suffix) and path.parent != Path(".") and path.parent.is_dir()))


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset's texts come from, decided once: a built-in corpus, local files, or the hub.

    Made once per run from the config and handed to the cache (its key), the corpus and the store,
    so that no two places disagree on what ``dataset_path`` names.
    """

    path: str
    """The built-in corpus's name, the absolute path of local files, or the hub id."""
    kind: str
    """builtin, local (files that exist), missing (a path that names no file) or hub."""
    name: str | None = None
    split: str = "train"
    revision: str | None = None

    @classmethod
    def of(cls, dataset_path: str, dataset_name: str | None = None, split: str = "train",
           revision: str | None = None) -> "DatasetSource":
        if dataset_path in BUILTIN_CORPORA:
            return cls(dataset_path, "builtin", dataset_name, split, revision)
        if "\x00" in dataset_path:
            raise DataError(f"dataset_path {dataset_path!r} holds a NUL character; give a file, folder or hub id")
        local = Path(dataset_path).expanduser()
        if local.exists():
            return cls(str(local.resolve()), "local", dataset_name, split, revision)
        if _looks_local(dataset_path):
            return cls(dataset_path, "missing", dataset_name, split, revision)
        return cls(dataset_path, "hub", dataset_name, split, revision)

    @classmethod
    def from_config(cls, cfg: Any) -> "DatasetSource":
        return cls.of(cfg.dataset_path, cfg.dataset_name, cfg.split, cfg.dataset_revision)

    @property
    def countable(self) -> bool:
        """Whether its rows can be counted by reading it (not a hub stream of unknown size)."""
        return self.kind in ("builtin", "local")

    @cached_property
    def fingerprint(self) -> str:
        """A hash of the built-in corpus or the local files' contents, or the hub revision."""
        if self.kind == "builtin":
            return hashlib.sha256("\n".join(python_docs_paragraphs()).encode()).hexdigest()
        if self.kind == "local":
            return _fingerprint_files(Path(self.path))
        return f"hub:{self.path}@{self.revision or 'main'}"

    def open(self) -> Any:
        """A streaming ``datasets.IterableDataset`` of its rows."""
        import datasets

        if self.kind == "missing":
            raise DataError(f"dataset file {self.path} does not exist; check the path")
        if self.kind in ("builtin", "local") and self.split != LOCAL_SPLIT:
            what = "the built-in corpus" if self.kind == "builtin" else "local files"
            raise DataError(f"split '{self.split}' does not exist: {what} ({self.path}) have the one split "
                            f"'{LOCAL_SPLIT}'; drop split, or point dataset_path at the file of that split")
        if self.kind == "builtin":
            return datasets.IterableDataset.from_generator(BUILTIN_CORPORA[self.path])
        if self.kind == "local":
            return _open_local(Path(self.path))
        try:
            return datasets.load_dataset(self.path, self.name, split=self.split, streaming=True)
        except Exception as exc:
            raise DataError(
                f"could not open dataset '{self.path}' from the Hugging Face hub ({first_line(exc)}); "
                f"check the id, name and split, your network, or give a local file or one of the built-in "
                f"corpora: {', '.join(BUILTIN_CORPORA)}"
            ) from None


@lru_cache(maxsize=64)
def check_csv_fields(name: str, size: int, mtime_ns: int) -> None:
    """A DataError naming the first line of a CSV file whose number of fields differs from its
    header's. pandas would read a row with one field too many as an index and shift every column
    by one without a word (the text column then holds the next column's values). Checked once per
    file version (size and mtime are part of the key), however often the dataset is opened."""
    import csv

    file = Path(name)
    with _open_decompressed(file) as raw:
        lines = io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")
        reader = csv.reader(lines)
        header = next(reader, None)
        if header is None:
            return
        for record in reader:
            if record and len(record) != len(header):
                raise DataError(f"line {reader.line_num} of {file} has {len(record)} fields where its header has "
                                f"{len(header)}; quote the fields that hold commas, or fix that line")


def _open_local(path: Path) -> Any:
    import datasets

    builder, files = _local_data_files(path)
    if builder == "csv":
        for file in files:
            if Path(file).suffix.lower() != ".zst":
                stat = Path(file).stat()
                check_csv_fields(file, stat.st_size, stat.st_mtime_ns)
    # The file readers log their own error line before raising; the caller reports it better.
    logging.getLogger("datasets.packaged_modules").setLevel(logging.CRITICAL)
    if all(Path(file).stat().st_size == 0 for file in files):
        raise DataError(f"dataset {path} holds no texts (its files are empty); give a file with texts")
    # CSV: "NA", "null" or "nan" are texts, not missing values (pandas's default would drop them)
    options = {"keep_default_na": False} if builder == "csv" else {}
    try:
        return datasets.load_dataset(builder, data_files=files, split="train", streaming=True, **options)
    except Exception as exc:  # datasets raises many types for unreadable files
        raise DataError(f"cannot read {path} as {builder}: {first_line(exc)}") from None


def open_dataset(dataset_path: str, dataset_name: str | None = None, split: str = "train") -> Any:
    """A streaming ``datasets.IterableDataset`` for a built-in corpus, local path or hub id."""
    return DatasetSource.of(dataset_path, dataset_name, split).open()


# ----------------------------------------------------------------------------------------------
# Iterating texts


@dataclass
class TextCounter:
    """What a stream has produced and passed over, for messages at the end of training."""

    texts: int = 0
    skipped_empty: int = 0
    epochs_completed: int = 0


def iter_dataset_rows(
    dataset: Any,
    text_column: str,
    source: str,
    counter: TextCounter,
    extra_columns: dict[str, str] | None = None,
    batch_size: int = 1000,
    text_option: str = "text_column",
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(text, {column: value}) for the non-empty texts of one pass over ``dataset``.

    ``extra_columns`` maps each further column to read to the option that names it (for the error
    message when it is missing), as ``text_option`` names the text column's. Rows with empty or
    missing texts are skipped and counted.
    """
    wanted = {text_column: text_option, **(extra_columns or {})}
    iterator = iter(dataset.iter(batch_size=batch_size))
    checked_columns = False
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except DataError:
            raise
        except Exception as exc:  # corrupt rows surface here, from deep inside the reader
            raise DataReadError(
                f"error while reading {source} after {counter.texts + counter.skipped_empty} rows: "
                f"{first_line(exc)}; check that the file is valid"
            ) from None
        if not checked_columns:
            for column, option in wanted.items():
                if column not in batch:
                    raise DataError(
                        f"column '{column}' not found in {source}; columns present: "
                        f"{', '.join(batch) or '(none)'}; set {option} to one of them"
                    )
            checked_columns = True
        extras = [column for column in wanted if column != text_column]
        for index, text in enumerate(batch[text_column]):
            if not isinstance(text, str) or not text.strip():
                counter.skipped_empty += 1
                continue
            counter.texts += 1
            yield text, {column: batch[column][index] for column in extras}
