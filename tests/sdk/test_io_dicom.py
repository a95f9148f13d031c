"""DICOM series reading: geometry against the written truth and dcm2niix, values, series choice, broken series,
malformed tags, stray and bare files, compressed pixel data."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_series import assert_same_image, read_with_dcm2niix, write_dicom_series
from pydicom.dataelem import DataElement
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import MPEG2MPML, JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless, RLELossless

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


def ct_series(
    directory: Path, affine: np.ndarray | None = None, shape: tuple[int, int, int] = SHAPE, **options
) -> tuple[Volume, list[Path]]:
    """Write a random-HU CT series of ``shape``; return the volume written and the file of each slice."""
    volume = Volume(random_hu(shape), radiological_axial() if affine is None else affine)
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


@pytest.mark.filterwarnings("ignore:The value length")
def test_several_series_need_a_choice(tmp_path: Path) -> None:
    long_description = "contrast-enhanced venous phase, 5 mm soft-tissue kernel, reconstructed from the raw data twice"
    chest, _ = ct_series(tmp_path / "chest", series_description="chest", series_number=2, seed=1)
    abdomen = Volume(random_hu((5, 20, 24), seed=2), radiological_axial())
    write_dicom_series(abdomen, tmp_path / "abdomen", series_description="abdomen", series_number=3, seed=2)
    write_dicom_series(abdomen, tmp_path / "venous", series_description=long_description, series_number=4, seed=3)
    series = list_dicom_series(tmp_path)  # by series number, while files sort as abdomen, chest, venous
    assert [(s.description, s.num_images, s.modality) for s in series] == [
        ("chest", 12, "CT"),
        ("abdomen", 5, "CT"),
        (long_description, 5, "CT"),
    ]
    with pytest.raises(VolumeReadError) as error:
        read_volume(tmp_path)
    message = str(error.value)
    assert "3 series" in message and "series_uid=" in message
    listed = message.splitlines()[1:]
    assert len(listed) == 3
    for line, info in zip(listed, series):  # listed in list_dicom_series order
        assert info.series_uid in line and f"{info.num_images} images" in line
    assert repr("chest") in listed[0] and repr("abdomen") in listed[1]
    assert repr(long_description[:63] + "…") in listed[2] and long_description not in message  # cut to 64 characters
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


def test_overlapping_reconstruction_steps_by_positions_not_thickness(tmp_path: Path) -> None:
    def thick_slices(dataset: pydicom.Dataset, index: int) -> None:
        dataset.SliceThickness = "5"  # 5 mm slabs every 2.5 mm: each overlaps its neighbours by half

    written, paths = ct_series(tmp_path, edit=thick_slices)
    assert float(pydicom.dcmread(paths[0], stop_before_pixels=True).SliceThickness) == 5.0
    volume = read_volume(tmp_path)
    assert volume.spacing[0] == pytest.approx(2.5)  # the positions' step (SPACING), not the 5 mm thickness
    np.testing.assert_allclose(volume.affine, written.affine, atol=1e-6)


def test_single_slice_series_uses_slice_thickness(tmp_path: Path) -> None:
    single = Volume(random_hu((1, 16, 12)), radiological_axial())
    (path,) = write_dicom_series(single, tmp_path / "one")
    volume = read_volume(tmp_path / "one")
    np.testing.assert_allclose(volume.affine, single.affine, atol=1e-6)
    with pytest.raises(VolumeReadError, match="one slice of a CT series") as error:
        read_volume(path)  # a lone slice file points to its folder
    assert str(tmp_path / "one") in str(error.value)

    def spacing_differs_from_thickness(dataset: pydicom.Dataset, index: int) -> None:
        dataset.SliceThickness, dataset.SpacingBetweenSlices = "5", "3"

    # SpacingBetweenSlices wins: it is the centre-to-centre distance, which positions measure in longer series; dcm2niix agrees
    write_dicom_series(single, tmp_path / "both", edit=spacing_differs_from_thickness)
    both = read_volume(tmp_path / "both")
    assert both.spacing == pytest.approx((3.0, *SPACING[1:]))
    np.testing.assert_allclose(both.affine[:3, 1:], single.affine[:3, 1:], atol=1e-6)  # rows, columns, origin unchanged
    _, converted_affine = read_with_dcm2niix(tmp_path / "both", tmp_path / "dcm2niix")
    assert np.linalg.norm(converted_affine[:3, 2]) == pytest.approx(3.0)

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
    with pytest.raises(VolumeReadError, match="extra.dcm: is named like a DICOM file but has no DICM preamble and does not parse"):
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


def set_tag(keyword: str, value: object, vr: str | None = None) -> Callable[[pydicom.Dataset], None]:
    """An edit that sets ``keyword`` to ``value`` (with ``vr``, a raw element, e.g. text where numbers belong)."""

    def edit(dataset: pydicom.Dataset) -> None:
        if vr is None:
            setattr(dataset, keyword, value)
        else:
            dataset[keyword] = DataElement(keyword, vr, value)

    return edit


MALFORMED_TAGS = {  # case: (edit of one slice, expected message)
    "empty spacing": (set_tag("PixelSpacing", ""), r"PixelSpacing is empty; need 2 finite positive numbers"),
    "empty position": (set_tag("ImagePositionPatient", None), r"ImagePositionPatient is empty; need 3 finite numbers"),
    "one spacing": (set_tag("PixelSpacing", "0.2"), r"PixelSpacing has 1 value \[0\.2\]; need 2"),
    "five cosines": (set_tag("ImageOrientationPatient", list("10001")), r"has 5 values \[1\.0, 0\.0, 0\.0, 0\.0, 1\.0\]"),
    "NaN orientation": (set_tag("ImageOrientationPatient", ["nan"] * 6), r"ImageOrientationPatient has non-finite values \[nan,"),
    "negative spacing": (set_tag("PixelSpacing", ["-0.7", "0.9"]), r"PixelSpacing has values \[-0\.7, 0\.9\] that are not"),
    "text spacing": (set_tag("PixelSpacing", ["0.7", "wide"], vr="LO"), r"PixelSpacing is not numeric"),
}


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
@pytest.mark.parametrize("every_slice", [False, True], ids=["slice 3", "every slice"])
@pytest.mark.parametrize("case", MALFORMED_TAGS)
def test_malformed_geometry_tags_name_the_file_and_tag(tmp_path: Path, case: str, every_slice: bool) -> None:
    edit, expected = MALFORMED_TAGS[case]
    broken = range(5) if every_slice else [3]
    _, paths = ct_series(tmp_path, shape=(5, 8, 6), edit=lambda dataset, index: edit(dataset) if index in broken else None)
    with pytest.raises(VolumeReadError, match=expected) as error:
        read_volume(tmp_path)
    assert error.value.path == (min(paths) if every_slice else paths[3])  # the first file read, or the broken one
    assert "re-export the image or correct the tag" in str(error.value) and "np.float64" not in str(error.value)


def test_stray_files_are_ignored(tmp_path: Path) -> None:
    written, _ = ct_series(tmp_path, shape=(3, 8, 6))
    apple_double = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(60)  # Finder metadata beside a copied file
    (tmp_path / "._IM0001.dcm").write_bytes(apple_double)
    (tmp_path / "IM0001.dcm.rsrc.dcm").write_bytes(apple_double)  # AppleDouble under another name
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(40))
    (tmp_path / ".thumbnails").mkdir()
    (tmp_path / ".thumbnails" / "IM0001.dcm").write_bytes(b"\x89PNG not a slice")
    volume = read_volume(tmp_path)
    np.testing.assert_array_equal(volume.array, written.array)
    assert volume.metadata["ignored_files"] == {"hidden": 3, "AppleDouble (macOS metadata)": 1}


def write_bare(path: Path, *, implicit_vr: bool) -> Path:
    """Rewrite a DICOM file as a bare data set named ``*.dcm``: no preamble, no file meta (as old exports do)."""
    dataset = pydicom.dcmread(path)
    dataset.preamble, dataset.file_meta = None, FileMetaDataset()
    bare = path.with_name(f"{path.name}.dcm")
    dataset.save_as(bare, implicit_vr=implicit_vr, little_endian=True)
    path.unlink()
    assert not pydicom.misc.is_dicom(bare)
    return bare


def test_bare_dicom_files_without_preamble_are_read(tmp_path: Path) -> None:
    written, paths = ct_series(tmp_path)
    bare = [write_bare(paths[0], implicit_vr=True), write_bare(paths[7], implicit_vr=False)]
    volume = read_volume(tmp_path)
    np.testing.assert_array_equal(volume.array, written.array)
    assert (volume.metadata["files"][0], volume.metadata["files"][7]) == tuple(str(path) for path in bare)

    report = pydicom.dcmread(paths[1])
    del report.PixelData
    report.save_as(paths[1])
    write_bare(paths[1], implicit_vr=True)
    with pytest.raises(VolumeReadError, match=r"has no DICM preamble and does not parse as a DICOM image \(lacks PixelData\)"):
        read_volume(tmp_path)


@pytest.mark.parametrize("transfer_syntax", [JPEG2000Lossless, JPEGLSLossless], ids=["jpeg2000", "jpeg-ls"])
def test_lossless_compressed_series_round_trip(tmp_path: Path, transfer_syntax: pydicom.uid.UID) -> None:
    written, paths = ct_series(tmp_path, transfer_syntax=transfer_syntax, rescale=(1.0, 0.0))  # signed 16-bit, negatives too
    assert all(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == transfer_syntax for path in paths)
    assert get_decoder(transfer_syntax).is_available, f"no pydicom decoder for {transfer_syntax.name}: install the dicom extra"
    np.testing.assert_array_equal(read_volume(tmp_path).array, written.array)
