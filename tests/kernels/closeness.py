"""How kernel tests compare a kernel's result with its reference."""

from __future__ import annotations

import pytest
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


_CUDA = torch.cuda.is_available()

#: (dtype, device) cases of the half-precision tests. Triton 3.9's interpreter multiplies bfloat16 tiles wrongly
#: in tl.dot (a 16x16 product of bf16 loads is off by ~1e10), so bfloat16 is checked on a GPU only.
HALF_PRECISION_CASES = [
    (torch.float16, "cpu"),
    pytest.param(torch.bfloat16, "cuda", marks=pytest.mark.skipif(not _CUDA, reason="bfloat16 needs a CUDA GPU")),
    pytest.param(torch.float16, "cuda", marks=pytest.mark.skipif(not _CUDA, reason="needs a CUDA GPU")),
]
