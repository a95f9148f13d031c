"""The runtime interface and what every runtime shares."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch

from medssl_zoo import ExportError
from medssl_zoo.weights import sha256_of

if TYPE_CHECKING:
    from medssl_sdk.export import ExportManifest

#: The runtimes ``load(..., backend=...)`` accepts.
BACKENDS = ("torch", "onnxruntime", "tensorrt")


class Runtime(Protocol):
    """Runs a network on prepared batches.

    Attributes:
        backend: one of :data:`BACKENDS`.
        device: where batches are given and outputs come back.
    """

    backend: str
    device: torch.device

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """``(N, C, *patch)`` -> the task output, float32, on :attr:`device`."""
        ...

    def embed(self, batch: torch.Tensor) -> torch.Tensor:
        """``(N, C, *patch)`` -> embeddings ``(N, D)``, float32 (raises where the runtime has no embedding output)."""
        ...


def run_in_chunks(batch: torch.Tensor, max_batch: int, run: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``run`` on at most ``max_batch`` samples at a time (an engine's profile limit), outputs concatenated."""
    if batch.shape[0] <= max_batch:
        return run(batch)
    return torch.cat([run(chunk) for chunk in batch.split(max_batch)])


def check_export_file(file: Path, sha256: str) -> None:
    """Raise :class:`ExportError` unless ``file`` (a graph or engine of an export folder) exists and hashes to the
    ``sha256`` its ``config.json`` records."""
    if not file.is_file():
        raise ExportError(f"{file}: missing; the export folder is incomplete (re-export the model)")
    actual = sha256_of(file)
    if actual != sha256:
        raise ExportError(f"{file}: sha256 {actual} differs from the export's config.json ({sha256}); the file was changed")


class ExportedRuntime:
    """What runtimes of an export folder share: the manifest, the branch of a batch, and embed().

    Subclasses set ``backend``, ``device``, ``directory`` (the export folder) and ``manifest`` (its config) and
    implement ``__call__``.
    """

    backend: str
    device: torch.device
    directory: Path
    manifest: ExportManifest

    def branch_of(self, batch: torch.Tensor, available: Iterable[str]) -> str:
        """``"2d"`` or ``"3d"`` for a ``(N, C, *patch)`` batch, checked against the graph's input shape."""
        branch = f"{batch.ndim - 2}d"
        if branch not in available:
            raise ExportError(f"this export runs {', '.join(available)} input; got a batch of shape {tuple(batch.shape)}")
        expected = self.manifest.graphs[branch].signature.input_shape
        if tuple(batch.shape[1:]) != expected:
            raise ExportError(f"the {branch} graph takes (N, {', '.join(map(str, expected))}); got {tuple(batch.shape)}")
        return branch

    def embed(self, batch: torch.Tensor) -> torch.Tensor:
        task = next(iter(self.manifest.graphs.values())).signature.task
        if task != "embed":
            raise ExportError(
                f"model {self.manifest.card.name!r} was exported with its {task!r} output only, so {self.backend} cannot "
                "give embeddings; use backend='torch' for embed() (or export an 'embed' model)"
            )
        return self(batch)
