"""NIfTI-1/2 files (``.nii``, ``.nii.gz``) <-> ``Volume``.

nibabel indexes data as ``(i, j, k)`` and its affine maps ``(i, j, k, 1)`` to RAS+ mm. A ``Volume`` holds
``(D, H, W) = (k, j, i)``: the array is transposed with axes ``(2, 1, 0)`` and the affine's first three
columns are reversed to match (``affine[:, [2, 1, 0, 3]]``). The same permutation, being its own inverse,
turns a Volume back into nibabel's order when writing.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from medssl_sdk.io.errors import VolumeReadError, VolumeWriteError
from medssl_sdk.io.output_paths import check_output_path
from medssl_sdk.volume import Volume
from medssl_zoo.files import write_atomically

NIFTI_SUFFIXES = (".nii", ".nii.gz")

#: Reverses (i, j, k) <-> (k, j, i) on an affine's columns (translation column kept).
_REVERSE_AXES = [2, 1, 0, 3]

#: NIfTI xform codes: 0 "unknown" (readers ignore that transform), 1 "scanner-based anatomical coordinates".
_UNKNOWN_XFORM, _SCANNER_XFORM = 0, 1

#: Largest |cosine| between two affine axes still written as orthogonal (a qform cannot hold a shear).
_ORTHOGONAL_TOLERANCE = 1e-5

#: Errors nibabel lets through for damaged, truncated or non-NIfTI files.
_DAMAGED_FILE_ERRORS = (ImageFileError, OSError, EOFError, ValueError, zlib.error)


def is_nifti_path(path: Path) -> bool:
    """True if the name ends in ``.nii`` or ``.nii.gz`` (any case)."""
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def read_nifti(path: str | Path) -> Volume:
    """Read a 3D NIfTI image as a ``(D, H, W)`` ``Volume`` (D = nibabel's k, H = j, W = i).

    The affine is nibabel's best one (sform if its code is set, else qform), columns reversed to the
    array's order. ``scl_slope``/``scl_inter`` are applied: integer data without scaling (label maps) keep
    their stored dtype, everything else is float32. NaNs are kept (checking them is the caller's job).
    A 4-D image with one volume (trailing axes of length 1) is squeezed; more volumes are an error.
    Metadata: ``source``, ``format`` (``"nifti"``).
    """
    path = Path(path)
    if not path.is_file():
        raise VolumeReadError(path, "does not exist" if not path.exists() else "is not a file")
    try:
        image = nib.load(path)
    except _DAMAGED_FILE_ERRORS as error:
        raise VolumeReadError(path, f"is not a readable NIfTI file ({error}); it may be damaged or truncated") from error
    shape = tuple(image.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) > 3:
        raise VolumeReadError(
            path,
            f"is a {len(shape)}-D image of shape {shape} (e.g. a time series or vector field); medssl reads one 3D volume: "
            "extract one, e.g. `fslroi IN OUT 0 1` or nibabel's image.slicer[..., 0]",
        )
    try:
        data = _scaled_data(image)
    except _DAMAGED_FILE_ERRORS as error:
        raise VolumeReadError(path, f"image data could not be read ({error}); the file may be truncated") from error
    data = data.reshape(shape + (1,) * (3 - len(shape)))
    array = np.ascontiguousarray(data.transpose(2, 1, 0))
    return Volume(array, image.affine[:, _REVERSE_AXES], {"source": str(path), "format": "nifti"})


def write_nifti(volume: Volume, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``volume`` to ``path`` (``.nii`` or ``.nii.gz``, compressed by the suffix) atomically; return the path.

    The array goes back to nibabel's ``(i, j, k)`` order; a 2D ``(H, W)`` volume becomes a single-slice
    3D image along its normal. Integer and boolean arrays (label maps) are written as the smallest of
    uint8, int16, int32 that holds their values; others as float32. Units are mm. The sform holds the
    affine with code 1 (scanner). The qform, which holds only rotations, zooms and shifts, gets the same
    affine with code 1 when its axes are orthogonal, so other tools (ITK, FSL, 3D Slicer) place the image
    identically; a sheared affine (CT gantry tilt) gets qform code 0 (unknown), so readers use the exact sform.

    The target is checked by ``check_output_path`` (suffix, never ``metadata["source"]``, not an existing
    file unless ``overwrite``, parent folder exists), which raises ``VolumeWriteError``. A failure
    mid-write leaves no partial file and any previous file untouched.
    """
    path = check_output_path(path, NIFTI_SUFFIXES, overwrite=overwrite, source=volume.metadata.get("source"))
    image = _nifti_image(volume)
    write_atomically(path, lambda temporary: nib.save(image, temporary))
    return path


def _scaled_data(image: nib.Nifti1Image) -> np.ndarray:
    """The data with scaling applied; unscaled integers as stored, the rest float32."""
    proxy = image.dataobj
    unscaled = getattr(proxy, "slope", 1.0) == 1.0 and getattr(proxy, "inter", 0.0) == 0.0
    if unscaled and np.issubdtype(image.get_data_dtype(), np.integer):
        return np.asanyarray(proxy)
    return image.get_fdata(dtype=np.float32)


def _nifti_image(volume: Volume) -> nib.Nifti1Image:
    """A Nifti1Image holding ``volume`` in nibabel's axis order, with its dtype chosen and xforms set."""
    array, affine = volume.array, volume.affine
    if volume.ndim == 2:  # (H, W) -> (1, H, W); the 2D affine's third column (the normal) becomes the slice axis
        array, affine = array[None], affine[:, [2, 0, 1, 3]]
    if array.size == 0:
        raise VolumeWriteError(f"{volume.source}: the volume is empty (shape {volume.shape}); nothing to write")
    data = array.transpose(2, 1, 0).astype(_storage_dtype(array, volume.source), copy=False)
    nib_affine = affine[:, _REVERSE_AXES]
    image = nib.Nifti1Image(data, nib_affine)
    image.set_data_dtype(data.dtype)
    image.header.set_xyzt_units(xyz="mm")
    image.set_qform(nib_affine, code=_SCANNER_XFORM if _has_orthogonal_axes(nib_affine) else _UNKNOWN_XFORM)
    image.set_sform(nib_affine, code=_SCANNER_XFORM)
    return image


def _has_orthogonal_axes(affine: np.ndarray) -> bool:
    """True if the ``(4, 4)`` affine's three axis columns are orthogonal (no shear), within ``_ORTHOGONAL_TOLERANCE``."""
    axes = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    return bool(np.abs(axes.T @ axes - np.eye(3)).max() <= _ORTHOGONAL_TOLERANCE)


def _storage_dtype(array: np.ndarray, where: str) -> np.dtype:
    """uint8/int16/int32 for integer or boolean arrays (the smallest that holds the values), float32 otherwise."""
    if array.dtype.kind == "b":
        return np.dtype(np.uint8)
    if array.dtype.kind in "iu":
        low, high = int(array.min()), int(array.max())
        for candidate in (np.uint8, np.int16, np.int32):
            if np.iinfo(candidate).min <= low and high <= np.iinfo(candidate).max:
                return np.dtype(candidate)
        raise VolumeWriteError(f"{where}: integer values {low}..{high} do not fit int32, the widest label type NIfTI tools share")
    if array.dtype.kind == "f":
        return np.dtype(np.float32)
    raise VolumeWriteError(f"{where}: arrays of dtype {array.dtype} cannot be written as NIfTI; convert to a real number type")
