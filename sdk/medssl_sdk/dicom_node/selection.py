"""Series selection: which series of a complete study is segmented.

A series is eligible when its Modality is accepted, it has at least ``min_slices`` single-frame images that
share one orientation and one matrix size (a mix is reported, not guessed at), and its slice plane
(the patient axis closest to the slice normal) is accepted. The eligible series with the most images wins
(ties: the lowest SeriesInstanceUID). Headers only are read; reasons name series by UID, never the patient.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from medssl_sdk.dicom_node.config import SelectionRules
from medssl_sdk.dicom_node.spool import finished_files
from medssl_sdk.io.dicom_files import frame_count

#: ``ORIENTATIONS`` name per patient axis (x: sagittal normal, y: coronal, z: axial).
_PLANE_BY_AXIS = ("sagittal", "coronal", "axial")


@dataclass(frozen=True)
class SeriesSelection:
    """What selection found in a study.

    Attributes:
        series_uid, folder: the chosen series (None when none is eligible).
        rejected: SeriesInstanceUID -> why it is not eligible.
    """

    series_uid: str | None
    folder: Path | None
    rejected: dict[str, str]

    def summary(self) -> str:
        """One line for the log: the choice and each rejection."""
        reasons = "; ".join(f"{uid}: {why}" for uid, why in self.rejected.items()) or "none"
        chosen = self.series_uid or "no eligible series"
        return f"selected {chosen} (rejected: {reasons})"


def slice_plane(orientation: list[float]) -> str:
    """``"axial"``, ``"coronal"`` or ``"sagittal"`` for an ImageOrientationPatient (6 direction cosines)."""
    normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
    return _PLANE_BY_AXIS[int(np.argmax(np.abs(normal)))]


def series_problem(folder: Path, rules: SelectionRules) -> tuple[str | None, int]:
    """Why the series in ``folder`` is not eligible (None if it is), and its image count."""
    headers = []
    for path in finished_files(folder, "*.dcm"):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as error:  # pydicom raises many types for damaged files
            return f"unreadable instance {path.name} ({type(error).__name__})", 0
        if not all(keyword in header for keyword in ("SOPInstanceUID", "Rows", "Columns")):
            return f"unreadable instance {path.name} (incomplete header: no SOPInstanceUID, Rows or Columns)", 0
        headers.append(header)
    count = len(headers)
    modalities = {str(header.get("Modality", "")) for header in headers}
    if len(modalities) != 1 or not modalities <= set(rules.modalities):
        return f"modality {'/'.join(sorted(modalities)) or 'missing'} not in {list(rules.modalities)}", count
    if count < rules.min_slices:
        return f"{count} images, fewer than min_slices {rules.min_slices}", count
    grids = set()
    for header in headers:
        orientation = header.get("ImageOrientationPatient")
        if orientation is None or len(orientation) != 6 or frame_count(header) != 1:
            return "not a stack of single-frame cross-sectional images (no ImageOrientationPatient or multi-frame)", count
        grids.add((tuple(round(float(value), 4) for value in orientation), header.get("Rows"), header.get("Columns")))
    if len(grids) > 1:
        return f"mixed series: {len(grids)} different orientations or matrix sizes among {count} images", count
    plane = slice_plane(list(next(iter(grids))[0]))
    if plane not in rules.orientations:
        return f"{plane} slices, not in orientations {list(rules.orientations)}", count
    return None, count


def select_series(series_folders: list[Path], rules: SelectionRules) -> SeriesSelection:
    """Pick the eligible series with the most images among ``series_folders`` (each named by its SeriesInstanceUID)."""
    eligible: list[tuple[int, str, Path]] = []
    rejected: dict[str, str] = {}
    for folder in series_folders:
        problem, count = series_problem(folder, rules)
        if problem is None:
            eligible.append((-count, folder.name, folder))
        else:
            rejected[folder.name] = problem
    if not eligible:
        return SeriesSelection(None, None, rejected)
    _, uid, folder = min(eligible)
    return SeriesSelection(uid, folder, rejected)
