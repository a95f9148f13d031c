"""One entry point for one process or many: ``torchrun`` sets RANK, WORLD_SIZE and LOCAL_RANK, and
:func:`distributed_session` joins the process group (NCCL on CUDA, gloo on CPU); without them the run is a
single process with no process group.

    with distributed_session() as context:
        network = wrap_ddp(network.to(context.device), context)
        if context.is_main:
            ...                                   # write checkpoints, logs, progress bars
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: ``rank`` of ``world_size`` processes, ``local_rank`` on its node, its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files, logs at INFO and shows progress."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer (torchrun sets it)") from None


def init_distributed(device: str | torch.device | None = None) -> DistributedContext:
    """Join the process group torchrun describes (env:// rendezvous), or describe a single process.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or None (CUDA when available). Under torchrun each CUDA
            process takes ``cuda:LOCAL_RANK`` and the NCCL backend, CPU processes the gloo backend; a single
            process keeps the index it was given.
    """
    world_size, rank, local_rank = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    kind = torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but CUDA is not available; use --device cpu")
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s) on this node; "
                             "lower --nproc-per-node")
        asked = torch.device(device) if device is not None else torch.device("cuda")
        index = local_rank if world_size > 1 or asked.index is None else asked.index
        torch.cuda.set_device(index)
        placed = torch.device("cuda", index)
    else:
        placed = torch.device(kind)
    context = DistributedContext(rank, world_size, local_rank, placed)
    if context.is_distributed and not dist.is_initialized():
        backend = "nccl" if kind == "cuda" else "gloo"
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size)
        log.info("rank %d of %d joined the %s process group on %s", rank, world_size, backend, placed)
    configure_logging(context)
    return context


#: The handler :func:`configure_logging` puts on the ``medssl_train`` logger (one, however often it is called).
_RANK_HANDLER = logging.StreamHandler()


def configure_logging(context: DistributedContext) -> None:
    """The ``medssl_train`` loggers: INFO on rank 0, WARNING elsewhere; every line names its rank when
    distributed. The root logger (and so other libraries' and pytest's handlers) is left alone."""
    prefix = f"[rank {context.rank}] " if context.is_distributed else ""
    _RANK_HANDLER.setFormatter(logging.Formatter(f"{prefix}%(levelname)s %(name)s: %(message)s"))
    package = logging.getLogger("medssl_train")
    package.setLevel(logging.INFO if context.is_main else logging.WARNING)
    if _RANK_HANDLER not in package.handlers:
        package.addHandler(_RANK_HANDLER)


def teardown(context: DistributedContext) -> None:
    """Leave the process group (a no-op for a single process)."""
    if context.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def distributed_session(device: str | torch.device | None = None) -> Iterator[DistributedContext]:
    """:func:`init_distributed`, then :func:`teardown` however the block ends."""
    context = init_distributed(device)
    try:
        yield context
    finally:
        teardown(context)


def wrap_ddp(module: nn.Module, context: DistributedContext, find_unused_parameters: bool = True) -> nn.Module:
    """``module`` in DistributedDataParallel when distributed, else as it is. ``find_unused_parameters`` (default
    on) lets a step leave parameters out: their gradients stay None on every rank, so the optimiser skips them
    (UniMiSS's 2D steps do not touch the 3D branch)."""
    if not context.is_distributed:
        return module
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or ``module`` itself)."""
    return module.module if isinstance(module, DistributedDataParallel) else module


def barrier(context: DistributedContext) -> None:
    """Wait for every rank (a no-op for a single process)."""
    if context.is_distributed:
        dist.barrier()


def mean_over_ranks(value: float, context: DistributedContext) -> float:
    """The mean of a number over all ranks (for logging)."""
    if not context.is_distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=context.device)
    dist.all_reduce(tensor)
    return tensor.item() / context.world_size
