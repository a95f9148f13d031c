"""A few fine-tuning steps on phantoms through the CLI: the loss falls, the checkpoint loads and segments."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from medssl_sdk import load
from medssl_sdk.samples import make_phantom
from medssl_train.cli import main
from medssl_zoo.weights import sha256_of

#: A segmentation card at test widths for phantoms on a coarse grid (6 x 3 x 3 mm).
TINY_CARD = """
name = "phantom-test-tiny"
summary = "tiny phantom segmenter for tests"

[architecture]
name = "mit"

[architecture.kwargs]
variant = "mit7"
task = "segment"
num_classes = 7
encoder_dims = [8, 16, 32, 64]
encoder_heads = [1, 1, 2, 4]
decoder_dims = [32, 16, 8]
decoder_heads = [4, 2, 1]
stem_channels = 8
position_size_3d = [16, 32, 64]

[inputs.3d]
channels = 1
patch_size = [16, 32, 64]
spacing = [6.0, 3.0, 3.0]
intensity = { kind = "affine", clip = [-1000.0, 1000.0], scale = 1000.0 }
"""
LABELS = ("background", "liver", "spleen", "left_kidney", "right_kidney", "spine", "lungs")


def write_card(directory: Path, labels: tuple[str, ...] = LABELS) -> Path:
    path = directory / "card.toml"
    entries = "".join(f'\n[[labels]]\nindex = {i}\nname = "{name}"\n' for i, name in enumerate(labels))
    path.write_text(TINY_CARD + entries)
    return path


def test_a_few_steps_lower_the_loss_and_write_a_loadable_checkpoint(tmp_path: Path) -> None:
    output = tmp_path / "run"
    arguments = ["finetune-phantom", "--card", str(write_card(tmp_path)), "--output", str(output), "--steps", "24",
                 "--validate-every", "12", "--train-phantoms", "2", "--val-phantoms", "1", "--batch-size", "2",
                 "--lr", "0.003", "--warmup-steps", "0", "--schedule", "constant", "--quiet"]
    assert main(arguments) == 0

    with open(output / "metrics.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [int(row["step"]) for row in rows] == [10, 12, 20, 24]
    losses = [float(row["loss"]) for row in rows]
    assert losses[-1] < losses[0]
    validated = [row for row in rows if row["dice_mean"]]
    assert [int(row["step"]) for row in validated] == [12, 24]
    assert all(0.0 <= float(row["dice_liver"]) <= 1.0 for row in validated)

    model = load(output, device="cpu")
    assert model.card.weights.sha256 == sha256_of(output / "model.safetensors")
    image, _ = make_phantom(99, shape=(20, 48, 40), spacing=(6.5, 3.5, 3.5))
    segmentation = model.segment(image, progress=False)
    assert segmentation.labels.shape == image.shape
    assert segmentation.classes == LABELS
    assert set(np.unique(segmentation.labels.array)) <= set(range(len(LABELS)))

    assert main(arguments) == 2  # the checkpoint is not replaced without --overwrite


def test_a_card_without_the_phantom_labels_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    card = write_card(tmp_path, ("background", "liver", "spleen", "kidney", "pancreas", "spine", "lungs"))
    assert main(["finetune-phantom", "--card", str(card), "--output", str(tmp_path / "run"), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "card.toml" in error and "labels must be" in error
    assert not (tmp_path / "run").exists()
