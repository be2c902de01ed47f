"""The on-disk embedding cache: text is encoded once per model, dataset and encoder setting.

A cache folder holds the embeddings of a prefix of a dataset's non-empty texts, in dataset order,
as numbered shard files (``shard_00000.npy`` ...) plus ``manifest.json``. The folder's name is a
hash of everything that changes the embeddings (the key): the model's weights, the dataset's
identity (path, config name, split, revision, or a hash of local files), the text column, the
maximum sequence length, the encoder backend and precision. A cache whose key does not match is
never used, because it lives in another folder.

Every shard is written to a temporary name, fsynced and renamed into place, and only then listed
in the manifest (itself replaced atomically). A run killed mid-way leaves a shorter, valid cache
that the next run extends from where it stopped. Shards are memory-mapped when read.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import DEFAULT_SHARD_ROWS, default_cache_root
from .data import DatasetSource
from .embeddings import embedding_dim, encoder_backend, model_fingerprint, resolve_prompt
from .errors import CacheError
from .files import atomic_write, atomic_write_text, sha256_file

CACHE_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MAPPED_SHARDS = 4
"""Shards a reader keeps memory-mapped at once: the pages a mapping has read count as the process's
resident memory, so keeping every shard mapped would grow it with the rows read, not the buffer."""


# ----------------------------------------------------------------------------------------------
# Fingerprints: what identifies a model and a dataset


_VERIFIED_SHARDS: set[tuple[str, str, int, int]] = set()
"""(path, sha256, size, mtime) of the shard files this process has checked: each is hashed once per
process, and again if it is replaced or rewritten."""


def _identity(path: Path, sha256: str) -> tuple[str, str, int, int]:
    stat = path.stat()
    return (str(path), sha256, stat.st_size, stat.st_mtime_ns)


def verify_shard(path: Path, sha256: str, folder: Path) -> None:
    """Check a shard against the checksum its manifest lists, the first time this process reads it."""
    identity = _identity(path, sha256)
    if identity in _VERIFIED_SHARDS:
        return
    if sha256_file(path) != sha256:
        raise CacheError(f"cache shard {path} is corrupt (its checksum does not match {MANIFEST}); delete the "
                         f"cache folder {folder} to encode the dataset again")
    _VERIFIED_SHARDS.add(identity)


def manifest_checksum(manifest: dict[str, Any]) -> str:
    """A checksum of the manifest's own content (every key but ``checksum``)."""
    content = {key: value for key, value in manifest.items() if key != "checksum"}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class CacheKey:
    """Everything that changes the embeddings of a dataset's texts."""

    model_name: str
    model_weights: str
    max_seq_length: int | None
    dataset_path: str
    dataset_name: str | None
    split: str
    dataset_revision: str | None
    dataset_content: str
    text_column: str
    backend: str
    precision: str
    normalize_embeddings: bool = False
    format_version: int = CACHE_FORMAT_VERSION
    prompt: str | None = None

    def fields(self) -> dict[str, Any]:
        """The key as stored in the manifest; a key without a prompt has no prompt field, so caches
        written before prompts existed keep their key and folder."""
        return {name: value for name, value in self.__dict__.items() if not (name == "prompt" and value is None)}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.fields(), sort_keys=True).encode()).hexdigest()

    def folder_name(self) -> str:
        def slug(text: str) -> str:
            cleaned = "".join(c if c.isalnum() else "-" for c in Path(text.rstrip("/")).name)
            return cleaned.strip("-")[:40] or "data"

        return f"{slug(self.dataset_path)}-{slug(self.model_name)}-{self.backend}-{self.digest()[:16]}"


def cache_key_for(cfg: Any, model: Any, source: DatasetSource | None = None) -> CacheKey:
    source = source or DatasetSource.from_config(cfg)
    return CacheKey(
        model_name=cfg.model_name,
        model_weights=model_fingerprint(model),
        max_seq_length=getattr(model, "max_seq_length", None),
        dataset_path=source.path,
        dataset_name=cfg.dataset_name,
        split=cfg.split,
        dataset_revision=cfg.dataset_revision,
        dataset_content=source.fingerprint,
        text_column=cfg.text_column,
        backend=encoder_backend(model).name,
        precision=encoder_backend(model).precision,
        prompt=resolve_prompt(model, cfg.prompt, cfg.prompt_name),
    )


# ----------------------------------------------------------------------------------------------
# Reading


class ShardedEmbeddings:
    """A read-only (N, d) float32 array over memory-mapped shard files, in dataset order.

    Slicing, integer and integer-array indexing return numpy arrays holding only the rows asked
    for; the shards themselves stay on disk, at most MAPPED_SHARDS of them mapped at a time.
    """

    def __init__(self, folder: Path, shards: list[dict[str, Any]], dim: int):
        self.folder = folder
        self.dim = dim
        self._files = [folder / shard["file"] for shard in shards]
        self._checksums = [shard.get("sha256") for shard in shards]
        self._rows = np.array([shard["rows"] for shard in shards], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(self._rows)]).astype(np.int64)
        self._maps: OrderedDict[int, np.ndarray] = OrderedDict()

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self._starts[-1]), self.dim)

    ndim = 2
    dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _shard(self, index: int) -> np.ndarray:
        if index in self._maps:
            self._maps.move_to_end(index)
        else:
            path = self._files[index]
            if self._checksums[index]:
                verify_shard(path, self._checksums[index], self.folder)
            try:
                array = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise CacheError(f"cache shard {path} is corrupt or truncated ({exc}); delete the "
                                      f"cache folder {self.folder} to rebuild it") from None
            if array.shape != (self._rows[index], self.dim) or array.dtype != np.float32:
                raise CacheError(f"cache shard {path} has shape {array.shape}, expected "
                                      f"{(int(self._rows[index]), self.dim)}; delete {self.folder} to rebuild it")
            self._maps[index] = array
            while len(self._maps) > MAPPED_SHARDS:  # unmapped, its pages leave this process's memory
                self._maps.popitem(last=False)
        return self._maps[index]

    def _read_range(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((max(stop - start, 0), self.dim), dtype=np.float32)
        if stop <= start:
            return out
        first = int(np.searchsorted(self._starts, start, side="right") - 1)
        position = start
        for shard in range(first, len(self._files)):
            if position >= stop:
                break
            offset = position - int(self._starts[shard])
            take = min(stop, int(self._starts[shard + 1])) - position
            out[position - start : position - start + take] = self._shard(shard)[offset : offset + take]
            position += take
        return out

    def __getitem__(self, index: Any) -> np.ndarray:
        n = len(self)
        if isinstance(index, slice):
            start, stop, step = index.indices(n)
            rows = self._read_range(start, stop)
            return rows if step == 1 else rows[::step]
        if isinstance(index, (int, np.integer)):
            position = int(index) + n if index < 0 else int(index)
            if not 0 <= position < n:
                raise IndexError(f"row {index} out of range for {n} embeddings")
            return self._read_range(position, position + 1)[0]
        positions = np.asarray(index, dtype=np.int64)
        positions = np.where(positions < 0, positions + n, positions)
        out = np.empty((len(positions), self.dim), dtype=np.float32)
        shard_of = np.searchsorted(self._starts, positions, side="right") - 1
        for shard in np.unique(shard_of):
            mask = shard_of == shard
            out[mask] = self._shard(int(shard))[positions[mask] - self._starts[shard]]
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        array = self._read_range(0, len(self))
        return array if dtype is None else array.astype(dtype)


# ----------------------------------------------------------------------------------------------
# The cache folder


class EmbeddingCache:
    """One cache folder: the embeddings of rows [0, rows) of a dataset, extendable at the end."""

    def __init__(self, folder: Path, key: CacheKey | None, dim: int, shard_rows: int = DEFAULT_SHARD_ROWS):
        self.folder = folder
        self.key = key
        self.dim = dim
        self.shard_rows = shard_rows
        self.shards: list[dict[str, Any]] = []
        self.complete = False
        self.skipped_texts = 0
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self.writable = False
        self._lock_handle: Any = None
        if (folder / MANIFEST).exists():
            self._read_manifest()

    # manifest ---------------------------------------------------------------------
    def _read_manifest(self) -> None:
        path = self.folder / MANIFEST
        try:
            manifest = json.loads(path.read_text())
            shards, dim = manifest["shards"], int(manifest["dim"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
            raise CacheError(f"cache manifest {path} is corrupt ({exc}); delete the folder "
                             f"{self.folder} to rebuild it") from None
        if "checksum" in manifest and manifest["checksum"] != manifest_checksum(manifest):
            raise CacheError(f"cache manifest {path} is corrupt (its checksum does not match its content); delete "
                             f"the folder {self.folder} to rebuild it")
        if self.key is not None and manifest.get("key") != self.key.fields():
            raise CacheError(f"cache folder {self.folder} belongs to another dataset or model; delete it")
        if dim != self.dim and self.dim:
            raise CacheError(f"cache {self.folder} holds {dim}-dimensional embeddings, expected {self.dim}")
        self.dim = dim
        for shard in shards:
            file = self.folder / shard["file"]
            expected = 128 + shard["rows"] * dim * 4  # a .npy header is at most 128 bytes here
            if not file.exists():
                raise CacheError(f"cache shard {file} is missing; delete {self.folder} to rebuild it")
            if file.stat().st_size < shard["rows"] * dim * 4 or file.stat().st_size > expected:
                raise CacheError(f"cache shard {file} is truncated or corrupt; delete {self.folder} to rebuild it")
        self.shards = shards
        self.complete = bool(manifest.get("complete"))
        self.skipped_texts = int(manifest.get("skipped_texts", 0))

    def _write_manifest(self) -> None:
        manifest = {
            "format_version": CACHE_FORMAT_VERSION,
            "key": self.key.fields() if self.key else None,
            "dim": self.dim,
            "rows": self.rows,
            "complete": self.complete,
            "skipped_texts": self.skipped_texts,
            "shards": self.shards,
        }
        manifest["checksum"] = manifest_checksum(manifest)
        atomic_write_text(self.folder / MANIFEST, json.dumps(manifest, indent=1))

    @property
    def rows(self) -> int:
        """Rows stored on disk (pending rows not yet written are not counted)."""
        return sum(int(shard["rows"]) for shard in self.shards)

    @property
    def next_row(self) -> int:
        """The dataset row the next ``append`` stores."""
        return self.rows + self._pending_rows

    def embeddings(self) -> ShardedEmbeddings:
        return ShardedEmbeddings(self.folder, self.shards, self.dim)

    # writing ----------------------------------------------------------------------
    def acquire_writer(self) -> bool:
        """Become the one process allowed to extend this cache; False if another holds it."""
        import fcntl

        if self.writable:
            return True
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            handle = open(self.folder / ".lock", "w")
        except OSError as exc:
            raise CacheError(f"cannot write the embedding cache {self.folder} ({exc.strerror or exc}); set cache_dir "
                             "to a folder you can write, or use_cache false") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._lock_handle = handle
        self.writable = True
        if (self.folder / MANIFEST).exists():
            self._read_manifest()  # another process may have extended it meanwhile
        return True

    def wait_for_writer(self, timeout: float, poll_seconds: float = 0.5) -> None:
        """Become the cache's writer, waiting while another process fills it; return early when that
        process completes it. A CacheError when the other process writes no new shard for ``timeout``
        seconds."""
        if self.complete or self.acquire_writer():
            return
        print(f"waiting for another process that is filling the embedding cache {self.folder} (giving up after "
              f"{timeout:g} s without a new shard)", file=sys.stderr, flush=True)
        rows, progressed = self.rows, time.monotonic()
        while not self.acquire_writer():
            if (self.folder / MANIFEST).exists():
                self._read_manifest()
            if self.complete:
                return
            if self.rows != rows:
                rows, progressed = self.rows, time.monotonic()
            elif time.monotonic() - progressed >= timeout:
                raise CacheError(f"another process holds the embedding cache {self.folder} and wrote no shard for "
                                 f"{timeout:g} s (the cache is valid up to row {self.rows}); wait for it to finish "
                                 "and run this command again, or raise cache_lock_timeout")
            time.sleep(poll_seconds)

    def append(self, embeddings: np.ndarray) -> None:
        """Add the embeddings of the next rows; full shards are written as they fill."""
        if not self.writable or self.complete:
            return
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        self._pending.append(embeddings)
        self._pending_rows += len(embeddings)
        while self._pending_rows >= self.shard_rows:
            block = np.concatenate(self._pending)
            self._write_shard(block[: self.shard_rows])
            rest = block[self.shard_rows :]
            self._pending, self._pending_rows = ([rest] if len(rest) else []), len(rest)

    def flush(self) -> None:
        """Write pending rows as a (possibly short) shard."""
        if self.writable and self._pending_rows:
            self._write_shard(np.concatenate(self._pending))
            self._pending, self._pending_rows = [], 0

    def mark_complete(self, skipped_texts: int) -> None:
        """The dataset ended: every row is cached."""
        if not self.writable:
            return
        self.flush()
        self.complete = True
        self.skipped_texts = skipped_texts
        self._write_manifest()

    def _save_shard(self, index: int, block: np.ndarray) -> dict[str, Any]:
        """Write shard ``index`` whole or not at all; its manifest entry (file, rows, sha256)."""
        name = f"shard_{index:05d}.npy"

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.save(handle, np.ascontiguousarray(block, dtype=np.float32))

        atomic_write(self.folder / name, write)
        return {"file": name, "rows": int(len(block)), "sha256": sha256_file(self.folder / name)}

    def _write_shard(self, block: np.ndarray) -> None:
        name = f"shard_{len(self.shards):05d}.npy"
        valid_rows = self.rows
        try:
            record = self._save_shard(len(self.shards), block)
            digest = record["sha256"]
            self.shards.append(record)
            self._write_manifest()
        except OSError as exc:
            if self.shards and self.shards[-1]["file"] == name:
                self.shards.pop()  # the manifest on disk does not list it
            raise CacheError(f"could not write {name} into the embedding cache {self.folder} ({exc.strerror or exc}); "
                             f"the cache stays valid up to row {valid_rows}: free disk space, or set cache_dir "
                             "elsewhere") from None
        _VERIFIED_SHARDS.add(_identity(self.folder / name, digest))  # this process wrote it

    # shards written by several processes (embed under torchrun) ----------------------------------
    def write_shard_at(self, index: int, block: np.ndarray) -> None:
        """Write shard ``index`` with its record (file, rows, sha256) beside it, outside the manifest:
        each process of a distributed embed writes its own shards, and adopt_shards lists them."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self._record_path(index), json.dumps(self._save_shard(index, block)))
        except OSError as exc:
            raise CacheError(f"could not write shard_{index:05d}.npy into the embedding cache {self.folder} "
                             f"({exc.strerror or exc}); free disk space, or set cache_dir elsewhere") from None

    def _record_path(self, index: int) -> Path:
        return self.folder / f"shard_{index:05d}.json"

    def written_shard(self, index: int) -> dict[str, Any] | None:
        """The record of shard ``index`` when write_shard_at wrote it whole (its file matches the
        record's checksum); None when it is missing or was cut short (a killed process)."""
        try:
            record = json.loads(self._record_path(index).read_text())
            matches = sha256_file(self.folder / record["file"]) == record["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return record if matches else None

    def adopt_shards(self, count: int, ended: bool, skipped_texts: int) -> None:
        """List in the manifest, in order, the written shards that continue it, up to ``count`` shards in
        all (the writer does this once every process is done); ``ended``: the last one ends the dataset."""
        if not self.writable:
            raise CacheError(f"only the writer of {self.folder} can list its shards")
        while len(self.shards) < count and (record := self.written_shard(len(self.shards))) is not None:
            self.shards.append(record)
            self._record_path(len(self.shards) - 1).unlink()
        self.complete = ended and len(self.shards) == count
        self.skipped_texts = skipped_texts if self.complete else self.skipped_texts
        self._write_manifest()
        if len(self.shards) < count:
            raise CacheError(f"shard {len(self.shards)} of the embedding cache {self.folder} was not written; the "
                             f"cache is valid up to row {self.rows}: run the same command again to finish it")

    def close(self) -> None:
        self.flush()
        if self._lock_handle is not None:
            self._lock_handle.close()
            self._lock_handle = None
        self.writable = False


def open_cache(cfg: Any, model: Any, source: DatasetSource | None = None) -> EmbeddingCache:
    """The cache folder for this config and model (created on first write)."""
    key = cache_key_for(cfg, model, source)
    root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_root()
    return EmbeddingCache(root / key.folder_name(), key, embedding_dim(model), cfg.cache_shard_size)


def load_embeddings(cache_dir: str | Path) -> ShardedEmbeddings:
    """The cached embeddings of a cache folder as one (N, d) memory-mapped array, in dataset order."""
    folder = Path(cache_dir)
    if not (folder / MANIFEST).exists():
        raise CacheError(f"{folder} is not an embedding cache (no {MANIFEST}); run 'sentence-sae embed' first")
    return EmbeddingCache(folder, None, 0).embeddings()
