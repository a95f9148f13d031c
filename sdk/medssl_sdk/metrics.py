"""Segmentation metrics."""

from __future__ import annotations

import numpy as np


def dice_per_class(prediction: np.ndarray, reference: np.ndarray, num_classes: int) -> np.ndarray:
    """Dice of each foreground class ``1..num_classes-1`` between two label maps of the same shape.

    Returns a ``(num_classes - 1,)`` float64 array; a class absent from both maps scores NaN (undefined,
    so a mean with ``np.nanmean`` skips it rather than counting a free 1.0).
    """
    if prediction.shape != reference.shape:
        raise ValueError(f"label maps differ in shape: {prediction.shape} vs {reference.shape}")
    pairs = np.bincount(
        prediction.astype(np.int64).ravel() * num_classes + reference.astype(np.int64).ravel(), minlength=num_classes**2
    ).reshape(num_classes, num_classes)
    overlap = np.diag(pairs)[1:].astype(np.float64)
    total = pairs.sum(axis=1)[1:] + pairs.sum(axis=0)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2 * overlap / total, np.nan)
