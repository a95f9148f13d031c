"""Reading images into ``Volume`` objects and writing them back.

    from medssl_sdk.io import read_volume, write_nifti
    ct = read_volume("ct_dir/")                 # DICOM folder -> (D, H, W) float32, HU
    xray = read_volume("chest.dcm")             # CR/DX -> (H, W)
    write_nifti(ct.with_array(labels), "seg.nii.gz")
    out = check_output_path("seg.png", (".png",), overwrite=False, source=ct.metadata["source"])  # before any writer
"""

from medssl_sdk.io.dicom_series import DicomSeriesInfo, list_dicom_series, read_dicom_series
from medssl_sdk.io.errors import VolumeReadError, VolumeWriteError
from medssl_sdk.io.image_2d import read_image_2d
from medssl_sdk.io.nifti import read_nifti, write_nifti
from medssl_sdk.io.output_paths import check_output_path
from medssl_sdk.io.reader import read_volume

__all__ = [
    "DicomSeriesInfo",
    "VolumeReadError",
    "VolumeWriteError",
    "check_output_path",
    "list_dicom_series",
    "read_dicom_series",
    "read_image_2d",
    "read_nifti",
    "read_volume",
    "write_nifti",
]
