"""Activation stores: shuffled minibatches of embeddings for training.

A store holds a buffer of about ``model_batch_size x num_batches_in_buffer`` embeddings in random
order and serves ``batch_size`` at a time. When the buffer falls below half, the next chunk of
embeddings is appended and the whole buffer reshuffled, so examples mix across chunks and each
training example is served exactly once per pass. The held-out set is taken from the start of
the data, then the validation set (texts set aside from the training texts: never trained on, they
calibrate thresholds and measure overfitting), then come the training examples.

- :class:`ActivationsStoreSBERT` encodes texts streamed from a dataset with a Sentence-BERT model.
- :class:`EmbeddingStore` serves embeddings you already have (an array or memory-mapped file).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from typing import Any, Callable, Iterator, NamedTuple, Protocol

import numpy as np
import torch

from .config import SAEConfig, max_passes
from .corpus import Corpus, check_training_rows, counted_split, first_non_finite
from .data import TextCounter
from .embeddings import embedding_dim
from .errors import DataError
from .prefetch import Prefetcher
from .recipe import batch_size_for, validation_size


class DataShare(NamedTuple):
    """This process's place in a data-parallel run: it serves the chunks at positions = rank mod N."""

    rank: int
    world_size: int


class BatchSource(Protocol):
    """What the trainer needs from a store of training embeddings."""

    cfg: SAEConfig
    examples_served: int
    end_reason: str | None
    counter: TextCounter

    batch_size: int | None

    def planned_examples(self) -> int | None: ...
    @property
    def dataset_fingerprint(self) -> str | None: ...
    def initial_sample(self) -> torch.Tensor: ...
    def next_batch(self) -> torch.Tensor: ...
    def held_out_embeddings(self) -> torch.Tensor: ...
    def validation_embeddings(self) -> torch.Tensor: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class EndOfData(Exception):
    """Raised by ``next_batch`` when the example limit or the last epoch is reached."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ActivationStoreBase:
    """The shuffle buffer. Subclasses provide ``_pass_chunks`` (the embeddings of one pass), the
    held-out embeddings and, when known, the planned number of training examples."""

    def __init__(self, cfg: SAEConfig, d_in: int, share: DataShare | None = None):
        self.cfg = cfg
        self.d_in = d_in
        self.batch_size = cfg.batch_size  # unset until the trainer derives it from the run's length
        self.training_texts: int | None = None  # per pass, where the store knows it
        self.device = torch.device(cfg.device or "cpu")
        self.examples_served = 0
        self.end_reason: str | None = None
        self.counter = TextCounter()
        self._generator = torch.Generator().manual_seed(cfg.seed)
        self._chunk_generator = torch.Generator().manual_seed(cfg.seed + 1)
        self._buffer = torch.empty(0, d_in, device=self.device)
        self._chunk_iterator: Prefetcher | None = None
        # Where the stream stands, as the buffer has consumed it: (pass, chunks of that pass, rows
        # taken in all), and the chunk-order generator's state at the start of each pass.
        self._consumed: tuple[int, int, int] = (0, 0, 0)
        self._pass_start_states: dict[int, torch.Tensor] = {}
        self._resume_from: tuple[tuple[int, int, int], torch.Tensor] | None = None
        self.share = share
        self.world_size = 1 if share is None else share.world_size  # messages speak of the whole run

    # subclasses -----------------------------------------------------------------
    def _pass_chunks(self, pass_index: int, skip: int) -> Iterator[tuple[int, torch.Tensor]]:
        """(position, chunk) for the training embeddings of pass ``pass_index``, in blocks of
        ``shuffle_block`` rows, without the first ``skip`` positions (not even read), and with ``share``
        set only this process's positions."""
        raise NotImplementedError

    def _keep(self) -> Callable[[int], bool] | None:
        """Which chunk positions this process serves (None: all of them)."""
        if self.share is None:
            return None
        rank, world_size = self.share
        return lambda index: index % world_size == rank

    def held_out_embeddings(self) -> torch.Tensor:
        raise NotImplementedError

    def validation_embeddings(self) -> torch.Tensor:
        raise NotImplementedError

    def planned_examples(self) -> int | None:
        """Training examples this store will serve in all, when that can be known in advance."""
        return self.cfg.num_examples

    @property
    def dataset_fingerprint(self) -> str | None:
        """A hash of the data it serves, recorded in checkpoints so that a resume on changed data is
        refused (None: not known)."""
        return None

    # buffer ---------------------------------------------------------------------
    @property
    def buffer_capacity(self) -> int:
        return self.cfg.model_batch_size * self.cfg.num_batches_in_buffer

    @property
    def shuffle_block(self) -> int:
        """Rows per block of the shuffled block order (half a buffer): later passes visit the dataset
        in a new random order of such blocks, and a resumed run skips whole blocks. It is the unit of
        the example order, not of reading: the corpus reads and encodes ``Corpus.chunk_rows`` at a time."""
        return max(1, self.buffer_capacity // 2)

    def _refill(self) -> None:
        if self._chunk_iterator is None:
            # Chunks are produced in a background thread (encoding releases the GIL), so the next
            # chunk is being encoded or read while the SAE trains on the buffer.
            self._chunk_iterator = Prefetcher(self._chunks(), depth=2)
        chunks = [self._buffer]
        filled = len(self._buffer)
        for position, chunk in self._chunk_iterator:
            self._consumed = position
            chunks.append(chunk.to(self.device, torch.float32))
            filled += len(chunk)
            if filled >= self.buffer_capacity:
                break
        buffer = torch.cat(chunks)
        order = torch.randperm(len(buffer), generator=self._generator).to(buffer.device)
        self._buffer = buffer[order]

    def initial_sample(self) -> torch.Tensor:
        """The current buffer of training embeddings, filled if empty, without consuming it."""
        if len(self._buffer) == 0:
            self._refill()
        return self._buffer

    def next_batch(self) -> torch.Tensor:
        """``batch_size`` shuffled training embeddings (fewer at the very end); EndOfData when done."""
        if self.batch_size is None:  # a store used without a Trainer: the recipe's batch for its length
            self.batch_size = batch_size_for(self.planned_examples(), self.training_texts)
        if len(self._buffer) < max(self.batch_size, self.buffer_capacity // 2):
            self._refill()
        if len(self._buffer) == 0:
            raise EndOfData(self.end_reason or "no training examples left")
        batch, self._buffer = self._buffer[: self.batch_size], self._buffer[self.batch_size :]
        self.examples_served += len(batch)
        return batch

    def __iter__(self) -> Iterator[torch.Tensor]:
        with contextlib.suppress(EndOfData):
            while True:
                yield self.next_batch()

    def close(self) -> None:
        """Stop the background producer (and flush what it wrote)."""
        if self._chunk_iterator is not None:
            self._chunk_iterator.close()

    def _chunks(self) -> Iterator[tuple[tuple[int, int, int], torch.Tensor]]:
        """((pass, chunks of the pass so far, rows taken so far), chunk) up to ``num_examples``, from
        where a resumed store's checkpoint had consumed."""
        limit = self.cfg.num_examples
        (first_pass, skip, taken), start_state = self._resume_from or ((0, 0, 0), None)
        if start_state is not None:
            self._chunk_generator.set_state(start_state)
        self.counter.epochs_completed = first_pass
        for pass_index in _passes(self.cfg, first_pass):
            self._pass_start_states[pass_index] = self._chunk_generator.get_state()
            for position, chunk in self._pass_chunks(pass_index, skip if pass_index == first_pass else 0):
                done = position + 1
                if limit is not None and taken + len(chunk) >= limit:
                    self.end_reason = f"reached num_examples={limit * self.world_size}"
                    yield (pass_index, done, limit), chunk[: limit - taken]
                    return
                taken += len(chunk)
                yield (pass_index, done, taken), chunk
            self.counter.epochs_completed = pass_index + 1
        capped = self.cfg.num_epochs is None and max_passes(self.cfg) != 1  # stopped by max_epochs
        self.end_reason = f"dataset exhausted after {self.counter.epochs_completed} pass(es)" + (
            f" (max_epochs), before num_examples={(limit or 0) * self.world_size}" if capped else "")

    # resume ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What a resumed store needs to serve exactly the examples this one would serve next."""
        pass_index = self._consumed[0]
        return {
            "examples_served": self.examples_served,
            "consumed": self._consumed,
            "pass_start_state": self._pass_start_states.get(pass_index, self._chunk_generator.get_state()),
            "buffer": self._buffer.detach().cpu().clone(),
            "shuffle_state": self._generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._chunk_iterator is not None:
            raise RuntimeError("load_state_dict must come before the first batch is served")
        self.examples_served = int(state["examples_served"])
        self._consumed = tuple(state["consumed"])  # type: ignore[assignment]
        self._resume_from = (self._consumed, state["pass_start_state"])
        self._buffer = state["buffer"].to(self.device)
        self._generator.set_state(state["shuffle_state"])


class ActivationsStoreSBERT(ActivationStoreBase):
    """Streams texts, encodes them with ``model`` and serves shuffled embedding minibatches.

    With ``use_cache`` (the default) embeddings are read from the on-disk cache where present and
    written to it as they are encoded, so a corpus is encoded once; a fully cached dataset is never
    read as text again. Encoding runs in a background thread while the SAE trains.
    """

    def __init__(self, model: Any, cfg: SAEConfig, share: DataShare | None = None, corpus: Corpus | None = None):
        super().__init__(cfg, embedding_dim(model), share)
        self.model = model
        self.source = cfg.dataset_path
        self.corpus = corpus or Corpus(model, cfg, self.device)
        self.texts_read = 0  # texts handed out by get_batch_tokens
        self._text_batches: Iterator[str] | None = None
        self._eval_texts: list[str] | None = None
        rows, self.num_val_examples = counted_split(cfg, self.corpus)
        self.training_start = cfg.num_eval_examples + self.num_val_examples
        self.training_texts = None if rows is None else max(rows - self.training_start, 0)
        self.corpus.show_progress(self.training_start + self.buffer_capacity)  # until the first step
        self._eval_embeddings = self.corpus.embeddings(0, cfg.num_eval_examples)
        self._val_embeddings = self.corpus.embeddings(cfg.num_eval_examples, self.training_start)
        check_training_rows(self.corpus, cfg, self.num_val_examples)

    # ------------------------------------------------------------------ texts
    @property
    def eval_texts(self) -> list[str]:
        """The held-out texts (the first ``num_eval_examples`` of the dataset)."""
        if self._eval_texts is None:
            self._eval_texts = list(itertools.islice(self.corpus.texts_from(0), self.cfg.num_eval_examples))
        return self._eval_texts

    def get_batch_tokens(self) -> list[str]:
        """The next ``model_batch_size`` training texts, in dataset order, over the configured passes
        and up to ``num_examples`` (fewer at the end); EndOfData when none are left."""
        if self._text_batches is None:
            self._text_batches = itertools.chain.from_iterable(
                self.corpus.texts_from(self.training_start) for _ in _passes(self.cfg)
            )
        room = self.cfg.model_batch_size
        if self.cfg.num_examples is not None:
            room = min(room, self.cfg.num_examples - self.texts_read)
        texts = list(itertools.islice(self._text_batches, max(room, 0)))
        self.texts_read += len(texts)
        if not texts:
            limit = self.cfg.num_examples
            raise EndOfData(f"reached num_examples={limit}" if limit is not None and self.texts_read >= limit
                            else "dataset exhausted")
        return texts

    # ------------------------------------------------------------------ embeddings
    def get_activations(self, texts: list[str]) -> torch.Tensor:
        """Embeddings of ``texts`` on the store's device, float32, shape (len(texts), d)."""
        return self.corpus.encode(texts)

    def held_out_embeddings(self) -> torch.Tensor:
        """Embeddings of the held-out texts."""
        return self._eval_embeddings

    def validation_embeddings(self) -> torch.Tensor:
        """Embeddings of the validation texts (set aside from the training texts)."""
        return self._val_embeddings

    def _pass_chunks(self, pass_index: int, skip: int) -> Iterator[tuple[int, torch.Tensor]]:
        # The first pass reads in dataset order whatever is cached, so that a run's example order
        # does not depend on how much of the cache an earlier run left; later passes read the
        # (then complete) cache in a new random chunk order each time.
        generator = self._chunk_generator if pass_index > 0 else None
        # A corpus that reads only this process's split of the dataset needs no further sharing.
        keep = self._keep() if self.corpus.split is None else None
        yield from self.corpus.embedding_chunks(self.training_start, None, self.shuffle_block, generator, skip, keep)
        self.counter.skipped_empty = self.corpus.skipped_texts or self.counter.skipped_empty

    @property
    def dataset_fingerprint(self) -> str | None:
        return self.corpus.dataset_source.fingerprint

    def initial_sample(self) -> torch.Tensor:
        sample = super().initial_sample()
        self.corpus.stop_progress()  # training starts: its own bar shows progress from here
        return sample

    def close(self) -> None:
        super().close()
        self.corpus.stop_progress()
        self.corpus.close()

    # ------------------------------------------------------------------ planning
    def count_training_texts(self) -> int | None:
        """Training texts per pass, counted without encoding; None for hub streams of unknown size."""
        rows = self.corpus.count()
        return None if rows is None else max(rows - self.training_start, 0)

    def planned_examples(self) -> int | None:
        if self.cfg.num_epochs is None and self.cfg.num_examples is not None:
            # the data repeats until the limit, or max_epochs: count only as far as that decides
            rows = self.corpus.count(limit=self.training_start + math.ceil(self.cfg.num_examples / self.cfg.max_epochs))
            return _planned(None if rows is None else max(rows - self.training_start, 0), self.cfg)
        return _planned(self.count_training_texts(), self.cfg)


class EmbeddingStore(ActivationStoreBase):
    """Serves precomputed embeddings (a tensor, array or memory-mapped array of shape (N, d)).

    Unless ``held_out`` is given, the first ``num_eval_examples`` rows are the held-out set; the
    validation set follows.
    Rows are read one chunk at a time, chunks in a new random order each pass, so a memory-mapped
    array is never loaded whole.
    """

    def __init__(self, embeddings: Any, cfg: SAEConfig, held_out: Any = None):
        if getattr(embeddings, "ndim", 0) != 2:
            raise DataError(f"embeddings must be a 2-D array (examples, dimensions), got shape "
                            f"{tuple(getattr(embeddings, 'shape', ()))}")
        super().__init__(cfg, int(embeddings.shape[1]))
        start = 0 if held_out is not None else min(cfg.num_eval_examples, len(embeddings))
        self.num_val_examples = validation_size(cfg, len(embeddings) - start)
        self.embeddings = embeddings
        self.train_start = start + self.num_val_examples
        self.n_train = self.training_texts = len(embeddings) - self.train_start
        if self.n_train <= 0:
            raise DataError(f"all {len(embeddings)} embeddings are held out (num_eval_examples="
                            f"{cfg.num_eval_examples}, num_val_examples={self.num_val_examples}); lower them")
        self._held_out = _finite(_as_tensor(held_out if held_out is not None else embeddings[:start]),
                                 0, "held-out embedding").to(self.device)
        self._validation = _finite(_as_tensor(embeddings[start : self.train_start]), start).to(self.device)

    def held_out_embeddings(self) -> torch.Tensor:
        return self._held_out

    def validation_embeddings(self) -> torch.Tensor:
        return self._validation

    def planned_examples(self) -> int | None:
        return _planned(self.n_train, self.cfg)

    def _pass_chunks(self, pass_index: int, skip: int) -> Iterator[tuple[int, torch.Tensor]]:
        size = self.shuffle_block
        starts = np.arange(self.train_start, len(self.embeddings), size)
        order = torch.randperm(len(starts), generator=self._chunk_generator).tolist()
        keep = self._keep()
        for position in range(skip, len(order)):
            if keep is None or keep(position):
                start = int(starts[order[position]])
                yield position, _finite(_as_tensor(self.embeddings[start : min(start + size, len(self.embeddings))]), start)


def _passes(cfg: SAEConfig, first: int = 0) -> Iterator[int]:
    """first, first + 1, ... for as many passes over the data as the config allows."""
    return itertools.takewhile(lambda index: index < max_passes(cfg), itertools.count(first))


def _finite(rows: torch.Tensor, first_row: int, what: str = "embedding") -> torch.Tensor:
    """``rows`` (rows first_row, first_row + 1, ... of the array), or a DataError naming the first
    row that holds a NaN or infinity."""
    offset = first_non_finite(rows)
    if offset is not None:
        raise DataError(f"{what} row {first_row + offset} is not finite (NaN or inf); remove or fix it")
    return rows


def _as_tensor(array: Any) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        return array.float()
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _planned(per_pass: int | None, cfg: SAEConfig) -> int | None:
    if per_pass is None:
        return cfg.num_examples
    total = math.floor(per_pass * max_passes(cfg))
    return int(total) if cfg.num_examples is None else min(int(total), cfg.num_examples)
