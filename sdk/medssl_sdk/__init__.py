"""medssl inference SDK.

    from medssl_sdk import load
    model = load("phantom-mit-nano")       # a zoo name or a checkpoint directory
    seg = model.segment("ct_dir/")         # DICOM folder, NIfTI, PNG/JPEG, DICOM file, Volume or array
    seg.save("ct_seg.nii.gz")
"""

from medssl_sdk.io import VolumeReadError, VolumeWriteError, read_volume, write_nifti
from medssl_sdk.loading import load
from medssl_sdk.model import Model
from medssl_sdk.segmentation import Segmentation
from medssl_sdk.volume import Volume

__all__ = ["Model", "Segmentation", "Volume", "VolumeReadError", "VolumeWriteError", "load", "read_volume", "write_nifti"]
