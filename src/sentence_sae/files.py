"""Files on disk: atomic writes and new run folders.

Every file the package writes goes to a temporary name beside its target, is fsynced and renamed
into place, so a crash or a full disk never leaves a half-written file where a good one was.
"""

from __future__ import annotations

import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Callable

from .errors import ConfigError


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            write(tmp)
        except OSError:
            raise
        except Exception as exc:  # safetensors reports a full disk as its own error type
            raise OSError(f"could not write {path}: {exc}") from exc
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


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
