"""Pre-processing from a card's input spec, and its exact inverse for outputs.

Forward (:func:`prepare`): reorient the volume to the card's axis layout, resample it to the card's
spacing, normalise intensities, repeat to the network's channel count. Inverse (:func:`restore_labels`):
class probabilities on the prepared grid are resampled linearly back onto the reoriented input grid,
arg-maxed, and the labels flipped/permuted back, so a segmentation has the input's shape and affine.

Resampling keeps the field of view: a grid of ``n`` voxels of spacing ``s`` becomes ``round(n * s / t)``
voxels covering the same extent, sampled at cell centres (``align_corners=False``). The inverse maps
those cells back the same way, so forward and inverse describe the same physical space.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import nibabel.orientations as orientations
import numpy as np
import torch
import torch.nn.functional as F

from medssl_sdk.volume import Volume
from medssl_zoo.card import InputSpec, Intensity

LINEAR_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


@dataclass(frozen=True)
class PreparedInput:
    """A volume made ready for the network.

    Attributes:
        tensor: ``(C, *S)`` float32, reoriented, resampled to ``spacing`` and intensity-normalised.
        spacing: the voxel size of ``tensor`` in mm (array order).
        original: the input volume; outputs are returned onto its grid.
        oriented: the input reoriented to the card's layout (``original`` itself when none is set),
            the grid ``tensor`` was resampled from.
    """

    tensor: torch.Tensor
    spacing: tuple[float, ...]
    original: Volume
    oriented: Volume


def reorient(volume: Volume, axcodes: str | None) -> Volume:
    """``volume`` with its axes flipped/permuted so they run towards ``axcodes`` (e.g. ``"SAR"``); same voxels.

    The closest anatomical direction of each axis is taken from the affine (oblique volumes keep their
    obliquity in the affine). ``None``, a 2D volume or an already matching layout returns ``volume``.
    """
    if axcodes is None or volume.ndim != 3:
        return volume
    current = orientations.io_orientation(volume.affine)
    transform = orientations.ornt_transform(current, orientations.axcodes2ornt(tuple(axcodes)))
    if np.array_equal(transform, [[0, 1], [1, 1], [2, 1]]):
        return volume
    array = orientations.apply_orientation(volume.array, transform)
    affine = volume.affine @ orientations.inv_ornt_aff(transform, volume.shape)
    return Volume(array, affine, volume.metadata)


def restore_orientation(array: np.ndarray, oriented: Volume, original: Volume) -> np.ndarray:
    """An array on ``oriented``'s grid put back onto ``original``'s (the inverse of :func:`reorient`)."""
    if oriented is original:
        return array
    transform = orientations.ornt_transform(
        orientations.io_orientation(oriented.affine), orientations.io_orientation(original.affine)
    )
    return np.ascontiguousarray(orientations.apply_orientation(array, transform))


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, ...]:
    """The grid size covering the same extent at spacing ``target`` (at least one voxel per axis)."""
    return tuple(max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target))


def resample(x: torch.Tensor, size: Sequence[int], mode: str = "linear") -> torch.Tensor:
    """Resample ``(N, C, *S)`` to ``(N, C, *size)``: ``mode`` ``"linear"`` (bi/trilinear) or ``"nearest"`` (labels).

    Returns ``x`` itself when the size already matches.
    """
    size = tuple(int(n) for n in size)
    if tuple(x.shape[2:]) == size:
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest-exact")
    if mode != "linear":
        raise ValueError(f"resample mode must be 'linear' or 'nearest'; got {mode!r}")
    return F.interpolate(x, size=size, mode=LINEAR_MODES[x.ndim - 2], align_corners=False)


def normalise_intensity(x: torch.Tensor, intensity: Intensity) -> torch.Tensor:
    """Apply a card's intensity normalisation to a float tensor of any shape (one image).

    ``affine``: ``(clip(x) - offset) / scale``; ``zscore``: ``(x - mean) / std`` over the image (after the
    optional clip); ``unit-range``: min-max to [0, 1] (after the optional clip). A constant image maps to 0.
    """
    if intensity.clip is not None:
        x = x.clamp(*intensity.clip)
    if intensity.kind == "affine":
        return (x - intensity.offset) / intensity.scale
    if intensity.kind == "zscore":
        std = x.std(unbiased=False)
        return (x - x.mean()) / std if std > 0 else torch.zeros_like(x)
    if intensity.kind == "unit-range":
        low, high = x.min(), x.max()
        return (x - low) / (high - low) if high > low else torch.zeros_like(x)
    raise ValueError(f"unknown intensity kind {intensity.kind!r}")


def prepare(volume: Volume, spec: InputSpec) -> PreparedInput:
    """Reorient ``volume`` to ``spec.orientation`` and resample it to ``spec.spacing`` (each if set), normalise
    it and repeat it to ``spec.channels``.

    Raises ValueError naming the source if the image holds NaN or infinite values.
    """
    original, volume = volume, reorient(volume, spec.orientation)
    image = torch.from_numpy(np.ascontiguousarray(volume.array, dtype=np.float32))
    if not torch.isfinite(image).all():
        bad = int((~torch.isfinite(image)).sum())
        raise ValueError(f"{volume.source}: the image holds {bad} NaN or infinite voxel(s); fix or mask them before inference")
    spacing = volume.spacing
    if spec.spacing is not None:
        image = resample(image[None, None], resampled_shape(image.shape, spacing, spec.spacing))[0, 0]
        spacing = tuple(s * n / m for s, n, m in zip(spacing, volume.shape, image.shape))
    image = normalise_intensity(image, spec.intensity)
    return PreparedInput(image.expand(spec.channels, *image.shape).contiguous(), spacing, original, volume)


def restore_labels(probabilities: torch.Tensor, prepared: PreparedInput, slab: int = 16) -> np.ndarray:
    """Class probabilities on the prepared grid -> labels on the input's grid.

    Args:
        probabilities: ``(K, *S)`` on the prepared grid (any device, any float dtype).
        prepared: what :func:`prepare` returned for this input.
        slab: output rows (along the first axis) resampled at a time; memory holds ``K x slab`` rows
            of the input grid, never the whole resampled probability volume.

    Returns:
        ``(*original shape)`` uint8 (or int16 above 255 classes) label array: argmax over K of the
        probabilities resampled linearly (``align_corners=False``, as :func:`resample`) onto the
        reoriented input grid — identical to ``resample(probabilities[None], shape).argmax(1)`` computed
        in one go — then put back in the input's axis layout.
    """
    target = prepared.oriented.shape
    dtype = np.uint8 if probabilities.shape[0] <= 256 else np.int16
    labels = np.empty(target, dtype=dtype)
    source_rows = probabilities.shape[1]
    scale = source_rows / target[0]
    for start in range(0, target[0], slab):
        rows = torch.arange(start, min(start + slab, target[0]), device=probabilities.device)
        # PyTorch's linear-interpolation source index (align_corners=False), clamped at the low edge.
        position = ((rows + 0.5) * scale - 0.5).clamp(min=0)
        lower = position.floor().long().clamp(max=source_rows - 1)
        upper = (lower + 1).clamp(max=source_rows - 1)
        weight = (position - lower).view(-1, *([1] * (len(target) - 1))).to(probabilities.dtype)
        band = probabilities[:, lower] * (1 - weight) + probabilities[:, upper] * weight  # (K, rows, *S[1:])
        band = resample(band.transpose(0, 1), target[1:])  # (rows, K, *target[1:])
        labels[start : start + len(rows)] = band.argmax(1).cpu().numpy().astype(dtype)
    return restore_orientation(labels, prepared.oriented, prepared.original)
