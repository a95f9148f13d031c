"""One DICOM file: its header and its pixels as values in the modality's units.

Large pixel data are not read with the header (they are deferred), so scanning a folder of many series
stays cheap; ``grey_values`` loads them when needed. Errors name the file and never echo patient identity.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.misc import is_dicom
from pydicom.pixels import get_decoder

from medssl_sdk.io.dicom_tags import has_value, tag_numbers
from medssl_sdk.io.errors import VolumeReadError

#: Suffixes that promise a DICOM file: such a file without the DICOM preamble must parse as a bare DICOM image.
DICOM_SUFFIXES = {".dcm", ".dicom", ".ima"}

#: The first bytes of a macOS AppleDouble file (``._NAME``, Finder metadata left beside files copied off a Mac).
APPLEDOUBLE_MAGIC = b"\x00\x05\x16\x07"

#: Elements larger than this are read only when used (pixel data, mostly).
_DEFER_SIZE = "64 KB"

#: Attributes a data set needs to be an image.
_IMAGE_KEYWORDS = ("PixelData", "Rows", "Columns")

#: pip packages that add a pydicom decoder for the common compressed transfer syntaxes.
_DECODER_PACKAGES = {
    **dict.fromkeys(
        (uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLossless, uid.JPEGLosslessSV1, uid.JPEGLSLossless,
         uid.JPEGLSNearLossless),
        "pylibjpeg pylibjpeg-libjpeg",
    ),
    **dict.fromkeys(
        (uid.JPEG2000Lossless, uid.JPEG2000, uid.HTJ2KLossless, uid.HTJ2KLosslessRPCL, uid.HTJ2K), "pylibjpeg pylibjpeg-openjpeg"
    ),
}


def looks_like_dicom(path: Path) -> bool:
    """True if ``path`` is a file with the DICOM Part 10 preamble (``DICM`` at byte 128), whatever its suffix."""
    return path.is_file() and is_dicom(path)


def is_appledouble(path: Path) -> bool:
    """True if ``path`` is a macOS AppleDouble metadata file (magic ``00 05 16 07``), whatever its name."""
    with open(path, "rb") as stream:
        return stream.read(len(APPLEDOUBLE_MAGIC)) == APPLEDOUBLE_MAGIC


def read_dicom_header(path: Path) -> Dataset | None:
    """The header of the DICOM file at ``path`` (pixel data deferred), or None if it is not a DICOM file.

    A file with the DICM preamble is DICOM whatever its name (a DICOMDIR or report is returned too: callers
    check for pixel data). A file named ``*.dcm``, ``*.dicom`` or ``*.ima`` without the preamble may be a bare
    data set, as old exports write them: it is parsed with ``force=True`` and accepted if it is an image
    (PixelData, Rows, Columns), its transfer syntax being the encoding pydicom found. Raises
    ``VolumeReadError`` for a DICOM file that cannot be parsed and for a DICOM-named file that is neither.
    """
    if looks_like_dicom(path):
        return _read_part10_header(path)
    if path.suffix.lower() not in DICOM_SUFFIXES:
        return None
    return _read_bare_image(path)


def _read_part10_header(path: Path) -> Dataset:
    """The dataset of one DICOM Part 10 file, pixel data deferred (read on first use)."""
    try:
        return pydicom.dcmread(path, defer_size=_DEFER_SIZE)
    except Exception as error:  # pydicom raises many types for damaged files
        raise VolumeReadError(path, f"not a readable DICOM file ({type(error).__name__}: {error})") from error


def _read_bare_image(path: Path) -> Dataset:
    """A DICOM image data set written without preamble and file meta; its TransferSyntaxUID set from its encoding."""
    try:
        dataset = pydicom.dcmread(path, force=True, defer_size=_DEFER_SIZE)
        lacking = [keyword for keyword in _IMAGE_KEYWORDS if keyword not in dataset]
        problem = f"lacks {', '.join(lacking)}" if lacking else ""
    except Exception as error:  # pydicom raises many types for files that are not DICOM
        problem = f"{type(error).__name__}: {error}"
    if problem:
        raise VolumeReadError(
            path,
            f"is named like a DICOM file but has no DICM preamble and does not parse as a DICOM image ({problem}); "
            "it may be damaged, truncated or not DICOM: remove or replace it",
        )
    if "TransferSyntaxUID" not in dataset.file_meta:
        implicit_vr, little_endian = dataset.original_encoding
        dataset.file_meta.TransferSyntaxUID = (
            uid.ImplicitVRLittleEndian if implicit_vr else uid.ExplicitVRLittleEndian if little_endian else uid.ExplicitVRBigEndian
        )
    return dataset


def frame_count(dataset: Dataset) -> int:
    """Number of frames in the file (1 for classic single-frame images)."""
    return int(dataset.get("NumberOfFrames", 1) or 1)


def require_single_frame(dataset: Dataset, path: Path) -> None:
    """Raise unless the file holds one frame: multi-frame (enhanced) images are not read yet."""
    if frame_count(dataset) > 1:
        raise VolumeReadError(
            path,
            f"is a multi-frame image ({frame_count(dataset)} frames, e.g. enhanced CT/MR); medssl reads classic "
            "single-frame images only: convert it with `dcm2niix -z y -o OUTDIR FOLDER` and read the NIfTI",
        )


def grey_values(dataset: Dataset, path: Path) -> np.ndarray:
    """The image as ``(H, W)`` float32 in the modality's units (e.g. HU for CT).

    In DICOM's order: stored values are decoded (compressed transfer syntaxes through pydicom's plugins),
    the modality rescale ``RescaleSlope * v + RescaleIntercept`` is applied (1 and 0 when absent), then
    ``MONOCHROME1`` is inverted within the rescaled range of the stored values (``low + high - v``) so
    higher values are brighter as in ``MONOCHROME2``. Colour images (RGB, or YBR which pydicom turns into
    RGB) become luminance ``0.299 R + 0.587 G + 0.114 B``.
    """
    values = _decode_pixels(dataset, path).astype(np.float32)
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2"))
    if values.ndim == 3:
        return values @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if photometric == "PALETTE COLOR":
        raise VolumeReadError(path, "PALETTE COLOR images are not supported; export the image as greyscale or RGB")
    slope, intercept = _modality_rescale(dataset, path)
    values = values * np.float32(slope) + np.float32(intercept)
    if photometric == "MONOCHROME1":
        low, high = sorted(_stored_range(dataset) * slope + intercept)
        values = np.float32(low + high) - values
    return values


def _modality_rescale(dataset: Dataset, path: Path) -> tuple[float, float]:
    """``(RescaleSlope, RescaleIntercept)``, 1 and 0 when absent or empty."""
    slope, intercept = (
        float(tag_numbers(dataset, keyword, 1, path)[0]) if has_value(dataset, keyword) else default
        for keyword, default in (("RescaleSlope", 1.0), ("RescaleIntercept", 0.0))
    )
    if slope == 0:
        raise VolumeReadError(path, "RescaleSlope is 0, which maps all pixels to one value: re-export the image or correct the tag")
    return slope, intercept


def _stored_range(dataset: Dataset) -> np.ndarray:
    """``(2,)`` the smallest and largest value ``BitsStored`` bits can hold (signed if PixelRepresentation is 1)."""
    bits = int(dataset.get("BitsStored", 16))
    if int(dataset.get("PixelRepresentation", 0)) == 1:
        return np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1], dtype=np.float64)
    return np.array([0, 2**bits - 1], dtype=np.float64)


def _decode_pixels(dataset: Dataset, path: Path) -> np.ndarray:
    """The stored pixel values of a single-frame image: ``(H, W)``, or ``(H, W, 3)`` RGB for colour images."""
    if "PixelData" not in dataset:
        raise VolumeReadError(path, "has no pixel data (not an image: e.g. a DICOMDIR, report or presentation state)")
    require_single_frame(dataset, path)
    _require_decoder(dataset, path)
    try:
        return dataset.pixel_array
    except Exception as error:  # truncated or damaged pixel data, decoder failures
        raise VolumeReadError(path, f"pixel data could not be decoded ({type(error).__name__}: {error})") from error


def _require_decoder(dataset: Dataset, path: Path) -> None:
    """Raise unless pydicom can decode this file's transfer syntax here."""
    transfer_syntax = uid.UID(getattr(dataset, "file_meta", Dataset()).get("TransferSyntaxUID", ""))
    if not transfer_syntax:
        raise VolumeReadError(path, "has no TransferSyntaxUID in its file meta information; the file is damaged")
    if not transfer_syntax.is_compressed:
        return
    named = f"{transfer_syntax.name} ({transfer_syntax})"
    try:
        decoder = get_decoder(transfer_syntax)
    except NotImplementedError:
        raise VolumeReadError(
            path,
            f"pixel data are compressed as {named}, which pydicom cannot decode; convert the files to an "
            "uncompressed transfer syntax first, e.g. `gdcmconv --raw IN OUT` or dcmtk's `dcmconv +te IN OUT`",
        ) from None
    if decoder.is_available:
        return
    packages = _DECODER_PACKAGES.get(transfer_syntax)
    install = f"`pip install {packages}`" if packages else "one of: " + "; ".join(decoder.missing_dependencies)
    raise VolumeReadError(path, f"pixel data are compressed as {named} and no decoder for it is installed; install {install}")
