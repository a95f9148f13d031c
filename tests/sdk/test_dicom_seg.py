"""DICOM SEG output: exact masks back (pydicom and highdicom), frames on the source images, dciodvfy-clean files,
codes and algorithm identification, deterministic UIDs, 2D radiographs, bad inputs, and the CLI end to end."""

from __future__ import annotations

import dataclasses
import random
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from conftest import nano_task_card
from dicom_series import write_dicom_image_2d, write_dicom_series
from pydicom.uid import RLELossless
from test_io_dicom import rotation

from medssl_sdk import DicomSegError, VolumeReadError, VolumeWriteError, derived_uid, load, write_dicom_seg
from medssl_sdk.cli import main
from medssl_sdk.dicom_seg import CODED_CATEGORY, COPIED_TYPE2_KEYWORDS, FALLBACK_CATEGORY, FALLBACK_TYPE
from medssl_sdk.io import list_dicom_series, read_dicom_series, read_image_2d, read_nifti, write_nifti
from medssl_sdk.samples import make_phantom
from medssl_sdk.segmentation import Segmentation
from medssl_sdk.volume import Volume
from medssl_zoo import get_card

CARD = get_card("phantom-mit-nano")
CLASSES = tuple(label.name for label in CARD.labels)
SHAPE, SPACING = (10, 40, 36), (4.0, 3.0, 3.2)


def dciodvfy_errors(path: Path) -> list[str]:
    """The lines of dicom3tools' ``dciodvfy`` report on ``path`` that are errors (warnings are allowed)."""
    assert shutil.which("dciodvfy") is not None, "dciodvfy is not installed: `apt-get install dicom3tools` (CI installs it)"
    report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (report.stdout + report.stderr).splitlines()
    assert any("Segmentation" in line for line in lines), f"dciodvfy did not recognise a SEG:\n{report.stdout}{report.stderr}"
    return [line for line in lines if line.startswith("Error")]


def decode_with_pydicom(path: Path, source_uids: list[str]) -> tuple[np.ndarray, pydicom.Dataset]:
    """The SEG's label map on the source grid, ``(D, H, W)``, built frame by frame from the raw attributes.

    Each frame's mask goes to the slice of the source instance it references; a pixel in two segments fails.
    """
    seg = pydicom.dcmread(path)
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    labels = np.zeros((len(source_uids), int(seg.Rows), int(seg.Columns)), dtype=np.uint8)
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        referenced = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        target = labels[source_uids.index(referenced)]
        assert not np.any(target[frame > 0]), f"segment {segment} overlaps another on {referenced}"
        target[frame > 0] = segment
    return labels, seg


@pytest.fixture(scope="module")
def phantom() -> tuple[Volume, np.ndarray]:
    """A small CT phantom and its labels (the lungs, label 6, are removed so one segment is empty)."""
    image, labels = make_phantom(seed=5, shape=SHAPE, spacing=SPACING)
    array = np.where(labels.array == 6, 0, labels.array).astype(np.uint8)
    assert set(np.unique(array)) >= {0, 1, 2, 5}
    return image, array


def oblique(volume: Volume) -> Volume:
    affine = volume.affine.copy()
    affine[:3, :3] = rotation(20, -10, 30) @ affine[:3, :3]
    affine[:3, 3] = (-120.5, 35.25, 80.0)
    return Volume(volume.array, affine)


def series_segmentation(directory: Path, labels: np.ndarray, card=CARD) -> Segmentation:
    """The labels as a Segmentation of the series in ``directory``, as ``Model.segment`` would return it."""
    return Segmentation(read_dicom_series(directory).with_array(labels), tuple(label.name for label in card.labels), card)


@pytest.mark.parametrize("geometry", ["axial", "oblique"])
def test_seg_gives_back_the_label_map_on_the_source_images(phantom, tmp_path, geometry) -> None:
    image, labels = phantom
    written = write_dicom_series(image if geometry == "axial" else oblique(image), tmp_path / "ct")  # shuffled names
    segmentation = series_segmentation(tmp_path / "ct", labels)
    source_uids = list(segmentation.labels.metadata["sop_instance_uids"])
    path = write_dicom_seg(segmentation, tmp_path / "ct", tmp_path / "seg.dcm")

    decoded, seg = decode_with_pydicom(path, source_uids)
    np.testing.assert_array_equal(decoded, labels)
    for item in seg.PerFrameFunctionalGroupsSequence:  # each frame lies exactly on the image it references
        referenced = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        source = pydicom.dcmread(written[source_uids.index(referenced)], stop_before_pixels=True)
        assert source.SOPInstanceUID == referenced
        np.testing.assert_allclose(item.PlanePositionSequence[0].ImagePositionPatient, source.ImagePositionPatient, atol=1e-6)
    orientation = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    np.testing.assert_allclose(orientation, source.ImageOrientationPatient, atol=1e-6)
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID and seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.SegmentationType == "BINARY"

    reread = hd.seg.segread(path)
    np.testing.assert_array_equal(reread.get_pixels_by_source_instance(source_uids, combine_segments=True), labels)
    for segment in range(1, len(CLASSES)):
        mask = reread.get_pixels_by_source_instance(source_uids, segment_numbers=[segment])[..., 0]
        np.testing.assert_array_equal(mask, labels == segment)
    assert dciodvfy_errors(path) == []


def test_a_label_map_saved_as_nifti_and_read_back_converts(phantom, tmp_path) -> None:
    image, labels = phantom
    write_dicom_series(oblique(image), tmp_path / "ct")
    segmentation = series_segmentation(tmp_path / "ct", labels)
    segmentation.save(tmp_path / "seg.nii.gz")
    from_nifti = dataclasses.replace(segmentation, labels=read_nifti(tmp_path / "seg.nii.gz"))  # float32 affine, no UIDs
    seg = from_nifti.to_dicom_seg(tmp_path / "ct")
    source_uids = list(segmentation.labels.metadata["sop_instance_uids"])
    np.testing.assert_array_equal(seg.get_pixels_by_source_instance(source_uids, combine_segments=True), labels)


def test_compressed_source_in_a_folder_of_several_series(phantom, tmp_path) -> None:
    image, labels = phantom
    write_dicom_series(image, tmp_path / "study" / "a", series_number=1)
    compressed = write_dicom_series(image, tmp_path / "study" / "b", series_number=2, transfer_syntax=RLELossless)
    assert pydicom.dcmread(compressed[0], stop_before_pixels=True).file_meta.TransferSyntaxUID == RLELossless
    wanted = read_dicom_series(tmp_path / "study", series_uid=list_dicom_series(tmp_path / "study")[1].series_uid)
    segmentation = Segmentation(wanted.with_array(labels), CLASSES, CARD)
    seg = segmentation.to_dicom_seg(tmp_path / "study")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == wanted.metadata["series_uid"] and seg.SeriesNumber == 1002
    source_uids = list(wanted.metadata["sop_instance_uids"])
    np.testing.assert_array_equal(seg.get_pixels_by_source_instance(source_uids, combine_segments=True), labels)
    unnamed = dataclasses.replace(segmentation, labels=Volume(labels, wanted.affine, {}))
    with pytest.raises(DicomSegError, match=r"holds 2 series and the label map does not say which"):
        unnamed.to_dicom_seg(tmp_path / "study")


def test_datasets_in_any_order_and_derived_uids_give_the_same_seg(phantom, tmp_path) -> None:
    image, labels = phantom
    files = write_dicom_series(image, tmp_path / "ct")
    segmentation = series_segmentation(tmp_path / "ct", labels)
    source_uids = list(segmentation.labels.metadata["sop_instance_uids"])
    uids = {"sop_instance_uid": derived_uid("study", "series", "seg"), "series_instance_uid": derived_uid("study", "series")}
    assert uids["sop_instance_uid"] == derived_uid("study", "series", "seg") != derived_uid("study", "series", "seg2")

    shuffled = [pydicom.dcmread(path) for path in random.Random(1).sample(files, len(files))]
    first = segmentation.to_dicom_seg(shuffled, series_number=7, series_description="test SEG", **uids)
    second = segmentation.to_dicom_seg(tmp_path / "ct", series_number=7, series_description="test SEG", **uids)
    assert first.SOPInstanceUID == second.SOPInstanceUID == uids["sop_instance_uid"]
    assert first.SeriesInstanceUID == second.SeriesInstanceUID == uids["series_instance_uid"]
    assert first.SeriesNumber == 7 and first.SeriesDescription == "test SEG"
    assert first.PixelData == second.PixelData
    np.testing.assert_array_equal(first.get_pixels_by_source_instance(source_uids, combine_segments=True), labels)
    referenced = first.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == segmentation.labels.metadata["series_uid"]
    assert sorted(item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence) == sorted(source_uids)
    default = segmentation.to_dicom_seg(tmp_path / "ct")
    assert default.SeriesNumber == 1001 and default.SOPInstanceUID != first.SOPInstanceUID  # source series 1 + 1000


def test_segments_carry_codes_and_algorithm_identification(phantom, tmp_path) -> None:
    image, labels = phantom
    write_dicom_series(image, tmp_path / "ct")
    seg = series_segmentation(tmp_path / "ct", labels).to_dicom_seg(tmp_path / "ct")
    assert [int(item.SegmentNumber) for item in seg.SegmentSequence] == list(range(1, len(CLASSES)))
    assert seg.Manufacturer == "medssl" and seg.SoftwareVersions and seg.ContentLabel == "MEDSSL"
    for item, label in zip(seg.SegmentSequence, CARD.labels[1:]):
        assert item.SegmentLabel == label.name and item.SegmentAlgorithmType == "AUTOMATIC"
        category, property_type = item.SegmentedPropertyCategoryCodeSequence[0], item.SegmentedPropertyTypeCodeSequence[0]
        assert (category.CodeValue, category.CodingSchemeDesignator) == (CODED_CATEGORY.value, "SCT") == ("91723000", "SCT")
        assert (property_type.CodeValue, property_type.CodingSchemeDesignator, property_type.CodeMeaning) == (
            label.code.value, label.code.scheme, label.code.meaning,
        )
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "phantom-mit-nano" and algorithm.AlgorithmVersion == seg.SoftwareVersions
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
        assert CARD.weights.sha256 in algorithm.AlgorithmParameters
    empty = int(np.setdiff1d(np.arange(1, len(CLASSES)), labels)[0])  # described, without frames
    assert empty == 6 and empty not in {int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
                                        for f in seg.PerFrameFunctionalGroupsSequence}

    uncoded_card = nano_task_card("segment", ("background", "lesion", "organ"))
    uncoded = series_segmentation(tmp_path / "ct", np.minimum(labels, 2), uncoded_card).to_dicom_seg(tmp_path / "ct")
    for item in uncoded.SegmentSequence:
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == FALLBACK_CATEGORY.value
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == FALLBACK_TYPE.value
        assert "unpublished" in item.SegmentationAlgorithmIdentificationSequence[0].AlgorithmParameters
    assert [item.SegmentLabel for item in uncoded.SegmentSequence] == ["lesion", "organ"]


def test_a_label_map_without_foreground_still_makes_a_valid_seg(phantom, tmp_path) -> None:
    image, labels = phantom
    write_dicom_series(image, tmp_path / "ct")
    segmentation = series_segmentation(tmp_path / "ct", np.zeros_like(labels))
    path = write_dicom_seg(segmentation, tmp_path / "ct", tmp_path / "seg.dcm")
    decoded, seg = decode_with_pydicom(path, list(segmentation.labels.metadata["sop_instance_uids"]))
    assert not decoded.any() and int(seg.NumberOfFrames) > 0 and len(seg.SegmentSequence) == len(CLASSES) - 1
    assert dciodvfy_errors(path) == []


def test_gantry_tilted_series(phantom, tmp_path) -> None:
    image, labels = phantom
    tilted = image.affine.copy()
    tilted[1, 0] = SPACING[0] * np.tan(np.radians(15))  # each slice moves anterior: a sheared grid
    write_dicom_series(Volume(image.array, tilted), tmp_path / "ct")
    segmentation = series_segmentation(tmp_path / "ct", labels)
    path = write_dicom_seg(segmentation, tmp_path / "ct", tmp_path / "seg.dcm")
    decoded, _ = decode_with_pydicom(path, list(segmentation.labels.metadata["sop_instance_uids"]))
    np.testing.assert_array_equal(decoded, labels)
    assert dciodvfy_errors(path) == []


def test_source_without_optional_patient_study_attributes_or_slice_thickness(phantom, tmp_path) -> None:
    """Anonymised exports and some modalities omit Type 2 attributes and SliceThickness; the SEG is still valid."""
    image, labels = phantom
    omitted = (*COPIED_TYPE2_KEYWORDS, "SliceThickness", "ReferringPhysicianName")

    def strip(dataset: pydicom.Dataset, index: int) -> None:
        for keyword in omitted:
            if keyword in dataset:
                delattr(dataset, keyword)

    written = write_dicom_series(image, tmp_path / "ct", edit=strip)
    datasets = [pydicom.dcmread(path) for path in written]
    assert not any(keyword in dataset for dataset in datasets for keyword in omitted)
    segmentation = series_segmentation(tmp_path / "ct", labels)
    path = write_dicom_seg(segmentation, datasets, tmp_path / "seg.dcm")
    assert not any(keyword in dataset for dataset in datasets for keyword in omitted), "the caller's datasets were changed"

    decoded, seg = decode_with_pydicom(path, list(segmentation.labels.metadata["sop_instance_uids"]))
    np.testing.assert_array_equal(decoded, labels)
    assert all(keyword in seg and not seg[keyword].value for keyword in COPIED_TYPE2_KEYWORDS)  # present, empty
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SliceThickness) == pytest.approx(SPACING[0])
    assert dciodvfy_errors(path) == []


def test_radiograph_label_map(tmp_path) -> None:
    source = write_dicom_image_2d(np.random.default_rng(0).integers(0, 4000, (40, 30)), tmp_path / "dx.dcm")
    labels = np.zeros((40, 30), dtype=np.uint8)
    labels[5:20, 3:10], labels[25:30, 10:25] = 1, 6
    segmentation = Segmentation(read_image_2d(source).with_array(labels), CLASSES, CARD)
    path = write_dicom_seg(segmentation, source, tmp_path / "seg.dcm")
    decoded, seg = decode_with_pydicom(path, [segmentation.labels.metadata["sop_instance_uid"]])
    np.testing.assert_array_equal(decoded[0], labels)
    assert list(seg.PatientOrientation) == ["L", "F"]
    reread = hd.seg.segread(path)
    np.testing.assert_array_equal(
        reread.get_pixels_by_source_instance([segmentation.labels.metadata["sop_instance_uid"]], combine_segments=True)[0], labels
    )
    assert dciodvfy_errors(path) == []


def test_label_maps_off_the_source_grid_are_refused(phantom, tmp_path) -> None:
    image, labels = phantom
    write_dicom_series(image, tmp_path / "ct")
    segmentation = series_segmentation(tmp_path / "ct", labels)
    shifted_affine = segmentation.labels.affine.copy()
    shifted_affine[:3, 3] += (0.0, 1.5, 0.0)  # half a row off
    shifted = dataclasses.replace(segmentation, labels=Volume(labels, shifted_affine, {}))
    with pytest.raises(DicomSegError, match=r"does not coincide with any slice of the label map.*segment the series itself"):
        shifted.to_dicom_seg(tmp_path / "ct")
    fewer = dataclasses.replace(segmentation, labels=Volume(labels[1:], segmentation.labels.affine, {}))
    with pytest.raises(DicomSegError, match="label map has 9 slices but the source series has 10 images"):
        fewer.to_dicom_seg(tmp_path / "ct")
    smaller = dataclasses.replace(segmentation, labels=Volume(labels[:, 1:], segmentation.labels.affine, {}))
    with pytest.raises(DicomSegError, match=r"has 40 x 36 pixels but the label map's slices are 39 x 36"):
        smaller.to_dicom_seg(tmp_path / "ct")


def test_bad_sources_and_labels_are_refused(phantom, tmp_path) -> None:
    image, labels = phantom
    write_dicom_series(image, tmp_path / "ct")
    write_dicom_series(image, tmp_path / "other")
    segmentation = series_segmentation(tmp_path / "ct", labels)
    with pytest.raises(DicomSegError, match=r"holds no series .*, the one the label map was made from; it holds:\n  .* CT #1"):
        segmentation.to_dicom_seg(tmp_path / "other")
    other = [pydicom.dcmread(path) for path in sorted((tmp_path / "other").iterdir())]
    with pytest.raises(DicomSegError, match=r"made from series .* but the source images are series"):
        segmentation.to_dicom_seg(other)
    mixed = [pydicom.dcmread(path) for folder in ("ct", "other") for path in sorted((tmp_path / folder).iterdir())]
    with pytest.raises(DicomSegError, match="belong to 2 series"):
        segmentation.to_dicom_seg(mixed)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not DICOM")
    with pytest.raises(VolumeReadError, match="holds no DICOM image"):
        segmentation.to_dicom_seg(tmp_path / "notes")
    nifti = write_nifti(image, tmp_path / "ct.nii.gz")
    with pytest.raises(VolumeReadError, match="is not a DICOM image"):
        segmentation.to_dicom_seg(nifti)
    with pytest.raises(VolumeReadError, match="does not exist"):
        segmentation.to_dicom_seg(tmp_path / "missing")
    too_many = dataclasses.replace(segmentation, labels=segmentation.labels.with_array(labels + 6))
    with pytest.raises(DicomSegError, match=r"values 6\.\.11 but the model has 7 classes"):
        too_many.to_dicom_seg(tmp_path / "ct")

    def multi_frame(dataset: pydicom.Dataset, index: int) -> None:
        if index == 3:
            dataset.NumberOfFrames = 2

    write_dicom_series(image, tmp_path / "multi", edit=multi_frame)
    unlabelled = dataclasses.replace(segmentation, labels=Volume(labels, segmentation.labels.affine, {}))
    with pytest.raises(VolumeReadError, match="multi-frame image"):
        unlabelled.to_dicom_seg(tmp_path / "multi")


def test_outputs_never_replace_inputs_or_existing_files(phantom, tmp_path) -> None:
    image, labels = phantom
    files = write_dicom_series(image, tmp_path / "ct")
    segmentation = series_segmentation(tmp_path / "ct", labels)
    existing = tmp_path / "seg.dcm"
    existing.write_bytes(b"keep me")
    with pytest.raises(VolumeWriteError, match="already exists"):
        write_dicom_seg(segmentation, tmp_path / "ct", existing)
    assert existing.read_bytes() == b"keep me"
    target = files[0].rename(files[0].with_suffix(".dcm"))
    before = target.read_bytes()
    with pytest.raises(VolumeWriteError, match="is the input this output is made from"):
        write_dicom_seg(segmentation, tmp_path / "ct", target, overwrite=True)
    assert target.read_bytes() == before
    assert write_dicom_seg(segmentation, tmp_path / "ct", existing, overwrite=True) == existing
    assert pydicom.dcmread(existing).Modality == "SEG"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ct", "seg.dcm"]  # no temporary files left


def test_cli_writes_the_models_segmentation_as_dicom_seg(tmp_path, capsys) -> None:
    image, truth = make_phantom(seed=20001, shape=(32, 96, 96), spacing=(3.0, 1.5, 1.5))  # one window, no padding
    write_dicom_series(image, tmp_path / "ct")
    output = tmp_path / "seg.dcm"
    code = main(["--quiet", "segment", str(tmp_path / "ct"), "-m", "phantom-mit-nano", "-o", str(output), "--format", "dicom-seg"])
    assert code == 0, capsys.readouterr().err
    expected = load("phantom-mit-nano", device="cpu").segment(tmp_path / "ct").labels
    decoded, seg = decode_with_pydicom(output, list(expected.metadata["sop_instance_uids"]))
    np.testing.assert_array_equal(decoded, expected.array)
    liver = decoded == 1
    dice = 2 * np.sum(liver & (truth.array == 1)) / (liver.sum() + np.sum(truth.array == 1))
    assert dice > 0.9, f"liver Dice {dice:.3f}: the SEG does not hold the phantom's liver"
    assert seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "phantom-mit-nano"
    assert dciodvfy_errors(output) == []

    before = output.read_bytes()
    code = main(["segment", str(tmp_path / "ct"), "-m", "phantom-mit-nano", "-o", str(output), "--format", "dicom-seg"])
    assert code == 1 and "--overwrite" in capsys.readouterr().err and output.read_bytes() == before
    nifti = write_nifti(image, tmp_path / "ct.nii.gz")
    code = main(["segment", str(nifti), "-m", "phantom-mit-nano", "-o", str(tmp_path / "x.dcm"), "--format", "dicom-seg"])
    assert code == 1 and "--format dicom-seg needs the DICOM images" in capsys.readouterr().err
    code = main(["segment", str(tmp_path / "ct"), "-m", "phantom-mit-nano", "-o", str(tmp_path / "x.dcm")])
    assert code == 1 and "needs --format dicom-seg" in capsys.readouterr().err
    assert not (tmp_path / "x.dcm").exists()
