"""DICOM series reading: geometry against the written truth and dcm2niix, values, series choice, broken series."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_series import assert_same_image, read_with_dcm2niix, write_dicom_series
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import MPEG2MPML, JPEGLosslessSV1, RLELossless

from medssl_sdk.io import VolumeReadError, list_dicom_series, read_dicom_series, read_volume
from medssl_sdk.volume import Volume

SHAPE = (12, 48, 40)
SPACING = (2.5, 0.7, 0.9)  # (D, H, W) mm


def random_hu(shape: tuple[int, ...] = SHAPE, seed: int = 0) -> np.ndarray:
    """Random integer HU in [-1000, 2000): any misplaced or flipped voxel changes the values."""
    return np.random.default_rng(seed).integers(-1000, 2000, size=shape).astype(np.float32)


def rotation(degrees_x: float, degrees_y: float, degrees_z: float) -> np.ndarray:
    """``(3, 3)`` proper rotation, z @ y @ x."""
    x, y, z = np.radians([degrees_x, degrees_y, degrees_z])
    about_x = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
    about_y = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    about_z = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
    return about_z @ about_y @ about_x


def radiological_axial(spacing: tuple[float, float, float] = SPACING, origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    """RAS affine of a usual axial CT: slices go superior, rows posterior, columns to the patient's left."""
    affine = np.eye(4)
    affine[:3, :3] = np.array([[0, 0, -1], [0, -1, 0], [1, 0, 0]]) * np.array(spacing)
    affine[:3, 3] = origin
    return affine


def geometry(case: str) -> np.ndarray:
    """The RAS affine written for each geometry case."""
    axial = radiological_axial(origin=(-60.0, 40.0, -200.0))
    if case == "axial":
        return axial
    if case == "oblique":
        oblique = radiological_axial(spacing=(3.0, 0.6, 0.85), origin=(-120.5, 35.25, 80.0))
        oblique[:3, :3] = rotation(20, -10, 30) @ oblique[:3, :3]
        return oblique
    reversed_slices = axial.copy()  # slices run against the slice normal (inferior), so readers flip them
    reversed_slices[:3, 0] *= -1
    return reversed_slices


def ct_series(directory: Path, affine: np.ndarray | None = None, **options) -> tuple[Volume, list[Path]]:
    """Write a random-HU CT series; return the volume written and the file of each slice."""
    volume = Volume(random_hu(), radiological_axial() if affine is None else affine)
    return volume, write_dicom_series(volume, directory, **options)


def sop_instance_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


@pytest.mark.parametrize("case", ["axial", "oblique", "reversed"])
def test_series_geometry_matches_written_affine_and_dcm2niix(tmp_path: Path, case: str) -> None:
    written, paths = ct_series(tmp_path / "series", geometry(case))
    volume = read_volume(tmp_path / "series")
    assert volume.shape == SHAPE and volume.array.dtype == np.float32
    assert_same_image(volume.array, volume.affine, written.array, written.affine, atol_mm=1e-3)
    slice_files = paths if case != "reversed" else paths[::-1]
    assert volume.metadata["sop_instance_uids"] == tuple(sop_instance_uid(path) for path in slice_files)
    if case == "reversed":  # sorted along the normal: first column points the other way, same voxels
        np.testing.assert_allclose(volume.affine[:3, 0], -written.affine[:3, 0], atol=1e-6)
    else:
        np.testing.assert_allclose(volume.affine, written.affine, atol=1e-6)
        np.testing.assert_array_equal(volume.array, written.array)
    np.testing.assert_allclose(volume.spacing, [np.linalg.norm(written.affine[:3, axis]) for axis in range(3)], atol=1e-6)
    converted, converted_affine = read_with_dcm2niix(tmp_path / "series", tmp_path / "dcm2niix")
    assert_same_image(volume.array, volume.affine, converted, converted_affine, atol_mm=1e-3)


def test_metadata_names_the_series(tmp_path: Path) -> None:
    written, paths = ct_series(tmp_path, series_description="abdomen", series_number=7)
    (tmp_path / "README.txt").write_text("not an image")
    report = pydicom.dcmread(paths[0])
    for keyword in ("PixelData", "Rows", "Columns", "BitsAllocated"):
        delattr(report, keyword)
    report.SOPInstanceUID = pydicom.uid.generate_uid()
    report.save_as(tmp_path / "report.dcm")
    metadata = read_volume(tmp_path).metadata
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    assert metadata["series_uid"] == first.SeriesInstanceUID and metadata["study_uid"] == first.StudyInstanceUID
    assert metadata["frame_of_reference_uid"] == first.FrameOfReferenceUID
    assert (metadata["modality"], metadata["series_description"], metadata["series_number"]) == ("CT", "abdomen", 7)
    assert metadata["num_slices"] == SHAPE[0] and metadata["files"] == tuple(str(path) for path in paths)
    assert metadata["ignored_files"] == {"not DICOM": 1, "DICOM without pixel data": 1}
    assert metadata["source"] == str(tmp_path) and metadata["format"] == "dicom"


def test_rescale_slope_intercept_and_rle_compression(tmp_path: Path) -> None:
    values = random_hu() / 2  # half-HU steps need slope 0.5
    volume = Volume(values, radiological_axial())
    write_dicom_series(volume, tmp_path, rescale=(0.5, -1000.0), transfer_syntax=RLELossless)
    assert pydicom.dcmread(next(tmp_path.iterdir())).file_meta.TransferSyntaxUID == RLELossless
    np.testing.assert_array_equal(read_volume(tmp_path).array, values)


def test_rescale_is_applied_per_slice(tmp_path: Path) -> None:
    def shift_slice_five(dataset: pydicom.Dataset, index: int) -> None:
        if index == 5:
            dataset.RescaleIntercept = "-2024"  # same stored values, 1000 HU lower

    written, _ = ct_series(tmp_path, edit=shift_slice_five)
    expected = written.array.copy()
    expected[5] -= 1000
    np.testing.assert_array_equal(read_volume(tmp_path).array, expected)


def test_mr_series_reads(tmp_path: Path) -> None:
    volume = Volume(np.random.default_rng(1).integers(0, 4000, size=(4, 16, 12)).astype(np.float32), radiological_axial())
    write_dicom_series(volume, tmp_path, modality="MR", rescale=(1.0, 0.0))
    read = read_volume(tmp_path)
    assert read.metadata["modality"] == "MR"
    np.testing.assert_array_equal(read.array, volume.array)


def test_several_series_need_a_choice(tmp_path: Path) -> None:
    chest, _ = ct_series(tmp_path / "chest", series_description="chest", series_number=2, seed=1)
    abdomen = Volume(random_hu((5, 20, 24), seed=2), radiological_axial())
    write_dicom_series(abdomen, tmp_path / "abdomen", series_description="abdomen", series_number=3, seed=2)
    series = list_dicom_series(tmp_path)
    assert [(s.description, s.num_images, s.modality) for s in series] == [("chest", 12, "CT"), ("abdomen", 5, "CT")]
    with pytest.raises(VolumeReadError) as error:
        read_volume(tmp_path)
    message = str(error.value)
    assert "2 series" in message and "series_uid=" in message
    for info in series:
        assert info.series_uid in message and repr(info.description) in message and f"{info.num_images} images" in message
    assert "Phantom" not in message and "MEDSSL-PHANTOM" not in message  # no patient identity
    picked = read_volume(tmp_path, series_uid=series[1].series_uid)
    np.testing.assert_array_equal(picked.array, abdomen.array)
    with pytest.raises(VolumeReadError, match="no series with SeriesInstanceUID 1.2.3"):
        read_dicom_series(tmp_path, series_uid="1.2.3")


def test_missing_slice_is_reported(tmp_path: Path) -> None:
    _, paths = ct_series(tmp_path)
    paths[5].unlink()
    with pytest.raises(VolumeReadError, match=r"1 slice\(s\) missing between") as error:
        read_volume(tmp_path)
    assert str(tmp_path) in str(error.value) and paths[4].name in str(error.value)


def shift_along_normal(dataset: pydicom.Dataset, millimetres: float) -> None:
    orientation = np.asarray(dataset.ImageOrientationPatient, float)
    normal = np.cross(orientation[:3], orientation[3:])
    position = np.asarray(dataset.ImagePositionPatient, float) + millimetres * normal
    dataset.ImagePositionPatient = [f"{value:.6f}" for value in position]


def test_uneven_spacing_is_reported(tmp_path: Path) -> None:
    ct_series(tmp_path, edit=lambda dataset, index: shift_along_normal(dataset, 0.8) if index >= 7 else None)
    with pytest.raises(VolumeReadError, match=r"not evenly spaced .*step 2\.5 mm.*a gap of 3\.3 mm"):
        read_volume(tmp_path)


def test_spacing_within_tolerance_is_accepted(tmp_path: Path) -> None:
    written, _ = ct_series(tmp_path, edit=lambda dataset, index: shift_along_normal(dataset, 0.004) if index == 3 else None)
    np.testing.assert_allclose(read_volume(tmp_path).affine, written.affine, atol=1e-3)


def test_duplicate_positions_are_an_error(tmp_path: Path) -> None:
    ct_series(tmp_path, edit=lambda dataset, index: shift_along_normal(dataset, -2.5) if index == 4 else None)
    with pytest.raises(VolumeReadError, match="share a position along the slice normal"):
        read_volume(tmp_path)


def test_slice_with_another_orientation_is_an_error(tmp_path: Path) -> None:
    def tilt(dataset: pydicom.Dataset, index: int) -> None:
        if index == 2:
            dataset.ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]  # a coronal localizer

    ct_series(tmp_path, edit=tilt)
    with pytest.raises(VolumeReadError, match="mixes values of ImageOrientationPatient"):
        read_volume(tmp_path)


def test_gantry_tilt_gives_a_sheared_affine(tmp_path: Path) -> None:
    tilted = radiological_axial()
    tilted[1, 0] = 2.5 * np.tan(np.radians(15))  # each slice moves 0.67 mm anterior
    written, _ = ct_series(tmp_path, tilted)
    volume = read_volume(tmp_path)
    np.testing.assert_allclose(volume.affine, written.affine, atol=1e-6)
    np.testing.assert_array_equal(volume.array, written.array)


def test_single_slice_series_uses_slice_thickness(tmp_path: Path) -> None:
    single = Volume(random_hu((1, 16, 12)), radiological_axial())
    (path,) = write_dicom_series(single, tmp_path / "one")
    volume = read_volume(tmp_path / "one")
    np.testing.assert_allclose(volume.affine, single.affine, atol=1e-6)
    with pytest.raises(VolumeReadError, match="one slice of a CT series") as error:
        read_volume(path)  # a lone slice file points to its folder
    assert str(tmp_path / "one") in str(error.value)

    def drop_thickness(dataset: pydicom.Dataset, index: int) -> None:
        del dataset.SliceThickness

    write_dicom_series(single, tmp_path / "thin", edit=drop_thickness)
    with pytest.raises(VolumeReadError, match="slice spacing is unknown"):
        read_volume(tmp_path / "thin")


def test_empty_and_non_dicom_folders(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(VolumeReadError, match="holds no DICOM image files"):
        read_volume(tmp_path / "empty")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("hello")
    with pytest.raises(VolumeReadError, match=r"no DICOM image files \(1 not DICOM\)"):
        read_volume(tmp_path / "notes")
    with pytest.raises(VolumeReadError, match="does not exist"):
        read_volume(tmp_path / "nowhere")


def test_corrupt_files_are_named(tmp_path: Path) -> None:
    _, paths = ct_series(tmp_path / "garbage")
    (tmp_path / "garbage" / "extra.dcm").write_bytes(b"\x00garbage" * 40)
    with pytest.raises(VolumeReadError, match="extra.dcm: is named like a DICOM file but lacks the DICM preamble"):
        read_volume(tmp_path / "garbage")

    _, paths = ct_series(tmp_path / "truncated")
    data = paths[3].read_bytes()
    paths[3].write_bytes(data[: len(data) - 1000])  # cut inside the pixel data
    with pytest.raises(VolumeReadError) as error:
        read_volume(tmp_path / "truncated")
    assert str(paths[3]) in str(error.value)


def _recompress_in_place(path: Path, transfer_syntax: str) -> None:
    """Label a file as compressed with ``transfer_syntax`` (pixel data: one fake fragment)."""
    dataset = pydicom.dcmread(path)
    dataset.file_meta.TransferSyntaxUID = transfer_syntax
    dataset.PixelData = encapsulate([b"\xff\xd8 not really compressed \xff\xd9"])
    dataset["PixelData"].VR = "OB"
    dataset.save_as(path, enforce_file_format=True)


def test_compressed_pixel_data_need_a_decoder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, paths = ct_series(tmp_path)
    _recompress_in_place(paths[0], JPEGLosslessSV1)
    with pytest.raises(VolumeReadError) as error:  # with a plugin installed, the fake fragment fails to decode
        read_volume(tmp_path)
    assert str(paths[0]) in str(error.value)
    monkeypatch.setattr(get_decoder(JPEGLosslessSV1), "_available", {})  # as on a machine without pylibjpeg or gdcm
    with pytest.raises(VolumeReadError, match=r"compressed as JPEG Lossless.*no decoder.*pip install pylibjpeg pylibjpeg-libjpeg"):
        read_volume(tmp_path)
    _recompress_in_place(paths[0], MPEG2MPML)
    with pytest.raises(VolumeReadError, match="MPEG2 .* which pydicom cannot decode"):
        read_volume(tmp_path)


def test_multi_frame_files_are_refused(tmp_path: Path) -> None:
    def as_multi_frame(dataset: pydicom.Dataset, index: int) -> None:
        if index == 0:
            dataset.NumberOfFrames = 2

    ct_series(tmp_path, edit=as_multi_frame)
    with pytest.raises(VolumeReadError, match="multi-frame image.*dcm2niix"):
        read_volume(tmp_path)


def test_series_in_subfolders_are_found(tmp_path: Path) -> None:
    written, paths = ct_series(tmp_path / "a")
    (tmp_path / "a" / "b").mkdir()
    for path in paths[::2]:
        shutil.move(path, tmp_path / "a" / "b" / path.name)
    np.testing.assert_array_equal(read_volume(tmp_path).array, written.array)
