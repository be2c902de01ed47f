"""Files on disk: atomic writes, checksums and new run folders.

Every file the package writes goes to a temporary name beside its target, is fsynced and renamed
into place, so a crash or a full disk never leaves a half-written file where a good one was. Files
whose bytes a later command trusts (SAE weights, cfg.json, trainer state, metrics.jsonl) get a
SHA-256 checksum file beside them (``<name>.sha256``, in ``sha256sum`` format) that readers check.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from .errors import ConfigError, DiskFullError, SentenceSAEError

CHECKSUM_SUFFIX = ".sha256"


def atomic_write(path: Path, write: Callable[[Path], None], size_hint: int = 0) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``. A full
    disk is a DiskFullError naming the path, the space needed (at least ``size_hint`` bytes) and that
    the previous file is unchanged."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            write(tmp)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        except Exception as exc:
            if out_of_space(path.parent, exc):
                written = tmp.stat().st_size if tmp.exists() else 0
                tmp.unlink(missing_ok=True)
                kept = f"the previous {path.name} is unchanged" if path.exists() else "nothing was written in its place"
                raise disk_full(path, max(written, size_hint), kept) from None
            if isinstance(exc, OSError):
                raise
            # safetensors and torch report a failed write as their own error types
            raise OSError(f"could not write {path}: {exc}") from exc
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


MIN_FREE_BYTES = 1 << 20
"""A write that fails with less than this free on its disk failed for want of space, whatever error
type the writing library turned ENOSPC into."""


def out_of_space(folder: Path, exc: BaseException) -> bool:
    if isinstance(exc, DiskFullError) or (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)):
        return True
    free = free_bytes(folder)
    return free is not None and free < MIN_FREE_BYTES


def free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def disk_full(path: Path, needed: int, kept: str) -> DiskFullError:
    """The one-line error for a write of about ``needed`` bytes to ``path`` that found the disk full."""
    free = free_bytes(path.parent) or 0
    return DiskFullError(f"no space left on the disk of {path.parent} to write {path.name} (it needs at least "
                         f"{human_bytes(needed)}, {human_bytes(free)} free); {kept}; free disk space and run the "
                         "command again")


def human_bytes(count: int) -> str:
    if count < 1024:
        return f"{count:,} bytes"
    exponent = min(3, (int(count).bit_length() - 1) // 10)
    return f"{count / 1024 ** exponent:,.1f} {('KiB', 'MiB', 'GiB')[exponent - 1]}"


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def hash_file(path: Path, hasher: Any) -> None:
    """Feed a file's bytes to ``hasher``, a megabyte at a time."""
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)


def sha256_file(path: Path) -> str:
    hasher = hashlib.sha256()
    hash_file(path, hasher)
    return hasher.hexdigest()


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def write_checksum(path: Path) -> None:
    """Write ``<path>.sha256`` for the file as it is now."""
    atomic_write_text(checksum_path(path), f"{sha256_file(path)}  {path.name}\n")


def atomic_write_checked(path: Path, write: Callable[[Path], None], size_hint: int = 0) -> None:
    """``atomic_write`` and a checksum beside it. The old checksum goes first, so a crash in between
    leaves a file without a checksum (read unchecked), never one with a wrong checksum."""
    checksum_path(path).unlink(missing_ok=True)
    atomic_write(path, write, size_hint)
    write_checksum(path)


def verify_checksum(path: Path, error: type[SentenceSAEError], fix: str) -> bool:
    """Check ``path`` against ``<path>.sha256``: True when it matches, False when there is no
    checksum to check, and ``error`` (naming the file and ``fix``) when it does not match."""
    sidecar = checksum_path(path)
    if not sidecar.is_file():
        return False
    expected = sidecar.read_text(errors="replace").split(" ", 1)[0].strip()
    if sha256_file(path) != expected:
        raise error(f"{path} is corrupt: its contents do not match the checksum in {sidecar.name}; {fix}")
    return True


def new_run_dir(output_dir: str | Path, name: str) -> Path:
    """A fresh folder ``output_dir/name-<time>``; an existing run is never reused or overwritten."""
    base = Path(output_dir) / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir, suffix = base, 1
    while run_dir.exists():
        suffix += 1
        run_dir = base.with_name(f"{base.name}-{suffix}")
    try:
        run_dir.mkdir(parents=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the run folder {run_dir} ({exc.strerror or exc}); choose another "
                          "output_dir") from None
    return run_dir
