"""The object ``medssl_sdk.load`` returns: a network with its card, on a device, ready for inference."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medssl_zoo import MedsslError, ModelCard


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given (checked to exist), else CUDA, then Apple MPS, then CPU."""
    if device is not None:
        try:
            chosen = torch.device(device)
        except RuntimeError as error:
            raise MedsslError(f"unknown device {device!r} ({error}); use cuda, cuda:N, mps or cpu") from None
        available = {"cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}
        if chosen.type in available and not available[chosen.type]():
            raise MedsslError(f"device {device!r} was asked for but this torch build or machine has no {chosen.type.upper()}")
        return chosen
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass
class Model:
    """A loaded zoo model.

    Attributes:
        network: the ``nn.Module`` in eval mode on ``device``.
        card: its model card (architecture, inputs, labels, weights with the verified sha256).
        device: where the network runs.
    """

    network: nn.Module
    card: ModelCard
    device: torch.device

    @property
    def name(self) -> str:
        return self.card.name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Run the network on a prepared batch (moved to ``device``) in inference mode."""
        with torch.inference_mode():
            return self.network(x.to(self.device))

    def __repr__(self) -> str:
        return f"Model({self.card.name!r}, device={self.device}, weights sha256={self.card.weights.sha256})"
