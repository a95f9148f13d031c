"""Series selection rules on small DICOM series written with pydicom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from studies import write_dicom_series

from medssl_sdk.dicom_node.config import SelectionRules
from medssl_sdk.dicom_node.selection import select_series, slice_plane
from medssl_sdk.volume import Volume

RULES = SelectionRules(modalities=("CT",), orientations=("axial",), min_slices=6)


def series(root: Path, name: str, slices: int, *, modality: str = "CT", size: int = 8, affine: np.ndarray | None = None) -> Path:
    """A series of ``slices`` images in ``root/name`` (named like the spool: one folder per series)."""
    array = np.zeros((slices, size, size), np.float32)
    volume = Volume(array, affine if affine is not None else np.diag([1.0, 1.0, 3.0, 1.0])[:, [2, 1, 0, 3]])
    write_dicom_series(volume, root / name, modality=modality, series_uid=name)
    for path in (root / name).iterdir():
        path.rename(path.with_suffix(".dcm"))
    return root / name


def test_the_eligible_series_with_most_images_wins_and_others_say_why(tmp_path: Path) -> None:
    folders = [
        series(tmp_path, "1.1", 8),
        series(tmp_path, "1.2", 10),
        series(tmp_path, "1.3", 12, modality="MR"),
        series(tmp_path, "1.4", 4),
    ]
    coronal = np.array([[0, 0, 1.0, 0], [3.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])  # slice axis anterior
    folders.append(series(tmp_path, "1.5", 14, affine=coronal))
    selection = select_series(folders, RULES)
    assert selection.series_uid == "1.2" and selection.folder == folders[1]
    assert selection.rejected == {
        "1.3": "modality MR not in ['CT']",
        "1.4": "4 images, fewer than min_slices 6",
        "1.5": "coronal slices, not in orientations ['axial']",
    }


def test_a_mixed_series_is_rejected_not_guessed(tmp_path: Path) -> None:
    folder = series(tmp_path, "2.1", 6)
    other = series(tmp_path / "other", "2.1", 6, size=12)  # same SeriesInstanceUID, another matrix size
    for index, path in enumerate(sorted(other.iterdir())):
        path.rename(folder / f"extra{index}.dcm")
    selection = select_series([folder], RULES)
    assert selection.series_uid is None
    assert selection.rejected["2.1"] == "mixed series: 2 different orientations or matrix sizes among 12 images"
    assert "no eligible series" in selection.summary()


def test_a_damaged_file_makes_its_series_ineligible(tmp_path: Path) -> None:
    folder = series(tmp_path, "3.1", 8)
    (folder / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10")
    assert select_series([folder], RULES).rejected["3.1"].startswith("unreadable instance broken.dcm")


def test_slice_planes() -> None:
    assert slice_plane([1, 0, 0, 0, 1, 0]) == "axial"
    assert slice_plane([1, 0, 0, 0, 0, -1]) == "coronal"
    assert slice_plane([0, 1, 0, 0, 0, -1]) == "sagittal"
