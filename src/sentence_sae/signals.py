"""Stopping a run on request: SIGINT and SIGTERM become a flag the training loop answers at the
next step (with a checkpoint), instead of an exception at an arbitrary point."""

from __future__ import annotations

import signal
import threading
from typing import Any


class SignalReceived(BaseException):
    """Raised at once by ``StopOnSignals(immediately=True)``: work whose files are always valid on
    disk (the embedding cache) stops where it is."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.name = signal.Signals(signum).name


class StopOnSignals:
    """Turns SIGINT and SIGTERM into a request the training loop answers at the next step, or, with
    ``immediately``, into :class:`SignalReceived` raised where the program is."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, immediately: bool = False) -> None:
        self.received: int | None = None
        self.immediately = immediately
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum
        if self.immediately:
            raise SignalReceived(signum)

    def __enter__(self) -> "StopOnSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
