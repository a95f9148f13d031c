"""`medssl push`: the upload folder is checked (card, config, weights, sha256, model card) and goes through
huggingface_hub to a loopback Hub the test runs (HF_ENDPOINT pointed at it, a dummy token, no network)."""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import huggingface_hub
import pytest
from conftest import nano_task_card
from hub_server import HubServer
from huggingface_hub import ModelCard as HubModelCard

from medssl_sdk import load
from medssl_sdk.cli import main
from medssl_sdk.hub import build_upload_folder, check_upload_folder, push_checkpoint
from medssl_zoo import MedsslError, save_checkpoint
from medssl_zoo.registry import build_model
from medssl_zoo.weights import sha256_of

COMMAND = "medssl-train finetune --config run.toml --steps 2000"


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """A fine-tuning output: checkpoint, metrics.csv and training.json."""
    card = nano_task_card("segment", ("background", "liver"), name="nano-liver")
    directory = tmp_path / "run"
    save_checkpoint(build_model(card), card, directory)
    (directory / "metrics.csv").write_text("step,loss,learning_rate,seconds,dice_mean,dice_liver\n"
                                           "10,0.9,1e-3,1.0,,\n20,0.7,1e-3,2.0,0.8125,0.8125\n30,0.6,1e-3,3.0,,\n")
    record = {"command": COMMAND, "best_step": 20, "best_metrics": {"dice_mean": 0.8125, "dice_liver": 0.8125},
              "datasets": ["medssl/phantoms"]}
    (directory / "training.json").write_text(json.dumps(record))
    return directory


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> HubServer:
    # huggingface_hub caches a registry it fetches from the endpoint: keep it out of the user's HF_HOME
    monkeypatch.setattr(huggingface_hub.constants, "AGENT_HARNESSES_PATH", str(tmp_path / "agent_harnesses.json"))
    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", server.endpoint)  # read at import otherwise
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_TOKEN", "dummy-token")
        yield server


def test_the_upload_folder_holds_a_verified_checkpoint_and_a_model_card(tmp_path: Path, checkpoint: Path) -> None:
    before = {path.name: path.read_bytes() for path in checkpoint.iterdir()}
    folder = tmp_path / "upload"
    folder.mkdir()
    card = build_upload_folder(checkpoint, folder, "my-lab/nano-liver", "v1")
    assert sorted(path.name for path in folder.iterdir()) == ["README.md", "config.json", "metrics.csv", "model.safetensors"]
    assert card.weights.sha256 == sha256_of(folder / "model.safetensors") == sha256_of(checkpoint / "model.safetensors")
    assert check_upload_folder(folder) == card
    config = json.loads((folder / "config.json").read_text())
    assert config["card"]["weights"] == {"file": "model.safetensors", "sha256": card.weights.sha256,
                                         "repo_id": "my-lab/nano-liver", "revision": "v1", "note": ""}
    model_card = HubModelCard.load(folder / "README.md")
    metadata = model_card.data.to_dict()
    assert metadata["license"] == "mit" and metadata["library_name"] == "medssl"
    assert {"medical-imaging", "self-supervised", "medssl", "2d", "3d"} <= set(metadata["tags"])
    assert metadata["datasets"] == ["medssl/phantoms"] and metadata["metrics"] == ["dice"]
    assert metadata["pipeline_tag"] == "image-segmentation"
    assert COMMAND in model_card.text and card.weights.sha256 in model_card.text and "| dice_liver | 0.8125 |" in model_card.text
    assert {path.name: path.read_bytes() for path in checkpoint.iterdir()} == before  # the user's folder is only read


def test_push_uploads_the_checked_folder_through_huggingface_hub(
    tmp_path: Path, checkpoint: Path, hub: HubServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["push", str(checkpoint), "--repo", "my-lab/nano-liver", "--revision", "v1", "--private",
                 "--commit-message", "first model"]) == 0
    out = capsys.readouterr().out
    assert f"{hub.endpoint}/my-lab/nano-liver/commit/" in out
    assert hub.unhandled == [] and hub.tokens == {"dummy-token"}
    repo = hub.repos["my-lab/nano-liver"]
    assert repo.private and [commit.message for commit in repo.commits] == ["first model"]
    received = repo.branches["v1"]
    assert repo.branches["main"] == {}  # the commit went to the branch only

    expected = tmp_path / "expected"
    expected.mkdir()
    build_upload_folder(checkpoint, expected, "my-lab/nano-liver", "v1")
    assert received == {path.name: path.read_bytes() for path in expected.iterdir()}
    card = json.loads(received["config.json"])["card"]
    assert hashlib.sha256(received["model.safetensors"]).hexdigest() == card["weights"]["sha256"]
    assert received["README.md"].decode() in hub.validated_yaml

    # a second push to main reuses the repository (exist_ok) and commits there
    result = push_checkpoint(checkpoint, "my-lab/nano-liver")
    assert result.revision == "main" and set(repo.branches["main"]) == set(received)
    assert result.commit_url.endswith(result.commit_oid) and len(repo.commits) == 2


def test_a_damaged_checkpoint_is_never_uploaded(checkpoint: Path, hub: HubServer, capsys: pytest.CaptureFixture[str]) -> None:
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    assert main(["push", str(checkpoint), "--repo", "my-lab/nano-liver"]) == 1
    error = capsys.readouterr().err
    assert "model.safetensors" in error and "does not match" in error
    assert hub.requests == []
    with pytest.raises(MedsslError, match="must be ORG/NAME"):
        push_checkpoint(checkpoint, "no-organisation")
    with pytest.raises(MedsslError, match="not a medssl checkpoint directory"):
        push_checkpoint(checkpoint.parent, "my-lab/x")


def test_a_refusing_or_absent_hub_is_a_clear_error(checkpoint: Path, hub: HubServer) -> None:
    wrong = hub.endpoint + "/not-the-api"
    expected = r"uploading .*run to http://127\.0\.0\.1:\d+/not-the-api/my-lab/x \(revision v2\) failed: .*404"
    with pytest.raises(MedsslError, match=expected):
        push_checkpoint(checkpoint, "my-lab/x", revision="v2", endpoint=wrong)
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    with pytest.raises(MedsslError, match="failed: .*Check the token"):
        push_checkpoint(checkpoint, "my-lab/x", endpoint=closed)
    assert hub.repos == {}


def test_model_push_to_hub_uploads_the_loaded_network(checkpoint: Path, hub: HubServer) -> None:
    model = load(checkpoint, device="cpu")
    result = model.push_to_hub("my-lab/from-model", commit_message="from Python")
    received = hub.repos["my-lab/from-model"].branches["main"]
    assert sorted(received) == ["README.md", "config.json", "model.safetensors"]
    assert hashlib.sha256(received["model.safetensors"]).hexdigest() == model.card.weights.sha256 == result.card.weights.sha256
    assert hub.repos["my-lab/from-model"].commits[0].message == "from Python"
