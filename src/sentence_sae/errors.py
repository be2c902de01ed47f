"""Errors the user can act on.

Every exception raised for bad input derives from :class:`SentenceSAEError`. Its message names the
problem and the fix in one line, so the command line prints it as is instead of a traceback.
"""

from __future__ import annotations


class SentenceSAEError(Exception):
    """A problem with the user's input or files; the message says what to change."""


class ConfigError(SentenceSAEError, ValueError):
    """An unknown key, a value of the wrong type, or values that do not fit together."""


class DataError(SentenceSAEError):
    """A dataset that cannot be read, lacks the text column, or holds no texts."""


class DataReadError(DataError):
    """Reading a dataset failed part-way (a corrupt file, a dropped connection); worth retrying."""


class TrainingStopped(SentenceSAEError):
    """Training stopped early (a signal, a diverging loss); the message says what was saved."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class ModelError(SentenceSAEError):
    """A Sentence-BERT model that cannot be loaded, or that does not fit the SAE."""


class CheckpointError(SentenceSAEError):
    """A run folder or checkpoint that is missing, incomplete or corrupt."""


class CacheError(SentenceSAEError):
    """An embedding cache folder that is corrupt, truncated or belongs to other data."""


class DiskFullError(SentenceSAEError, OSError):
    """A write that failed for want of disk space; the message names the file, the space and what was kept."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_fdr(fdr: float) -> None:
    """A ConfigError unless ``fdr`` is a false discovery rate strictly between 0 and 1."""
    if not 0 < fdr < 1:
        raise ConfigError(f"fdr must be between 0 and 1 (e.g. 0.05), got {fdr}")


def check_positive(name: str, value: int | None, unset: str | None = None) -> None:
    """A ConfigError naming ``name`` unless ``value`` is positive (or None, when ``unset`` says what that means)."""
    if value is None and unset is not None:
        return
    if value is None or value < 1:
        also = f" (or unset for {unset})" if unset else ""
        raise ConfigError(f"{name} must be a positive number{also}, got {value}")
