"""DICOM SEG output: a ``Segmentation`` as a DICOM Segmentation object that references its source series.

    from medssl_sdk.dicom_seg import derived_uid, write_dicom_seg
    seg = model.segment("ct_dir/")
    dataset = seg.to_dicom_seg("ct_dir/")                     # a highdicom Segmentation (a pydicom Dataset)
    write_dicom_seg(seg, "ct_dir/", "ct_seg.dcm")             # atomic; never replaces an input or existing file
    seg.to_dicom_seg(datasets, sop_instance_uid=derived_uid(study, series, "seg"))  # deterministic UIDs

What the SEG holds (see docs/dicom.md):

- One frame per source image and segment with foreground there (BINARY, bit-packed); frame ``i`` references
  the source SOP instance it was drawn on, and its plane position and orientation are the source image's.
  The label map must lie on the source series' grid: every label slice has to coincide with one source image
  (all four corners within ``ABSOLUTE_TOLERANCE_MM`` or ``RELATIVE_TOLERANCE`` of a pixel), or nothing is written.
- One segment per foreground class of the model, empty ones included, so that segment number == label value
  in every SEG a model makes. Coded classes (the card's ``labels[i].code``) get that code as the segmented
  property type and the category ``CODED_CATEGORY``; classes without a code get ``FALLBACK_CATEGORY`` and
  ``FALLBACK_TYPE`` (3D Slicer's generic "Tissue" terminology) and keep their name as the segment label.
- Algorithm identification: the card's name, the medssl-sdk version, family "Artificial Intelligence" and
  the weights' sha256 as a parameter; equipment: manufacturer "medssl".

Sources: a folder holding the series (as read by ``read_dicom_series``; the label map's ``series_uid``
metadata picks the series when the folder holds several), a single DICOM image file (2D label maps of
radiographs), or a sequence of pydicom Datasets of the series (e.g. received by a DICOM node). Single-frame
images only; compressed source images are fine (their pixels are not read).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from medssl_sdk.io import DicomSeriesInfo, check_output_path, list_dicom_series
from medssl_sdk.io.dicom_files import read_dicom_header, require_single_frame
from medssl_sdk.io.dicom_geometry import ABSOLUTE_TOLERANCE_MM, RELATIVE_TOLERANCE, SlicePlane
from medssl_sdk.io.dicom_tags import tag_numbers
from medssl_sdk.io.errors import VolumeReadError
from medssl_sdk.volume import LPS_TO_RAS, Volume
from medssl_zoo import MedsslError
from medssl_zoo.files import write_atomically

if TYPE_CHECKING:  # highdicom is in the ``dicom`` extra; it is imported when a SEG is made
    import highdicom

    from medssl_sdk.segmentation import Segmentation

#: Category of segments whose class has a code in the card (the zoo's codes are SNOMED CT body structures).
CODED_CATEGORY = codes.SCT.AnatomicalStructure
#: Category and property type of segments whose class has no code (3D Slicer's default "Tissue" terminology).
FALLBACK_CATEGORY = codes.SCT.Tissue
FALLBACK_TYPE = codes.SCT.Tissue
#: Manufacturer written into the SEG's equipment modules.
MANUFACTURER = "medssl"
#: The SEG's series number is the source's plus this (or this alone when the source has none).
SERIES_NUMBER_OFFSET = 1000
#: DICOM's length limit of LO values (SeriesDescription, segment labels).
LONG_STRING_LIMIT = 64
#: Type 2 patient and study attributes (present, possibly empty) that highdicom copies from the first source image;
#: a source that omits them (as some anonymisers and modalities do) gives them empty to the SEG.
COPIED_TYPE2_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
)


class DicomSegError(MedsslError, ValueError):
    """A DICOM SEG cannot be made: the label map does not fit the source series, or the source is not one."""


def derived_uid(*parts: str) -> str:
    """A UID that depends only on ``parts`` (pydicom's root + a hash of them): same parts, same UID.

    For deterministic SEG UIDs, e.g. ``derived_uid(source_series_uid, card_name, "series")``, so that
    re-sending after a crash replaces the SEG instead of adding a second one.
    """
    if not parts:
        raise ValueError("derived_uid needs at least one part to derive the UID from")
    return generate_uid(entropy_srcs=[str(part) for part in parts])


def to_dicom_seg(
    segmentation: Segmentation,
    source: str | Path | Sequence[Dataset],
    *,
    series_number: int | None = None,
    series_description: str | None = None,
    sop_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
) -> highdicom.seg.Segmentation:
    """The DICOM SEG of ``segmentation``, referencing the images of ``source`` (see the module docstring).

    Args:
        segmentation: label map ``(D, H, W)`` on the source series' grid (or ``(H, W)`` for one image),
            with its classes and the model card.
        source: the series folder, a single DICOM image file, or the series' datasets (any order).
        series_number: the SEG's SeriesNumber; default the source's + ``SERIES_NUMBER_OFFSET``.
        series_description: default ``"<card name> segmentation"`` (cut to 64 characters).
        sop_instance_uid, series_instance_uid: the SEG's UIDs; new random ones when None (see ``derived_uid``).

    Raises:
        DicomSegError: the label map does not lie on the source's grid, has values without a class, comes
            from another series, or the source mixes series.
        VolumeReadError: the source cannot be read, or holds multi-frame images.
    """
    hd = _highdicom()
    labels = segmentation.labels
    frames = _source_frames(labels, _source_datasets(source, labels))
    frames[0] = _complete_first_source(frames[0], labels)
    segment_numbers = _segment_numbers(segmentation)
    first = frames[0]
    number = series_number if series_number is not None else _default_series_number(first)
    description = series_description if series_description is not None else f"{segmentation.card.name} segmentation"
    software = version("medssl-sdk")
    dataset = hd.seg.Segmentation(
        source_images=frames,
        pixel_array=segment_numbers,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_segment_descriptions(hd, segmentation, software),
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=number,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=f"{MANUFACTURER} {segmentation.card.name}"[:LONG_STRING_LIMIT],
        software_versions=software,
        device_serial_number=(segmentation.card.weights.sha256 or "unpublished")[:16],
        series_description=description[:LONG_STRING_LIMIT],
        content_label="MEDSSL",
        content_description=f"{segmentation.card.name} label map"[:LONG_STRING_LIMIT],
        omit_empty_frames=bool(segment_numbers.any()),  # a SEG needs a frame: no foreground keeps them all
    )
    if "PlaneOrientationSequence" not in dataset.SharedFunctionalGroupsSequence[0]:
        _describe_unplaced_image(dataset, first)
    return dataset


def write_dicom_seg(
    segmentation: Segmentation,
    source: str | Path | Sequence[Dataset],
    path: str | Path,
    overwrite: bool = False,
    **kwargs: object,
) -> Path:
    """Write ``to_dicom_seg(segmentation, source, **kwargs)`` to ``path`` (``.dcm``) atomically; return the path.

    Refuses an existing file unless ``overwrite``, and any file of the source series even with it.
    """
    path = check_output_path(path, (".dcm",), overwrite=overwrite)
    dataset = to_dicom_seg(segmentation, source, **kwargs)
    for source_file in _source_files(source):
        check_output_path(path, (".dcm",), overwrite=overwrite, source=source_file)
    write_atomically(path, lambda temporary: dataset.save_as(temporary, enforce_file_format=True))
    return path


def _highdicom() -> ModuleType:
    """The highdicom module, or an error saying how to install it (it is in the ``dicom`` extra)."""
    try:
        import highdicom
    except ImportError as error:
        raise DicomSegError(f"DICOM SEG output needs highdicom ({error}): pip install 'medssl-sdk[dicom]'") from error
    return highdicom


def _source_datasets(source: str | Path | Sequence[Dataset], labels: Volume) -> list[Dataset]:
    """The source images: a folder's series (the one ``labels`` came from if it says), a file, or the datasets."""
    if isinstance(source, Dataset):
        return [source]
    if not isinstance(source, (str, Path)):
        datasets = list(source)
        if not datasets or not all(isinstance(dataset, Dataset) for dataset in datasets):
            raise DicomSegError(
                "source must be a DICOM series folder, a DICOM image file or a non-empty sequence of pydicom Datasets"
            )
        return datasets
    path = Path(source)
    if path.is_file():
        dataset = read_dicom_header(path)
        if dataset is None or "PixelData" not in dataset:
            raise VolumeReadError(path, "is not a DICOM image; a DICOM SEG needs the DICOM images that were segmented")
        return [dataset]
    if not path.is_dir():
        raise VolumeReadError(path, "does not exist; a DICOM SEG needs the DICOM series (folder) that was segmented")
    return [read_dicom_header(file) for file in _series_in_folder(path, labels.metadata.get("series_uid")).files]


def _series_in_folder(directory: Path, series_uid: str | None) -> DicomSeriesInfo:
    """The series of ``directory`` with ``series_uid``, or its only series."""
    found = list_dicom_series(directory)  # raises if there is none
    matching = [info for info in found if info.series_uid == series_uid] if series_uid else found
    if len(matching) == 1:
        return matching[0]
    listing = "\n".join(f"  {info.summary()}" for info in found)
    if series_uid:
        raise DicomSegError(f"{directory}: holds no series {series_uid}, the one the label map was made from; it holds:\n{listing}")
    raise DicomSegError(
        f"{directory}: holds {len(found)} series and the label map does not say which it was made from "
        f"(metadata series_uid); pass the series' datasets instead:\n{listing}"
    )


def _source_files(source: str | Path | Sequence[Dataset]) -> list[Path]:
    """Files the source was read from (never to be overwritten)."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        return [path] if path.is_file() else [file for file in path.rglob("*") if file.is_file()]
    datasets = [source] if isinstance(source, Dataset) else list(source)
    return [Path(dataset.filename) for dataset in datasets if isinstance(getattr(dataset, "filename", None), (str, Path))]


def _describe(dataset: Dataset, index: int) -> str:
    """How errors name a source image: its file, else its position and SOPInstanceUID."""
    filename = getattr(dataset, "filename", None)
    if isinstance(filename, (str, Path)) and filename:
        return str(filename)
    return f"source image {index} (SOPInstanceUID {dataset.get('SOPInstanceUID', '?')})"


def _source_frames(labels: Volume, datasets: list[Dataset]) -> list[Dataset]:
    """The source images in label-map order: ``frames[d]`` is the image label slice ``d`` was drawn on.

    Checks they are single-frame images of one series (the label map's, when its metadata names one) with
    the label map's rows and columns; 3D label maps must coincide with them in patient space.
    """
    for index, dataset in enumerate(datasets):
        require_single_frame(dataset, Path(_describe(dataset, index)))
    series = sorted({str(dataset.get("SeriesInstanceUID", "")) for dataset in datasets})
    if len(series) != 1:
        raise DicomSegError(
            f"the source images belong to {len(series)} series ({', '.join(series)}); pass the images of one series"
        )
    made_from = labels.metadata.get("series_uid")
    if made_from and made_from != series[0]:
        raise DicomSegError(
            f"the label map was made from series {made_from} ({labels.source}) but the source images are series {series[0]}; "
            "a SEG must reference the images that were segmented"
        )
    height, width = labels.shape[-2:]
    for index, dataset in enumerate(datasets):
        size = (int(dataset.get("Rows", 0)), int(dataset.get("Columns", 0)))
        if size != (height, width):
            raise DicomSegError(
                f"{_describe(dataset, index)}: has {size[0]} x {size[1]} pixels but the label map's slices are {height} x {width}; "
                "a SEG must be made from a segmentation of this series on its own grid"
            )
    if labels.ndim == 2:
        if len(datasets) != 1:
            raise DicomSegError(f"a 2D label map belongs to one image; the source has {len(datasets)}")
        return datasets
    return _match_slices(labels, datasets)


def _match_slices(labels: Volume, datasets: list[Dataset]) -> list[Dataset]:
    """Pair each label slice with the source image at its place in patient space (see ``_source_frames``)."""
    depth = labels.shape[0]
    if len(datasets) != depth:
        raise DicomSegError(
            f"the label map has {depth} slices but the source series has {len(datasets)} images; "
            "a SEG must be made from a segmentation of this series on its own grid"
        )
    affine_lps = LPS_TO_RAS @ labels.affine
    tolerance = max(ABSOLUTE_TOLERANCE_MM, RELATIVE_TOLERANCE * min(labels.spacing))
    step = affine_lps[:3, 0]
    frames: list[Dataset | None] = [None] * depth
    for index, dataset in enumerate(datasets):
        where = _describe(dataset, index)
        corners = _corners_lps(dataset, Path(where))
        position = int(np.rint((corners[0] - affine_lps[:3, 3]) @ step / (step @ step)))
        expected = _corners_lps_of_slice(affine_lps, min(max(position, 0), depth - 1), labels.shape[1:])
        distance = float(np.max(np.linalg.norm(corners - expected, axis=1)))
        if not 0 <= position < depth or distance > tolerance:
            raise DicomSegError(
                f"{where}: this source image does not coincide with any slice of the label map (nearest: slice "
                f"{min(max(position, 0), depth - 1)}, corners {distance:.3g} mm apart, tolerance {tolerance:.3g} mm); "
                "the label map is not on this series' grid: segment the series itself and pass its result"
            )
        if frames[position] is not None:
            raise DicomSegError(
                f"{where}: lies at the same place as another source image (label slice {position}); remove duplicates"
            )
        frames[position] = dataset
    return frames  # every slice filled: ``depth`` distinct positions for ``depth`` images


def _corners_lps(dataset: Dataset, where: Path) -> np.ndarray:
    """``(4, 3)`` LPS centres of the image's corner pixels, from IPP, IOP and PixelSpacing."""
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if keyword not in dataset:
            raise VolumeReadError(
                where, f"has no {keyword}, so its place in patient space is unknown; it cannot be a SEG's 3D source"
            )
    position = tag_numbers(dataset, "ImagePositionPatient", 3, where)
    orientation = tag_numbers(dataset, "ImageOrientationPatient", 6, where)
    row_spacing, column_spacing = tag_numbers(dataset, "PixelSpacing", 2, where, positive=True)
    plane = SlicePlane(orientation[:3], orientation[3:], float(row_spacing), float(column_spacing))
    return _corners_lps_of_slice(plane.affine_lps(position, np.zeros(3)), 0, (int(dataset.Rows), int(dataset.Columns)))


def _corners_lps_of_slice(affine_lps: np.ndarray, index: int, size: tuple[int, int]) -> np.ndarray:
    """``(4, 3)`` positions of the corner pixels of slice ``index`` of a ``(slice, row, column)`` grid."""
    rows, columns = size
    corners = np.array([[index, row, column, 1.0] for row in (0, rows - 1) for column in (0, columns - 1)])
    return (corners @ affine_lps.T)[:, :3]


def _complete_first_source(first: Dataset, labels: Volume) -> Dataset:
    """``first`` with what highdicom reads from it unconditionally; a copy when anything is added (never the caller's).

    Missing ``COPIED_TYPE2_KEYWORDS`` become empty (a Type 2 attribute's "unknown"). A 3D source without a
    SliceThickness value gets the label map's slice spacing along the slice normal, which the SEG's Pixel
    Measures need (its frames are the label map's slices).
    """
    missing = [keyword for keyword in COPIED_TYPE2_KEYWORDS if keyword not in first]
    needs_thickness = labels.ndim == 3 and first.get("SliceThickness") in (None, "")
    if not missing and not needs_thickness:
        return first
    completed = copy.deepcopy(first)
    for keyword in missing:
        setattr(completed, keyword, None)
    if needs_thickness:
        row, column, step = labels.affine[:3, 2], labels.affine[:3, 1], labels.affine[:3, 0]
        normal = np.cross(row, column) / np.linalg.norm(np.cross(row, column))
        completed.SliceThickness = f"{abs(float(step @ normal)):.6g}"
    return completed


def _describe_unplaced_image(dataset: Dataset, source: Dataset) -> None:
    """Fix up highdicom's SEG of an image without patient-space geometry (a radiograph) in place.

    Such an image is oriented by PatientOrientation, which the SEG then needs (copied from the source, empty
    when it has none). highdicom writes a Pixel Measures item with PixelSpacing but no SliceThickness for it,
    which highdicom itself cannot read back; it is dropped (the frames coincide with the referenced image's
    pixels, whose spacing the source holds).
    """
    dataset.PatientOrientation = source.get("PatientOrientation", "")
    shared = dataset.SharedFunctionalGroupsSequence[0]
    measures = shared.get("PixelMeasuresSequence")
    if measures is not None and "SliceThickness" not in measures[0]:
        del shared.PixelMeasuresSequence


def _segment_numbers(segmentation: Segmentation) -> np.ndarray:
    """The label map as segment numbers (label value ``i`` -> segment ``i``), ``(D, H, W)`` or ``(1, H, W)``."""
    array = np.asarray(segmentation.labels.array)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.mod(array, 1) == 0):
            raise DicomSegError(f"{segmentation.labels.source}: the label map holds non-integer values; a SEG needs class labels")
    if array.size and (array.min() < 0 or array.max() >= len(segmentation.classes)):
        raise DicomSegError(
            f"{segmentation.labels.source}: the label map holds values {int(array.min())}..{int(array.max())} but the model "
            f"has {len(segmentation.classes)} classes (0..{len(segmentation.classes) - 1})"
        )
    dtype = np.uint8 if len(segmentation.classes) <= 256 else np.uint16
    return array.astype(dtype).reshape((-1, *array.shape[-2:]))


def _segment_descriptions(hd: ModuleType, segmentation: Segmentation, software: str) -> list[highdicom.seg.SegmentDescription]:
    """One description per foreground class, numbered by label value (``hd``: the highdicom module)."""
    card = segmentation.card
    algorithm = hd.AlgorithmIdentificationSequence(
        name=card.name,
        family=codes.cid7162.ArtificialIntelligence,
        version=software,
        source=MANUFACTURER,
        parameters={"weights_sha256": card.weights.sha256 or "unpublished"},
    )
    codes_by_index = {label.index: label.code for label in card.labels}
    descriptions = []
    for index, name in enumerate(segmentation.classes[1:], start=1):
        code = codes_by_index.get(index)
        category, property_type = (
            (CODED_CATEGORY, hd.sr.CodedConcept(code.value, code.scheme, code.meaning))
            if code is not None
            else (FALLBACK_CATEGORY, FALLBACK_TYPE)
        )
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=index,
                segment_label=name[:LONG_STRING_LIMIT],
                segmented_property_category=category,
                segmented_property_type=property_type,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
            )
        )
    return descriptions


def _default_series_number(source: Dataset) -> int:
    number = source.get("SeriesNumber")
    return SERIES_NUMBER_OFFSET + (int(number) if number not in (None, "") else 0)
