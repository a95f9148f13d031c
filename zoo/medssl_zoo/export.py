"""What an exported zoo network looks like: one graph per input branch, at the card's patch size.

Export is a property of the zoo: every architecture in the registry says whether it traces to ONNX
(:class:`medssl_zoo.registry.Architecture`), and a card says the rest: the branches (2D/3D), channels and
sliding-window patch size of the input, and the task, which names the output. The SDK's exporter and its
runtimes (ONNX Runtime, TensorRT) read these signatures, so a new zoo family exports without new SDK code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from medssl_zoo.card import ModelCard
from medssl_zoo.errors import ExportError
from medssl_zoo.registry import architecture_of

#: Name of the graph input, and of the output per task.
INPUT_NAME = "image"
OUTPUT_NAMES = {"segment": "logits", "classify": "logits", "embed": "embedding"}


@dataclass(frozen=True)
class ExportSignature:
    """The graph of one input branch.

    Attributes:
        branch: ``"2d"`` or ``"3d"``.
        input_shape: ``(C, *patch_size)``; the batch axis in front is dynamic.
        task: what the output is: ``"segment"`` logits ``(N, K, *patch_size)``, ``"classify"`` logits
            ``(N, K)`` or the ``"embed"`` embedding ``(N, D)``.
    """

    branch: str
    input_shape: tuple[int, ...]
    task: str

    @property
    def input_name(self) -> str:
        return INPUT_NAME

    @property
    def output_name(self) -> str:
        return OUTPUT_NAMES[self.task]

    def example(self, batch: int) -> torch.Tensor:
        """A ``(batch, *input_shape)`` float32 input to trace with (values do not matter: no data-dependent flow)."""
        return torch.randn(batch, *self.input_shape, generator=torch.Generator().manual_seed(0))


def export_signatures(card: ModelCard, branches: tuple[str, ...] | None = None) -> dict[str, ExportSignature]:
    """The graphs exporting ``card`` gives: one per input branch (all of the card's by default).

    Raises:
        ExportError: the architecture has no export path, or a branch the card does not take was asked for.
    """
    architecture = architecture_of(card)
    if not architecture.exportable:
        raise ExportError(
            f"model {card.name!r} ({card.architecture}) has no export path: {architecture.export_note or 'not traceable'}; "
            "run it with backend='torch'"
        )
    wanted = branches if branches is not None else tuple(card.inputs)
    unknown = [branch for branch in wanted if branch not in card.inputs]
    if unknown or not wanted:
        raise ExportError(f"model {card.name!r} takes {', '.join(card.inputs)} input; cannot export branch(es) {unknown or wanted}")
    task = card.task
    if task not in OUTPUT_NAMES:
        raise ExportError(f"model {card.name!r}: task {task!r} has no exported output; known tasks: {', '.join(OUTPUT_NAMES)}")
    return {
        branch: ExportSignature(branch, (card.inputs[branch].channels, *card.inputs[branch].patch_size), task)
        for branch in wanted
    }
