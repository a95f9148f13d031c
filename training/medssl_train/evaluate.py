"""Scoring models through the SDK's own inference path: ``Model.segment`` (Dice) and ``Model.classify`` (accuracy)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence

import numpy as np

from medssl_sdk.metrics import dice_per_class
from medssl_sdk.model import ImageInput, Model
from medssl_sdk.samples import make_phantom
from medssl_sdk.volume import Volume


def phantom_pairs(seeds: Iterable[int], shape: Sequence[int], spacing: Sequence[float]) -> list[tuple[Volume, Volume]]:
    """``(image, labels)`` phantoms of ``seeds``, all on the grid ``shape`` x ``spacing`` (mm, array order)."""
    return [make_phantom(seed, shape, spacing) for seed in seeds]


def dice_by_class(model: Model, pairs: Sequence[tuple[Volume, Volume]], overlap: float = 0.25) -> dict[str, float]:
    """Mean Dice per foreground class of ``model.segment`` over ``pairs`` (image, reference labels).

    Segmentation runs as a user would run it: pre-processing to the card's grid, sliding windows,
    probabilities resampled back onto each image's grid, so the Dice is measured on the original grid.
    Classes absent from both maps of a pair are left out of that pair's mean.
    """
    if not pairs:
        raise ValueError("dice_by_class needs at least one (image, labels) pair")
    scores = []
    names: tuple[str, ...] = ()
    was_training = model.network.training
    model.network.eval()
    try:
        for image, reference in pairs:
            segmentation = model.segment(image, overlap=overlap, progress=False)
            names = segmentation.classes[1:]
            scores.append(dice_per_class(segmentation.labels.array, reference.array, len(segmentation.classes)))
    finally:
        model.network.train(was_training)
    with warnings.catch_warnings():  # a class absent everywhere stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.nanmean(np.stack(scores), axis=0)
    return {name: float(value) for name, value in zip(names, means)}


def mean_dice(dice: dict[str, float]) -> float:
    """Mean over classes of :func:`dice_by_class`'s result (NaN-free classes only)."""
    values = [v for v in dice.values() if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def classification_scores(model: Model, pairs: Sequence[tuple[ImageInput, int]]) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model.classify`` over ``pairs`` (image, true class index).

    Images go through the inference path (pre-processing, resize to the card's patch size); returns
    ``{"accuracy": ..., "loss": ...}`` with the loss ``-log p(true class)`` averaged over the pairs.
    """
    if not pairs:
        raise ValueError("classification_scores needs at least one (image, class index) pair")
    correct, loss = 0, 0.0
    was_training = model.network.training
    model.network.eval()
    try:
        for image, target in pairs:
            probabilities = list(model.classify(image).values())
            correct += int(max(range(len(probabilities)), key=probabilities.__getitem__) == target)
            loss -= math.log(max(probabilities[target], 1e-12))
    finally:
        model.network.train(was_training)
    return {"accuracy": correct / len(pairs), "loss": loss / len(pairs)}
