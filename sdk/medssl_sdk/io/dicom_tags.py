"""Numeric DICOM tags (spacings, positions, orientations, rescale) read as checked float arrays.

Headers from the field hold empty, truncated or mistyped values; these readers turn each into a
``VolumeReadError`` naming the file and the tag, with the numbers printed as plain floats.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from medssl_sdk.io.errors import VolumeReadError


def tag_numbers(dataset: Dataset, keyword: str, count: int, path: Path, *, positive: bool = False) -> np.ndarray:
    """The numeric tag ``keyword`` as a ``(count,)`` float64 array of finite values (``> 0`` if ``positive``).

    E.g. ``tag_numbers(dataset, "PixelSpacing", 2, path, positive=True)``. Raises ``VolumeReadError`` naming
    ``path`` and the tag when it is missing, empty, not numbers, has another number of values, or holds
    non-finite (or, with ``positive``, non-positive) values.
    """
    need = f"need {count} finite{' positive' if positive else ''} number{'s' if count > 1 else ''}"

    def malformed(problem: str) -> VolumeReadError:
        return VolumeReadError(path, f"{keyword} {problem}; {need}: re-export the image or correct the tag")

    if keyword not in dataset:
        raise malformed("is missing")
    try:
        value = dataset[keyword].value
        values = np.atleast_1d(np.asarray([] if _is_empty(value) else value, dtype=np.float64))
    except (TypeError, ValueError) as error:  # text that is not a number, or a value of another VR
        raise malformed(f"is not numeric ({error})") from None
    if values.size == 0:
        raise malformed("is empty")
    if values.shape != (count,):
        raise malformed(f"has {values.size} value{'s' if values.size > 1 else ''} {values.ravel().tolist()}")
    if not np.all(np.isfinite(values)):
        raise malformed(f"has non-finite values {values.tolist()}")
    if positive and not np.all(values > 0):
        raise malformed(f"has values {values.tolist()} that are not positive")
    return values


def has_value(dataset: Dataset, keyword: str) -> bool:
    """True if tag ``keyword`` is present and not empty (an empty type 2 or 3 element means "unknown" in DICOM).

    A value pydicom cannot convert counts as present, so that ``tag_numbers`` reports it.
    """
    try:
        return not _is_empty(dataset.get(keyword))
    except (TypeError, ValueError):
        return True


def _is_empty(value: object) -> bool:
    """True for the values pydicom gives absent or zero-length elements: None, ``""`` or an empty multi-value."""
    return value is None or (isinstance(value, Sequence) and len(value) == 0)
