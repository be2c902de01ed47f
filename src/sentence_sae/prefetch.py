"""Producing ahead of the consumer: an iterator run in a background thread.

Encoding releases the GIL, so the next chunk of embeddings is encoded or read while the SAE trains.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Iterator


class Prefetcher:
    """Runs an iterator in a background thread, ``depth`` items ahead of the consumer.

    Exceptions of the producer are raised in the consumer; ``close`` stops the producer.
    """

    _DONE = object()

    def __init__(self, iterator: Iterator[Any], depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._produce, args=(iterator,), daemon=True,
                                        name="sentence-sae-prefetch")
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, iterator: Iterator[Any]) -> None:
        try:
            for item in iterator:
                if not self._put(("item", item)):
                    return
            self._put(("done", None))
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put(("error", exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self) -> Any:
        if self._finished:
            raise StopIteration
        kind, value = self._queue.get()
        if kind == "item":
            return value
        self._finished = True
        self._thread.join()
        if kind == "error":
            raise value
        raise StopIteration

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
