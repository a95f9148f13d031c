"""load(): checkpoint directories, zoo names through the Hugging Face cache (offline), clear refusals."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch
from conftest import nano_card

from medssl_sdk import Model, load
from medssl_zoo import (
    CardError,
    ChecksumMismatchError,
    WeightsUnavailableError,
    create,
    register_card,
    save_checkpoint,
)
from medssl_zoo.card import WeightsSpec
from medssl_zoo.registry import build_model
from medssl_zoo.weights import sha256_of

REPO = "medssl-test/mit-nano"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fill_hf_cache(cache: Path, repo_id: str, commit: str, files: dict[str, Path]) -> None:
    """Lay files out as huggingface_hub's cache does: blobs/<digest>, snapshots/<commit>/<name> -> blob,
    refs/main -> commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    for name, source in files.items():
        data = source.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))


@pytest.fixture
def published(tmp_path: Path) -> tuple[str, torch.nn.Module, Path]:
    """A nano model 'published' as REPO: its weights written, its card pinned and registered."""
    model = build_model(nano_card()).eval()
    written = save_checkpoint(model, nano_card(), tmp_path / "published")
    name = f"test-hub-{tmp_path.name}"
    spec = WeightsSpec(sha256=written.weights.sha256, repo_id=REPO, revision="main")
    register_card(nano_card(name, weights=spec))
    return name, model, tmp_path / "published" / "model.safetensors"


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _same_outputs(a: torch.nn.Module, b: Model) -> bool:
    x = torch.randn(1, 1, 16, 64, 64)
    with torch.inference_mode():
        return torch.equal(a(x), b(x))


def test_zoo_name_loads_from_a_filled_cache_offline(tmp_path: Path, published, offline) -> None:
    name, model, weights = published
    fill_hf_cache(tmp_path / "hub", REPO, COMMIT, {"model.safetensors": weights})
    loaded = load(name, cache_dir=tmp_path / "hub", device="cpu")
    assert isinstance(loaded, Model) and loaded.card.name == name
    assert loaded.device == torch.device("cpu") and not loaded.network.training
    assert _same_outputs(model, loaded)


def test_pinned_commit_resolves_without_refs(tmp_path: Path, published, offline) -> None:
    name, model, weights = published
    fill_hf_cache(tmp_path / "hub", REPO, COMMIT, {"model.safetensors": weights})
    (tmp_path / "hub" / f"models--{REPO.replace('/', '--')}" / "refs" / "main").unlink()
    card = nano_card(f"{name}-pinned", weights=WeightsSpec(sha256=sha256_of(weights), repo_id=REPO, revision=COMMIT))
    assert _same_outputs(model, Model(create(card, pretrained=True, cache_dir=tmp_path / "hub"), card, torch.device("cpu")))


def test_offline_and_not_cached_says_how_to_fetch(tmp_path: Path, published, offline) -> None:
    name, _, _ = published
    with pytest.raises(WeightsUnavailableError) as error:
        load(name, cache_dir=tmp_path / "empty-hub")
    message = str(error.value)
    assert "HF_HUB_OFFLINE=1" in message and str(tmp_path / "empty-hub") in message
    assert f"hf download {REPO} model.safetensors --revision main" in message


def test_tampered_cache_blob_is_refused(tmp_path: Path, published, offline) -> None:
    name, _, weights = published
    tampered = tmp_path / "tampered.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered.write_bytes(bytes(data))
    fill_hf_cache(tmp_path / "hub", REPO, COMMIT, {"model.safetensors": tampered})
    with pytest.raises(ChecksumMismatchError, match="does not match"):
        load(name, cache_dir=tmp_path / "hub")


def test_local_weights_for_air_gapped_sites(published) -> None:
    name, model, weights = published
    assert _same_outputs(model, load(name, weights=weights.parent, device="cpu"))


def test_checkpoint_directory(published) -> None:
    _, model, weights = published
    assert _same_outputs(model, load(weights.parent, device="cpu"))


def test_unpublished_zoo_weights_are_a_clear_error() -> None:
    with pytest.raises(WeightsUnavailableError, match="pins no sha256.*does not exist yet"):
        load("unimiss-mit7")


def test_unavailable_device_is_a_one_line_cli_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from medssl_sdk.cli import main

    save_checkpoint(build_model(nano_card()), nano_card(), tmp_path / "model")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    output = tmp_path / "embedding.npy"
    assert main(["embed", str(tmp_path / "ct.nii.gz"), "-m", str(tmp_path / "model"), "-o", str(output), "--device", "cuda"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("medssl: error: device 'cuda' was asked for") and err.count("\n") == 1


def test_weights_without_pretrained_is_refused(published) -> None:
    name, _, weights = published
    with pytest.raises(ValueError, match="only used with pretrained=True"):
        create(name, weights=weights)


def test_bad_names_and_paths(tmp_path: Path) -> None:
    with pytest.raises(CardError, match="no such checkpoint directory"):
        load(tmp_path / "typo")
    with pytest.raises(CardError, match="Did you mean unimiss-mit7"):
        load("unimiss-mt7")
    stray = tmp_path / "model.pth"
    stray.write_bytes(b"x")
    with pytest.raises(CardError, match="is a file; load\\(\\) takes a zoo name, a checkpoint directory"):
        load(stray)
