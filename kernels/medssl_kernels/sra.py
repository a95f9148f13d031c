"""Spatial-reduction attention (SRA) of PVT/MiT: every query token attends to a reduced key/value set.

Shapes: q (B, H, Nq, D); k and v (B, H, Nk, D) with Nk << Nq (the strided-conv-reduced map plus the SSL
token). The reference below is the ground truth for any fused implementation.
"""

from __future__ import annotations

import torch


def sra_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """Eager softmax attention: ``softmax(q @ k^T * scale) @ v``.

    Args:
        q: queries, (B, H, Nq, D).
        k: keys, (B, H, Nk, D).
        v: values, (B, H, Nk, D).
        scale: logit scale; ``D ** -0.5`` when None.

    Returns:
        (B, H, Nq, D), in the dtype of ``q``.
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    attn = (q @ k.transpose(-2, -1)) * scale
    return attn.softmax(dim=-1) @ v


def sra_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """SRA attention as the models call it; shapes as :func:`sra_attention_reference`.

    Only the reference path exists so far; the fused Triton kernel and its dispatch plug in here.
    """
    return sra_attention_reference(q, k, v, scale)
