"""Activation stores: shuffled minibatches of embeddings for training.

A store holds a buffer of about ``model_batch_size x num_batches_in_buffer`` embeddings in random
order and serves ``batch_size`` at a time. When the buffer falls below half, the next chunk of
embeddings is appended and the whole buffer reshuffled, so examples mix across chunks and each
training example is served exactly once per pass. The held-out set is taken from the start of
the data before any training example.

- :class:`ActivationsStoreSBERT` encodes texts streamed from a dataset with a Sentence-BERT model.
- :class:`EmbeddingStore` serves embeddings you already have (an array or memory-mapped file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from .config import SAEConfig, max_passes
from .data import BUILTIN_CORPORA, TextCounter, iter_dataset_texts, open_dataset
from .embeddings import embedding_dim, encode_texts
from .errors import DataError


class EndOfData(Exception):
    """Raised by ``next_batch`` when the example limit or the last epoch is reached."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ActivationStoreBase:
    """The shuffle buffer. Subclasses provide ``_chunks`` (embeddings in data order), the held-out
    embeddings and, when known, the planned number of training examples."""

    def __init__(self, cfg: SAEConfig, d_in: int):
        self.cfg = cfg
        self.d_in = d_in
        self.device = torch.device(cfg.device or "cpu")
        self.examples_served = 0
        self.end_reason: str | None = None
        self.counter = TextCounter()
        self._generator = torch.Generator().manual_seed(cfg.seed)
        self._buffer = torch.empty(0, d_in, device=self.device)
        self._chunk_iterator: Iterator[torch.Tensor] | None = None

    # subclasses -----------------------------------------------------------------
    def _chunks(self) -> Iterator[torch.Tensor]:
        raise NotImplementedError

    def held_out_embeddings(self) -> torch.Tensor:
        raise NotImplementedError

    def planned_examples(self) -> int | None:
        """Training examples this store will serve in all, when that can be known in advance."""
        return self.cfg.num_examples

    # buffer ---------------------------------------------------------------------
    @property
    def buffer_capacity(self) -> int:
        return self.cfg.model_batch_size * self.cfg.num_batches_in_buffer

    @property
    def chunk_size(self) -> int:
        """Embeddings added per refill: half a buffer."""
        return max(1, self.buffer_capacity // 2)

    def _refill(self) -> None:
        if self._chunk_iterator is None:
            self._chunk_iterator = self._chunks()
        chunks = [self._buffer]
        filled = len(self._buffer)
        for chunk in self._chunk_iterator:
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
        if len(self._buffer) < max(self.cfg.batch_size, self.buffer_capacity // 2):
            self._refill()
        if len(self._buffer) == 0:
            raise EndOfData(self.end_reason or "no training examples left")
        batch, self._buffer = self._buffer[: self.cfg.batch_size], self._buffer[self.cfg.batch_size :]
        self.examples_served += len(batch)
        return batch

    def __iter__(self) -> Iterator[torch.Tensor]:
        while True:
            try:
                yield self.next_batch()
            except EndOfData:
                return

    def _exhausted_reason(self, passes: int) -> str:
        return f"dataset exhausted after {passes} pass(es)"


class ActivationsStoreSBERT(ActivationStoreBase):
    """Streams texts, encodes them with ``model`` and serves shuffled embedding minibatches."""

    def __init__(self, model: Any, cfg: SAEConfig):
        super().__init__(cfg, embedding_dim(model))
        self.model = model
        self.source = cfg.dataset_path
        self.dataset = open_dataset(cfg.dataset_path, cfg.dataset_name, cfg.split)
        self.eval_texts: list[str] = []
        self.texts_read = 0  # training texts taken from the stream
        self._texts = self._training_texts()
        self._pending_text: str | None = self._pull_text()  # also collects the held-out texts
        self._eval_embeddings: torch.Tensor | None = None

    # texts ----------------------------------------------------------------------
    def _training_texts(self) -> Iterator[str]:
        n_eval = self.cfg.num_eval_examples
        epoch = 0
        while epoch < max_passes(self.cfg):
            seen = 0
            for index, text in enumerate(
                iter_dataset_texts(self.dataset, self.cfg.text_column, self.source, self.counter)
            ):
                if index < n_eval:
                    if epoch == 0:
                        self.eval_texts.append(text)
                    continue
                seen += 1
                yield text
            if epoch == 0 and seen == 0:
                self._raise_too_small()
            self.counter.epochs_completed += 1
            epoch += 1

    def _raise_too_small(self) -> None:
        total = len(self.eval_texts)
        skipped = self.counter.skipped_empty
        empty_note = f" ({skipped} empty rows skipped)" if skipped else ""
        if total == 0:
            raise DataError(f"dataset {self.source} holds no texts{empty_note}; give a dataset with texts "
                            f"in column '{self.cfg.text_column}'")
        raise DataError(
            f"dataset {self.source} has only {total} texts{empty_note}, all taken by the held-out set "
            f"(num_eval_examples={self.cfg.num_eval_examples}); lower num_eval_examples"
        )

    def _pull_text(self) -> str | None:
        try:
            return next(self._texts)
        except StopIteration:
            return None

    def get_batch_tokens(self) -> list[str]:
        """The next ``model_batch_size`` training texts (fewer at the end); EndOfData when none are left."""
        limit = self.cfg.num_examples
        texts: list[str] = []
        while len(texts) < self.cfg.model_batch_size:
            if limit is not None and self.texts_read >= limit:
                self.end_reason = f"reached num_examples={limit}"
                break
            if self._pending_text is None:
                self.end_reason = self._exhausted_reason(self.counter.epochs_completed)
                break
            texts.append(self._pending_text)
            self.texts_read += 1
            self._pending_text = self._pull_text()
        if not texts:
            raise EndOfData(self.end_reason or "no training texts left")
        return texts

    # embeddings -----------------------------------------------------------------
    def get_activations(self, texts: list[str]) -> torch.Tensor:
        """Embeddings of ``texts`` on the store's device, float32, shape (len(texts), d)."""
        return encode_texts(self.model, texts, self.cfg.model_batch_size).to(self.device)

    def held_out_embeddings(self) -> torch.Tensor:
        """Embeddings of the held-out texts (encoded once, on first use)."""
        if self._eval_embeddings is None:
            self._eval_embeddings = self.get_activations(self.eval_texts)
        return self._eval_embeddings

    def _chunks(self) -> Iterator[torch.Tensor]:
        # One model call per chunk: sentence-transformers sorts the texts of a call by length, so
        # larger calls waste less time on padding than one call per model batch.
        while True:
            texts: list[str] = []
            while len(texts) < self.chunk_size:
                try:
                    texts.extend(self.get_batch_tokens())
                except EndOfData:
                    break
            if not texts:
                return
            yield self.get_activations(texts)

    # planning -------------------------------------------------------------------
    def count_training_texts(self) -> int | None:
        """Training texts per pass, counted without encoding; None for hub streams of unknown size."""
        path = self.cfg.dataset_path
        if path not in BUILTIN_CORPORA and not Path(path).expanduser().exists():
            return None
        total = sum(1 for _ in iter_dataset_texts(self.dataset, self.cfg.text_column, self.source, TextCounter()))
        return max(total - self.cfg.num_eval_examples, 0)

    def planned_examples(self) -> int | None:
        return _planned(self.count_training_texts(), self.cfg)


class EmbeddingStore(ActivationStoreBase):
    """Serves precomputed embeddings (a tensor, array or memory-mapped array of shape (N, d)).

    Unless ``held_out`` is given, the first ``num_eval_examples`` rows are the held-out set.
    Rows are read one chunk at a time, chunks in a new random order each pass, so a memory-mapped
    array is never loaded whole.
    """

    def __init__(self, embeddings: Any, cfg: SAEConfig, held_out: Any = None):
        if getattr(embeddings, "ndim", 0) != 2:
            raise DataError(f"embeddings must be a 2-D array (examples, dimensions), got shape "
                            f"{tuple(getattr(embeddings, 'shape', ()))}")
        super().__init__(cfg, int(embeddings.shape[1]))
        start = 0 if held_out is not None else min(cfg.num_eval_examples, len(embeddings))
        self.embeddings = embeddings
        self.train_start = start
        self.n_train = len(embeddings) - start
        if self.n_train <= 0:
            raise DataError(f"all {len(embeddings)} embeddings are held out (num_eval_examples="
                            f"{cfg.num_eval_examples}); lower num_eval_examples")
        self._held_out = _as_tensor(held_out if held_out is not None else embeddings[:start]).to(self.device)

    def held_out_embeddings(self) -> torch.Tensor:
        return self._held_out

    def planned_examples(self) -> int | None:
        return _planned(self.n_train, self.cfg)

    def _chunks(self) -> Iterator[torch.Tensor]:
        limit = self.cfg.num_examples
        served = 0
        size = self.chunk_size
        starts = np.arange(self.train_start, len(self.embeddings), size)
        while self.counter.epochs_completed < max_passes(self.cfg):
            order = torch.randperm(len(starts), generator=self._generator).numpy()
            for start in starts[order]:
                stop = min(int(start) + size, len(self.embeddings))
                if limit is not None:
                    stop = min(stop, int(start) + limit - served)
                if stop <= start:
                    self.end_reason = f"reached num_examples={limit}"
                    return
                served += stop - int(start)
                yield _as_tensor(self.embeddings[int(start) : stop])
            self.counter.epochs_completed += 1
        self.end_reason = self._exhausted_reason(self.counter.epochs_completed)


def _as_tensor(array: Any) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        return array.float()
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _planned(per_pass: int | None, cfg: SAEConfig) -> int | None:
    if per_pass is None or cfg.num_epochs is None and cfg.num_examples is not None:
        return cfg.num_examples
    total = per_pass * max_passes(cfg)
    return int(total) if cfg.num_examples is None else min(int(total), cfg.num_examples)
