"""medssl inference SDK.

    from medssl_sdk import load
    model = load("phantom-mit-nano")       # a zoo name or a checkpoint directory
    seg = model.segment("ct_dir/")         # DICOM folder, NIfTI, PNG/JPEG, DICOM file, Volume or array
    seg.save("ct_seg.nii.gz")              # or write_dicom_seg(seg, "ct_dir/", "ct_seg.dcm")
"""

from medssl_sdk.dicom_seg import DicomSegError, derived_uid, write_dicom_seg
from medssl_sdk.io import VolumeReadError, VolumeWriteError, read_volume, write_nifti
from medssl_sdk.loading import load
from medssl_sdk.model import Model
from medssl_sdk.segmentation import Segmentation
from medssl_sdk.volume import Volume

__all__ = [
    "DicomSegError",
    "Model",
    "Segmentation",
    "Volume",
    "VolumeReadError",
    "VolumeWriteError",
    "derived_uid",
    "load",
    "read_volume",
    "write_dicom_seg",
    "write_nifti",
]
