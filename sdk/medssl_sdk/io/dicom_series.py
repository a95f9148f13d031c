"""A folder of DICOM files -> its series -> one series as a 3D ``Volume``.

The folder is searched recursively. Files without the DICOM preamble and DICOM files without pixel data
(DICOMDIR, reports, presentation states) are ignored and counted in ``metadata["ignored_files"]``; a file
named ``*.dcm`` that is not DICOM, or a DICOM file that cannot be parsed, is an error (it may be a lost slice).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from tqdm.auto import tqdm

from medssl_sdk.io.dicom_files import grey_values, looks_like_dicom, read_header, refuse_misnamed_file, require_single_frame
from medssl_sdk.io.dicom_geometry import SlicePlane, slice_order, slice_step
from medssl_sdk.io.errors import VolumeReadError
from medssl_sdk.volume import LPS_TO_RAS, Volume


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
        """One line: UID, modality, number, image count and description."""
        number = "" if self.series_number is None else f" #{self.series_number}"
        return f"{self.series_uid}  {self.modality or '?'}{number}  {self.num_images} images  {self.description!r}"


@dataclass(frozen=True)
class _FolderScan:
    """Headers of the image files in a folder, grouped by SeriesInstanceUID, and what was ignored."""

    series: dict[str, list[tuple[Path, Dataset]]]
    ignored: dict[str, int]

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
    scan = _scan_folder(Path(directory), progress=False)
    infos = [scan.info(uid) for uid in scan.series]
    return sorted(infos, key=lambda info: (info.series_number is None, info.series_number or 0, info.series_uid))


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
        refuse_misnamed_file(path)
        if not looks_like_dicom(path):
            ignored["not DICOM"] += 1
            continue
        dataset = read_header(path)
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
    listing = "\n".join(f"  {scan.info(uid).summary()}" for uid in scan.series)
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
    positions = np.array([_position(dataset, path) for path, dataset in images])
    order = slice_order(positions, plane, [path.name for path, _ in images], directory)
    first = images[order[0]][1]
    thickness = first.get("SpacingBetweenSlices") or first.get("SliceThickness")
    step = slice_step(positions[order], plane, None if thickness is None else float(thickness), directory)
    return [images[i] for i in order], LPS_TO_RAS @ plane.affine_lps(positions[order[0]], step)


def _common_plane(images: Sequence[tuple[Path, Dataset]], directory: Path) -> SlicePlane:
    """The orientation, pixel spacing and size every slice shares; raises naming the first slice that differs."""
    first_path, first = images[0]
    for keyword in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
        lacking = [path for path, dataset in images if keyword not in dataset]
        if lacking:
            raise VolumeReadError(
                lacking[0],
                f"has no {keyword}, so it cannot be placed in a volume ({len(lacking)} file(s) of the series lack it); "
                "for a single radiograph use read_image_2d()",
            )
    plane = SlicePlane.from_tags(first.ImageOrientationPatient, first.PixelSpacing, first_path)
    for path, dataset in images[1:]:
        for keyword in ("ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"):
            mine, theirs = dataset.get(keyword), first.get(keyword)
            if mine is None or not np.allclose(np.asarray(mine, float), np.asarray(theirs, float), rtol=1e-4, atol=1e-4):
                raise VolumeReadError(
                    directory,
                    f"the series mixes values of {keyword} ({first_path.name}: {theirs}, {path.name}: {mine}), e.g. a "
                    "localizer or a second stack inside one series; remove the odd files",
                )
    return plane


def _position(dataset: Dataset, path: Path) -> np.ndarray:
    position = np.asarray(dataset.ImagePositionPatient, dtype=np.float64)
    if position.shape != (3,) or not np.all(np.isfinite(position)):
        raise VolumeReadError(path, f"invalid ImagePositionPatient {list(position)}: need 3 finite numbers")
    return position


def _stack_pixels(images: Sequence[tuple[Path, Dataset]], directory: Path, progress: bool) -> np.ndarray:
    """``(D, H, W)`` float32 values of the sorted slices."""
    first = images[0][1]
    array = np.empty((len(images), int(first.Rows), int(first.Columns)), dtype=np.float32)
    for index, (path, dataset) in enumerate(tqdm(images, desc=f"Reading {directory.name}", unit="slice", disable=not progress)):
        array[index] = grey_values(dataset, path)
    return array
