"""The PNG overlay: radiological orientation and physical aspect."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medssl_sdk.io import VolumeWriteError
from medssl_sdk.overlay import render_overlay
from medssl_sdk.volume import Volume


def test_right_anterior_superior_organ_lands_where_radiologists_expect(tmp_path: Path) -> None:
    image = Volume.from_array(np.zeros((20, 40, 40)), spacing=(4.0, 2.0, 2.0))  # 80 x 80 x 80 mm
    labels = np.zeros((20, 40, 40), dtype=np.uint8)
    labels[14:18, 28:36, 28:36] = 1  # superior (axis 0 -> +z), anterior (axis 1 -> +y), patient's right (axis 2 -> +x)
    path = render_overlay(image, image.with_array(labels), tmp_path / "overlay.png", panel_height=80)
    canvas = np.asarray(Image.open(path))
    assert canvas.shape[0] == 80 and canvas.shape[1] == 3 * 80 + 2 * 4  # physical aspect: 80 mm cube -> square panels
    axial, coronal, sagittal = (canvas[:, k * 84 : k * 84 + 80] for k in range(3))
    for name, panel, expected_quadrant in (
        ("axial", axial, (slice(0, 40), slice(0, 40))),  # anterior at top, patient's right on the left
        ("coronal", coronal, (slice(0, 40), slice(0, 40))),  # superior at top, patient's right on the left
        ("sagittal", sagittal, (slice(0, 40), slice(0, 40))),  # superior at top, anterior on the left
    ):
        coloured = np.argwhere(panel[..., 0] != panel[..., 1])  # grey pixels have R == G
        assert len(coloured), name
        rows, columns = expected_quadrant
        assert rows.start <= coloured[:, 0].mean() < rows.stop and columns.start <= coloured[:, 1].mean() < columns.stop, name


def test_overlay_write_leaves_no_partial_file_on_error(tmp_path: Path) -> None:
    image = Volume.from_array(np.zeros((4, 8, 8)))
    target = tmp_path / "overlay.png"
    with pytest.raises(ValueError, match="image's grid"):
        render_overlay(image, Volume.from_array(np.zeros((4, 8, 9))), target)
    assert list(tmp_path.iterdir()) == []


def test_coronal_acquisition_keeps_its_physical_aspect(tmp_path: Path) -> None:
    """Array axes run anterior (3 mm x 20), superior (0.5 mm x 80), right (0.8 mm x 50): 40 x 60 x 40 mm in x, y, z."""
    affine = np.zeros((4, 4))
    affine[1, 0], affine[2, 1], affine[0, 2], affine[3, 3] = 3.0, 0.5, 0.8, 1.0
    image = Volume(np.zeros((20, 80, 50)), affine)
    labels = np.zeros(image.shape, dtype=np.uint8)
    labels[5:15, 20:60, 10:40] = 1
    canvas = np.asarray(Image.open(render_overlay(image, image.with_array(labels), tmp_path / "o.png", panel_height=60)))
    # 1 mm per pixel (60 mm over 60 px): axial 60 (y) x 40 (x), coronal 40 (z) x 40 (x), sagittal 40 (z) x 60 (y).
    assert canvas.shape[:2] == (60, 40 + 4 + 40 + 4 + 60)
    assert (canvas[40:, 44:84] == 0).all()  # below the 40-px coronal panel: empty canvas


def test_existing_overlay_is_kept_unless_overwrite(tmp_path: Path) -> None:
    image = Volume.from_array(np.zeros((4, 8, 8)))
    target = tmp_path / "overlay.png"
    target.write_bytes(b"keep")
    with pytest.raises(VolumeWriteError, match="overwrite"):
        render_overlay(image, image.with_array(np.zeros((4, 8, 8), np.uint8)), target)
    assert target.read_bytes() == b"keep"
    render_overlay(image, image.with_array(np.zeros((4, 8, 8), np.uint8)), target, overwrite=True)
    assert target.read_bytes()[:4] == b"\x89PNG"
