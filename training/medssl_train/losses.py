"""Segmentation losses: soft Dice over the foreground classes plus cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5, batch_dice: bool = False) -> torch.Tensor:
    """``1 - mean Dice`` of the softmax probabilities against one-hot targets, over foreground classes.

    Args:
        logits: ``(B, K, *S)`` raw class scores, K >= 2 (class 0 is background and not scored).
        target: ``(B, *S)`` integer class indices in ``[0, K)``.
        smooth: added to numerator and denominator (keeps empty classes finite). Softmax is never exactly 0,
            so a class absent from an image scores a Dice near 0 however small its probabilities are:
            the loss has a floor that grows with the number of absent classes (patches are sampled around
            organs, so most classes are present), and present classes share the gradient with absent ones.
        batch_dice: compute each class's Dice over the whole batch (all images' voxels pooled) instead of per
            image: a class absent from one patch but present in another no longer floors the loss.

    Returns:
        A scalar: one minus the Dice ``(2 sum(p t) + smooth) / (sum(p) + sum(t) + smooth)``, computed per
        image (or over the batch) and per foreground class over the spatial axes, then averaged.
    """
    _check(logits, target)
    probabilities = logits.softmax(dim=1)
    one_hot = torch.zeros_like(probabilities).scatter_(1, target.long().unsqueeze(1), 1.0)
    if batch_dice:  # (B, K, *S) -> (1, K, B * S): one Dice per class over every voxel of the batch
        probabilities, one_hot = (x.transpose(0, 1).reshape(1, x.shape[1], -1) for x in (probabilities, one_hot))
    spatial = tuple(range(2, probabilities.ndim))
    overlap = (probabilities * one_hot).sum(spatial)
    total = probabilities.sum(spatial) + one_hot.sum(spatial)
    dice = (2 * overlap + smooth) / (total + smooth)  # (B, K)
    return 1 - dice[:, 1:].mean()


def dice_ce_loss(
    logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.0, ce_weight: float = 1.0, batch_dice: bool = False
) -> torch.Tensor:
    """``dice_weight * soft_dice_loss + ce_weight * cross-entropy`` (mean over voxels); shapes and ``batch_dice`` as
    :func:`soft_dice_loss`."""
    _check(logits, target)
    dice = soft_dice_loss(logits, target, batch_dice=batch_dice)
    return dice_weight * dice + ce_weight * F.cross_entropy(logits, target.long())


def _check(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.ndim < 3 or logits.shape[1] < 2:
        raise ValueError(f"logits must be (B, K, *S) with K >= 2 classes; got shape {tuple(logits.shape)}")
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"target must be (B, *S) = {tuple(logits.shape[:1] + logits.shape[2:])} for logits "
                         f"{tuple(logits.shape)}; got {tuple(target.shape)}")
