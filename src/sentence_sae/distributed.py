"""Data-parallel training under torchrun.

`torchrun --nproc_per_node N -m sentence_sae train ...` starts N processes; each trains the same SAE
on its own share of the data and gradients are averaged after every backward pass (gloo on CPU, nccl
on GPU). Dead-feature counts and the BatchTopK threshold are combined across processes, every
process stops at the same step, and only rank 0 evaluates, logs and saves. The trainer owns these
collective operations (:class:`DataParallel`, or :class:`SingleProcess` whose operations do nothing);
the SAE never sees them.

``batch_size`` and ``num_examples`` keep their meaning for the whole run: each of N processes takes
batch_size / N examples per step and num_examples / N in all, so a run on N processes follows the
same schedule as on one.

Data: when the embedding cache of the dataset is complete (run `sentence-sae embed` first), each
process reads every N-th chunk of it. Otherwise each process streams and encodes its own split of the
dataset (`datasets.distributed.split_dataset_by_node`) without writing the cache; the held-out set is
then the first texts of rank 0's split.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .activation_store import ActivationsStoreSBERT, DataShare
from .config import SAEConfig
from .corpus import Corpus, counted_split
from .data import DatasetSource
from .errors import ConfigError
from .files import new_run_dir


class SingleProcess:
    """The collective operations of a run of one process: each is the identity."""

    world_size = 1

    def all_reduce_gradients(self, module: torch.nn.Module) -> None:
        pass

    def summed(self, counts: torch.Tensor) -> torch.Tensor:
        return counts

    def total(self, value: int) -> int:
        return value

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        return value

    def all_true(self, flag: bool) -> bool:
        return flag

    def broadcast(self, module: torch.nn.Module) -> None:
        pass

    def gather(self, value: Any) -> list[Any]:
        return [value]


@dataclass
class DataParallel(SingleProcess):
    """The collective operations the trainer needs when several processes train one SAE."""

    world_size: int

    def all_reduce_gradients(self, module: torch.nn.Module) -> None:
        for param in module.parameters():
            if param.grad is not None:
                dist.all_reduce(param.grad)
                param.grad /= self.world_size

    def summed(self, counts: torch.Tensor) -> torch.Tensor:
        counts = counts.clone()
        dist.all_reduce(counts)
        return counts

    def total(self, value: int) -> int:
        tensor = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(tensor)
        return int(tensor.item())

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        value = value.detach().clone()
        dist.all_reduce(value)
        return value / self.world_size

    def all_true(self, flag: bool) -> bool:
        tensor = torch.tensor([1 if flag else 0], dtype=torch.int32)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return bool(tensor.item())

    def broadcast(self, module: torch.nn.Module) -> None:
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)

    def gather(self, value: Any) -> list[Any]:
        """Every process's ``value``, in rank order."""
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values


class DistributedContext:
    """One process's place in a (possibly single-process) run."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0):
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank
        self._initialized_here = False

    @classmethod
    def from_environment(cls) -> "DistributedContext":
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        return cls(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def __enter__(self) -> "DistributedContext":
        if self.distributed and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(self.local_rank)
            dist.init_process_group(backend=backend)
            self._initialized_here = True
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        if self._initialized_here and dist.is_initialized():
            if exc_type is None:
                dist.barrier()  # rank 0 may still be evaluating and saving; leave together
            dist.destroy_process_group()

    def configure(self, cfg: SAEConfig) -> SAEConfig:
        """This process's config: its device (one GPU per process when there are GPUs)."""
        if not self.distributed:
            return cfg
        if cfg.batch_size is not None and cfg.batch_size % self.world_size:
            raise ConfigError(f"batch_size ({cfg.batch_size}) must be divisible by the number of processes "
                              f"({self.world_size})")
        if torch.cuda.is_available() and (cfg.device is None or str(cfg.device).startswith("cuda")):
            return cfg.replace(device=f"cuda:{self.local_rank}")
        return cfg.replace(device="cpu")

    def store_config(self, cfg: SAEConfig) -> SAEConfig:
        """The store's share: batch_size / N per step and num_examples / N in all."""
        if not self.distributed:
            return cfg
        return cfg.replace(batch_size=None if cfg.batch_size is None else cfg.batch_size // self.world_size,
                           num_examples=None if cfg.num_examples is None else cfg.num_examples // self.world_size)

    def make_store(self, model: Any, cfg: SAEConfig) -> ActivationsStoreSBERT:
        """This process's store: every N-th chunk of a complete cache, else its split of the dataset."""
        store_cfg = self.store_config(cfg)
        if not self.distributed:
            return ActivationsStoreSBERT(model, store_cfg)
        share = DataShare(self.rank, self.world_size)
        source = DatasetSource.from_config(store_cfg)
        corpus = Corpus.from_complete_cache(model, store_cfg, store_cfg.device or "cpu", source)
        if corpus is None:  # each process encodes its own split, and none writes the cache
            store_cfg = store_cfg.replace(use_cache=False)
            if store_cfg.num_val_examples is None:  # each sets the same share of its split aside for validation
                _, validation = counted_split(store_cfg, Corpus(model, store_cfg, source=source))
                store_cfg = store_cfg.replace(num_val_examples=validation // self.world_size)
            corpus = Corpus(model, store_cfg, store_cfg.device or "cpu", split=share, source=source)
        return ActivationsStoreSBERT(model, store_cfg, share=share, corpus=corpus)

    @property
    def collectives(self) -> SingleProcess:
        """The collective operations of this run, for its trainer."""
        return DataParallel(self.world_size) if self.distributed else SingleProcess()

    def run_dir(self, cfg: SAEConfig) -> Path | None:
        """A new run folder, made by rank 0 (the others never write)."""
        return new_run_dir(cfg.output_dir, cfg.name) if self.is_main else None
