"""A PNG of a segmentation over its image: axial, coronal and sagittal planes side by side.

Views follow the radiological convention: the patient's right on the image's left, anterior (axial) or
superior (coronal, sagittal) at the top, sagittal seen from the patient's left. Pixels are drawn at their
physical aspect ratio. Each plane passes through the centre of the labelled region.
"""

from __future__ import annotations

from pathlib import Path

import nibabel.orientations as orientations
import numpy as np
from PIL import Image

from medssl_sdk.io import check_output_path
from medssl_sdk.volume import Volume
from medssl_zoo.files import write_atomically

#: RGB per label index (cycled beyond its length); index 0 (background) is never drawn.
PALETTE = np.array(
    [
        (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
        (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
        (220, 190, 255), (170, 110, 40), (128, 0, 0), (170, 255, 195),
    ],
    dtype=np.float32,
)


def _to_ras(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """The array reoriented so its axes run along +x (R), +y (A), +z (S), and the voxel size along each."""
    transform = orientations.io_orientation(volume.affine)
    array = orientations.apply_orientation(volume.array, transform)
    spacing = np.empty(3)
    spacing[transform[:, 0].astype(int)] = volume.spacing  # input axis i becomes output axis transform[i, 0]
    return array, spacing


def _planes(array: np.ndarray, spacing: np.ndarray, centre: np.ndarray) -> list[tuple[np.ndarray, tuple[float, float]]]:
    """Axial, coronal, sagittal slices of an RAS array through ``centre``, oriented for display.

    Each is ``(rows, columns)`` with its (row, column) pixel size in mm. Every view is the slice
    transposed and flipped on both axes (see the module docstring for the resulting orientation).
    """
    x, y, z = (int(c) for c in centre)
    slices = [
        (array[:, :, z], (spacing[1], spacing[0])),
        (array[:, y, :], (spacing[2], spacing[0])),
        (array[x], (spacing[2], spacing[1])),
    ]
    return [(plane.T[::-1, ::-1], size) for plane, size in slices]


def _resize(plane: np.ndarray, pixel_mm: tuple[float, float], mm_per_pixel: float, resample: int) -> Image.Image:
    rows, columns = plane.shape
    size = (max(1, round(columns * pixel_mm[1] / mm_per_pixel)), max(1, round(rows * pixel_mm[0] / mm_per_pixel)))
    return Image.fromarray(plane).resize(size, resample)


def render_overlay(
    image: Volume,
    labels: Volume,
    path: str | Path,
    window: tuple[float, float] = (-160.0, 240.0),
    opacity: float = 0.45,
    panel_height: int = 320,
    overwrite: bool = False,
) -> Path:
    """Write a PNG of ``labels`` over ``image`` (same grid) in three planes; returns ``path``.

    Args:
        image: a 3D intensity volume (HU for CT; ``window`` maps [low, high] to black..white).
        labels: an integer label Volume on the same grid.
        path: the PNG to write, atomically; an existing file is replaced only with ``overwrite``.
        window: display window of the image.
        opacity: label colour opacity in [0, 1].
        panel_height: height of each panel in pixels.
    """
    if image.ndim != 3:
        raise ValueError(f"{image.source}: overlays are drawn for 3D volumes; this image is 2D {image.shape}")
    if image.shape != labels.shape or not np.allclose(image.affine, labels.affine, atol=1e-4):
        raise ValueError(f"the overlay needs labels on the image's grid; got shapes {image.shape} and {labels.shape}")
    path = check_output_path(path, (".png",), overwrite=overwrite, source=image.metadata.get("source"))
    grey, spacing = _to_ras(image)
    label_array, _ = _to_ras(labels)
    foreground = np.argwhere(label_array > 0)
    centre = foreground.mean(axis=0) if len(foreground) else np.array(grey.shape) / 2
    low, high = window
    grey = (np.clip((grey.astype(np.float32) - low) / (high - low), 0, 1) * 255).astype(np.uint8)
    extent_mm = max(n * s for n, s in zip(grey.shape, spacing))
    mm_per_pixel = extent_mm / panel_height
    panels = []
    for (plane, pixel_mm), (label_plane, _) in zip(_planes(grey, spacing, centre), _planes(label_array, spacing, centre)):
        base = np.asarray(_resize(np.ascontiguousarray(plane), pixel_mm, mm_per_pixel, Image.BILINEAR), dtype=np.float32)
        label_image = _resize(np.ascontiguousarray(label_plane.astype(np.uint8)), pixel_mm, mm_per_pixel, Image.NEAREST)
        label_pixels = np.asarray(label_image).astype(np.int64)
        colour = PALETTE[np.where(label_pixels > 0, (label_pixels - 1) % (len(PALETTE) - 1) + 1, 0)]
        alpha = np.where(label_pixels > 0, opacity, 0.0)[..., None]
        panels.append(((1 - alpha) * base[..., None] + alpha * colour).astype(np.uint8))
    height = max(panel.shape[0] for panel in panels)
    canvas = np.zeros((height, sum(panel.shape[1] for panel in panels) + 4 * (len(panels) - 1), 3), dtype=np.uint8)
    left = 0
    for panel in panels:
        canvas[: panel.shape[0], left : left + panel.shape[1]] = panel
        left += panel.shape[1] + 4
    write_atomically(path, lambda temporary: Image.fromarray(canvas).save(temporary, format="PNG"))
    return path
