"""Official UniMiSS checkpoints: a test-side generator writes the official layout; conversion must
consume every key and give identical outputs; foreign pickles are refused unexecuted."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
import torch
from official_reference import deterministic_tensor, reference_inputs

from medssl_sdk import load
from medssl_sdk.cli import main
from medssl_zoo import CheckpointFormatError
from medssl_zoo.convert import convert_unimiss
from medssl_zoo.mit import MiT, create_mit

FIXTURES = Path(__file__).parent.parent / "fixtures"


def official_name(ours: str) -> str:
    """Our key -> the official UniMiSS key (written from the official module layout, independently of
    the converter, which maps the other way)."""
    inner = re.sub(r"attn\.reduce\.([23])d\.", r"attn.sr\1D.", ours).replace("attn.reduce_norm.", "attn.norm.")
    patterns = [
        (r"encoder\.stem\.([23])d\.(.+)", lambda m: f"transformer.patch_embed{m[1]}D0.{m[2]}"),
        (r"encoder\.ssl_token", lambda m: "transformer.cls_tokens1"),
        (r"encoder\.stages\.(\d)\.embed\.([23])d\.(.+)", lambda m: f"transformer.patch_embed{m[2]}D{int(m[1]) + 1}.proj.{m[3]}"),
        (r"encoder\.stages\.(\d)\.pos\.([23])d", lambda m: f"transformer.pos_embed{m[2]}D{int(m[1]) + 1}"),
        (r"encoder\.stages\.(\d)\.token_proj\.(.+)", lambda m: f"transformer.cls_tokens{int(m[1]) + 1}.{m[2]}"),
        (r"encoder\.stages\.(\d)\.blocks\.(.+)", lambda m: f"transformer.block{int(m[1]) + 1}.{m[2]}"),
        (r"decoder\.stages\.(\d)\.embed\.([23])d\.(.+)", lambda m: f"DecEmbed{m[2]}D{m[1]}.proj.{m[3]}"),
        (r"decoder\.stages\.(\d)\.pos\.([23])d", lambda m: f"DecPosEmbed{m[2]}D{m[1]}"),
        (r"decoder\.stages\.(\d)\.token_proj\.(.+)", lambda m: f"cls_tokens{m[1]}.{m[2]}"),
        (r"decoder\.stages\.(\d)\.blocks\.(.+)", lambda m: f"Decblock{m[1]}.{m[2]}"),
        (r"decoder\.norm\.(.+)", lambda m: f"norm.{m[1]}"),
    ]
    for pattern, rename in patterns:
        if match := re.fullmatch(pattern, inner):
            return rename(match)
    raise KeyError(ours)


def official_state(model: MiT, prefix: str) -> dict[str, torch.Tensor]:
    backbone = {prefix + "backbone." + official_name(k): v.clone() for k, v in model.state_dict().items()}
    head = {prefix + "head.mlp.0.weight": torch.randn(2048, 48), prefix + "head.last_layer.weight_g": torch.ones(65536, 1)}
    return {**backbone, **head}


@pytest.fixture(scope="module")
def official_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, MiT, MiT]:
    torch.manual_seed(1)
    student, teacher = create_mit("mit7").eval(), create_mit("mit7").eval()
    path = tmp_path_factory.mktemp("official") / "checkpoint.pth"
    torch.save(
        {
            "student": official_state(student, "module."),
            "teacher": official_state(teacher, ""),
            "optimizer": {"state": {}, "param_groups": [{"lr": 8e-4, "params": [0, 1]}]},
            "epoch": 200,
            "args": argparse.Namespace(arch="model_tiny", img_size2D=224, img_size3D=[16, 96, 96], lr=0.0008),
            "loss": torch.tensor(3.2),
        },
        path,
    )
    return path, student, teacher


def test_generator_writes_exactly_the_official_keys_and_shapes(official_checkpoint) -> None:
    path, _, _ = official_checkpoint
    state = torch.load(path, weights_only=False)["student"]
    written = {k.removeprefix("module.backbone."): list(v.shape) for k, v in state.items() if ".head." not in f".{k}"}
    expected = json.loads((FIXTURES / "unimiss_official_tiny_keys.json").read_text())
    assert written == expected  # key names and shapes of the official model_tiny (both branches)


def test_converted_weights_reproduce_the_official_network(tmp_path: Path) -> None:
    """Outputs computed by the official code (fixture) from deterministic official-layout weights."""
    shapes = json.loads((FIXTURES / "unimiss_official_tiny_keys.json").read_text())
    expected = json.loads((FIXTURES / "unimiss_official_tiny_outputs.json").read_text())
    student = {f"module.backbone.{k}": deterministic_tensor(k, shape) for k, shape in shapes.items()}
    path = tmp_path / "checkpoint.pth"
    torch.save({"student": student, "args": argparse.Namespace(arch="model_tiny")}, path)
    convert_unimiss(path, tmp_path / "out")
    model = load(tmp_path / "out", device="cpu")
    for branch, x in reference_inputs().items():
        official = torch.tensor(expected[branch])
        assert official.std() > 0.5  # a live signal, not a collapsed one
        torch.testing.assert_close(model(x)[:, :48], official, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("which", ["student", "teacher"])
def test_converted_checkpoint_gives_identical_outputs(official_checkpoint, tmp_path: Path, which: str) -> None:
    path, student, teacher = official_checkpoint
    reference = {"student": student, "teacher": teacher}[which]
    card = convert_unimiss(path, tmp_path / "out", teacher=which == "teacher")
    assert card.name == "unimiss-mit7" and which in card.weights.note
    model = load(tmp_path / "out", device="cpu")
    for x in (torch.randn(2, 1, 224, 224), torch.randn(1, 1, 16, 96, 96), torch.randn(1, 1, 32, 128, 160)):
        with torch.inference_mode():
            torch.testing.assert_close(model(x), reference(x), rtol=0, atol=1e-6)


def test_cli_convert_and_no_silent_overwrite(official_checkpoint, tmp_path: Path, capsys) -> None:
    path, _, _ = official_checkpoint
    assert main(["convert", "unimiss", str(path), "-o", str(tmp_path / "out")]) == 0
    assert main(["convert", "unimiss", str(path), "-o", str(tmp_path / "out")]) == 1
    assert "already holds a checkpoint" in capsys.readouterr().err
    assert main(["convert", "unimiss", str(path), "-o", str(tmp_path / "out"), "--teacher", "--overwrite"]) == 0


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_foreign_objects_in_the_pickle_are_refused_unexecuted(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "checkpoint.pth"
    torch.save({"student": {}, "args": _Payload(marker)}, path)
    with pytest.raises(CheckpointFormatError, match="outside the allow-list"):
        convert_unimiss(path, tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_not_an_official_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"student": {"module.backbone.something.weight": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointFormatError, match="unexpected key 'something.weight'"):
        convert_unimiss(path, tmp_path / "out")
    torch.save({"model": {}}, path)
    with pytest.raises(CheckpointFormatError, match=r"no 'student' entry; top-level keys: \['model'\]"):
        convert_unimiss(path, tmp_path / "out")
