"""Pre-processing from cards and its inverse."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from medssl_sdk.preprocess import (
    normalise_intensity,
    prepare,
    reorient,
    resample,
    resampled_shape,
    restore_labels,
    restore_orientation,
)
from medssl_sdk.volume import Volume
from medssl_zoo.card import InputSpec, Intensity

CT = Intensity("affine", clip=(-1000.0, 1000.0), offset=0.0, scale=1000.0)


def test_ct_window_clips_then_scales() -> None:
    x = torch.tensor([-3000.0, -1000.0, 0.0, 500.0, 2500.0])
    assert torch.equal(normalise_intensity(x, CT), torch.tensor([-1.0, -1.0, 0.0, 0.5, 1.0]))


def test_zscore_and_unit_range_per_image() -> None:
    x = torch.randn(40, 30) * 7 + 3
    z = normalise_intensity(x, Intensity("zscore"))
    assert abs(float(z.mean())) < 1e-5 and abs(float(z.std(unbiased=False)) - 1) < 1e-5
    u = normalise_intensity(x, Intensity("unit-range"))
    assert float(u.min()) == 0.0 and float(u.max()) == 1.0
    assert torch.equal(normalise_intensity(torch.full((3, 3), 5.0), Intensity("unit-range")), torch.zeros(3, 3))


def test_prepare_resamples_to_card_spacing_keeping_the_extent() -> None:
    volume = Volume.from_array(np.random.default_rng(0).normal(size=(20, 30, 33)), spacing=(2.5, 1.2, 1.0))
    spec = InputSpec(channels=2, patch_size=(16, 32, 32), spacing=(5.0, 1.5, 1.5), intensity=CT)
    prepared = prepare(volume, spec)
    assert prepared.tensor.shape == (2, 10, 24, 22)
    extent = np.array(volume.shape) * np.array(volume.spacing)
    assert np.allclose(np.array(prepared.tensor.shape[1:]) * np.array(prepared.spacing), extent)
    assert torch.equal(prepared.tensor[0], prepared.tensor[1])


def test_prepare_without_spacing_keeps_the_grid() -> None:
    image = np.arange(12.0).reshape(3, 4)
    prepared = prepare(Volume.from_array(image, (0.3, 0.2)), InputSpec(3, (32, 32), Intensity("unit-range")))
    assert prepared.tensor.shape == (3, 3, 4) and prepared.spacing == pytest.approx((0.3, 0.2))
    assert torch.allclose(prepared.tensor[2], torch.from_numpy(image / 11.0).float())


def test_prepare_rejects_nan_naming_the_source() -> None:
    image = np.zeros((4, 8, 8))
    image[1, 2, 3] = np.nan
    volume = Volume.from_array(image, metadata={"source": "/data/ct.nii.gz"})
    with pytest.raises(ValueError, match=r"/data/ct\.nii\.gz.*1 NaN"):
        prepare(volume, InputSpec(1, (16, 32, 32), CT))


@pytest.mark.parametrize("shape, prepared_shape", [((23, 31, 17), (9, 40, 20)), ((50, 7), (20, 9))])
def test_restore_labels_equals_full_resample_then_argmax(shape: tuple, prepared_shape: tuple) -> None:
    volume = Volume.from_array(np.zeros(shape))
    probabilities = torch.rand(5, *prepared_shape).softmax(0)
    prepared = prepare(volume, InputSpec(1, (16, 32, 32)[-len(shape):], CT))
    expected = resample(probabilities[None], shape)[0].argmax(0).numpy()
    labels = restore_labels(probabilities, prepared, slab=4)
    assert labels.shape == shape and labels.dtype == np.uint8
    assert np.array_equal(labels, expected)


def test_resampled_shape_rounds_and_keeps_one_voxel() -> None:
    assert resampled_shape((10, 3), (1.0, 0.1), (3.0, 1.0)) == (3, 1)


def test_reorient_keeps_every_voxel_at_its_world_position() -> None:
    rng = np.random.default_rng(4)
    # An oblique-ish DICOM-like layout: axis 0 inferior, axis 1 towards the patient's left, axis 2 posterior.
    affine = np.array([[0.0, -0.8, 0.05, 10.0], [0.0, 0.0, -0.7, 20.0], [-3.0, 0.0, 0.0, 30.0], [0, 0, 0, 1]])
    volume = Volume(rng.normal(size=(5, 6, 7)), affine)
    oriented = reorient(volume, "SAR")
    assert oriented.shape == (5, 7, 6)
    assert nib.aff2axcodes(oriented.affine) == ("S", "A", "R")  # per array axis, in our (D, H, W) order
    for index in ((0, 0, 0), (4, 5, 6), (2, 3, 1)):
        world = volume.affine @ (*index, 1)
        oriented_index = np.linalg.solve(oriented.affine, world)[:3]
        assert np.allclose(oriented_index, np.round(oriented_index))
        assert oriented.array[tuple(np.round(oriented_index).astype(int))] == volume.array[index]
    back = restore_orientation(oriented.array, oriented, volume)
    assert np.array_equal(back, volume.array)
