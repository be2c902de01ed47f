"""Run the sentence-sae command line and send this process a signal at a fixed point of the run,
so that tests of killed and interrupted runs do not depend on the machine's speed or load:

    python tests/signal_at.py checkpoint 20 SIGKILL train ...   # right after checkpoint step_20 is written
    python tests/signal_at.py shard 4 SIGKILL embed ...          # right after the 4th cache shard is written
    torchrun ... tests/signal_at.py rank1-shard 2 SIGKILL embed ...  # rank 1, right after its 2nd shard

The signal is real and goes through the same handlers as one sent from outside; only its moment is fixed.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any, Callable

from sentence_sae import cache, trainer
from sentence_sae.cli import main


def signal_after(owner: type, method: str, due: Callable[[Any], bool], signum: int) -> None:
    """Make ``owner.method`` send ``signum`` to this process once it returns with ``due(self)`` true."""
    original = getattr(owner, method)

    def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        if due(self):
            os.kill(os.getpid(), signum)
        return result

    setattr(owner, method, wrapped)


if __name__ == "__main__":
    point, count, signal_name, *command = sys.argv[1:]
    signum, count = getattr(signal, signal_name), int(count)
    if point == "checkpoint":
        signal_after(trainer.Trainer, "save_checkpoint", lambda t: t.step == count, signum)
    elif point == "shard":
        signal_after(cache.EmbeddingCache, "_write_shard", lambda c: len(c.shards) == count, signum)
    elif point == "rank1-shard":  # a process of a distributed embed: its own shards, outside the manifest
        written = []
        if os.environ.get("RANK") == "1":
            signal_after(cache.EmbeddingCache, "write_shard_at", lambda c: written.append(1) or len(written) == count,
                         signum)
    else:
        raise SystemExit(f"unknown point {point!r}; use checkpoint, shard or rank1-shard")
    sys.exit(main(command))
