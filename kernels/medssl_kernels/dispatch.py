"""The dispatch rule every medssl kernel shares: Triton or the plain-PyTorch reference.

``MEDSSL_KERNELS=torch|triton|auto`` (read at each call, default ``auto``) picks the backend:

- ``torch``: always the reference;
- ``auto``: Triton for CUDA tensors the kernel can take, the reference elsewhere;
- ``triton``: always Triton, or a clear error when it cannot run (no Triton, unsupported tensors, CPU
  tensors without the interpreter ``TRITON_INTERPRET=1``).

While exporting (ONNX, ``torch.export``, TorchScript) or compiling, the reference is used whatever the setting.
"""

from __future__ import annotations

import os

import torch

KERNELS_ENV = "MEDSSL_KERNELS"
BACKENDS = ("auto", "torch", "triton")


def use_triton(kernel: str, problem: str | None, device: torch.device) -> bool:
    """Whether ``kernel`` (a name for error messages) runs its Triton path.

    Args:
        kernel: the kernel's name, e.g. ``"SRA"``.
        problem: why the Triton path cannot take the call's tensors, or None when it can.
        device: the device of the call's tensors.
    """
    choice = (os.environ.get(KERNELS_ENV) or "auto").strip().lower()
    if choice not in BACKENDS:
        raise ValueError(f"{KERNELS_ENV}={os.environ.get(KERNELS_ENV)!r}; use one of {', '.join(BACKENDS)}")
    if choice == "torch" or exporting_or_compiling():
        return False
    if choice == "auto":
        return problem is None and device.type == "cuda"
    if problem is not None:
        raise RuntimeError(f"{KERNELS_ENV}=triton, but the Triton {kernel} kernel cannot run: {problem}")
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            f"{KERNELS_ENV}=triton with {device} tensors needs the Triton interpreter: set TRITON_INTERPRET=1 "
            "before Triton is imported (or use CUDA tensors)"
        )
    return True


def exporting_or_compiling() -> bool:
    """True while ONNX export, ``torch.export``, TorchScript or ``torch.compile`` traces the model."""
    return bool(
        torch.onnx.is_in_onnx_export()
        or torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.compiler.is_exporting()
        or torch.compiler.is_compiling()
    )
