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

from medssl_sdk.io.errors import VolumeReadError

#: Suffixes that promise a DICOM file: such a file without the DICOM preamble is an error, not ignored.
DICOM_SUFFIXES = {".dcm", ".dicom", ".ima"}

#: Elements larger than this are read only when used (pixel data, mostly).
_DEFER_SIZE = "64 KB"

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


def refuse_misnamed_file(path: Path) -> None:
    """Raise if ``path`` is named like a DICOM file (``.dcm``, ``.dicom``, ``.ima``) but lacks the preamble."""
    if path.suffix.lower() in DICOM_SUFFIXES and not looks_like_dicom(path):
        raise VolumeReadError(
            path, "is named like a DICOM file but lacks the DICM preamble (damaged, truncated or not DICOM); remove or replace it"
        )


def read_header(path: Path) -> Dataset:
    """The dataset of one DICOM Part 10 file, pixel data deferred (read on first use)."""
    try:
        return pydicom.dcmread(path, defer_size=_DEFER_SIZE)
    except Exception as error:  # pydicom raises many types for damaged files
        raise VolumeReadError(path, f"not a readable DICOM file ({type(error).__name__}: {error})") from error


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

    Stored values are decoded (compressed transfer syntaxes through pydicom's plugins), ``MONOCHROME1``
    is inverted within the stored range (``2**BitsStored - 1 - v`` unsigned, ``-1 - v`` signed) so higher
    values are brighter as in ``MONOCHROME2``, then ``RescaleSlope``/``RescaleIntercept`` are applied
    (1 and 0 when absent). Colour images (RGB, or YBR which pydicom turns into RGB) become luminance
    ``0.299 R + 0.587 G + 0.114 B``.
    """
    values = _decode_pixels(dataset, path).astype(np.float32)
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2"))
    if values.ndim == 3:
        return values @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if photometric == "PALETTE COLOR":
        raise VolumeReadError(path, "PALETTE COLOR images are not supported; export the image as greyscale or RGB")
    if photometric == "MONOCHROME1":
        signed = int(dataset.get("PixelRepresentation", 0)) == 1
        values = -1 - values if signed else (2 ** int(dataset.get("BitsStored", 16)) - 1) - values
    slope = float(dataset.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(dataset.get("RescaleIntercept", 0.0) or 0.0)
    return values * np.float32(slope) + np.float32(intercept)


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
