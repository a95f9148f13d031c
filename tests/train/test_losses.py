"""Dice + cross-entropy loss against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from medssl_train.losses import dice_ce_loss, soft_dice_loss


def two_voxel_example() -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes, two voxels: softmax (0.25, 0.75) at voxel 0 (target 1) and (0.5, 0.5) at voxel 1 (target 0)."""
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]])  # (B=1, K=2, S=2)
    return logits, torch.tensor([[1, 0]])


def test_soft_dice_matches_the_hand_computed_value() -> None:
    logits, target = two_voxel_example()
    # class 1: overlap 0.75, probability mass 0.75 + 0.5, one voxel of class 1
    expected = 1 - 2 * 0.75 / (1.25 + 1)
    assert soft_dice_loss(logits, target, smooth=0.0).item() == pytest.approx(expected, abs=1e-6)


def test_dice_plus_cross_entropy_matches_the_hand_computed_value() -> None:
    logits, target = two_voxel_example()
    cross_entropy = -(math.log(0.75) + math.log(0.5)) / 2
    expected = (1 - 2 * 0.75 / 2.25) + cross_entropy
    assert dice_ce_loss(logits, target).item() == pytest.approx(expected, abs=1e-4)


def test_dice_is_averaged_over_images_and_foreground_classes() -> None:
    target = torch.tensor([[[1, 2], [0, 0]], [[2, 2], [1, 0]]])  # (B=2, H=2, W=2), classes 0..2
    perfect = torch.nn.functional.one_hot(target, 3).movedim(-1, 1).float() * 50
    assert soft_dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-5)
    wrong = perfect.roll(1, dims=1)  # every voxel predicts the next class
    assert soft_dice_loss(wrong, target).item() == pytest.approx(1.0, abs=1e-4)


def test_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match="target must be"):
        soft_dice_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="K >= 2"):
        dice_ce_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))


def test_batch_dice_pools_the_batch_so_an_absent_class_does_not_floor_the_loss() -> None:
    # image 0 holds only class 1, image 1 only class 2; the network is right everywhere, with some doubt
    target = torch.tensor([[[1, 1], [0, 0]], [[2, 2], [0, 0]]])
    confident = torch.nn.functional.one_hot(target, 3).movedim(-1, 1).float() * 3
    per_image = soft_dice_loss(confident, target).item()
    assert per_image > 0.5  # each image's absent class scores a Dice near 0
    assert soft_dice_loss(confident, target, batch_dice=True).item() < 0.15
    # pooled by hand: class 1 has overlap 0.75 in image 0 and probability 0.5 spread in image 1
    logits = torch.tensor([[[0.0], [math.log(3.0)]], [[0.0], [0.0]]])  # (B=2, K=2, S=1)
    pooled = 1 - 2 * 0.75 / ((0.75 + 0.5) + 1)
    assert soft_dice_loss(logits, torch.tensor([[1], [0]]), smooth=0.0, batch_dice=True).item() == pytest.approx(pooled, abs=1e-6)
