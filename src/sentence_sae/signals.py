"""Stopping a run on request: SIGINT and SIGTERM become a flag the training loop answers at the
next step (with a checkpoint), instead of an exception at an arbitrary point."""

from __future__ import annotations

import signal
import threading
from typing import Any


class StopOnSignals:
    """Turns SIGINT and SIGTERM into a request the training loop answers at the next step."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum

    def __enter__(self) -> "StopOnSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
