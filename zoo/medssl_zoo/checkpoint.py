"""Checkpoint directories: ``config.json`` (the card, weights sha256 included) + ``model.safetensors``.

The same layout is used locally and in Hub repositories, so a directory is self-describing.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from medssl_zoo.card import ModelCard
from medssl_zoo.errors import CheckpointFormatError, MedsslError
from medssl_zoo.files import write_atomically
from medssl_zoo.registry import build_model
from medssl_zoo.weights import CONFIG_FILE, WEIGHTS_FILE, check_state_dict, load_weights_file, sha256_of

FORMAT = "medssl-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(model: nn.Module, card: ModelCard, directory: Path | str, overwrite: bool = False) -> ModelCard:
    """Write ``model``'s weights and ``card`` to ``directory``; return the card with the new sha256.

    Refuses to replace an existing checkpoint unless ``overwrite``, and a model that the card does not
    describe (it would not load back); files are written atomically.
    """
    directory = Path(directory)
    state = {key: tensor.detach().cpu().contiguous() for key, tensor in model.state_dict().items()}
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        described = build_model(card)
    check_state_dict(described, state, f"the model saved as {card.name!r}")
    existing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if (directory / name).exists()]
    if existing and not overwrite:
        raise MedsslError(f"{directory} already holds a checkpoint ({', '.join(existing)}); choose another directory or overwrite")
    directory.mkdir(parents=True, exist_ok=True)
    weights_path = directory / WEIGHTS_FILE
    write_atomically(weights_path, lambda path: save_file(state, str(path), metadata={"format": "pt"}))
    pinned = card.with_weights(replace(card.weights, file=WEIGHTS_FILE, sha256=sha256_of(weights_path)))
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "card": pinned.to_dict()}
    write_atomically(directory / CONFIG_FILE, lambda path: path.write_text(json.dumps(config, indent=2) + "\n"))
    return pinned


def read_checkpoint_card(directory: Path | str) -> ModelCard:
    """The card stored in a checkpoint directory's ``config.json``."""
    config_path = Path(directory) / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointFormatError(
            f"{directory}: not a medssl checkpoint directory (no {CONFIG_FILE}); expected {CONFIG_FILE} + {WEIGHTS_FILE}"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointFormatError(f"{config_path}: not valid JSON ({error})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT or not isinstance(config.get("card"), dict):
        raise CheckpointFormatError(f"{config_path}: not a {FORMAT} config (needs 'format': '{FORMAT}' and a 'card' object)")
    if not isinstance(config.get("format_version"), int):
        raise CheckpointFormatError(f"{config_path}: 'format_version' must be an integer")
    if config["format_version"] > FORMAT_VERSION:
        raise CheckpointFormatError(
            f"{config_path}: format version {config['format_version']} is newer than this medssl "
            f"({FORMAT_VERSION}); upgrade medssl-sdk"
        )
    card = ModelCard.from_dict(config["card"], str(config_path))
    if card.weights.sha256 is None:
        raise CheckpointFormatError(f"{config_path}: card.weights.sha256 is missing; the weights cannot be verified")
    return card


def load_checkpoint(directory: Path | str) -> tuple[nn.Module, ModelCard]:
    """Build the model described by a checkpoint directory and load its verified weights strictly."""
    directory = Path(directory)
    card = read_checkpoint_card(directory)
    model = build_model(card)
    load_weights_file(model, directory / card.weights.file, card.weights.sha256, str(directory / CONFIG_FILE))
    return model, card
