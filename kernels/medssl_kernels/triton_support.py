"""Host-side pieces every Triton attention kernel file shares: what the kernels take, and how they are launched.

``triton`` and ``tl`` are None when the ``[gpu]`` extra is not installed; the kernel files then offer only
their references.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the [gpu] extra is not installed: only the references are available
    triton = tl = None

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 128


def attention_problem(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *others: torch.Tensor) -> str | None:
    """Why a Triton attention kernel cannot take q, k, v (last axis the head dim) and ``others`` (e.g. a bias
    table, which must only be a supported dtype), or None. Shapes are each kernel's own check."""
    if triton is None:
        return "Triton is not installed (pip install 'medssl-sdk[gpu]')"
    if not (q.dtype == k.dtype == v.dtype) or any(t.dtype not in SUPPORTED_DTYPES for t in (q, *others)):
        return f"q, k, v must share one of float32/float16/bfloat16; got {', '.join(str(t.dtype) for t in (q, k, v, *others))}"
    if q.shape[-1] > MAX_HEAD_DIM:
        return f"head dim {q.shape[-1]} is above {MAX_HEAD_DIM}"
    devices = [t.device for t in (q, k, v, *others)]
    if len(set(devices)) > 1:
        return f"the tensors are on different devices: {', '.join(map(str, devices))}"
    return None


def padded_head_dim(head_dim: int) -> int:
    """The head dim as a tile width: the next power of two, at least 16 (tl.dot's minimum); masked in-kernel."""
    return max(16, triton.next_power_of_2(head_dim))


def dot_precision(dtype: torch.dtype) -> str:
    """float32 tiles are multiplied in full precision (no TF32), so they match the reference to 1e-4."""
    return "ieee" if dtype == torch.float32 else "tf32"


def strides(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.stride())


def output_delta(grad_out: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``rowsum(dO * O)`` over the head dim, float32, contiguous: the softmax backward's per-row term."""
    return (grad_out.float() * out.float()).sum(dim=-1).contiguous()
