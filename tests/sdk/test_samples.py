"""Synthetic phantoms: determinism, geometry, labels, intensities, anatomy in world millimetres."""

from __future__ import annotations

import numpy as np
import pytest

from medssl_sdk.samples import PHANTOM_LABELS, label_of, make_phantom, make_radiograph
from medssl_sdk.volume import Volume


def world_centroid(labels: Volume, name: str) -> np.ndarray:
    """RAS centroid (mm) of an organ's voxels."""
    index = np.argwhere(labels.array == label_of(name)).mean(axis=0)
    padded = np.zeros(4)
    padded[: labels.ndim], padded[3] = index, 1.0
    return (labels.affine @ padded)[:3]


def field_centre(volume: Volume) -> np.ndarray:
    """RAS position (mm) of the centre of the field of view."""
    padded = np.zeros(4)
    padded[: volume.ndim], padded[3] = (np.array(volume.shape) - 1) / 2, 1.0
    return (volume.affine @ padded)[:3]


def test_same_seed_gives_the_same_phantom_and_other_seeds_differ() -> None:
    image, labels = make_phantom(7)
    again, again_labels = make_phantom(7)
    other, other_labels = make_phantom(8)
    np.testing.assert_array_equal(image.array, again.array)
    np.testing.assert_array_equal(labels.array, again_labels.array)
    assert not np.array_equal(labels.array, other_labels.array)
    assert np.abs(image.array - other.array).mean() > 10


def test_shape_spacing_and_dtypes_are_honoured() -> None:
    image, labels = make_phantom(1, shape=(20, 40, 36), spacing=(4.0, 2.5, 2.0))
    assert image.shape == labels.shape == (20, 40, 36)
    assert image.spacing == pytest.approx((4.0, 2.5, 2.0))
    np.testing.assert_array_equal(image.affine, labels.affine)
    assert image.array.dtype == np.float32 and labels.array.dtype == np.uint8
    assert labels.metadata["label_names"] == ("background", *PHANTOM_LABELS)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_every_organ_is_labelled(seed: int) -> None:
    _, labels = make_phantom(seed)
    assert set(np.unique(labels.array)) == set(range(len(PHANTOM_LABELS) + 1))


def test_intensities_are_ct_like() -> None:
    image, labels = make_phantom(4)
    hu, organ = image.array, labels.array
    mean = {name: float(hu[organ == label_of(name)].mean()) for name in PHANTOM_LABELS}
    assert -1024 <= hu.min() and hu.max() < 1200
    assert abs(float(hu[:, :3, :3].mean()) + 1000) < 5  # air in the corners
    assert 10 < float(hu[:, :3, :3].std()) < 25  # with noise
    assert 50 < mean["liver"] < 75 and 35 < mean["spleen"] < 60
    assert -900 < mean["lungs"] < -800
    assert mean["spine"] > 250
    for kidney in ("left_kidney", "right_kidney"):
        inside = hu[organ == label_of(kidney)]
        assert np.percentile(inside, 25) < 60 and np.percentile(inside, 90) > 90  # medulla ~30, brighter cortex


def test_organs_sit_on_their_anatomical_sides() -> None:
    _, labels = make_phantom(5)
    centre = field_centre(labels)
    x, y, z = 0, 1, 2
    at = {name: world_centroid(labels, name) for name in PHANTOM_LABELS}
    assert at["liver"][x] > centre[x] + 15  # patient's right is +x (RAS)
    assert at["spleen"][x] < centre[x] - 15
    assert at["left_kidney"][x] < centre[x] - 15 < centre[x] + 15 < at["right_kidney"][x]
    assert at["spine"][y] < centre[y] - 20  # posterior
    assert at["left_kidney"][y] < at["liver"][y] and at["right_kidney"][y] < at["liver"][y]
    assert at["lungs"][z] > at["liver"][z] > at["left_kidney"][z]  # superior to inferior


def test_anatomy_is_the_same_at_another_spacing() -> None:
    """Same seed, same 192 mm field of view, finer grid: organs keep their volume and place in millimetres."""
    coarse = make_phantom(6, shape=(64, 128, 128), spacing=(3.0, 1.5, 1.5))[1]
    fine = make_phantom(6, shape=(96, 192, 192), spacing=(2.0, 1.0, 1.0))[1]
    for name in PHANTOM_LABELS:
        volumes = [np.count_nonzero(v.array == label_of(name)) * np.prod(v.spacing) for v in (coarse, fine)]
        assert volumes[0] == pytest.approx(volumes[1], rel=0.05), name
        offsets = [world_centroid(v, name) - field_centre(v) for v in (coarse, fine)]
        np.testing.assert_allclose(offsets[0], offsets[1], atol=1.5, err_msg=name)


def test_bad_grids_are_refused() -> None:
    with pytest.raises(ValueError, match="shape of 3"):
        make_phantom(0, shape=(64, 128))
    with pytest.raises(ValueError, match="positive numbers"):
        make_phantom(0, spacing=(3.0, 0.0, 1.5))
    with pytest.raises(ValueError, match="2D phantom"):
        make_radiograph(0, shape=(64, 64, 64))


def test_radiograph_projects_the_phantom() -> None:
    image, labels = make_radiograph(3, shape=(200, 180), spacing=(1.2, 1.1))
    again, _ = make_radiograph(3, shape=(200, 180), spacing=(1.2, 1.1))
    np.testing.assert_array_equal(image.array, again.array)
    assert image.shape == labels.shape == (200, 180)
    assert image.spacing == pytest.approx((1.2, 1.1))
    assert image.array.dtype == np.float32 and labels.array.dtype == np.uint8
    assert 0.0 <= image.array.min() and image.array.max() <= 1.0
    assert set(np.unique(labels.array)) == set(range(len(PHANTOM_LABELS) + 1))
    pixels = image.array
    mean = {name: float(pixels[labels.array == label_of(name)].mean()) for name in ("lungs", "spine", "liver")}
    assert mean["lungs"] < mean["liver"] < mean["spine"]
    assert pixels[labels.array == 0].min() < 0.05  # air beside the body
    centre = field_centre(labels)
    assert world_centroid(labels, "liver")[0] > centre[0] + 15 > centre[0] - 15 > world_centroid(labels, "spleen")[0]
    assert world_centroid(labels, "lungs")[2] > world_centroid(labels, "liver")[2]
    assert np.linalg.det(image.affine[:3, :3]) != 0
