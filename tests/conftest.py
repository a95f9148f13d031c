"""Shared test helpers: a small MiT configuration and cards built from it."""

from __future__ import annotations

import os

# Kernel tests run the Triton kernels on CPU through Triton's interpreter. TRITON_INTERPRET is read when
# Triton is imported (medssl_kernels imports it, and the imports below reach medssl_kernels), so it is set
# first. An explicit TRITON_INTERPRET=0 (on a GPU machine) is respected.
os.environ.setdefault("TRITON_INTERPRET", "1")

import dataclasses  # noqa: E402

import pytest
import torch

from medssl_zoo import registry
from medssl_zoo.card import InputSpec, Intensity, Label, ModelCard, WeightsSpec

#: MiT at small widths (same code, a few hundred thousand parameters) for fast I/O tests.
NANO_KWARGS = {
    "variant": "mit7",
    "task": "embed",
    "encoder_dims": [16, 32, 64, 128],
    "encoder_heads": [1, 1, 2, 4],
    "decoder_dims": [64, 32, 16],
    "decoder_heads": [4, 2, 1],
    "stem_channels": 8,
}


def nano_card(name: str = "test-mit-nano", weights: WeightsSpec | None = None) -> ModelCard:
    """A 2D+3D card for the nano MiT."""
    return ModelCard(
        name=name,
        summary="MiT at test widths.",
        architecture="mit",
        kwargs=dict(NANO_KWARGS),
        inputs={
            "2d": InputSpec(channels=3, patch_size=(64, 64), intensity=Intensity("unit-range")),
            "3d": InputSpec(
                channels=1, patch_size=(16, 64, 64), spacing=(3.0, 1.0, 1.0),
                intensity=Intensity("affine", offset=0.0, scale=1024.0),
            ),
        },
        weights=weights or WeightsSpec(),
        licence="MIT",
    )


def nano_task_card(task: str, names: tuple[str, ...], name: str = "test-mit-nano-task") -> ModelCard:
    """The nano card with a ``segment`` or ``classify`` head over the classes ``names``."""
    card = nano_card(name)
    kwargs = {**card.kwargs, "task": task, "num_classes": len(names)}
    labels = tuple(Label(index, label) for index, label in enumerate(names))
    return dataclasses.replace(card, kwargs=kwargs, labels=labels)


@pytest.fixture(autouse=True)
def _seeded_and_isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seed torch; cards a test registers are gone after it."""
    torch.manual_seed(0)
    monkeypatch.setattr(registry, "_USER_CARDS", {})
