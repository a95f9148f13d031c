"""The embedded demo: the shipped phantom-mit-nano weights segment an unseen phantom through the whole SDK."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from medssl_sdk.cli import main
from medssl_sdk.demo import DEMO_SHAPE, MIN_MEAN_DICE
from medssl_sdk.io import read_volume


def test_medssl_demo_reaches_its_dice_and_writes_its_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--output", str(tmp_path), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    organs = dict(re.findall(r"^  (\w+)\s+Dice (\d\.\d+)", out, flags=re.MULTILINE))
    assert set(organs) == {"liver", "spleen", "left_kidney", "right_kidney", "spine", "lungs", "mean"}
    assert float(organs["mean"]) >= MIN_MEAN_DICE
    assert float(organs["mean"]) == pytest.approx(np.mean([float(v) for k, v in organs.items() if k != "mean"]), abs=1e-3)
    segmentation = read_volume(tmp_path / "phantom_seg.nii.gz")
    image = read_volume(tmp_path / "phantom_ct.nii.gz")
    assert segmentation.shape == image.shape == DEMO_SHAPE
    assert np.allclose(segmentation.affine, image.affine, atol=1e-5)
    assert (tmp_path / "phantom_overlay.png").read_bytes()[:4] == b"\x89PNG"
