"""``medssl-train pretrain unimiss``: config file + flags, phantom data, export, resume refusals."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from medssl_sdk import load
from medssl_sdk.hub import model_card_text, training_scores
from medssl_train.cli import main
from medssl_train.unimiss.pretrain import STATE_FILE

CARD_TOML = """
name = "cli-mit-nano"
summary = "nano MiT for the pre-training CLI test"
licence = "MIT"

[architecture]
name = "mit"

[architecture.kwargs]
variant = "mit7"
task = "embed"
encoder_dims = [16, 32, 64, 128]
encoder_heads = [1, 1, 2, 4]
decoder_dims = [64, 32, 16]
decoder_heads = [4, 2, 1]
stem_channels = 8

[inputs.3d]
channels = 1
patch_size = [16, 32, 64]
spacing = [4.0, 3.0, 3.0]
intensity = { kind = "affine", offset = 0.0, scale = 1024.0 }

[inputs.2d]
channels = 3
patch_size = [64, 64]
intensity = { kind = "unit-range" }
"""

RUN_TOML = """
card = "{card}"
phantoms = 2
steps = 5
batch_size = 2
interval = 1
out_dim = 64
hidden_dim = 32
bottleneck_dim = 16
warmup_steps = 1
log_every = 1
"""


def test_config_file_flags_and_export(tmp_path: Path, capsys) -> None:
    card = tmp_path / "card.toml"
    card.write_text(CARD_TOML)
    config = tmp_path / "run.toml"
    config.write_text(RUN_TOML.format(card=card))
    output = tmp_path / "run"
    code = main(["pretrain", "unimiss", "--config", str(config), "--output", str(output), "--steps", "2", "--quiet"])
    assert code == 0, capsys.readouterr().err
    with open(output / "metrics.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [(row["step"], bool(row["loss_2d"]), bool(row["loss_3d"])) for row in rows] == [("1", True, False), ("2", False, True)]
    state = torch.load(output / STATE_FILE, weights_only=True)
    assert state["config"]["steps"] == 2 and state["config"]["batch_size"] == 2 and state["config"]["out_dim"] == 64
    model = load(output)
    assert model.card.name == "cli-mit-nano" and model.card.weights.sha256 is not None
    assert "wrote" in capsys.readouterr().out
    # what `medssl push` publishes: the training command; the schedule columns of metrics.csv are no scores
    assert training_scores(output) == {}
    readme = model_card_text(model.card, output, "my-lab/nano", "main")
    assert f"medssl-train pretrain unimiss --config {config} --output {output} --quiet --steps 2" in readme
    assert "teacher_momentum" not in readme and "weight_decay" not in readme

    code = main(["pretrain", "unimiss", "--config", str(config), "--output", str(output), "--steps", "2", "--quiet"])
    assert code == 2 and "already holds" in capsys.readouterr().err
    code = main(["pretrain", "unimiss", "--config", str(config), "--output", str(output), "--resume", "--quiet"])
    assert code == 2 and "steps 2 -> 5" in capsys.readouterr().err


def test_no_data_and_unknown_keys_are_errors(tmp_path: Path, capsys) -> None:
    assert main(["pretrain", "unimiss", "--output", str(tmp_path / "a"), "--card", "unimiss-mit7"]) == 2
    assert "no data" in capsys.readouterr().err
    config = tmp_path / "run.toml"
    config.write_text("learning_rat = 0.1\n")
    assert main(["pretrain", "unimiss", "--config", str(config), "--output", str(tmp_path / "b")]) == 2
    assert "learning_rat" in capsys.readouterr().err


def test_epochs_become_steps(tmp_path: Path, capsys) -> None:
    card = tmp_path / "card.toml"
    card.write_text(CARD_TOML)
    config = tmp_path / "run.toml"
    config.write_text(RUN_TOML.format(card=card).replace("steps = 5\n", "").replace("warmup_steps = 1\n", ""))
    output = tmp_path / "run"
    # 2 phantoms, batch 2: one batch per epoch and domain; 2 epochs of 2 domains -> 4 steps, 1 of warm-up
    code = main(["pretrain", "unimiss", "--config", str(config), "--output", str(output), "--epochs", "2",
                 "--warmup-epochs", "0.5", "--quiet"])
    assert code == 0, capsys.readouterr().err
    state = torch.load(output / STATE_FILE, weights_only=True)
    assert state["step"] == 4 and state["config"]["steps"] == 4 and state["config"]["warmup_steps"] == 1
    code = main(["pretrain", "unimiss", "--config", str(config), "--output", str(tmp_path / "b"), "--epochs", "2",
                 "--steps", "3", "--quiet"])
    assert code == 2 and "not both" in capsys.readouterr().err
