"""``read_volume``: one entry point that picks the reader from what the path is."""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset

from medssl_sdk.io.dicom_files import frame_count, read_dicom_header
from medssl_sdk.io.dicom_series import read_dicom_series
from medssl_sdk.io.errors import VolumeReadError
from medssl_sdk.io.image_2d import IMAGE_SUFFIXES, is_image_path, read_image_2d
from medssl_sdk.io.nifti import NIFTI_SUFFIXES, is_nifti_path, read_nifti
from medssl_sdk.volume import Volume


def read_volume(path: str | Path, series_uid: str | None = None, *, progress: bool = False) -> Volume:
    """Read ``path`` as a ``Volume``, choosing the reader from what it is.

    - a folder: a DICOM series (``read_dicom_series``; ``series_uid`` picks one of several series);
    - ``*.nii``, ``*.nii.gz``: NIfTI (``read_nifti``), ``(D, H, W)``;
    - ``*.png``, ``*.jpg``, ``*.jpeg``: a 2D image (``read_image_2d``), ``(H, W)``;
    - a DICOM file (DICM preamble, any suffix; or a bare DICOM image named ``*.dcm``): a single-frame 2D
      image such as CR/DX, ``(H, W)``. A file that is one slice of a cross-sectional series (it has
      ImagePositionPatient) is refused with a pointer to its folder; ``read_image_2d`` reads it alone if
      that is really wanted.

    Anything else (missing path, empty folder, unknown or damaged file) raises ``VolumeReadError`` naming
    the path and the problem. ``progress`` shows progress bars while a DICOM folder is read.
    """
    path = Path(path)
    if not path.exists():
        raise VolumeReadError(path, "does not exist")
    if path.is_dir():
        return read_dicom_series(path, series_uid, progress=progress)
    if series_uid is not None:
        raise VolumeReadError(path, "series_uid= selects a series in a DICOM folder, but this is a file; pass the folder")
    if is_nifti_path(path):
        return read_nifti(path)
    if is_image_path(path):
        return read_image_2d(path)
    dataset = read_dicom_header(path)
    if dataset is not None:
        _refuse_series_slice(dataset, path)
        return read_image_2d(path)
    known = ", ".join(NIFTI_SUFFIXES + IMAGE_SUFFIXES)
    raise VolumeReadError(
        path, f"unknown file type: expected a DICOM folder, a DICOM file (with the DICM preamble) or one of {known}"
    )


def _refuse_series_slice(dataset: Dataset, path: Path) -> None:
    """Raise if the DICOM file at ``path`` (header ``dataset``) is one slice of a 3D series, not a standalone 2D image."""
    if frame_count(dataset) == 1 and "ImagePositionPatient" in dataset:
        modality = dataset.get("Modality", "?")
        raise VolumeReadError(
            path,
            f"is one slice of a {modality} series (SeriesInstanceUID {dataset.get('SeriesInstanceUID', '?')}); "
            f"pass the folder holding the whole series (e.g. {path.parent}) to read it as a volume, "
            "or use read_image_2d() to read this slice alone",
        )
