"""2D images -> ``(H, W)`` ``Volume``: PNG/JPEG through Pillow, single-frame DICOM (CR, DX, ...) through pydicom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset

from medssl_sdk.io.dicom_files import grey_values, read_dicom_header
from medssl_sdk.io.dicom_tags import has_value, tag_numbers
from medssl_sdk.io.errors import VolumeReadError
from medssl_sdk.volume import Volume

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

#: Pillow modes whose pixels are single grey values kept as they are (8-bit, 16-bit, 32-bit int, float).
_GREY_MODES = {"L", "I;16", "I;16L", "I;16B", "I", "F"}


def is_image_path(path: Path) -> bool:
    """True if the name ends in ``.png``, ``.jpg`` or ``.jpeg`` (any case)."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def read_image_2d(path: str | Path) -> Volume:
    """Read a 2D image as an ``(H, W)`` ``Volume`` (rows, columns).

    - PNG/JPEG: grey images keep their values and dtype (a 16-bit PNG stays uint16); colour, palette and
      alpha images become 8-bit luminance (Pillow's ``L``). Spacing 1 mm (``Volume.from_array``).
    - A single-frame DICOM file (the DICM preamble, any suffix; or a bare DICOM image named ``*.dcm``):
      float32 values as described in ``dicom_files.grey_values`` (rescale, MONOCHROME1 inverted). Spacing
      from ``PixelSpacing``, else ``ImagerPixelSpacing`` (at the detector), else 1 mm; an empty tag counts as
      absent (DICOM's "unknown"), a malformed one is an error. ``metadata["spacing_from"]`` says which was
      used. The affine is axis-aligned: it does not place a slice of a CT/MR series in patient space (read
      the series folder for that).
    """
    path = Path(path)
    if not path.is_file():
        raise VolumeReadError(path, "does not exist" if not path.exists() else "is not a file")
    if is_image_path(path):
        return _read_pillow_image(path)
    dataset = read_dicom_header(path)
    if dataset is not None:
        return _read_dicom_image(dataset, path)
    raise VolumeReadError(path, f"is neither a {'/'.join(IMAGE_SUFFIXES)} image nor a DICOM file (no DICM preamble)")


def _read_pillow_image(path: Path) -> Volume:
    try:
        with Image.open(path) as image:
            mode, image_format = image.mode, image.format
            grey = image if mode in _GREY_MODES else image.convert("L")
            array = np.array(grey)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise VolumeReadError(path, f"is not a readable image ({error}); it may be damaged or truncated") from error
    return Volume.from_array(array, metadata={"source": str(path), "format": str(image_format).lower(), "mode": mode})


def _read_dicom_image(dataset: Dataset, path: Path) -> Volume:
    array = grey_values(dataset, path)
    keyword, spacing = _pixel_spacing(dataset, path)
    metadata = {
        "source": str(path),
        "format": "dicom",
        "modality": str(dataset.get("Modality", "")),
        "photometric_interpretation": str(dataset.get("PhotometricInterpretation", "")),
        "spacing_from": keyword,
        "sop_class_uid": str(dataset.get("SOPClassUID", "")),
        "sop_instance_uid": str(dataset.get("SOPInstanceUID", "")),
        "series_uid": str(dataset.get("SeriesInstanceUID", "")),
        "study_uid": str(dataset.get("StudyInstanceUID", "")),
    }
    return Volume.from_array(array, spacing, metadata)


def _pixel_spacing(dataset: Dataset, path: Path) -> tuple[str, tuple[float, float]]:
    """The tag the spacing comes from (``"none"`` for the 1 mm default) and the (row, column) spacing in mm."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        if has_value(dataset, keyword):
            row, column = tag_numbers(dataset, keyword, 2, path, positive=True).tolist()
            return keyword, (row, column)
    return "none", (1.0, 1.0)
