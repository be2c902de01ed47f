"""The activation store: texts in, shuffled minibatches of embeddings out.

Texts stream from the dataset; the first ``num_eval_examples`` are set aside as the held-out set
before any training text is read. Training texts are encoded ``model_batch_size`` at a time into a
buffer of ``num_batches_in_buffer`` model batches; minibatches of ``batch_size`` are drawn from the
shuffled buffer, which is topped up (and reshuffled with what remains) whenever it falls below half.
Each training example is served exactly once per pass.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch

from .config import SAEConfig
from .data import TextCounter, iter_dataset_texts, open_dataset
from .embeddings import embedding_dim, encode_texts
from .errors import DataError


class EndOfData(Exception):
    """Raised by ``next_batch`` when the example limit or the last epoch is reached."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ActivationsStoreSBERT:
    """Streams texts, encodes them with ``model`` and serves shuffled embedding minibatches."""

    def __init__(self, model: Any, cfg: SAEConfig):
        self.model = model
        self.cfg = cfg
        self.device = torch.device(cfg.device or "cpu")
        self.d_in = embedding_dim(model)
        self.counter = TextCounter()
        self.source = cfg.dataset_path
        self.dataset = open_dataset(cfg.dataset_path, cfg.dataset_name, cfg.split)
        self.eval_texts: list[str] = []
        self.texts_read = 0  # training texts taken from the stream
        self.examples_served = 0  # training embeddings handed out by next_batch
        self.end_reason: str | None = None
        self._generator = torch.Generator().manual_seed(cfg.seed)
        self._buffer = torch.empty(0, self.d_in, device=self.device)
        self._texts = self._training_texts()
        self._pending_text: str | None = self._pull_text()  # also collects the held-out texts
        self._batches = self._encoded_batches()
        self._eval_embeddings: torch.Tensor | None = None

    # ------------------------------------------------------------------ texts
    def _training_texts(self) -> Iterator[str]:
        n_eval = self.cfg.num_eval_examples
        for epoch in range(self.cfg.num_epochs):
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
                self.end_reason = (
                    f"dataset exhausted after {self.counter.epochs_completed} pass(es) "
                    f"(num_epochs={self.cfg.num_epochs})"
                )
                break
            texts.append(self._pending_text)
            self.texts_read += 1
            self._pending_text = self._pull_text()
        if not texts:
            raise EndOfData(self.end_reason or "no training texts left")
        return texts

    # ------------------------------------------------------------------ embeddings
    def get_activations(self, texts: list[str]) -> torch.Tensor:
        """Embeddings of ``texts`` on the store's device, float32, shape (len(texts), d)."""
        return encode_texts(self.model, texts, self.cfg.model_batch_size).to(self.device)

    def held_out_embeddings(self) -> torch.Tensor:
        """Embeddings of the held-out texts (encoded once, on first use)."""
        if self._eval_embeddings is None:
            self._eval_embeddings = self.get_activations(self.eval_texts)
        return self._eval_embeddings

    def _encoded_batches(self) -> Iterator[torch.Tensor]:
        # Half a buffer per model call: sentence-transformers sorts the texts of one call by
        # length, so larger calls waste less time on padding than one call per model batch.
        model_batches_per_call = max(1, self.cfg.num_batches_in_buffer // 2)
        while True:
            texts: list[str] = []
            for _ in range(model_batches_per_call):
                try:
                    texts.extend(self.get_batch_tokens())
                except EndOfData:
                    break
            if not texts:
                return
            yield self.get_activations(texts)

    # ------------------------------------------------------------------ buffer
    @property
    def buffer_capacity(self) -> int:
        return self.cfg.model_batch_size * self.cfg.num_batches_in_buffer

    def _refill(self) -> None:
        chunks = [self._buffer]
        filled = len(self._buffer)
        for chunk in self._batches:
            chunks.append(chunk)
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
            raise EndOfData(self.end_reason or "no training texts left")
        batch, self._buffer = self._buffer[: self.cfg.batch_size], self._buffer[self.cfg.batch_size :]
        self.examples_served += len(batch)
        return batch

    def __iter__(self) -> Iterator[torch.Tensor]:
        while True:
            try:
                yield self.next_batch()
            except EndOfData:
                return

    # ------------------------------------------------------------------ planning
    def count_training_texts(self) -> int | None:
        """Training texts per pass, counted without encoding; None for hub streams of unknown size."""
        from pathlib import Path

        from .data import BUILTIN_CORPORA

        if self.cfg.dataset_path not in BUILTIN_CORPORA and not Path(self.cfg.dataset_path).expanduser().exists():
            return None
        counter = TextCounter()
        total = sum(1 for _ in iter_dataset_texts(self.dataset, self.cfg.text_column, self.source, counter))
        return max(total - self.cfg.num_eval_examples, 0)

    def planned_examples(self) -> int | None:
        """Training examples this store will serve in all, when it can be known in advance."""
        per_pass = self.count_training_texts()
        limit = self.cfg.num_examples
        if per_pass is None:
            return limit
        total = per_pass * self.cfg.num_epochs
        return total if limit is None else min(total, limit)
