"""Endless, resumable batches of augmented view pairs for one domain (2D or 3D), split over ranks.

A data set's item is a pair of views ``(view_1, view_2)``, each ``(C, *crop)`` (what ``augment.SSLViews``
returns). :class:`ViewStream` walks the data set epoch after epoch in the order of a ``DistributedSampler``
(shuffled per epoch from ``seed``, each rank its own share), drops each rank's last incomplete batch, and gives
``(2B, C, *crop)``: the B first views, then the B second views.

Resuming needs no stored random state: the position is (epoch, batch), and every item is drawn with the
global RNGs (torch, numpy, random, and the transform's own if it has ``set_random_state``, as
``augment.SSLViews`` does) seeded from (seed, domain, epoch, index), so an item is the same whichever worker
loads it, and whether the run was interrupted or not. A data set with ``set_epoch`` (``medssl_train.datasets``)
is told the epoch before it is read, so one built with its own ``seed`` uses its per-item seeds instead.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from medssl_train.distributed import DistributedContext


@contextmanager
def seeded_rngs(*key: int) -> Iterator[int]:
    """Seed torch (CPU), numpy and random from ``key`` inside the block and restore their states after it.
    Yields the 32-bit seed."""
    seed = int(np.random.SeedSequence(list(key)).generate_state(1)[0])
    numpy_state, python_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        try:
            yield seed
        finally:
            np.random.set_state(numpy_state)
            random.setstate(python_state)


class _SeededItems(Dataset):
    """``dataset[index]`` drawn under :func:`seeded_rngs` ``(seed, domain, epoch, index)``; indexed by (epoch, index)."""

    def __init__(self, dataset: Dataset, seed: int, domain: int) -> None:
        self.dataset, self.seed, self.domain = dataset, seed, domain

    def __getitem__(self, key: tuple[int, int]) -> object:
        epoch, index = key
        with seeded_rngs(self.seed, self.domain, epoch, index) as seed:
            transform = getattr(self.dataset, "transform", None)
            if hasattr(transform, "set_random_state"):
                transform.set_random_state(seed=seed)
            return self.dataset[index]


class _EpochBatches(Sampler[list[tuple[int, int]]]):
    """This rank's full batches of one epoch, from batch ``start`` on, as lists of (epoch, index)."""

    def __init__(self, order: list[int], epoch: int, batch_size: int, start: int) -> None:
        self.order, self.epoch, self.batch_size, self.start = order, epoch, batch_size, start

    def __len__(self) -> int:
        return len(self.order) // self.batch_size - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in range(self.start, len(self.order) // self.batch_size):
            yield [(self.epoch, i) for i in self.order[batch * self.batch_size:(batch + 1) * self.batch_size]]


def batches_per_epoch(size: int, batch_size: int, world_size: int) -> int:
    """Full batches each rank takes from a data set of ``size`` items in one epoch (DistributedSampler pads the
    items to a multiple of the world size; each rank's last incomplete batch is dropped)."""
    return -(-size // world_size) // batch_size


class ViewStream:
    """Batches of view pairs from ``dataset`` for this rank, forever; :meth:`state_dict` marks the position.

    Args:
        dataset: items ``(view_1, view_2)``, each a ``(C, *crop)`` float tensor.
        batch_size: images per rank per step (B).
        context: this process's rank and world size.
        seed: shuffling and augmentation seed (the same on every rank).
        domain: 2 or 3 (keeps the two domains' random streams apart).
        num_workers: DataLoader worker processes.
        name: for messages ("2D images", "3D volumes").
    """

    def __init__(self, dataset: Dataset, batch_size: int, context: DistributedContext, seed: int, domain: int,
                 num_workers: int = 0, name: str = "data set") -> None:
        size = len(dataset)  # type: ignore[arg-type]
        if batches_per_epoch(size, batch_size, context.world_size) < 1:
            raise ValueError(f"the {name} ({size} items) give {-(-size // context.world_size)} per rank over "
                             f"{context.world_size} rank(s), fewer than the batch size {batch_size}; add data or lower "
                             "the batch size")
        self.sampler = DistributedSampler(range(size), context.world_size, context.rank, shuffle=True, seed=seed)
        self.items = _SeededItems(dataset, seed, domain)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.epoch, self.batch = 0, 0
        self._batches: Iterator[object] | None = None

    @property
    def batches_per_epoch(self) -> int:
        return batches_per_epoch(len(self.sampler.dataset), self.batch_size, self.sampler.num_replicas)  # type: ignore[arg-type]

    def _open_epoch(self) -> Iterator[object]:
        self.sampler.set_epoch(self.epoch)
        if hasattr(self.items.dataset, "set_epoch"):  # medssl_train.datasets: per-item seeds of this epoch
            self.items.dataset.set_epoch(self.epoch)
        batches = _EpochBatches(list(self.sampler), self.epoch, self.batch_size, self.batch)
        return iter(DataLoader(self.items, batch_sampler=batches, num_workers=self.num_workers))

    def next_batch(self) -> torch.Tensor:
        """The next (2B, C, *crop) batch: the B first views, then the B second views."""
        if self.batch >= self.batches_per_epoch:
            self.epoch, self.batch, self._batches = self.epoch + 1, 0, None
        if self._batches is None:
            self._batches = self._open_epoch()
        views = next(self._batches)
        self.batch += 1
        if not (isinstance(views, (list, tuple)) and len(views) == 2):
            raise ValueError("a UniMiSS data set item must be a pair of views (view_1, view_2); "
                             "give the data set an augment.SSLViews transform")
        return torch.cat(tuple(views), dim=0)

    def state_dict(self) -> dict[str, int]:
        """The position: epoch and batches taken in it."""
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a position :meth:`state_dict` gave."""
        self.epoch, self.batch, self._batches = int(state["epoch"]), int(state["batch"]), None
