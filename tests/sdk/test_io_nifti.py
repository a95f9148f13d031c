"""NIfTI reading and writing: axis convention, scaling, dtypes, round trips, bad files, safe and atomic writes."""

from __future__ import annotations

import gzip
import itertools
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medssl_sdk.io import VolumeReadError, VolumeWriteError, read_nifti, read_volume, write_nifti
from medssl_sdk.volume import Volume


def oblique_affine() -> np.ndarray:
    """A rotated, anisotropic RAS affine with a non-zero origin, exactly representable in float32 (NIfTI's sform)."""
    angle = np.radians(25)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([2.5, 0.8, 0.6])[:, ::-1]
    affine[:3, 3] = (-100.25, 32.5, 7.75)
    return affine.astype(np.float32).astype(np.float64)


def test_array_is_transposed_and_affine_columns_follow(tmp_path: Path) -> None:
    data = np.random.default_rng(0).normal(size=(5, 4, 3)).astype(np.float32)  # nibabel's (i, j, k)
    nib_affine = np.array([[0.0, 0.0, 2.0, -10.0], [0.0, -0.5, 0.0, 20.0], [1.5, 0.0, 0.0, 30.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(data, nib_affine), tmp_path / "image.nii.gz")
    volume = read_nifti(tmp_path / "image.nii.gz")
    assert volume.shape == (3, 4, 5)
    for i, j, k in itertools.product(range(5), range(4), range(3)):
        assert volume.array[k, j, i] == data[i, j, k]
    np.testing.assert_allclose(volume.affine @ [2, 1, 3, 1], nib_affine @ [3, 1, 2, 1])  # voxel (d, h, w) = (k, j, i)
    assert volume.metadata == {"source": str(tmp_path / "image.nii.gz"), "format": "nifti"}


@pytest.mark.parametrize("name", ["volume.nii.gz", "volume.nii"])
def test_round_trip_is_exact(tmp_path: Path, name: str) -> None:
    array = np.random.default_rng(1).normal(size=(6, 7, 8)).astype(np.float32)
    array[2, 3, 4] = np.nan  # NaNs are data, not a read error
    volume = Volume(array, oblique_affine())
    write_nifti(volume, tmp_path / name)
    back = read_volume(tmp_path / name)
    np.testing.assert_array_equal(back.array, array)
    np.testing.assert_array_equal(back.affine, volume.affine)
    assert back.array.dtype == np.float32


def test_gzip_follows_the_suffix(tmp_path: Path) -> None:
    volume = Volume.from_array(np.zeros((2, 3, 4), np.float32))
    write_nifti(volume, tmp_path / "a.nii.gz")
    write_nifti(volume, tmp_path / "a.nii")
    assert gzip.decompress((tmp_path / "a.nii.gz").read_bytes())[:4] == (tmp_path / "a.nii").read_bytes()[:4]


@pytest.mark.parametrize(
    ("values", "stored"),
    [
        (np.arange(6), np.uint8),
        (np.array([0, 3, 300]), np.int16),
        (np.array([-5, 0, 7]), np.int16),
        (np.array([0, 70000]), np.int32),
    ],
)
def test_label_maps_are_written_as_small_integers(tmp_path: Path, values: np.ndarray, stored: type) -> None:
    labels = np.resize(values.astype(np.int64), (3, 4, 5))
    write_nifti(Volume(labels, oblique_affine()), tmp_path / "labels.nii.gz")
    image = nib.load(tmp_path / "labels.nii.gz")
    assert image.get_data_dtype() == stored
    assert (int(image.header["qform_code"]), int(image.header["sform_code"])) == (1, 1)
    back = read_nifti(tmp_path / "labels.nii.gz")
    assert back.array.dtype == stored  # integer label maps stay integers
    np.testing.assert_array_equal(back.array, labels)


def test_sheared_affine_is_kept_in_the_sform_with_an_unknown_qform(tmp_path: Path) -> None:
    tilted = oblique_affine()
    tilted[:3, 0] += 0.25 * tilted[:3, 1]  # slices shift along the rows, as for a CT gantry tilt: the axes are not orthogonal
    tilted = tilted.astype(np.float32).astype(np.float64)
    volume = Volume(np.random.default_rng(4).normal(size=(4, 5, 6)).astype(np.float32), tilted)
    write_nifti(volume, tmp_path / "tilted.nii.gz")
    header = nib.load(tmp_path / "tilted.nii.gz").header
    assert (int(header["qform_code"]), int(header["sform_code"])) == (0, 1)  # a qform cannot hold the shear
    np.testing.assert_array_equal(header.get_sform()[:, [2, 1, 0, 3]], tilted)
    back = read_nifti(tmp_path / "tilted.nii.gz")
    np.testing.assert_array_equal(back.affine, tilted)
    np.testing.assert_array_equal(back.array, volume.array)


def test_boolean_mask_is_written_as_uint8(tmp_path: Path) -> None:
    mask = np.random.default_rng(2).random((3, 4, 5)) > 0.5
    write_nifti(Volume.from_array(mask), tmp_path / "mask.nii.gz")
    back = read_nifti(tmp_path / "mask.nii.gz")
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, mask)


def test_scl_slope_and_inter_are_applied(tmp_path: Path) -> None:
    raw = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    image = nib.Nifti1Image(raw, np.eye(4))
    image.header.set_slope_inter(2.0, -1.0)
    nib.save(image, tmp_path / "scaled.nii.gz")
    volume = read_nifti(tmp_path / "scaled.nii.gz")
    assert volume.array.dtype == np.float32
    np.testing.assert_array_equal(volume.array, (2.0 * raw - 1.0).transpose(2, 1, 0))


def test_two_dimensional_volume_becomes_one_slice(tmp_path: Path) -> None:
    image = Volume.from_array(np.arange(12, dtype=np.float32).reshape(3, 4), spacing=(0.5, 0.25))
    write_nifti(image, tmp_path / "xray.nii.gz")
    back = read_nifti(tmp_path / "xray.nii.gz")
    assert back.shape == (1, 3, 4)
    np.testing.assert_array_equal(back.array[0], image.array)
    np.testing.assert_allclose(back.affine[:, 1:], image.affine[:, [0, 1, 3]])  # rows, columns, origin unchanged


def test_four_dimensional_images(tmp_path: Path) -> None:
    series = np.zeros((4, 5, 6, 3), np.float32)
    nib.save(nib.Nifti1Image(series, np.eye(4)), tmp_path / "fmri.nii.gz")
    with pytest.raises(VolumeReadError, match=r"fmri.nii.gz: is a 4-D image of shape \(4, 5, 6, 3\)"):
        read_volume(tmp_path / "fmri.nii.gz")
    nib.save(nib.Nifti1Image(series[..., :1], np.eye(4)), tmp_path / "one.nii.gz")
    assert read_volume(tmp_path / "one.nii.gz").shape == (6, 5, 4)


def test_damaged_files_are_clear_errors(tmp_path: Path) -> None:
    volume = Volume.from_array(np.random.default_rng(3).normal(size=(8, 9, 10)).astype(np.float32))
    for name in ("whole.nii.gz", "whole.nii"):
        write_nifti(volume, tmp_path / name)
        data = (tmp_path / name).read_bytes()
        (tmp_path / f"cut-{name}").write_bytes(data[: len(data) * 2 // 3])
        with pytest.raises(VolumeReadError, match=f"cut-{name}: .*(damaged|truncated)"):
            read_volume(tmp_path / f"cut-{name}")
    (tmp_path / "garbage.nii").write_bytes(b"not a nifti header" * 30)
    with pytest.raises(VolumeReadError, match="garbage.nii: is not a readable NIfTI file"):
        read_volume(tmp_path / "garbage.nii")
    with pytest.raises(VolumeReadError, match="missing.nii.gz: does not exist"):
        read_nifti(tmp_path / "missing.nii.gz")


def test_existing_file_is_kept_unless_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "out.nii.gz"
    write_nifti(Volume.from_array(np.zeros((2, 2, 2), np.float32)), target)
    before = target.read_bytes()
    ones = Volume.from_array(np.ones((2, 2, 2), np.float32))
    with pytest.raises(VolumeWriteError, match="out.nii.gz: already exists; pass overwrite=True"):
        write_nifti(ones, target)
    assert target.read_bytes() == before
    write_nifti(ones, target, overwrite=True)
    np.testing.assert_array_equal(read_nifti(target).array, ones.array)


def test_source_is_never_overwritten(tmp_path: Path) -> None:
    source = tmp_path / "ct.nii.gz"
    write_nifti(Volume.from_array(np.zeros((2, 2, 2), np.float32)), source)
    before = source.read_bytes()
    volume = read_nifti(source)
    for spelling in (source, tmp_path / "sub" / ".." / "ct.nii.gz"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        with pytest.raises(VolumeWriteError, match="is the input this output is made from"):
            write_nifti(volume.with_array(volume.array + 1), spelling, overwrite=True)
    assert source.read_bytes() == before


def test_failed_write_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.nii.gz"
    write_nifti(Volume.from_array(np.zeros((2, 2, 2), np.float32)), target)
    before = target.read_bytes()
    real_save = nib.save

    def save_half_then_fail(image: nib.Nifti1Image, filename: str) -> None:
        real_save(image, filename)
        Path(filename).write_bytes(Path(filename).read_bytes()[:100])
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", save_half_then_fail)
    volume = Volume.from_array(np.ones((4, 4, 4), np.float32))
    with pytest.raises(OSError, match="disk full"):
        write_nifti(volume, target, overwrite=True)
    with pytest.raises(OSError, match="disk full"):
        write_nifti(volume, tmp_path / "new.nii.gz")
    assert target.read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.nii.gz"]


def test_bad_targets_are_refused(tmp_path: Path) -> None:
    volume = Volume.from_array(np.zeros((2, 2, 2), np.float32))
    with pytest.raises(VolumeWriteError, match=r"must end in \.nii or \.nii\.gz"):
        write_nifti(volume, tmp_path / "out.nrrd")
    with pytest.raises(VolumeWriteError, match="does not exist; create it first"):
        write_nifti(volume, tmp_path / "no" / "out.nii.gz")
    with pytest.raises(VolumeWriteError, match="cannot be written as NIfTI"):
        write_nifti(Volume.from_array(np.zeros((2, 2, 2), np.complex64)), tmp_path / "complex.nii.gz")
