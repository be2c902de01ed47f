"""A dataset's texts and their embeddings, addressed by row position, through the cache.

Row r is the r-th non-empty text of the dataset. Rows in the embedding cache are read from it;
the others are encoded from text and, when they extend the cache, appended to it. Training
(`ActivationsStoreSBERT`), evaluation and feature explanation all read a corpus this way, so a
corpus is encoded once whatever reads it first.
"""

from __future__ import annotations

import itertools
import math
import time
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import numpy as np
import torch

from .cache import EmbeddingCache, open_cache
from .config import SAEConfig
from .data import DatasetSource, TextCounter, iter_dataset_rows, locate_bad_line
from .embeddings import embedding_dim, encode_texts, resolve_prompt
from .errors import ConfigError, DataError, DataReadError
from .recipe import texts_worth_counting, validation_size
from .tracking import progress_bar

READ_RETRIES = 3
RETRY_SECONDS = 0.5
"""A failed read is retried after 0.5, 1 and 2 seconds."""

ENCODE_CALL_TEXTS = 8192
"""Texts per model call when encoding (sentence-transformers sorts the texts of one call by length,
so large calls waste less time on padding)."""


class ShardPass(NamedTuple):
    """What one process of a distributed embed saw and did."""

    shards: int
    """Shards the rows up to the stop make, counted from the first (every process sees the same)."""
    encoded: int
    """Rows this process encoded."""
    ended: bool
    """The dataset ended before the stop."""
    skipped_texts: int
    """Rows with an empty or null text (known when the dataset ended)."""


def first_non_finite(embeddings: torch.Tensor) -> int | None:
    """Index of the first row holding a NaN or infinity, or None when every value is finite."""
    finite = torch.isfinite(embeddings).all(dim=-1)
    return None if bool(finite.all()) else int((~finite).nonzero()[0, 0])


class Corpus:
    """The rows of ``cfg``'s dataset as texts and embeddings from ``model``.

    ``source`` and ``cache`` may be given when the caller made them already (the cache is then not
    opened again); ``split`` (rank, world size) reads only this process's split of the dataset.
    """

    def __init__(self, model: Any, cfg: SAEConfig, device: torch.device | str = "cpu",
                 split: tuple[int, int] | None = None, source: DatasetSource | None = None,
                 cache: EmbeddingCache | None = None):
        self.model = model
        self.split = split
        self.cfg = cfg
        self.device = torch.device(device)
        self.dim = embedding_dim(model)
        self.prompt = resolve_prompt(model, cfg.prompt, cfg.prompt_name)
        self.dataset_source = source or DatasetSource.from_config(cfg)
        self.source = cfg.dataset_path  # as the user wrote it, for messages
        self.skipped_empty = 0
        self.cache = cache
        if cache is None and cfg.use_cache:
            self.cache = open_cache(cfg, model, self.dataset_source)
        if self.cache is not None and not self.cache.complete:
            self.cache.acquire_writer()  # if another process writes it, this one only reads
        self._dataset: Any = None
        self.on_encoded: Callable[[int], None] | None = None
        """Called with the number of texts after each group is encoded (a progress bar's update)."""
        self._bar: Any = None
        self._counted: tuple[int | None, int | None] = (None, None)  # (rows counted, that count's limit)

    @classmethod
    def from_complete_cache(cls, model: Any, cfg: SAEConfig, device: torch.device | str = "cpu",
                            source: DatasetSource | None = None) -> "Corpus | None":
        """The corpus read wholly from its embedding cache, or None when caching is off or the cache is
        not complete (the cache is then left as it was: no writer's lock taken)."""
        if not cfg.use_cache:
            return None
        source = source or DatasetSource.from_config(cfg)
        cache = open_cache(cfg, model, source)
        if not cache.complete:
            cache.close()
            return None
        return cls(model, cfg, device, source=source, cache=cache)

    @property
    def skipped_texts(self) -> int:
        """Rows passed over for a null or empty text, as far as the dataset has been read (all of
        them once the cache is complete)."""
        if self.cache is not None and self.cache.complete:
            return self.cache.skipped_texts
        return self.skipped_empty

    @property
    def chunk_rows(self) -> int:
        """Rows per model call and per cache read, for training and analysis alike: ENCODE_CALL_TEXTS,
        or a cache shard when shards are smaller (so that a killed run loses at most a shard). Calls
        cover the fixed row ranges [k n, (k + 1) n), so a row is always encoded in the same company
        (padding and batching included) and a resumed run or another process gets bit-identical
        embeddings."""
        return min(ENCODE_CALL_TEXTS, self.cfg.cache_shard_size)

    @property
    def fully_cached(self) -> bool:
        return self.cache is not None and self.cache.complete

    @property
    def dataset(self) -> Any:
        """The text dataset, opened on first use (never, when every row needed is cached)."""
        if self._dataset is None:
            self._dataset = self.dataset_source.open()
            if self.split is not None:
                from datasets.distributed import split_dataset_by_node

                self._dataset = split_dataset_by_node(self._dataset, rank=self.split[0], world_size=self.split[1])
        return self._dataset

    # ------------------------------------------------------------------ texts
    def rows_from(self, position: int, extra_columns: dict[str, str] | None = None,
                  counter: TextCounter | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        """(text, extra column values) of rows ``position``, ``position + 1``, ... to the end.

        A read that fails part-way is retried READ_RETRIES times from where it stopped (the dataset
        reopened), then reported with how far it got.
        """
        counter = counter if counter is not None else TextCounter()
        failures = 0
        while True:
            attempt = TextCounter()
            rows = iter_dataset_rows(self.dataset, self.cfg.text_column, self.source, attempt, extra_columns)
            try:
                for row in itertools.islice(rows, position, None):
                    position += 1
                    yield row
                counter.texts, counter.skipped_empty = attempt.texts, attempt.skipped_empty
                return
            except DataReadError as exc:
                located = locate_bad_line(self.dataset_source.path) if self.dataset_source.kind == "local" else None
                if located is not None:  # a bad line in a local file fails the same way every time
                    raise DataReadError(f"cannot read {self.source}: {located}") from None
                failures += 1
                if failures > READ_RETRIES:
                    raise DataReadError(f"{exc} (gave up after {READ_RETRIES} retries; {position} texts had "
                                        "been read)") from None
                time.sleep(RETRY_SECONDS * 2 ** (failures - 1))
                self._dataset = None  # reopen

    def texts_from(self, position: int, counter: TextCounter | None = None) -> Iterator[str]:
        return (text for text, _ in self.rows_from(position, counter=counter))

    def count(self, limit: int | None = None) -> int | None:
        """Rows in the dataset (at most ``limit``), counted without encoding; None for hub streams of
        unknown size."""
        if self.fully_cached:
            return self.cache.rows if limit is None else min(self.cache.rows, limit)
        if self.cache is not None and limit is not None and self.cache.rows >= limit:
            return limit
        if not self.dataset_source.countable:
            return None
        # The store sizes its validation set, batch, plan and progress bar from counts with different
        # limits: read the texts once, as far as the largest limit asked so far.
        known, counted_to = self._counted
        if known is not None:
            reached_the_end = counted_to is None or known < counted_to
            if reached_the_end or (limit is not None and limit <= counted_to):
                return known if limit is None else min(known, limit)
        rows = sum(1 for _ in itertools.islice(self.texts_from(0), limit))
        self._counted = (rows, limit)
        return rows

    # ------------------------------------------------------------------ embeddings
    def encode(self, texts: list[str]) -> torch.Tensor:
        # Always in progress-sized groups, whether anyone watches or not: the same rows are encoded in
        # the same company on every run, so resumed runs get bit-identical embeddings.
        return encode_texts(self.model, texts, self.cfg.model_batch_size, self._encoded, self.prompt).to(self.device)

    def show_progress(self, rows: int) -> None:
        """A progress bar for encoding rows [0, rows) where they are not cached yet; stop_progress
        closes it (encoding that goes on after that counts on the caller's own bar)."""
        # rows are encoded a chunk at a time: the call that holds the last one is encoded whole
        rows = math.ceil(rows / self.chunk_rows) * self.chunk_rows
        try:
            rows = min(rows, self.count(limit=rows) or rows)
        except DataError:  # the reading that follows reports it, with what it had read
            pass
        todo = rows - (self.cache.rows if self.cache is not None else 0)
        if todo > 0 and self._bar is None:
            self._bar = progress_bar(todo, "encode")
            self.on_encoded = self._bar.update

    def stop_progress(self) -> None:
        self.on_encoded = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def precompute(self, stop: int | None, ends: Sequence[int] = ()) -> int:
        """Encode rows [0, stop) into the cache (all rows when stop is None) with a progress bar;
        returns the number of rows now cached. Encoding calls also end at ``ends`` (where a training
        run's reads end: the held-out and validation sets), so the cache holds the same bytes
        whichever filled it."""
        if self.cache is None:
            raise DataError("precomputing embeddings needs use_cache=true")
        # From the rows encoded so far, shard or not: flushing the held-out and validation rows as a short
        # shard would put the shards off the cache_shard_size grid that embed under torchrun writes.
        start = self.cache.next_row
        rows = self.count()
        total = stop if rows is None else min(stop or math.inf, rows)
        cuts = [end for end in sorted(set(ends)) if start < end and (stop is None or end < stop)]
        with progress_bar(total, "embed", initial=start) as bar:
            self.on_encoded = bar.update
            try:
                for first, last in zip([start, *cuts], [*cuts, stop]):
                    for _ in self.embedding_chunks(first, last, self.chunk_rows):
                        pass
            finally:
                self.on_encoded = None
        self.cache.flush()
        return self.cache.rows

    def encode_shards(self, stop: int | None, rank: int, world_size: int, ends: Sequence[int] = ()) -> ShardPass:
        """Encode this process's shards of rows [cache.rows, stop) into the cache (embed under
        torchrun): shard i, of cache_shard_size rows, belongs to process i mod world_size, and one that
        an earlier, killed call wrote whole is kept. Every process reads the texts; each encodes the same
        row ranges per call as a single process does (calls end at multiples of the call size and at
        ``ends``: a single process reads the held-out and validation sets first), so the shard files
        are the same bytes."""
        cache, size, call = self.cache, self.cfg.cache_shard_size, self.chunk_rows
        if size % call:
            raise ConfigError(f"embed under torchrun needs cache_shard_size at most {ENCODE_CALL_TEXTS} or a multiple "
                              f"of it (got {size}), so that its processes encode the rows a single process would")
        index, position, encoded, counter = len(cache.shards), cache.rows, 0, TextCounter()
        texts = self.texts_from(position, counter)
        total = self.count(stop)
        mine = sum(min(size, total - first) for first in range(position, total, size)
                   if (index + (first - position) // size) % world_size == rank) if total is not None else None
        with progress_bar(mine, f"embed (process {rank + 1} of {world_size})") as bar:
            self.on_encoded = bar.update
            try:
                while stop is None or position < stop:
                    want = size if stop is None else min(size, stop - position)
                    batch = list(itertools.islice(texts, want))
                    if batch and index % world_size == rank and cache.written_shard(index) is None:
                        # calls end where a single process's do: at multiples of `call` rows from row 0
                        cuts = sorted({0, *range(call - position % call, len(batch), call), len(batch),
                                       *(end - position for end in ends if 0 < end - position < len(batch))})
                        parts = [self._checked(self.encode(batch[a:b]), position + a, False, batch[a:b])
                                 for a, b in zip(cuts, cuts[1:])]
                        cache.write_shard_at(index, torch.cat(parts).cpu().numpy())
                        encoded += len(batch)
                    position, index = position + len(batch), index + (len(batch) > 0)
                    if len(batch) < want:
                        return ShardPass(index, encoded, True, counter.skipped_empty)
            finally:
                self.on_encoded = None
        return ShardPass(index, encoded, False, counter.skipped_empty)

    def _encoded(self, count: int) -> None:
        if self.on_encoded is not None:
            self.on_encoded(count)

    def embedding_chunks(self, start: int, stop: int | None, chunk_size: int,
                         shuffle_generator: torch.Generator | None = None, skip_chunks: int = 0,
                         keep: Callable[[int], bool] | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """(index, embeddings) of rows [start, stop) (stop None: to the end of the dataset) in
        chunks of ``chunk_size`` rows on a grid that starts at ``start``, whatever part is cached,
        so that a run reads the same chunks however much of the cache an earlier run left.

        With ``shuffle_generator`` and a complete cache, the chunks come in a random order drawn
        from it; index is the position in that order. ``skip_chunks`` leaves out the first
        positions without reading or encoding them (how a resumed run continues mid-pass), and
        ``keep`` (only with a complete cache) picks the positions this process reads.
        """
        cache = self.cache
        if cache is not None and cache.complete and (shuffle_generator is not None or keep is not None):
            end = cache.rows if stop is None else min(stop, cache.rows)
            starts = list(range(start, end, chunk_size))
            if shuffle_generator is not None:
                order = torch.randperm(len(starts), generator=shuffle_generator).tolist()
                starts = [starts[i] for i in order]
            stored = cache.embeddings()
            for index in range(skip_chunks, len(starts)):
                if keep is None or keep(index):
                    first = starts[index]
                    yield index, self._checked(torch.from_numpy(stored[first : min(first + chunk_size, end)]), first, True)
            return
        if keep is not None:
            raise ValueError("sharing chunks between processes needs a complete embedding cache")
        index = skip_chunks
        pending: list[torch.Tensor] = []
        pending_rows = 0
        for block in self._blocks(start + skip_chunks * chunk_size, stop):
            pending.append(block)
            pending_rows += len(block)
            while pending_rows >= chunk_size:
                merged = torch.cat(pending)
                yield index, merged[:chunk_size]
                index += 1
                pending, pending_rows = [merged[chunk_size:]], pending_rows - chunk_size
        if pending_rows:
            yield index, torch.cat(pending)

    def _blocks(self, start: int, stop: int | None) -> Iterator[torch.Tensor]:
        """Rows [start, stop) in blocks of any size: cached ones read, then the rest encoded."""
        cache = self.cache
        if cache is not None and start < cache.next_row:
            cache.flush()
            end = cache.rows if stop is None else min(stop, cache.rows)
            stored = cache.embeddings()
            for first in range(start, end, self.chunk_rows):
                yield self._checked(torch.from_numpy(stored[first : min(first + self.chunk_rows, end)]), first, True)
            start = max(start, end)
            if (stop is not None and start >= stop) or cache.complete:
                return
        yield from self._encoded_blocks(start, stop)

    def _encoded_blocks(self, start: int, stop: int | None) -> Iterator[torch.Tensor]:
        cache = self.cache
        appending = cache is not None and cache.writable and start == cache.next_row
        counter = TextCounter()
        texts = self.texts_from(start, counter)
        size = self.chunk_rows
        position = start
        while stop is None or position < stop:
            want = (position // size + 1) * size - position
            if stop is not None:
                want = min(want, stop - position)
            batch = list(itertools.islice(texts, want))
            if batch:
                embeddings = self._checked(self.encode(batch), position, False, batch)
                if appending:
                    cache.append(embeddings.cpu().numpy())
                position += len(batch)
                yield embeddings
            if len(batch) < want:  # the dataset ended
                self.skipped_empty = counter.skipped_empty
                if appending:
                    cache.mark_complete(counter.skipped_empty)
                return

    def _checked(self, embeddings: torch.Tensor, first_row: int, cached: bool,
                 texts: list[str] | None = None) -> torch.Tensor:
        """The embeddings, unless one is NaN or infinite: then an error naming its row."""
        offset = first_non_finite(embeddings)
        if offset is None:
            return embeddings.to(self.device)
        row = first_row + offset
        if cached:
            raise DataError(f"row {row} of the embedding cache {self.cache.folder} is not finite (NaN or inf); "
                            "delete that cache folder to encode the dataset again")
        raise DataError(f"the embedding of row {row} of {self.source} is not finite (NaN or inf), text "
                        f"{texts[offset][:80]!r}; the model fails on it: remove the text or use another "
                        "encode_backend")

    def has_row(self, position: int) -> bool:
        """Whether the dataset holds row ``position``, cached or still text."""
        if self.cache is not None and self.cache.rows > position:
            return True
        return next(self.texts_from(position), None) is not None

    def embeddings_at(self, rows: np.ndarray, texts: Sequence[str]) -> torch.Tensor:
        """The embeddings of ``rows`` (sorted row positions) on the CPU: read from the cache when it
        holds them all, else encoded again from their texts (``texts[r]`` is row r's)."""
        if not len(rows):
            return torch.zeros(0, self.dim)
        if self.cache is not None and self.cache.rows > rows[-1]:
            self.cache.flush()
            return torch.from_numpy(np.ascontiguousarray(self.cache.embeddings()[rows]))
        return self.encode([texts[r] for r in rows.tolist()]).cpu()

    def embeddings(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) as one tensor (fewer rows if the dataset ends first)."""
        chunks = [chunk for _, chunk in self.embedding_chunks(start, stop, max(1, stop - start))]
        return torch.cat(chunks) if chunks else torch.empty(0, self.dim, device=self.device)

    def iter_rows(self, start: int = 0, stop: int | None = None,
                  extra_columns: dict[str, str] | None = None) -> Iterator[tuple[list[str], list[dict[str, Any]], torch.Tensor]]:
        """(texts, extra column values, embeddings) of rows [start, stop), chunk_rows at a time, in order."""
        rows = self.rows_from(start, extra_columns)
        for _, embeddings in self.embedding_chunks(start, stop, self.chunk_rows):
            chunk = list(itertools.islice(rows, len(embeddings)))
            yield [text for text, _ in chunk], [extra for _, extra in chunk], embeddings

    def read(self, stop: int | None, desc: str,
             extra_columns: dict[str, str] | None = None) -> Iterator[tuple[list[str], list[dict[str, Any]], torch.Tensor]]:
        """iter_rows over rows [0, stop) with a progress bar named ``desc``; once read to the end, every
        row encoded on the way is in the cache (flushed), so the rows can be looked up there."""
        total = self.count(stop)
        with progress_bar(stop if total is None else total, desc) as bar:
            for chunk in self.iter_rows(0, stop, extra_columns):
                bar.update(len(chunk[0]))
                yield chunk
        if self.cache is not None:
            self.cache.flush()

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()


def counted_split(cfg: SAEConfig, corpus: Corpus) -> tuple[int | None, int]:
    """(the corpus's rows, counted up to texts_worth_counting: None when it cannot be counted; the
    validation set's size). The held-out set comes first, then validation, then training."""
    try:
        rows = corpus.count(limit=texts_worth_counting(cfg))
    except DataError:  # needed for the validation set's size; else the reading reports it later
        if cfg.num_val_examples is None:
            raise
        rows = None
    return rows, validation_size(cfg, None if rows is None else max(rows - cfg.num_eval_examples, 0))


def check_training_rows(corpus: Corpus, cfg: SAEConfig, validation: int) -> None:
    """A DataError naming the fix unless rows follow the held-out set and the ``validation`` rows."""
    start = cfg.num_eval_examples + validation
    if corpus.has_row(start):
        return
    rows = corpus.cache.rows if corpus.fully_cached else sum(1 for _ in itertools.islice(corpus.texts_from(0), start))
    if rows == 0:
        raise DataError(f"dataset {corpus.source} holds no texts; give a dataset with texts in column "
                        f"'{cfg.text_column}'")
    raise DataError(f"dataset {corpus.source} has only {rows} texts, all taken by the held-out set "
                    f"(num_eval_examples={cfg.num_eval_examples}) and the validation set "
                    f"(num_val_examples={validation}); lower them")
