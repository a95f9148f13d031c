"""Phantom training data: pre-processing onto the card's grid, foreground-biased patches, schedules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medssl_sdk.preprocess import reorient
from medssl_sdk.samples import make_phantom
from medssl_sdk.volume import Volume
from medssl_train.data import PatchSampler, PreparedCase, jittered_grid, prepare_case, prepare_phantoms
from medssl_train.finetune import FinetuneConfig
from medssl_zoo.card import InputSpec, Intensity

SPEC = InputSpec(channels=1, patch_size=(16, 32, 32), spacing=(6.0, 3.0, 3.0),
                 intensity=Intensity("affine", clip=(-1000.0, 1000.0), scale=1000.0))


def test_cases_are_resampled_to_the_card_grid_with_their_labels() -> None:
    image, labels = make_phantom(3, shape=(40, 80, 72), spacing=(3.0, 1.5, 1.5))
    case = prepare_case(image, labels, SPEC)
    assert case.image.shape == (1, 20, 40, 36) and case.labels.shape == (20, 40, 36)
    assert case.image.dtype == torch.float32 and case.labels.dtype == torch.uint8
    assert -1.0 <= case.image.min() and case.image.max() <= 1.0
    # halving: output cell i is centred between input voxels 2i and 2i + 1; nearest-exact takes 2i + 1
    assert torch.equal(case.labels, torch.from_numpy(labels.array[1::2, 1::2, 1::2].copy()))


def test_training_phantoms_have_their_own_grids() -> None:
    grids = {jittered_grid(seed, SPEC.spacing) for seed in range(4)}
    assert len(grids) == 4
    for shape, spacing in grids:
        assert all(0.8 * s <= j <= 1.25 * s for s, j in zip(SPEC.spacing, spacing))
        assert 110 <= shape[0] * spacing[0] <= 200 + spacing[0]
    assert jittered_grid(1, SPEC.spacing) == jittered_grid(1, SPEC.spacing)


def test_patches_have_the_patch_size_and_favour_foreground() -> None:
    cases = prepare_phantoms(range(2), SPEC)
    images, labels = PatchSampler(cases, (16, 32, 32), foreground_fraction=1.0, seed=0).sample(8)
    assert images.shape == (8, 1, 16, 32, 32) and labels.shape == (8, 16, 32, 32)
    assert labels.dtype == torch.int64
    assert all(patch.any() for patch in labels)  # centred on an organ voxel
    again = PatchSampler(cases, (16, 32, 32), foreground_fraction=1.0, seed=0).sample(8)
    assert torch.equal(images, again[0]) and torch.equal(labels, again[1])


def test_small_cases_are_padded_with_air() -> None:
    image = torch.linspace(-1, 1, 4 * 8 * 8).reshape(1, 4, 8, 8)
    case = PreparedCase(image, torch.ones(4, 8, 8, dtype=torch.uint8), "tiny")
    images, labels = PatchSampler([case], (16, 8, 16), seed=1).sample(1)
    assert images.shape == (1, 1, 16, 8, 16)
    assert images[0, 0, 4:].eq(-1).all() and images[0, 0, :, :, 8:].eq(-1).all()
    assert labels[0, 4:].eq(0).all() and labels[0, :4, :, :8].eq(1).all()


def test_learning_rate_warms_up_then_follows_the_schedule() -> None:
    cosine = FinetuneConfig(steps=100, warmup_steps=10, schedule="cosine")
    factors = [cosine.learning_rate_factor(step) for step in range(100)]
    assert factors[0] < factors[5] < factors[9] < 1.0
    assert factors[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:])) and factors[-1] < 0.01
    constant = FinetuneConfig(steps=100, warmup_steps=0, schedule="constant")
    assert {constant.learning_rate_factor(step) for step in range(100)} == {1.0}
    with pytest.raises(ValueError, match="schedule"):
        FinetuneConfig(schedule="linear")


def test_a_label_map_stored_in_another_axis_layout_is_aligned_and_one_off_the_grid_refused() -> None:
    image, labels = make_phantom(5, shape=(20, 40, 36), spacing=(6.0, 3.0, 3.0))
    expected = prepare_case(image, labels, SPEC)
    relaid = reorient(labels, "LIP")  # same voxels in space, other array order and directions
    assert relaid.shape != labels.shape
    assert torch.equal(prepare_case(image, relaid, SPEC).labels, expected.labels)
    shifted = Volume(labels.array, labels.affine + np.pad([[0, 0, 0, 4.5]], ((0, 3), (0, 0))), labels.metadata)
    with pytest.raises(ValueError, match="another grid than its image"):
        prepare_case(image, shifted, SPEC)
    with pytest.raises(ValueError, match="label map shape"):
        prepare_case(image, Volume(labels.array[:-1], labels.affine, labels.metadata), SPEC)
