"""The PyTorch runtime: the ``nn.Module`` itself, in inference mode, with bf16 autocast on CUDA."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from medssl_zoo import MedsslError


class TorchRuntime:
    """Runs an ``nn.Module`` (in eval mode, on ``device``).

    On CUDA the network runs under bf16 autocast (fp16 where the GPU has no bf16); elsewhere in float32.
    """

    backend = "torch"

    def __init__(self, network: nn.Module, device: torch.device) -> None:
        self.network, self.device = network, device

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), self._autocast():
            return self.network(batch.to(self.device)).float()

    def embed(self, batch: torch.Tensor) -> torch.Tensor:
        embed: Callable[[torch.Tensor], torch.Tensor] | None = getattr(self.network, "embed", None)
        if embed is None:
            raise MedsslError(f"this {type(self.network).__name__} has no embedding output")
        with torch.inference_mode(), self._autocast():
            return embed(batch.to(self.device)).float()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
