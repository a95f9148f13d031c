"""``Volume``: an image array with its geometry in patient space.

Conventions (the whole SDK uses them):

- ``array`` holds the spatial axes only, in the network's order: ``(D, H, W)`` for 3D (slices, rows,
  columns for an axial DICOM series) and ``(H, W)`` for 2D (rows, columns).
- ``affine`` is a 4x4 matrix mapping a voxel index, in array order and padded with zeros to three axes,
  ``(d, h, w, 1)`` or ``(h, w, 0, 1)``, to **RAS+** millimetres (NIfTI's world space: +x towards the
  patient's Right, +y Anterior, +z Superior). DICOM's patient space is LPS+ (+x Left, +y Posterior);
  its readers convert explicitly with ``LPS_TO_RAS``. For 2D, the third column is a unit normal
  so the matrix stays invertible.
- ``spacing`` is derived from the affine: the length of each array axis's column, in array order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: diag(-1, -1, 1, 1): turns LPS+ coordinates into RAS+ (and back, it is its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class Volume:
    """An image (2D or 3D) with its voxel-to-RAS affine and where it came from.

    Attributes:
        array: ``(D, H, W)`` or ``(H, W)`` numpy array (intensities, e.g. HU, or labels).
        affine: ``(4, 4)`` float64, voxel index (array order) -> RAS+ mm.
        metadata: source facts, e.g. ``{"source": path, "modality": "CT", "series_uid": ...}``;
            never used for computation, carried to outputs and error messages.
    """

    array: np.ndarray
    affine: np.ndarray
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        array = np.asarray(self.array)
        affine = np.asarray(self.affine, dtype=np.float64)
        where = self.metadata.get("source", "volume")
        if array.ndim not in (2, 3):
            raise ValueError(f"{where}: a Volume holds a 2D (H, W) or 3D (D, H, W) array; got shape {array.shape}")
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise ValueError(f"{where}: the affine must be a finite, invertible 4x4 matrix; got\n{affine}")
        object.__setattr__(self, "array", array)
        object.__setattr__(self, "affine", affine)

    @classmethod
    def from_array(
        cls, array: np.ndarray, spacing: tuple[float, ...] | None = None, metadata: Mapping[str, Any] | None = None
    ) -> Volume:
        """A Volume with an axis-aligned affine: voxel ``(d, h, w)`` at RAS ``(w*sw, h*sh, d*sd)``.

        ``spacing`` is in array order (default 1 mm per axis). Axis 0 of a 3D array runs along +z
        (superior), axis 1 along +y (anterior), axis 2 along +x (right); a 2D image's rows run along +y
        and its columns along +x.
        """
        array = np.asarray(array)
        spacing = tuple(float(s) for s in (spacing or (1.0,) * array.ndim))
        if len(spacing) != array.ndim or min(spacing) <= 0:
            raise ValueError(f"spacing must be {array.ndim} positive numbers (array order); got {spacing}")
        affine = np.eye(4)
        world_axes = (2, 1, 0)[-array.ndim :]  # (z, y, x) for 3D, (y, x) for 2D
        for axis, (world, step) in enumerate(zip(world_axes, spacing)):
            affine[:, axis] = 0.0
            affine[world, axis] = step
        if array.ndim == 2:
            affine[:, 2] = 0.0
            affine[2, 2] = 1.0
        return cls(array, affine, dict(metadata or {}))

    @property
    def ndim(self) -> int:
        """2 or 3."""
        return self.array.ndim

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along each array axis (array order)."""
        return tuple(float(np.linalg.norm(self.affine[:3, axis])) for axis in range(self.ndim))

    @property
    def source(self) -> str:
        """Where the volume was read from (for messages); ``"volume"`` if made in memory."""
        return str(self.metadata.get("source", "volume"))

    def with_array(self, array: np.ndarray, **metadata: Any) -> Volume:
        """Same geometry, another array of the same spatial shape (e.g. a label map), metadata extended."""
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise ValueError(f"{self.source}: new array shape {array.shape} differs from the volume's {self.array.shape}")
        return Volume(array, self.affine, {**self.metadata, **metadata})

    def __repr__(self) -> str:
        spacing = ", ".join(f"{s:.3g}" for s in self.spacing)
        return f"Volume(shape={self.shape}, spacing=({spacing}) mm, dtype={self.array.dtype}, source={self.source!r})"
