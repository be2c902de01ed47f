"""A dataset's texts and their embeddings, addressed by row position, through the cache.

Row r is the r-th non-empty text of the dataset. Rows in the embedding cache are read from it;
the others are encoded from text and, when they extend the cache, appended to it. Training
(`ActivationsStoreSBERT`), evaluation and feature explanation all read a corpus this way, so a
corpus is encoded once whatever reads it first.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Iterator

import torch

from .cache import EmbeddingCache, open_cache
from .config import SAEConfig
from .data import BUILTIN_CORPORA, TextCounter, iter_dataset_rows, open_dataset
from .embeddings import embedding_dim, encode_texts

ENCODE_CALL_TEXTS = 8192
"""Texts per model call when encoding (sentence-transformers sorts the texts of one call by length,
so large calls waste less time on padding)."""


class Corpus:
    """The rows of ``cfg``'s dataset as texts and embeddings from ``model``."""

    def __init__(self, model: Any, cfg: SAEConfig, device: torch.device | str = "cpu"):
        self.model = model
        self.cfg = cfg
        self.device = torch.device(device)
        self.dim = embedding_dim(model)
        self.source = cfg.dataset_path
        self.skipped_empty = 0
        self.cache: EmbeddingCache | None = None
        if cfg.use_cache:
            self.cache = open_cache(cfg, model)
            if not self.cache.complete:
                self.cache.acquire_writer()  # if another process writes it, this one only reads
        self._dataset: Any = None

    @property
    def fully_cached(self) -> bool:
        return self.cache is not None and self.cache.complete

    @property
    def dataset(self) -> Any:
        """The text dataset, opened on first use (never, when every row needed is cached)."""
        if self._dataset is None:
            self._dataset = open_dataset(self.cfg.dataset_path, self.cfg.dataset_name, self.cfg.split)
        return self._dataset

    # ------------------------------------------------------------------ texts
    def rows_from(self, position: int, extra_columns: dict[str, str] | None = None,
                  counter: TextCounter | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        """(text, extra column values) of rows ``position``, ``position + 1``, ... to the end."""
        rows = iter_dataset_rows(self.dataset, self.cfg.text_column, self.source, counter or TextCounter(),
                                 extra_columns)
        return itertools.islice(rows, position, None)

    def texts_from(self, position: int, counter: TextCounter | None = None) -> Iterator[str]:
        return (text for text, _ in self.rows_from(position, counter=counter))

    def count(self) -> int | None:
        """Rows in the dataset, counted without encoding; None for hub streams of unknown size."""
        if self.fully_cached:
            return self.cache.rows
        path = self.cfg.dataset_path
        if path not in BUILTIN_CORPORA and not Path(path).expanduser().exists():
            return None
        return sum(1 for _ in self.texts_from(0))

    # ------------------------------------------------------------------ embeddings
    def encode(self, texts: list[str]) -> torch.Tensor:
        return encode_texts(self.model, texts, self.cfg.model_batch_size).to(self.device)

    def embedding_chunks(self, start: int, stop: int | None, chunk_size: int,
                         shuffle_generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
        """Embeddings of rows [start, stop) (stop None: to the end of the dataset) in chunks.

        Cached rows come first, in order (or in a random chunk order with ``shuffle_generator``),
        then the rest is encoded in order and appended to the cache when it extends it.
        """
        cache = self.cache
        if cache is not None and start < cache.next_row:
            cache.flush()
            end = cache.rows if stop is None else min(stop, cache.rows)
            starts = list(range(start, end, chunk_size))
            if shuffle_generator is not None:
                order = torch.randperm(len(starts), generator=shuffle_generator).tolist()
                starts = [starts[i] for i in order]
            stored = cache.embeddings()
            for first in starts:
                yield torch.from_numpy(stored[first : min(first + chunk_size, end)]).to(self.device)
            start = end
            if (stop is not None and start >= stop) or cache.complete:
                return
        yield from self._encoded_chunks(start, stop, chunk_size)

    def _encoded_chunks(self, start: int, stop: int | None, chunk_size: int) -> Iterator[torch.Tensor]:
        cache = self.cache
        appending = cache is not None and cache.writable and start == cache.next_row
        counter = TextCounter()
        texts = self.texts_from(start, counter)
        # Large calls, but no more than a cache shard, so that a killed run loses at most a shard.
        size = max(chunk_size, min(ENCODE_CALL_TEXTS, self.cfg.cache_shard_size))
        position = start
        while stop is None or position < stop:
            want = size if stop is None else min(size, stop - position)
            batch = list(itertools.islice(texts, want))
            if batch:
                embeddings = self.encode(batch)
                if appending:
                    cache.append(embeddings.cpu().numpy())
                position += len(batch)
                yield embeddings
            if len(batch) < want:  # the dataset ended
                self.skipped_empty = counter.skipped_empty
                if appending:
                    cache.mark_complete(counter.skipped_empty)
                return

    def embeddings(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) as one tensor (fewer rows if the dataset ends first)."""
        chunks = list(self.embedding_chunks(start, stop, max(1, stop - start)))
        return torch.cat(chunks) if chunks else torch.empty(0, self.dim, device=self.device)

    def iter_rows(self, start: int = 0, stop: int | None = None, chunk_size: int = 4096,
                  extra_columns: dict[str, str] | None = None) -> Iterator[tuple[list[str], list[dict[str, Any]], torch.Tensor]]:
        """(texts, extra column values, embeddings) of rows [start, stop), chunk by chunk, in order."""
        rows = self.rows_from(start, extra_columns)
        for embeddings in self.embedding_chunks(start, stop, chunk_size):
            chunk = list(itertools.islice(rows, len(embeddings)))
            yield [text for text, _ in chunk], [extra for _, extra in chunk], embeddings

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
