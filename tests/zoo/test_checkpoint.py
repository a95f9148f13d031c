"""Checkpoint directories: round trip, sha256 pinning, strict loading, no overwrite, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import nano_card
from safetensors.torch import load_file, save_file

from medssl_zoo import (
    CheckpointFormatError,
    ChecksumMismatchError,
    MedsslError,
    StateDictMismatchError,
    load_checkpoint,
    save_checkpoint,
)
from medssl_zoo.registry import build_model
from medssl_zoo.weights import sha256_of


@pytest.fixture
def checkpoint(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    model = build_model(nano_card()).eval()
    save_checkpoint(model, nano_card(), tmp_path / "ckpt")
    return tmp_path / "ckpt", model


def _repin(directory: Path) -> None:
    """Re-pin config.json to the current weights file (as a careless re-save would)."""
    config = json.loads((directory / "config.json").read_text())
    config["card"]["weights"]["sha256"] = sha256_of(directory / "model.safetensors")
    (directory / "config.json").write_text(json.dumps(config))


def test_round_trip_gives_identical_outputs(checkpoint: tuple[Path, torch.nn.Module]) -> None:
    directory, model = checkpoint
    loaded, card = load_checkpoint(directory)
    assert card.weights.sha256 == sha256_of(directory / "model.safetensors")
    x2, x3 = torch.randn(1, 1, 64, 64), torch.randn(1, 1, 16, 64, 64)
    with torch.inference_mode():
        assert torch.equal(loaded.eval()(x2), model(x2)) and torch.equal(loaded(x3), model(x3))


def test_tampered_weights_are_refused(checkpoint: tuple[Path, torch.nn.Module]) -> None:
    directory, _ = checkpoint
    weights = directory / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError) as error:
        load_checkpoint(directory)
    assert str(weights) in str(error.value) and "does not match" in str(error.value)


def test_missing_and_unexpected_keys_are_named(checkpoint: tuple[Path, torch.nn.Module]) -> None:
    directory, _ = checkpoint
    state = load_file(str(directory / "model.safetensors"))
    state.pop("encoder.stages.2.blocks.0.attn.kv.weight")
    state["decoder.extra.weight"] = torch.zeros(2)
    save_file(state, str(directory / "model.safetensors"))
    _repin(directory)
    with pytest.raises(StateDictMismatchError) as error:
        load_checkpoint(directory)
    message = str(error.value)
    assert "missing 1: encoder.stages.2.blocks.0.attn.kv.weight" in message
    assert "unexpected 1: decoder.extra.weight" in message


def test_wrong_shape_is_named(checkpoint: tuple[Path, torch.nn.Module]) -> None:
    directory, _ = checkpoint
    state = load_file(str(directory / "model.safetensors"))
    state["encoder.ssl_token"] = torch.zeros(1, 1, 3)
    save_file(state, str(directory / "model.safetensors"))
    _repin(directory)
    with pytest.raises(StateDictMismatchError, match=r"encoder.ssl_token \(checkpoint \(1, 1, 3\), model \(1, 1, 16\)\)"):
        load_checkpoint(directory)


def test_existing_checkpoint_is_not_overwritten(checkpoint: tuple[Path, torch.nn.Module]) -> None:
    directory, model = checkpoint
    before = (directory / "model.safetensors").read_bytes()
    with pytest.raises(MedsslError, match="already holds a checkpoint"):
        save_checkpoint(build_model(nano_card()), nano_card(), directory)
    assert (directory / "model.safetensors").read_bytes() == before
    save_checkpoint(model, nano_card(), directory, overwrite=True)


def test_failed_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_save(state: dict, path: str, metadata: dict) -> None:
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr("medssl_zoo.checkpoint.save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(build_model(nano_card()), nano_card(), tmp_path / "ckpt")
    assert list((tmp_path / "ckpt").iterdir()) == []


def test_missing_weights_file_is_named(checkpoint: tuple[Path, torch.nn.Module]) -> None:
    directory, _ = checkpoint
    (directory / "model.safetensors").unlink()
    with pytest.raises(CheckpointFormatError, match="model.safetensors: no such weights file"):
        load_checkpoint(directory)


def test_a_model_the_card_does_not_describe_is_not_saved(tmp_path: Path) -> None:
    other = build_model(nano_card(), stem_channels=4)
    with pytest.raises(StateDictMismatchError, match="wrong shape"):
        save_checkpoint(other, nano_card(), tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


def test_not_a_checkpoint_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointFormatError, match="no config.json"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointFormatError, match="not valid JSON"):
        load_checkpoint(tmp_path)
