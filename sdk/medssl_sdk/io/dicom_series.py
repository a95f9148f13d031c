"""A folder of DICOM files -> its series -> one series as a 3D ``Volume``.

The folder is searched recursively. Hidden files (a name or folder starting with ``.``), macOS AppleDouble
files, files that are not DICOM and DICOM files without pixel data (DICOMDIR, reports, presentation states)
are ignored and counted in ``metadata["ignored_files"]``. A file named ``*.dcm`` without the DICOM preamble
is read if it parses as a bare DICOM image (old exports); one that does not, or a DICOM file that cannot be
parsed, is an error (it may be a lost slice).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from tqdm.auto import tqdm

from medssl_sdk.io.dicom_files import grey_values, is_appledouble, read_dicom_header, require_single_frame
from medssl_sdk.io.dicom_geometry import SlicePlane, slice_order, slice_step
from medssl_sdk.io.dicom_tags import has_value, tag_numbers
from medssl_sdk.io.errors import VolumeReadError
from medssl_sdk.volume import LPS_TO_RAS, Volume

#: SeriesDescription is cut to this many characters in listings (DICOM's limit for its VR, LO).
DESCRIPTION_LIMIT = 64

#: Per-slice attributes every slice of a series must share: (keyword, number of values, whether they must be > 0).
_SHARED_GRID = (("ImageOrientationPatient", 6, False), ("PixelSpacing", 2, True), ("Rows", 1, True), ("Columns", 1, True))


@dataclass(frozen=True)
class DicomSeriesInfo:
    """One series found in a folder (no patient identity).

    Attributes:
        series_uid: SeriesInstanceUID.
        modality: e.g. ``"CT"``.
        description: SeriesDescription (``""`` when absent).
        series_number: SeriesNumber, or ``None``.
        study_uid: StudyInstanceUID.
        files: the series' image files, sorted by path (not by position).
    """

    series_uid: str
    modality: str
    description: str
    series_number: int | None
    study_uid: str
    files: tuple[Path, ...]

    @property
    def num_images(self) -> int:
        return len(self.files)

    def summary(self) -> str:
        """One line: UID, modality, number, image count and description (cut to ``DESCRIPTION_LIMIT`` characters)."""
        number = "" if self.series_number is None else f" #{self.series_number}"
        description = self.description
        if len(description) > DESCRIPTION_LIMIT:
            description = description[: DESCRIPTION_LIMIT - 1] + "…"
        return f"{self.series_uid}  {self.modality or '?'}{number}  {self.num_images} images  {description!r}"


@dataclass(frozen=True)
class _FolderScan:
    """Headers of the image files in a folder, grouped by SeriesInstanceUID, and what was ignored."""

    series: dict[str, list[tuple[Path, Dataset]]]
    ignored: dict[str, int]

    def infos(self) -> list[DicomSeriesInfo]:
        """Every series, ordered by series number (unnumbered last), then UID."""
        infos = [self.info(uid) for uid in self.series]
        return sorted(infos, key=lambda info: (info.series_number is None, info.series_number or 0, info.series_uid))

    def info(self, series_uid: str) -> DicomSeriesInfo:
        images = self.series[series_uid]
        first = images[0][1]
        number = first.get("SeriesNumber")
        return DicomSeriesInfo(
            series_uid=series_uid,
            modality=str(first.get("Modality", "")),
            description=str(first.get("SeriesDescription", "")),
            series_number=None if number in (None, "") else int(number),
            study_uid=str(first.get("StudyInstanceUID", "")),
            files=tuple(path for path, _ in images),
        )


def list_dicom_series(directory: str | Path) -> list[DicomSeriesInfo]:
    """The image series in ``directory`` (searched recursively), ordered by series number then UID."""
    return _scan_folder(Path(directory), progress=False).infos()


def read_dicom_series(directory: str | Path, series_uid: str | None = None, *, progress: bool = False) -> Volume:
    """Read one series of single-frame DICOM slices as a ``(D, H, W)`` float32 ``Volume`` (slice, row, column).

    Slices are sorted along the slice normal (row cosine x column cosine) by the projection of their
    ``ImagePositionPatient``; the slice step comes from those positions and must be uniform (a missing
    slice, uneven gaps or duplicate positions are errors). Values are ``RescaleSlope * stored +
    RescaleIntercept`` per slice (HU for CT). The affine is built in LPS from IOP/IPP/PixelSpacing
    (see ``dicom_geometry``) and returned in RAS as ``LPS_TO_RAS @ affine_lps``; oblique and tilted
    stacks are represented exactly.

    Args:
        directory: folder holding the series (other series and non-image files may be there too).
        series_uid: the SeriesInstanceUID to read; required when the folder holds several series.
        progress: show a progress bar while reading pixel data.

    Metadata: ``source``, ``format`` (``"dicom"``), ``modality``, ``series_uid``, ``study_uid``,
    ``frame_of_reference_uid``, ``series_description``, ``series_number``, ``num_slices``, ``sop_class_uid``,
    ``sop_instance_uids`` and ``files`` (both in array order along D), ``ignored_files`` (reason -> count).
    """
    directory = Path(directory)
    scan = _scan_folder(directory, progress)
    info = scan.info(_choose_series(scan, series_uid, directory))
    images, affine = _sorted_slices_and_affine(scan.series[info.series_uid], directory)
    array = _stack_pixels(images, directory, progress)
    first = images[0][1]
    metadata = {
        "source": str(directory),
        "format": "dicom",
        "modality": info.modality,
        "series_uid": info.series_uid,
        "study_uid": info.study_uid,
        "frame_of_reference_uid": str(first.get("FrameOfReferenceUID", "")),
        "series_description": info.description,
        "series_number": info.series_number,
        "num_slices": len(images),
        "sop_class_uid": str(first.get("SOPClassUID", "")),
        "sop_instance_uids": tuple(str(dataset.get("SOPInstanceUID", "")) for _, dataset in images),
        "files": tuple(str(path) for path, _ in images),
        "ignored_files": dict(scan.ignored),
    }
    return Volume(array, affine, metadata)


def _scan_folder(directory: Path, progress: bool) -> _FolderScan:
    """Read the header of every file under ``directory``; group image files by SeriesInstanceUID."""
    if not directory.is_dir():
        raise VolumeReadError(directory, "is not a folder" if directory.exists() else "does not exist")
    files = sorted(path for path in directory.rglob("*") if path.is_file())
    series: dict[str, list[tuple[Path, Dataset]]] = {}
    ignored: Counter[str] = Counter()
    for path in tqdm(files, desc="Scanning DICOM files", unit="file", disable=not progress):
        if any(part.startswith(".") for part in path.relative_to(directory).parts):  # never opened
            ignored["hidden"] += 1
            continue
        if is_appledouble(path):
            ignored["AppleDouble (macOS metadata)"] += 1
            continue
        dataset = read_dicom_header(path)
        if dataset is None:
            ignored["not DICOM"] += 1
            continue
        if "PixelData" not in dataset:
            ignored["DICOM without pixel data"] += 1
            continue
        uid = str(dataset.get("SeriesInstanceUID", ""))
        if not uid:
            raise VolumeReadError(path, "is a DICOM image without SeriesInstanceUID; it cannot be assigned to a series")
        series.setdefault(uid, []).append((path, dataset))
    if not series:
        found = ", ".join(f"{count} {reason}" for reason, count in ignored.items()) or "no files"
        raise VolumeReadError(directory, f"holds no DICOM image files ({found}); point to the folder of a DICOM series")
    return _FolderScan(series, dict(ignored))


def _choose_series(scan: _FolderScan, series_uid: str | None, directory: Path) -> str:
    """The UID to read: the one asked for, or the only one."""
    if series_uid is not None and series_uid in scan.series:
        return series_uid
    if series_uid is None and len(scan.series) == 1:
        return next(iter(scan.series))
    listing = "\n".join(f"  {info.summary()}" for info in scan.infos())
    if series_uid is None:
        problem = f"holds {len(scan.series)} series; choose one with series_uid= (CLI: --series UID):\n{listing}"
    else:
        problem = f"holds no series with SeriesInstanceUID {series_uid}; it holds:\n{listing}"
    raise VolumeReadError(directory, problem)


def _sorted_slices_and_affine(
    images: Sequence[tuple[Path, Dataset]], directory: Path
) -> tuple[list[tuple[Path, Dataset]], np.ndarray]:
    """The slices in order along the normal, and the ``(4, 4)`` voxel ``(slice, row, column)`` -> RAS affine."""
    for path, dataset in images:
        require_single_frame(dataset, path)
    plane = _common_plane(images, directory)
    positions = np.array([tag_numbers(dataset, "ImagePositionPatient", 3, path) for path, dataset in images])
    order = slice_order(positions, plane, [path.name for path, _ in images], directory)
    single_slice_spacing = _single_slice_spacing(*images[0]) if len(images) == 1 else None
    step = slice_step(positions[order], plane, single_slice_spacing, directory)
    return [images[i] for i in order], LPS_TO_RAS @ plane.affine_lps(positions[order[0]], step)


def _common_plane(images: Sequence[tuple[Path, Dataset]], directory: Path) -> SlicePlane:
    """The orientation, pixel spacing and size every slice shares.

    Raises naming the files that lack a geometry tag, a slice whose tag is malformed (``tag_numbers``) or
    the first slice whose values differ from the first one's.
    """
    first_path, first = images[0]
    for keyword in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
        lacking = [path for path, dataset in images if keyword not in dataset]
        if lacking:
            raise VolumeReadError(
                lacking[0],
                f"has no {keyword}, so it cannot be placed in a volume ({len(lacking)} file(s) of the series lack it); "
                "for a single radiograph use read_image_2d()",
            )
    first_grid = _slice_grid(first, first_path)
    for path, dataset in images[1:]:
        grid = _slice_grid(dataset, path)
        for keyword, values in grid.items():
            if not np.allclose(values, first_grid[keyword], rtol=1e-4, atol=1e-4):
                raise VolumeReadError(
                    directory,
                    f"the series mixes values of {keyword} ({first_path.name}: {first_grid[keyword].tolist()}, "
                    f"{path.name}: {values.tolist()}), e.g. a localizer or a second stack inside one series; remove the odd files",
                )
    return SlicePlane.from_tags(first_grid["ImageOrientationPatient"], first_grid["PixelSpacing"], first_path)


def _slice_grid(dataset: Dataset, path: Path) -> dict[str, np.ndarray]:
    """The ``_SHARED_GRID`` attributes of one slice, each checked by ``tag_numbers``."""
    return {keyword: tag_numbers(dataset, keyword, count, path, positive=positive) for keyword, count, positive in _SHARED_GRID}


def _single_slice_spacing(path: Path, dataset: Dataset) -> float | None:
    """The slice spacing of a lone slice: SpacingBetweenSlices, else SliceThickness, else None.

    SpacingBetweenSlices wins because it is what the step between slice positions measures for longer
    series (centre to centre); SliceThickness is the reconstructed slab's thickness, which differs from
    it for overlapping or gapped reconstructions. dcm2niix makes the same choice.
    """
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        if has_value(dataset, keyword):
            return float(tag_numbers(dataset, keyword, 1, path, positive=True)[0])
    return None


def _stack_pixels(images: Sequence[tuple[Path, Dataset]], directory: Path, progress: bool) -> np.ndarray:
    """``(D, H, W)`` float32 values of the sorted slices."""
    first = images[0][1]
    array = np.empty((len(images), int(first.Rows), int(first.Columns)), dtype=np.float32)
    for index, (path, dataset) in enumerate(tqdm(images, desc=f"Reading {directory.name}", unit="slice", disable=not progress)):
        array[index] = grey_values(dataset, path)
    return array
