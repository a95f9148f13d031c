"""Geometry of a DICOM slice stack: slice order, slice step and the voxel-to-patient affine.

DICOM places every slice by ``ImagePositionPatient`` (IPP, the centre of its first pixel, LPS+ mm) and
``ImageOrientationPatient`` (IOP: the row cosine, the direction in which the column index grows, then the
column cosine, the direction in which the row index grows). ``PixelSpacing`` is ``[row spacing, column
spacing]``: row spacing is the distance between adjacent rows, i.e. a step along the column cosine.

The slices of a series are ordered by the projection of their IPP on the slice normal
``row cosine x column cosine``, and the slice step comes from those positions (never from
``SliceThickness``, which may differ from the spacing, e.g. for overlapping reconstructions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medssl_sdk.io.errors import VolumeReadError

#: Positions may deviate from a uniform grid by this much (mm) ...
ABSOLUTE_TOLERANCE_MM = 0.01
#: ... or by this fraction of the slice step, whichever is larger.
RELATIVE_TOLERANCE = 0.01


@dataclass(frozen=True)
class SlicePlane:
    """The in-plane geometry shared by all slices of a series (LPS+).

    Attributes:
        row_cosine: ``(3,)`` unit vector along which the column index grows.
        column_cosine: ``(3,)`` unit vector along which the row index grows.
        row_spacing: distance between adjacent rows (mm), ``PixelSpacing[0]``.
        column_spacing: distance between adjacent columns (mm), ``PixelSpacing[1]``.
    """

    row_cosine: np.ndarray
    column_cosine: np.ndarray
    row_spacing: float
    column_spacing: float

    @classmethod
    def from_tags(cls, orientation: np.ndarray, pixel_spacing: np.ndarray, where: Path) -> SlicePlane:
        """Build from ``ImageOrientationPatient`` (``(6,)``) and ``PixelSpacing`` (``(2,)``, positive).

        Both as read by ``dicom_tags.tag_numbers`` (finite numbers); raises unless the two cosines are
        orthogonal unit vectors.
        """
        row, column = orientation[:3], orientation[3:]
        if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(column) - 1) > 1e-3 or abs(row @ column) > 1e-3:
            raise VolumeReadError(
                where,
                f"ImageOrientationPatient {orientation.tolist()} is not two orthogonal unit vectors: re-export the image "
                "or correct the tag",
            )
        return cls(row / np.linalg.norm(row), column / np.linalg.norm(column), float(pixel_spacing[0]), float(pixel_spacing[1]))

    @property
    def normal(self) -> np.ndarray:
        """``(3,)`` unit slice normal, ``row_cosine x column_cosine``."""
        return np.cross(self.row_cosine, self.column_cosine)

    def affine_lps(self, first_position: np.ndarray, slice_step: np.ndarray) -> np.ndarray:
        """``(4, 4)`` voxel index ``(slice, row, column)`` -> LPS+ mm.

        Columns: ``slice_step`` (the displacement from one slice to the next), the column cosine times the
        row spacing, the row cosine times the column spacing; translation: the first slice's IPP.
        """
        affine = np.eye(4)
        affine[:3, 0] = slice_step
        affine[:3, 1] = self.column_cosine * self.row_spacing
        affine[:3, 2] = self.row_cosine * self.column_spacing
        affine[:3, 3] = first_position
        return affine


def slice_order(positions: np.ndarray, plane: SlicePlane, names: Sequence[str], where: Path) -> np.ndarray:
    """Indices that sort slices along the normal; raises on duplicate, missing or unevenly spaced slices.

    Args:
        positions: ``(N, 3)`` IPP of each slice, LPS+ mm.
        plane: the series' in-plane geometry.
        names: a label per slice (file name) for messages.
        where: the series folder, for messages.
    """
    along_normal = positions @ plane.normal
    order = np.argsort(along_normal, kind="stable")
    if len(order) < 2:
        return order
    sorted_positions = along_normal[order]
    gaps = np.diff(sorted_positions)
    duplicates = [(names[order[i]], names[order[i + 1]], sorted_positions[i]) for i in np.flatnonzero(gaps < ABSOLUTE_TOLERANCE_MM)]
    if duplicates:
        listed = "; ".join(f"{a} and {b} at {p:.3f} mm" for a, b, p in duplicates[:5])
        raise VolumeReadError(
            where,
            f"{len(duplicates)} pair(s) of slices share a position along the slice normal ({listed}); the folder may hold the "
            "same slice twice or two acquisitions of one series: remove the duplicates",
        )
    step = float(np.median(gaps))
    tolerance = max(ABSOLUTE_TOLERANCE_MM, RELATIVE_TOLERANCE * step)
    problems = []
    for i, gap in enumerate(gaps):
        multiple = round(gap / step)
        between = (
            f"between {sorted_positions[i]:.3f} mm and {sorted_positions[i + 1]:.3f} mm ({names[order[i]]}, {names[order[i + 1]]})"
        )
        if multiple >= 2 and abs(gap - multiple * step) <= tolerance:
            problems.append(f"{multiple - 1} slice(s) missing {between}")
        elif abs(gap - step) > tolerance:
            problems.append(f"a gap of {gap:.4g} mm {between}")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise VolumeReadError(
            where,
            f"slices are not evenly spaced along the slice normal (step {step:.4g} mm, tolerance {tolerance:.3g} mm): {shown}. "
            "A volume needs a complete series with uniform spacing: check that no files are missing or re-export the series",
        )
    return order


def slice_step(sorted_positions: np.ndarray, plane: SlicePlane, single_slice_spacing: float | None, where: Path) -> np.ndarray:
    """``(3,)`` LPS displacement from one slice to the next.

    For two or more slices, the mean step between the first and last IPP; every IPP must lie on that line
    (a constant in-plane offset, e.g. CT gantry tilt, gives a sheared affine that places voxels exactly).
    A single slice has no neighbour: its step is the normal times ``single_slice_spacing`` (the caller
    reads it from SpacingBetweenSlices or SliceThickness), which must be given.
    """
    count = len(sorted_positions)
    if count == 1:
        if single_slice_spacing is None:
            raise VolumeReadError(
                where, "single-slice series without SpacingBetweenSlices or SliceThickness: its slice spacing is unknown"
            )
        return plane.normal * single_slice_spacing
    step = (sorted_positions[-1] - sorted_positions[0]) / (count - 1)
    expected = sorted_positions[0] + np.arange(count)[:, None] * step
    deviation = float(np.max(np.linalg.norm(sorted_positions - expected, axis=1)))
    if deviation > max(ABSOLUTE_TOLERANCE_MM, RELATIVE_TOLERANCE * float(np.linalg.norm(step))):
        raise VolumeReadError(
            where,
            f"slice positions do not lie on one line (largest deviation {deviation:.3g} mm); the series may mix stacks "
            "with different in-plane positions: split it before reading",
        )
    return step
