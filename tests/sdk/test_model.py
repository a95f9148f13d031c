"""Model.segment / classify / embed end to end on the nano MiT (random weights): geometry, inputs, refusals."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import nano_card, nano_task_card

from medssl_sdk.model import Model
from medssl_sdk.samples import make_phantom, make_radiograph
from medssl_sdk.volume import Volume
from medssl_zoo import MedsslError
from medssl_zoo.registry import build_model

CLASSES = ("background", "liver", "spleen")


def model_for(card) -> Model:
    return Model(build_model(card).eval(), card, torch.device("cpu"))


@pytest.fixture(scope="module")
def phantom() -> tuple[Volume, Volume]:
    return make_phantom(seed=5, shape=(20, 50, 44), spacing=(4.0, 1.6, 1.7))


def test_segment_returns_labels_on_the_input_grid(phantom: tuple[Volume, Volume]) -> None:
    image, _ = phantom
    segmentation = model_for(nano_task_card("segment", CLASSES)).segment(image, progress=False)
    assert segmentation.labels.shape == image.shape
    assert np.array_equal(segmentation.labels.affine, image.affine)
    assert segmentation.classes == CLASSES
    assert segmentation.labels.array.dtype == np.uint8 and segmentation.labels.array.max() < len(CLASSES)


def test_segment_matches_the_network_on_a_single_window_input() -> None:
    """An input at the card's spacing and patch size is one window: labels = argmax of the network."""
    card = nano_task_card("segment", CLASSES)
    model = model_for(card)
    hu = np.random.default_rng(0).normal(0, 300, size=(16, 64, 64)).astype(np.float32)
    labels = model.segment(Volume.from_array(hu, spacing=(3.0, 1.0, 1.0)), progress=False).labels.array
    with torch.inference_mode():
        expected = model.network(torch.from_numpy(hu / 1024.0)[None, None]).argmax(1)[0].numpy()
    assert np.array_equal(labels, expected)


def test_low_memory_streaming_gives_the_same_labels() -> None:
    model = model_for(nano_task_card("segment", CLASSES))
    hu = np.random.default_rng(1).normal(0, 300, size=(24, 80, 72)).astype(np.float32)
    volume = Volume.from_array(hu, spacing=(3.0, 1.0, 1.0))  # the card's spacing: no resampling
    default = model.segment(volume, progress=False).labels.array
    streamed = model.segment(volume, low_memory=True, progress=False).labels.array
    assert (default == streamed).mean() > 0.999  # fp16 accumulation may flip near-ties only


def test_array_input_needs_its_spacing_and_one_image() -> None:
    model = model_for(nano_task_card("segment", CLASSES))
    segmentation = model.segment(np.zeros((16, 64, 64), np.float32), spacing=(3.0, 1.0, 1.0), progress=False)
    assert segmentation.labels.spacing == pytest.approx((3.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="one spatial image"):
        model.segment(np.zeros((1, 1, 16, 64, 64), np.float32), progress=False)


def test_2d_model_refuses_a_3d_volume_naming_it(phantom: tuple[Volume, Volume]) -> None:
    card = nano_task_card("segment", CLASSES)
    card_2d = type(card)(**{**card.__dict__, "inputs": {"2d": card.inputs["2d"]}, "kwargs": {**card.kwargs}})
    model = Model(build_model(card_2d).eval(), card_2d, torch.device("cpu"))
    with pytest.raises(MedsslError, match=r"takes 2D input; .* is a 3D volume of shape \(20, 50, 44\)"):
        model.segment(phantom[0], progress=False)


def test_task_mismatch_is_explained(phantom: tuple[Volume, Volume]) -> None:
    with pytest.raises(MedsslError, match="'embed' model; segment\\(\\) needs"):
        model_for(nano_card()).segment(phantom[0], progress=False)


def test_classify_gives_probabilities_by_label_name() -> None:
    model = model_for(nano_task_card("classify", ("normal", "pneumonia", "covid")))
    xray = Volume.from_array(np.random.default_rng(2).random((100, 90)), spacing=(0.5, 0.5))
    probabilities = model.classify(xray)
    assert list(probabilities) == ["normal", "pneumonia", "covid"]
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert all(0 < p < 1 for p in probabilities.values())


def test_embed_2d_and_3d(phantom: tuple[Volume, Volume]) -> None:
    model = model_for(nano_card())
    volume_embedding = model.embed(phantom[0])
    image_embedding = model.embed(np.random.default_rng(3).random((70, 70)), spacing=(1.0, 1.0))
    assert volume_embedding.shape == image_embedding.shape == (model.network.embedding_dim,)
    assert not torch.allclose(volume_embedding, image_embedding)


def test_segment_a_2d_radiograph_keeps_its_grid() -> None:
    xray, _ = make_radiograph(seed=4, shape=(100, 90), spacing=(0.7, 0.8))
    segmentation = model_for(nano_task_card("segment", CLASSES)).segment(xray, progress=False)
    assert segmentation.labels.shape == (100, 90) and np.array_equal(segmentation.labels.affine, xray.affine)


def flipped_like_a_dicom_series(volume: Volume) -> Volume:
    """The same voxels in an axial DICOM series' layout: rows run posterior, columns towards the patient's left."""
    array = volume.array[:, ::-1, ::-1]
    flip = np.eye(4)
    flip[1, 1] = flip[2, 2] = -1
    flip[1, 3], flip[2, 3] = volume.shape[1] - 1, volume.shape[2] - 1
    return Volume(np.ascontiguousarray(array), volume.affine @ flip, volume.metadata)


def oriented_card(orientation: str | None):
    card = nano_task_card("segment", CLASSES)
    spec = dataclasses.replace(card.inputs["3d"], orientation=orientation)
    return dataclasses.replace(card, inputs={"3d": spec})


def test_inputs_are_reoriented_to_the_cards_layout_and_labels_come_back(phantom: tuple[Volume, Volume]) -> None:
    """The same anatomy stored in two layouts gives the same labels at the same places in the body."""
    image, _ = phantom
    dicom_layout = flipped_like_a_dicom_series(image)
    model = model_for(oriented_card("SAR"))
    as_phantom = model.segment(image, progress=False).labels
    as_dicom = model.segment(dicom_layout, progress=False).labels
    assert np.array_equal(as_dicom.affine, dicom_layout.affine)
    assert np.array_equal(as_dicom.array, as_phantom.array[:, ::-1, ::-1])
    unoriented = model_for(oriented_card(None))
    differs = unoriented.segment(dicom_layout, progress=False).labels.array != as_phantom.array[:, ::-1, ::-1]
    assert differs.any()  # without the card's layout the network sees another image


class ThresholdNetwork(torch.nn.Module):
    """Class 1 where the (normalised) input exceeds 0, else 0: a network whose right answer is known."""

    task = "segment"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((torch.zeros_like(x[:, :1]), x[:, :1] * 50.0), dim=1)


def test_labels_land_where_the_anatomy_is_after_resampling_both_ways() -> None:
    card = oriented_card("SAR")
    card = dataclasses.replace(card, labels=card.labels[:2], kwargs={**card.kwargs, "num_classes": 2})
    model = Model(ThresholdNetwork(), card, torch.device("cpu"))
    image, labels = make_phantom(seed=8, shape=(22, 60, 52), spacing=(4.2, 1.4, 1.7))
    dicom_layout = flipped_like_a_dicom_series(image)
    expected = dicom_layout.array > 0  # liver/spleen/kidneys/spine are above 0 HU, fat and air below
    predicted = model.segment(dicom_layout, progress=False).labels.array == 1
    assert (predicted == expected).mean() > 0.97


class AnythingAboveAirNetwork(torch.nn.Module):
    """Class 1 over a whole window if any of its voxels is denser than air (normalised HU above -0.5)."""

    task = "segment"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        densest = x[:, :1].amax(dim=(2, 3, 4), keepdim=True).expand_as(x[:, :1])
        return torch.cat((torch.zeros_like(densest), (densest + 0.5) * 50.0), dim=1)


def test_windows_past_a_small_image_are_padded_with_its_minimum_not_water() -> None:
    card = oriented_card(None)
    card = dataclasses.replace(card, labels=card.labels[:2], kwargs={**card.kwargs, "num_classes": 2})
    model = Model(AnythingAboveAirNetwork(), card, torch.device("cpu"))
    air = np.full((16, 40, 64), -1000.0, dtype=np.float32)  # H 40 < the patch's 64: windows are padded
    labels = model.segment(Volume.from_array(air, spacing=(3.0, 1.0, 1.0)), progress=False).labels.array
    assert not labels.any()  # padding with 0 (water once normalised) would make every window "dense"
