"""``Segmentation``: what ``Model.segment`` returns — a label map on the input's grid plus its class names."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset

from medssl_sdk.io import write_nifti
from medssl_sdk.volume import Volume
from medssl_zoo.card import ModelCard

if TYPE_CHECKING:
    import highdicom


@dataclass(frozen=True)
class Segmentation:
    """A label map with the input's shape and affine.

    Attributes:
        labels: Volume of integer labels, ``(D, H, W)`` or ``(H, W)``; 0 is background.
        classes: class name per label index (``classes[0]`` is the background's).
        card: the card of the model that made it (name, weights sha256, label codes).
    """

    labels: Volume
    classes: tuple[str, ...]
    card: ModelCard

    def mask(self, name: str) -> np.ndarray:
        """Boolean mask of the class called ``name``; an unknown name lists the classes."""
        if name not in self.classes:
            raise KeyError(f"no class {name!r} in this segmentation; classes: {', '.join(self.classes)}")
        return self.labels.array == self.classes.index(name)

    def volumes_ml(self) -> dict[str, float]:
        """Volume in millilitres (area in mm^2 for 2D) of each foreground class, by name."""
        axes = self.labels.affine[:3, : self.labels.ndim]
        # The voxel's true size even for sheared (gantry-tilt) grids: |det| in 3D, the parallelogram's area in 2D.
        voxel = abs(np.linalg.det(axes)) if self.labels.ndim == 3 else float(np.linalg.norm(np.cross(*axes.T)))
        counts = np.bincount(self.labels.array.ravel(), minlength=len(self.classes))
        scale = voxel / 1000.0 if self.labels.ndim == 3 else voxel
        return {name: float(counts[index]) * scale for index, name in enumerate(self.classes) if index > 0}

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the label map as NIfTI (``.nii`` / ``.nii.gz``) atomically; never replaces the input image.

        Refuses an existing file unless ``overwrite``. Returns the path written.
        """
        return write_nifti(self.labels, path, overwrite=overwrite)

    def to_dicom_seg(
        self,
        source: str | Path | Sequence[Dataset],
        *,
        series_number: int | None = None,
        series_description: str | None = None,
        sop_instance_uid: str | None = None,
        series_instance_uid: str | None = None,
    ) -> highdicom.seg.Segmentation:
        """This label map as a DICOM SEG (a pydicom Dataset) referencing the images of ``source``.

        ``source``: the DICOM series folder (or image file) that was segmented, or its pydicom Datasets.
        See ``medssl_sdk.dicom_seg.to_dicom_seg`` (needs the ``dicom`` extra: highdicom);
        ``medssl_sdk.dicom_seg.write_dicom_seg`` writes it to a file.
        """
        from medssl_sdk.dicom_seg import to_dicom_seg

        return to_dicom_seg(
            self,
            source,
            series_number=series_number,
            series_description=series_description,
            sop_instance_uid=sop_instance_uid,
            series_instance_uid=series_instance_uid,
        )

    def __repr__(self) -> str:
        present = [self.classes[i] for i in np.unique(self.labels.array) if 0 < i < len(self.classes)]
        return f"Segmentation({self.card.name!r}, shape={self.labels.shape}, classes present={present})"
