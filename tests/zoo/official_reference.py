"""Deterministic weights in the official UniMiSS layout, shared by the conversion test and the script
that computed the reference outputs with the official code (see tests/fixtures/README.md)."""

from __future__ import annotations

import math
import zlib

import torch


def deterministic_tensor(key: str, shape: list[int]) -> torch.Tensor:
    """A reproducible tensor per official key: unit-ish norms, small biases/positions, fan-in scaled weights."""
    generator = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    x = torch.randn(shape, generator=generator)
    if len(shape) == 1:
        is_norm_weight = key.endswith("weight") and (".norm" in key or key.startswith("norm"))
        return 1 + 0.1 * x if is_norm_weight else 0.02 * x
    if len(shape) == 3:  # positional tables and the SSL token, (1, N, C)
        return 0.02 * x
    return x / math.sqrt(math.prod(shape[1:]))


def reference_inputs() -> dict[str, torch.Tensor]:
    """The inputs the reference outputs were computed on (pre-training sizes, batch 2)."""
    generator = torch.Generator().manual_seed(0)
    return {
        "2d": torch.randn(2, 3, 224, 224, generator=generator),
        "3d": torch.randn(2, 1, 16, 96, 96, generator=generator),
    }
