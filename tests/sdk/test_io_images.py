"""2D images: PNG (8/16-bit, colour), JPEG, DICOM DX/CR (spacing, MONOCHROME1 after rescale, bare files), dispatch, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_series import write_dicom_image_2d, write_dicom_series
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset

from medssl_sdk.io import VolumeReadError, read_image_2d, read_volume
from medssl_sdk.volume import Volume


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def test_png_8_bit_grey(tmp_path: Path, rng: np.random.Generator) -> None:
    pixels = rng.integers(0, 256, size=(30, 20), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "grey.png")
    image = read_volume(tmp_path / "grey.png")
    assert image.array.dtype == np.uint8
    np.testing.assert_array_equal(image.array, pixels)
    np.testing.assert_array_equal(image.affine, Volume.from_array(pixels).affine)
    assert image.metadata["format"] == "png" and image.metadata["source"] == str(tmp_path / "grey.png")


def test_png_16_bit_keeps_its_values(tmp_path: Path, rng: np.random.Generator) -> None:
    pixels = rng.integers(0, 65536, size=(30, 20)).astype(np.uint16)
    Image.fromarray(pixels).save(tmp_path / "deep.png")
    image = read_volume(tmp_path / "deep.png")
    assert image.array.dtype == np.uint16 and image.array.max() > 255
    np.testing.assert_array_equal(image.array, pixels)


def test_colour_png_becomes_luminance(tmp_path: Path, rng: np.random.Generator) -> None:
    rgb = rng.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    image = read_volume(tmp_path / "colour.png")
    luminance = rgb.astype(float) @ [0.299, 0.587, 0.114]
    assert image.shape == (10, 12) and image.metadata["mode"] == "RGB"
    assert np.abs(image.array - luminance).max() <= 1.0


def test_jpeg(tmp_path: Path) -> None:
    ramp = np.add.outer(np.arange(40), np.arange(32)).astype(np.uint8) * 3
    Image.fromarray(ramp).save(tmp_path / "ramp.JPG", quality=95)
    image = read_volume(tmp_path / "ramp.JPG")
    assert image.metadata["format"] == "jpeg" and image.shape == (40, 32)
    assert np.abs(image.array.astype(int) - ramp).max() <= 4  # lossy, but close


def test_dx_monochrome2_with_pixel_spacing(tmp_path: Path, rng: np.random.Generator) -> None:
    stored = rng.integers(0, 4096, size=(32, 24))
    path = write_dicom_image_2d(stored, tmp_path / "chest", spacing=(0.2, 0.15))  # no suffix: found by the preamble
    image = read_volume(path)
    assert image.shape == (32, 24) and image.array.dtype == np.float32
    np.testing.assert_array_equal(image.array, stored)
    assert image.spacing == pytest.approx((0.2, 0.15))
    assert (image.metadata["modality"], image.metadata["spacing_from"]) == ("DX", "PixelSpacing")


@pytest.mark.parametrize("rescale", [None, (2.0, -100.0), (-0.5, 1000.0)], ids=["stored", "slope 2", "slope -0.5"])
def test_dx_monochrome1_is_inverted_after_rescale(
    tmp_path: Path, rng: np.random.Generator, rescale: tuple[float, float] | None
) -> None:
    stored = rng.integers(0, 4096, size=(16, 16))
    path = write_dicom_image_2d(stored, tmp_path / "inverted.dcm", photometric="MONOCHROME1", bits_stored=12, rescale=rescale)
    image = read_volume(path)
    slope, intercept = rescale or (1.0, 0.0)
    low, high = sorted([intercept, 4095 * slope + intercept])  # the rescaled range of 12-bit stored values
    np.testing.assert_array_equal(image.array, low + high - (slope * stored + intercept))  # bright bone stays bright
    assert image.metadata["photometric_interpretation"] == "MONOCHROME1"


def test_cr_with_imager_pixel_spacing_and_rescale(tmp_path: Path, rng: np.random.Generator) -> None:
    stored = rng.integers(0, 1024, size=(20, 18))
    path = write_dicom_image_2d(
        stored, tmp_path / "cr.dcm", modality="CR", spacing=(0.1, 0.125), spacing_keyword="ImagerPixelSpacing", rescale=(2, -100)
    )
    image = read_image_2d(path)
    np.testing.assert_array_equal(image.array, 2 * stored - 100)
    assert image.spacing == pytest.approx((0.1, 0.125)) and image.metadata["spacing_from"] == "ImagerPixelSpacing"


def test_radiograph_without_spacing_gets_one_millimetre(tmp_path: Path) -> None:
    path = write_dicom_image_2d(np.zeros((4, 5), int), tmp_path / "plain.dcm", spacing=None)
    image = read_image_2d(path)
    assert image.spacing == (1.0, 1.0) and image.metadata["spacing_from"] == "none"


def empty_pixel_spacing(dataset: Dataset) -> None:
    dataset.PixelSpacing = ""  # present but zero-length: DICOM's "unknown"


def test_empty_pixel_spacing_counts_as_absent(tmp_path: Path) -> None:
    at_detector = write_dicom_image_2d(
        np.zeros((4, 5), int),
        tmp_path / "detector.dcm",
        spacing=(0.1, 0.125),
        spacing_keyword="ImagerPixelSpacing",
        edit=empty_pixel_spacing,
    )
    image = read_image_2d(at_detector)
    assert image.spacing == pytest.approx((0.1, 0.125)) and image.metadata["spacing_from"] == "ImagerPixelSpacing"
    alone = write_dicom_image_2d(np.zeros((4, 5), int), tmp_path / "alone.dcm", spacing=None, edit=empty_pixel_spacing)
    image = read_image_2d(alone)
    assert image.spacing == (1.0, 1.0) and image.metadata["spacing_from"] == "none"


@pytest.mark.parametrize(
    ("spacing", "expected"),
    [
        ("0.2", r"PixelSpacing has 1 value \[0\.2\]; need 2"),
        (["0.2", "0"], r"PixelSpacing has values \[0\.2, 0\.0\] that are not positive"),
    ],
)
def test_malformed_pixel_spacing_is_named(tmp_path: Path, spacing: object, expected: str) -> None:
    def malformed(dataset: Dataset) -> None:
        dataset.PixelSpacing = spacing

    path = write_dicom_image_2d(np.zeros((4, 5), int), tmp_path / "bad.dcm", edit=malformed)
    with pytest.raises(VolumeReadError, match=f"bad.dcm: {expected}"):
        read_volume(path)


def test_bare_dicom_radiograph_without_preamble(tmp_path: Path, rng: np.random.Generator) -> None:
    stored = rng.integers(0, 4096, size=(8, 6))
    dataset = pydicom.dcmread(write_dicom_image_2d(stored, tmp_path / "with_preamble"))
    dataset.preamble, dataset.file_meta = None, FileMetaDataset()
    dataset.save_as(tmp_path / "bare.dcm", implicit_vr=True, little_endian=True)  # as old exports write them
    assert not pydicom.misc.is_dicom(tmp_path / "bare.dcm")
    np.testing.assert_array_equal(read_volume(tmp_path / "bare.dcm").array, stored)


def test_slice_of_a_ct_series_is_read_only_on_request(tmp_path: Path, rng: np.random.Generator) -> None:
    ct = Volume.from_array(rng.integers(-1000, 1000, size=(3, 8, 6)).astype(np.float32), spacing=(2.0, 0.5, 0.5))
    paths = write_dicom_series(ct, tmp_path / "ct")
    with pytest.raises(VolumeReadError, match="is one slice of a CT series .* pass the folder"):
        read_volume(paths[1])
    np.testing.assert_array_equal(read_image_2d(paths[1]).array, ct.array[1])


def test_bad_files(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    with pytest.raises(VolumeReadError, match="broken.png: is not a readable image"):
        read_volume(tmp_path / "broken.png")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(VolumeReadError, match="notes.txt: unknown file type"):
        read_volume(tmp_path / "notes.txt")
    with pytest.raises(VolumeReadError, match="neither a .png/.jpg/.jpeg image nor a DICOM file"):
        read_image_2d(tmp_path / "notes.txt")
    (tmp_path / "garbage.dcm").write_bytes(b"\x00garbage" * 40)
    with pytest.raises(VolumeReadError, match="garbage.dcm: is named like a DICOM file but has no DICM preamble"):
        read_volume(tmp_path / "garbage.dcm")
    with pytest.raises(VolumeReadError, match="missing.png: does not exist"):
        read_volume(tmp_path / "missing.png")
    with pytest.raises(VolumeReadError, match="series_uid= selects a series in a DICOM folder"):
        read_volume(tmp_path / "notes.txt", series_uid="1.2.3")
