"""Filling the embedding cache ahead of training (``sentence-sae embed``).

One process encodes the rows a run of the config reads, in dataset order; under torchrun each
process encodes its own shards of the same rows and the first lists them all in the manifest. Both
encode each row in the same company as a training run does, so the shard files are the same bytes
whichever filled them.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Protocol

from .cache import EmbeddingCache, open_cache
from .config import SAEConfig
from .corpus import Corpus, ShardPass, check_training_rows, counted_split
from .embeddings import encoder_backend
from .errors import CacheError, TrainingStopped
from .signals import SignalReceived, StopOnSignals


class Rendezvous(Protocol):
    """What the processes of a shared fill need from each other."""

    def all_true(self, flag: bool) -> bool: ...
    def gather(self, value: Any) -> list[Any]: ...


def fill_cache(model: Any, cfg: SAEConfig) -> dict[str, Any]:
    """Encode the rows a run of ``cfg`` reads (the held-out and validation sets plus num_examples, or
    the whole dataset when num_examples is unset) into the cache, in one process. Another process
    filling the same cache is waited for; a signal stops it with a line saying how far the cache is valid."""
    started = time.perf_counter()
    cache = open_cache(cfg, model)
    cache.wait_for_writer(cfg.cache_lock_timeout)
    before = cache.rows
    corpus = Corpus(model, cfg, cfg.device or "cpu", cache=cache)
    try:
        with StopOnSignals(immediately=True):
            try:
                validation, start, stop = _rows_a_run_reads(cfg, corpus)
                check_training_rows(corpus, cfg, validation)
                rows = corpus.precompute(stop, ends=(cfg.num_eval_examples, start))
            finally:
                corpus.close()  # writes the rows encoded so far
    except SignalReceived as received:
        raise _stopped(received, cache) from None
    if stop is not None and rows < stop and not cache.complete:
        raise CacheError(f"the embedding cache {cache.folder} holds {rows} of the {stop} rows asked for; "
                         "run the same command again to finish it")
    return _summary(cfg, cache, model, corpus.skipped_texts, rows - before, started)


def fill_cache_shared(model: Any, cfg: SAEConfig, rank: int, world_size: int, others: Rendezvous) -> dict[str, Any]:
    """fill_cache shared by ``world_size`` processes (embed under torchrun): each encodes its own
    shards of the rows one process would (``Corpus.encode_shards``), then the first lists them all."""
    started = time.perf_counter()
    cache = open_cache(cfg, model)
    if rank == 0:
        cache.wait_for_writer(cfg.cache_lock_timeout)
    others.all_true(True)  # the others open the cache once the first holds the writer's lock
    cache = cache if rank == 0 else open_cache(cfg, model)
    corpus = Corpus(model, cfg, cfg.device or "cpu", cache=cache)
    try:
        with StopOnSignals(immediately=True):
            if cache.complete:
                passed = ShardPass(len(cache.shards), 0, True, cache.skipped_texts)
            else:
                _, start, stop = _rows_a_run_reads(cfg, corpus)
                passed = corpus.encode_shards(stop, rank, world_size, ends=(cfg.num_eval_examples, start))
    except SignalReceived as received:
        raise _stopped(received, cache) from None
    encoded = sum(each.encoded for each in others.gather(passed))
    if rank == 0 and not cache.complete:
        cache.adopt_shards(passed.shards, passed.ended, passed.skipped_texts)
    cache.close()
    return {**_summary(cfg, cache, model, passed.skipped_texts, encoded, started), "processes": world_size}


def _rows_a_run_reads(cfg: SAEConfig, corpus: Corpus) -> tuple[int, int, int | None]:
    """(the validation set's size, the first training row, the row after the last one a run of ``cfg``
    reads: None for the whole dataset)."""
    _, validation = counted_split(cfg, corpus)
    start = cfg.num_eval_examples + validation
    return validation, start, None if cfg.num_examples is None else start + cfg.num_examples


def _stopped(received: SignalReceived, cache: EmbeddingCache) -> TrainingStopped:
    return TrainingStopped(f"{received.name} received; the embedding cache {cache.folder} is valid up to row "
                           f"{cache.rows}; run the same command again to continue from there",
                           exit_code=128 + received.signum)


def _summary(cfg: SAEConfig, cache: EmbeddingCache, model: Any, skipped: int, encoded: int,
             started: float) -> dict[str, Any]:
    if skipped:
        print(f"skipped {skipped} rows of {cfg.dataset_path} with a null or empty '{cfg.text_column}'",
              file=sys.stderr)
    return {"cache_dir": str(cache.folder), "rows": cache.rows, "encoded": encoded, "complete": cache.complete,
            "skipped_texts": skipped, "encode_backend": encoder_backend(model).name,
            "seconds": round(time.perf_counter() - started, 2)}
