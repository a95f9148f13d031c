"""Test helpers: write Volumes as valid DICOM files with pydicom, and compare images placed in patient space.

- ``write_dicom_series``: a 3D ``Volume`` (e.g. HU) -> a CT or MR series of single-frame files, geometry
  (IOP/IPP in LPS, PixelSpacing, SliceThickness) derived from the Volume's RAS affine, files in shuffled
  order with random names. dcm2niix, pydicom and highdicom accept the result.
- ``write_dicom_image_2d``: an ``(H, W)`` array of stored values -> one DX/CR radiograph.
- ``assert_same_image``: two arrays with affines show the same voxels at the same world positions,
  whatever their axis order or flips (e.g. ours against dcm2niix's NIfTI).
- ``read_with_dcm2niix``: convert a series folder with dcm2niix; its NIfTI data and affine (nibabel order).

Compressed series need pydicom's encoders: ``ENCODER_PACKAGES`` names the pip packages (pyproject's
``dicom`` extra); a missing one is an error saying what to install, never a skip.
"""

from __future__ import annotations

import itertools
import random
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import get_encoder
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    MRImageStorage,
    generate_uid,
)

from medssl_sdk.volume import LPS_TO_RAS, Volume

#: Per modality: SOP class and the attributes of its image module that the series writer fills in.
SERIES_MODALITIES: dict[str, tuple[UID, dict[str, object]]] = {
    "CT": (CTImageStorage, {"ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"], "KVP": "120", "RescaleType": "HU"}),
    "MR": (
        MRImageStorage,
        {
            "ImageType": ["ORIGINAL", "PRIMARY", "M", "NONE"],
            "ScanningSequence": "GR",
            "SequenceVariant": "NONE",
            "ScanOptions": "",
            "MRAcquisitionType": "3D",
            "RepetitionTime": "8.0",
            "EchoTime": "3.5",
            "EchoTrainLength": "1",
            "MagneticFieldStrength": "1.5",
        },
    ),
}

#: pip packages that give pydicom an encoder for the compressed transfer syntaxes the tests write (RLE is built in).
ENCODER_PACKAGES = {JPEG2000Lossless: "pylibjpeg pylibjpeg-openjpeg", JPEGLSLossless: "pyjpegls"}

#: SOP classes of the single-frame radiographs ``write_dicom_image_2d`` writes.
RADIOGRAPH_MODALITIES = {"DX": DigitalXRayImageStorageForPresentation, "CR": ComputedRadiographyImageStorage}


def write_dicom_series(
    volume: Volume,
    directory: str | Path,
    *,
    modality: str = "CT",
    series_uid: str | None = None,
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    rescale: tuple[float, float] = (1.0, -1024.0),
    shuffle: bool = True,
    transfer_syntax: str = ExplicitVRLittleEndian,
    series_description: str = "medssl test series",
    series_number: int = 1,
    seed: int = 0,
    edit: Callable[[Dataset, int], None] | None = None,
) -> list[Path]:
    """Write a 3D ``volume`` as one DICOM series in ``directory`` (created if needed); ``paths[d]`` holds slice ``d``.

    Geometry: the affine (RAS) is turned into LPS; its column for W gives the row cosine (IOP[:3]) and
    the column spacing, its column for H the column cosine (IOP[3:]) and the row spacing (PixelSpacing is
    ``[row spacing, column spacing]``), and slice ``d`` is at ``IPP = affine_lps @ (d, 0, 0, 1)``.
    SliceThickness is the slice step along the normal. H and W columns must be orthogonal (DICOM's IOP).

    Values: stored as int16 ``round((value - intercept) / slope)`` with ``rescale = (slope, intercept)``
    written as RescaleSlope/RescaleIntercept (for CT the default stores HU + 1024). Out-of-range values
    are a ValueError.

    Args:
        volume: ``(D, H, W)`` values, e.g. HU.
        directory: output folder.
        modality: ``"CT"`` or ``"MR"`` (picks SOP class and image module, see ``SERIES_MODALITIES``).
        series_uid, study_uid, frame_of_reference_uid: fixed UIDs (new ones when None), e.g. to put two
            series in one study.
        rescale: ``(slope, intercept)``.
        shuffle: write files in random order with random names (readers must sort by position); else
            ``slice_0000`` ... in slice order.
        transfer_syntax: Explicit/Implicit VR Little Endian, or a compressed syntax pydicom can encode
            (RLE Lossless; JPEG 2000 and JPEG-LS Lossless with ``ENCODER_PACKAGES``).
        series_description, series_number: General Series attributes.
        seed: makes names and order reproducible.
        edit: called as ``edit(dataset, d)`` before each file is saved, to break a slice on purpose
            (move its IPP, drop an attribute, ...).
    """
    if volume.ndim != 3:
        raise ValueError(f"write_dicom_series needs a 3D volume; got shape {volume.shape}")
    if modality not in SERIES_MODALITIES:
        raise ValueError(f"modality must be one of {sorted(SERIES_MODALITIES)}; got {modality!r}")
    sop_class, image_module = SERIES_MODALITIES[modality]
    affine_lps = LPS_TO_RAS @ volume.affine
    slice_step, row_direction, column_direction = (affine_lps[:3, axis] for axis in range(3))
    row_spacing, column_spacing = float(np.linalg.norm(row_direction)), float(np.linalg.norm(column_direction))
    row_cosine, column_cosine = column_direction / column_spacing, row_direction / row_spacing
    if abs(row_cosine @ column_cosine) > 1e-6:
        raise ValueError("the volume's H and W axes are not orthogonal; DICOM's ImageOrientationPatient cannot express that")
    normal = np.cross(row_cosine, column_cosine)
    stored = _stored_values(volume.array, *rescale, np.int16)
    shared = _common_modules(sop_class, modality, study_uid, series_uid, series_description, series_number)
    shared.update(image_module)
    shared.update(
        FrameOfReferenceUID=frame_of_reference_uid or generate_uid(),
        PositionReferenceIndicator="",
        PatientPosition="HFS",
        AcquisitionNumber=1,
        ImageOrientationPatient=[_ds(value) for value in (*row_cosine, *column_cosine)],
        PixelSpacing=[_ds(row_spacing), _ds(column_spacing)],
        SliceThickness=_ds(abs(slice_step @ normal)),
        RescaleSlope=_ds(rescale[0]),
        RescaleIntercept=_ds(rescale[1]),
    )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    names = [f"{rng.getrandbits(64):016x}" if shuffle else f"slice_{d:04d}" for d in range(volume.shape[0])]
    paths = [directory / name for name in names]
    order = list(range(volume.shape[0]))
    if shuffle:
        rng.shuffle(order)
    for d in order:
        position = affine_lps[:3, 3] + d * slice_step
        dataset = _image_dataset(shared, stored[d], signed=True)
        dataset.InstanceNumber = d + 1
        dataset.ImagePositionPatient = [_ds(value) for value in position]
        dataset.SliceLocation = _ds(position @ normal)
        if edit is not None:
            edit(dataset, d)
        _save(dataset, paths[d], transfer_syntax)
    return paths


def write_dicom_image_2d(
    stored: np.ndarray,
    path: str | Path,
    *,
    modality: str = "DX",
    spacing: tuple[float, float] | None = (0.2, 0.15),
    spacing_keyword: str = "PixelSpacing",
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    rescale: tuple[float, float] | None = None,
    edit: Callable[[Dataset], None] | None = None,
) -> Path:
    """Write ``stored`` (``(H, W)`` unsigned stored values < ``2**bits_stored``) as one DX or CR image file.

    ``spacing`` (row, column mm) goes into ``spacing_keyword`` (``PixelSpacing`` or ``ImagerPixelSpacing``;
    None writes neither); ``rescale = (slope, intercept)`` is written when given; ``edit(dataset)`` is
    called before saving, to break the file on purpose.
    """
    if modality not in RADIOGRAPH_MODALITIES:
        raise ValueError(f"modality must be one of {sorted(RADIOGRAPH_MODALITIES)}; got {modality!r}")
    stored = np.asarray(stored)
    if stored.ndim != 2 or stored.min() < 0 or stored.max() >= 2**bits_stored:
        raise ValueError(f"need an (H, W) array of values in [0, 2**{bits_stored}); got shape {stored.shape}")
    shared = _common_modules(RADIOGRAPH_MODALITIES[modality], modality, None, None, "medssl test radiograph", 1)
    shared.update(ImageType=["ORIGINAL", "PRIMARY"], PresentationIntentType="FOR PRESENTATION", PatientOrientation=["L", "F"])
    dataset = _image_dataset(shared, stored.astype(np.uint16), signed=False, bits_stored=bits_stored)
    dataset.PhotometricInterpretation = photometric
    dataset.InstanceNumber = 1
    if spacing is not None:
        setattr(dataset, spacing_keyword, [_ds(value) for value in spacing])
    if rescale is not None:
        dataset.RescaleSlope, dataset.RescaleIntercept, dataset.RescaleType = _ds(rescale[0]), _ds(rescale[1]), "US"
    if edit is not None:
        edit(dataset)
    path = Path(path)
    _save(dataset, path, ExplicitVRLittleEndian)
    return path


def assert_same_image(
    array: np.ndarray, affine: np.ndarray, other_array: np.ndarray, other_affine: np.ndarray, atol_mm: float = 1e-3
) -> None:
    """Assert two 3D images hold the same values at the same world positions, within ``atol_mm``.

    The images may differ in axis order and direction: the map from ``array``'s indices to
    ``other_array``'s (``inv(other_affine) @ affine``) must be a signed permutation with an integer shift,
    the eight corner voxel centres must land within ``atol_mm`` of the other's, and every voxel value
    must equal the value at the matching index.
    """
    index_map = np.linalg.solve(other_affine, affine)
    permutation, shift = np.round(index_map[:3, :3]), np.round(index_map[:3, 3])
    assert np.all(np.abs(permutation).sum(axis=0) == 1) and np.all(np.abs(permutation).sum(axis=1) == 1), (
        f"the grids are not aligned: index map\n{index_map}"
    )
    corners = np.c_[np.array(list(itertools.product(*[(0, size - 1) for size in array.shape]))), np.ones(8)]
    mapped = np.c_[corners[:, :3] @ permutation.T + shift, np.ones(len(corners))]
    distance = np.linalg.norm((corners @ affine.T - mapped @ other_affine.T)[:, :3], axis=1)
    assert distance.max() < atol_mm, f"corner voxels differ by up to {distance.max():.3g} mm"
    other_shape = np.abs(permutation) @ np.array(array.shape)
    assert tuple(other_shape.astype(int)) == tuple(other_array.shape), f"shapes differ: {array.shape} vs {other_array.shape}"
    indices = np.indices(array.shape).reshape(3, -1)
    other_indices = (permutation @ indices + shift[:, None]).astype(int)
    np.testing.assert_array_equal(array.reshape(-1), other_array[tuple(other_indices)])


def read_with_dcm2niix(series_directory: Path, output_directory: Path) -> tuple[np.ndarray, np.ndarray]:
    """Convert ``series_directory`` with dcm2niix; return its NIfTI's scaled data and affine (nibabel's (i, j, k) order)."""
    assert shutil.which("dcm2niix") is not None, (
        "dcm2niix is not installed; the DICOM tests compare against it: `apt-get install dcm2niix` (CI installs it)"
    )
    output_directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["dcm2niix", "-z", "y", "-b", "n", "-f", "converted", "-o", str(output_directory), str(series_directory)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    outputs = sorted(output_directory.glob("*.nii.gz"))
    assert len(outputs) == 1, f"dcm2niix wrote {[p.name for p in outputs]}"
    image = nib.load(outputs[0])
    return image.get_fdata(), image.affine


def _common_modules(
    sop_class: UID, modality: str, study_uid: str | None, series_uid: str | None, description: str, number: int
) -> dict[str, object]:
    """Patient, General Study, General Series, General Equipment and SOP Common attributes (type 1 and 2)."""
    return {
        "SOPClassUID": sop_class,
        "SpecificCharacterSet": "ISO_IR 100",
        "PatientName": "Phantom^Test",
        "PatientID": "MEDSSL-PHANTOM",
        "PatientBirthDate": "",
        "PatientSex": "O",
        "StudyInstanceUID": study_uid or generate_uid(),
        "StudyDate": "20240101",
        "StudyTime": "120000",
        "ReferringPhysicianName": "",
        "StudyID": "1",
        "AccessionNumber": "",
        "Modality": modality,
        "SeriesInstanceUID": series_uid or generate_uid(),
        "SeriesNumber": number,
        "SeriesDescription": description,
        "Manufacturer": "medssl tests",
    }


def _image_dataset(shared: dict[str, object], stored: np.ndarray, *, signed: bool, bits_stored: int = 16) -> Dataset:
    """A dataset with the shared attributes, a new SOPInstanceUID and an Image Pixel module holding ``stored``."""
    dataset = Dataset()
    for keyword, value in shared.items():
        setattr(dataset, keyword, value)
    dataset.SOPInstanceUID = generate_uid()
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.Rows, dataset.Columns = stored.shape
    dataset.BitsAllocated = 16
    dataset.BitsStored = bits_stored
    dataset.HighBit = bits_stored - 1
    dataset.PixelRepresentation = int(signed)
    dataset.PixelData = np.ascontiguousarray(stored, dtype="<i2" if signed else "<u2").tobytes()
    return dataset


def _save(dataset: Dataset, path: Path, transfer_syntax: str) -> None:
    """Save as a DICOM Part 10 file (preamble, file meta) in ``transfer_syntax``."""
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if UID(transfer_syntax).is_compressed:
        _require_encoder(UID(transfer_syntax))
        dataset.compress(transfer_syntax, generate_instance_uid=False)
    else:
        dataset.file_meta.TransferSyntaxUID = transfer_syntax
    dataset.save_as(path, enforce_file_format=True)


def _require_encoder(transfer_syntax: UID) -> None:
    """Fail, naming the pip packages to install, unless pydicom can encode ``transfer_syntax`` here."""
    assert get_encoder(transfer_syntax).is_available, (
        f"pydicom has no encoder for {transfer_syntax.name} here: "
        f"`pip install {ENCODER_PACKAGES.get(transfer_syntax, 'pylibjpeg')}` (pyproject's dicom extra)"
    )


def _stored_values(values: np.ndarray, slope: float, intercept: float, dtype: type[np.integer]) -> np.ndarray:
    stored = np.round((np.asarray(values, dtype=np.float64) - intercept) / slope)
    limits = np.iinfo(dtype)
    if stored.min() < limits.min or stored.max() > limits.max:
        raise ValueError(
            f"values {values.min()}..{values.max()} do not fit {np.dtype(dtype).name} with slope {slope}, intercept {intercept}"
        )
    return stored.astype(dtype)


def _ds(value: float) -> str:
    """A decimal string (DICOM DS, at most 16 characters) for ``value``."""
    text = f"{value:.10g}"
    return text if len(text) <= 16 else f"{value:.8g}"

