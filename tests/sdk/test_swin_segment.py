"""Swin UNETR through the SDK: a checkpoint of a (small) swin-unetr-btcv card saved with the zoo, loaded with
``medssl_sdk.load`` and segmenting a phantom CT; one window's labels are the network's arg-max."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

import medssl_sdk
import medssl_zoo
from medssl_sdk.model import Model
from medssl_sdk.samples import make_phantom
from medssl_sdk.volume import Volume
from medssl_zoo.card import ModelCard
from medssl_zoo.registry import build_model

PATCH = (64, 64, 64)  # the smallest segmenting size: at 32 the deepest feature map is one voxel (no instance norm)
SPACING = (4.0, 6.0, 6.0)  # coarse: the phantom below resamples to about 20 x 24 x 20 voxels, one window


def small_btcv_card() -> ModelCard:
    """swin-unetr-btcv at feature size 12, 64^3 windows and a coarse spacing (same code paths, a fraction of the time)."""
    card = medssl_zoo.get_card("swin-unetr-btcv")
    spec = dataclasses.replace(card.inputs["3d"], patch_size=PATCH, spacing=SPACING)
    return dataclasses.replace(card, kwargs={**card.kwargs, "feature_size": 12}, inputs={"3d": spec})


@pytest.fixture(scope="module")
def swin(tmp_path_factory: pytest.TempPathFactory) -> tuple[Model, ModelCard]:
    torch.manual_seed(0)
    card = small_btcv_card()
    directory = Path(tmp_path_factory.mktemp("checkpoints")) / "swin"
    saved = medssl_zoo.save_checkpoint(build_model(card), card, directory)
    return medssl_sdk.load(directory, device="cpu"), saved


def test_segment_gives_labels_on_the_input_grid_named_by_the_card(swin: tuple[Model, ModelCard]) -> None:
    model, card = swin
    image, _ = make_phantom(3, shape=(20, 48, 40), spacing=(4.0, 3.0, 3.0))
    segmentation = model.segment(image, progress=False)
    assert segmentation.labels.shape == image.shape
    assert np.array_equal(segmentation.labels.affine, image.affine)
    assert segmentation.classes == tuple(label.name for label in card.labels) and len(segmentation.classes) == 14
    assert segmentation.labels.array.max() < 14


def test_segment_matches_the_network_on_a_single_window_input(swin: tuple[Model, ModelCard]) -> None:
    """An input at the card's spacing and patch size is one window: labels = arg-max of the network on the
    card's intensity normalisation (HU clipped to [-175, 250], minus the offset, over the scale)."""
    model, card = swin
    hu = np.random.default_rng(0).normal(0, 300, size=PATCH).astype(np.float32)
    labels = model.segment(Volume.from_array(hu, spacing=SPACING), progress=False).labels.array
    intensity = card.inputs["3d"].intensity
    normalised = (torch.from_numpy(hu).clamp(*intensity.clip) - intensity.offset) / intensity.scale
    with torch.inference_mode():
        expected = model.network(normalised[None, None]).argmax(1)[0].numpy()
    assert len(np.unique(expected)) > 1  # a constant arg-max would make the comparison below trivial
    assert np.array_equal(labels, expected)
