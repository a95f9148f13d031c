"""Dice per class."""

from __future__ import annotations

import numpy as np
import pytest

from medssl_sdk.metrics import dice_per_class


def test_dice_matches_hand_counts() -> None:
    reference = np.array([[0, 1, 1, 2], [0, 1, 2, 2]])
    prediction = np.array([[0, 1, 2, 2], [1, 1, 2, 0]])
    # class 1: overlap 2, sizes 3 + 3 -> 4/6; class 2: overlap 2, sizes 3 + 3 -> 4/6; class 3 absent: NaN
    dice = dice_per_class(prediction, reference, 4)
    assert dice[:2] == pytest.approx([4 / 6, 4 / 6])
    assert np.isnan(dice[2])


def test_dice_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shape"):
        dice_per_class(np.zeros((2, 2)), np.zeros((2, 3)), 2)
