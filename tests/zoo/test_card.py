"""Model cards: the shipped ones parse; round trips; bad cards name the file and field."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import nano_card

from medssl_zoo import CardError, ModelCard, create, get_card, list_models, register_card
from medssl_zoo.card import Intensity

VALID = """
name = "my-model"
summary = "A card."
[architecture]
name = "mit"
kwargs = { variant = "mit7", task = "segment", num_classes = 2 }
[inputs.3d]
channels = 1
patch_size = [16, 96, 96]
spacing = [3.0, 1.0, 1.0]
intensity = { kind = "affine", clip = [-1024, 325], offset = 158.58, scale = 324.7 }
[[labels]]
index = 0
name = "background"
[[labels]]
index = 1
name = "liver"
code = { scheme = "SCT", value = "10200004", meaning = "Liver" }
[weights]
sha256 = "%s"
""" % ("ab" * 32)


def test_shipped_cards() -> None:
    assert list_models() == ["phantom-mit-nano", "swin-unetr-btcv", "swin-unetr-ssl", "unimiss-mit22", "unimiss-mit7"]
    card = get_card("unimiss-mit22")
    assert card.spatial_dims == (2, 3)
    assert card.inputs["3d"].patch_size == (16, 96, 96)
    assert card.inputs["3d"].intensity == Intensity("affine", offset=0.0, scale=1024.0)
    assert card.weights.repo_id == "medssl/unimiss-mit22" and card.weights.sha256 is None
    assert "does not exist yet" in card.weights.note
    assert "xie2022unimiss" in card.citation and card.licence


def test_card_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "my-model.toml"
    path.write_text(VALID)
    card = ModelCard.from_toml(path)
    assert card.labels[1].code.meaning == "Liver"
    assert card.inputs["3d"].intensity.clip == (-1024, 325)
    assert ModelCard.from_dict(card.to_dict(), "round trip") == card
    assert ModelCard.from_dict(nano_card().to_dict(), "round trip") == nano_card()


@pytest.mark.parametrize(
    "edit, field",
    [
        (("patch_size = [16, 96, 96]", "patch_size = [96, 96]"), "inputs.3d.patch_size"),
        (('kind = "affine"', 'kind = "hu"'), "inputs.3d.intensity.kind"),
        (("ab" * 32, "not-a-digest"), "weights.sha256"),
        (("num_classes = 2", "num_classes = 3"), "labels"),
        (("channels = 1", 'channels = "one"'), "inputs.3d.channels"),
        (('name = "mit"', 'nom = "mit"'), "architecture.name"),
    ],
)
def test_bad_card_names_file_and_field(tmp_path: Path, edit: tuple[str, str], field: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(VALID.replace(*edit))
    with pytest.raises(CardError) as error:
        ModelCard.from_toml(path)
    assert str(path) in str(error.value) and f"'{field}'" in str(error.value)


def test_unknown_name_suggests_close_entries() -> None:
    with pytest.raises(CardError, match="Did you mean unimiss-mit22"):
        create("unimiss-mit-22")


def test_register_card_refuses_silent_shadowing() -> None:
    with pytest.raises(CardError, match="exists"):
        register_card(get_card("unimiss-mit7"))


@pytest.mark.parametrize("orientation", ["SA", "SAA", "XYZ", "sar"])
def test_bad_orientation_names_the_field(tmp_path: Path, orientation: str) -> None:
    path = tmp_path / "card.toml"
    path.write_text(
        'name = "x"\n[architecture]\nname = "mit"\n[inputs.3d]\nchannels = 1\npatch_size = [16, 32, 64]\n'
        f'orientation = "{orientation}"\nintensity = {{ kind = "zscore" }}\n'
    )
    with pytest.raises(CardError, match=r"card field 'inputs\.3d\.orientation'"):
        ModelCard.from_toml(path)
