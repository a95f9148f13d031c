"""How kernel tests compare a kernel's result with its reference."""

from __future__ import annotations

import torch


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|, in float32; the absolute error when ``expected`` is all zero
    (e.g. dq with a single key, where the softmax is constant)."""
    difference = (actual.float() - expected.float()).abs().max()
    scale = expected.float().abs().max()
    return float(difference / scale) if scale > 0 else float(difference)


def assert_relative_close(actual: torch.Tensor, expected: torch.Tensor, tolerance: float, name: str) -> None:
    error = relative_error(actual, expected)
    assert error <= tolerance, f"{name}: relative error {error:.2e} > {tolerance:.0e}"
