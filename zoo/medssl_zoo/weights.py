"""Weights: sha256 pinning, safetensors reading, strict state-dict loading, Hub resolution.

Only safetensors files are ever loaded here; pickled official checkpoints go through
:mod:`medssl_zoo.convert` once.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from medssl_zoo.card import ModelCard, WeightsSpec
from medssl_zoo.errors import (
    CheckpointFormatError,
    ChecksumMismatchError,
    StateDictMismatchError,
    WeightsUnavailableError,
)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
_LISTED = 12  # names shown per category in a mismatch message


def sha256_of(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str, what: str) -> str:
    """Raise :class:`ChecksumMismatchError` unless ``path`` hashes to ``expected``; return the digest."""
    actual = sha256_of(path)
    if actual != expected:
        raise ChecksumMismatchError(
            f"{path}: sha256 {actual} does not match the {expected} pinned by {what}. The file is corrupt, "
            "truncated or not the published one; delete it and fetch it again (or fix the pin if you "
            "re-trained it on purpose)."
        )
    return actual


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file on the CPU, with a clear error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointFormatError(f"{path}: no such weights file")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointFormatError(f"{path}: not a readable safetensors file ({error})") from None


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise :class:`StateDictMismatchError` unless ``state_dict`` has exactly ``model``'s keys and shapes,
    naming the missing, unexpected and mis-shaped keys. ``model`` may live on the meta device."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    misshaped = sorted(
        f"{key} (checkpoint {tuple(state_dict[key].shape)}, model {tuple(expected[key].shape)})"
        for key in set(expected) & set(state_dict)
        if state_dict[key].shape != expected[key].shape
    )
    problems = [
        f"{label} {len(keys)}: {', '.join(keys[:_LISTED])}{' ...' if len(keys) > _LISTED else ''}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped))
        if keys
    ]
    if problems:
        raise StateDictMismatchError(
            f"{source} does not fit the model ({type(model).__name__}): " + "; ".join(problems)
            + ". Check that the card's architecture and kwargs match the checkpoint."
        )


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Load every tensor of ``model`` from ``state_dict``, after :func:`check_state_dict`."""
    check_state_dict(model, state_dict, source)
    model.load_state_dict(state_dict, strict=True)


def load_weights_file(model: nn.Module, path: Path, sha256: str, what: str) -> None:
    """Verify ``path`` against ``sha256`` (pinned by ``what``) and load it strictly into ``model``."""
    if not Path(path).is_file():
        raise CheckpointFormatError(f"{path}: no such weights file (expected by {what})")
    verify_sha256(path, sha256, what)
    load_state_dict_strict(model, read_safetensors(path), str(path))


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def download_from_hub(card: ModelCard, cache_dir: Path | None = None) -> Path:
    """Path of the card's weights file in the Hugging Face cache, downloading it if allowed.

    Honours ``HF_HUB_OFFLINE=1`` (read at call time): then only the cache is used. Raises
    :class:`WeightsUnavailableError` with the command that fetches the file on a connected machine.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    spec: WeightsSpec = card.weights
    if spec.repo_id is None:
        raise WeightsUnavailableError(f"{card.name}: the card names no Hub repository for its weights")
    where = f"{spec.repo_id}@{spec.revision or 'main'}/{spec.file}"
    try:
        return Path(
            hf_hub_download(
                spec.repo_id, spec.file, revision=spec.revision, cache_dir=cache_dir, local_files_only=_offline()
            )
        )
    except LocalEntryNotFoundError:
        from huggingface_hub import constants

        cache = cache_dir or constants.HF_HUB_CACHE
        reason = "HF_HUB_OFFLINE=1 forbids downloading" if _offline() else "the Hub could not be reached"
        raise WeightsUnavailableError(
            f"{card.name}: weights {where} are not in the Hugging Face cache ({cache}) and {reason}. "
            f"On a connected machine run `hf download {spec.repo_id} {spec.file} --revision "
            f"{spec.revision or 'main'} --cache-dir <DIR>`, copy <DIR> here and point HF_HUB_CACHE at it; "
            "or load a local checkpoint directory with medssl_sdk.load('/path/to/dir')."
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as error:
        raise WeightsUnavailableError(f"{card.name}: {where} does not exist on the Hub ({type(error).__name__})") from None


#: Small weights shipped inside the package (e.g. the demo model): ``pretrained/<card name>/<weights file>``.
SHIPPED_WEIGHTS = Path(__file__).parent / "pretrained"


def resolve_weights(card: ModelCard, weights: Path | None = None, cache_dir: Path | None = None) -> Path:
    """The weights file for ``card``: ``weights`` (a file, or a directory holding ``card.weights.file``)
    if given; else, for a card without a Hub repository, the copy shipped in the package; else the Hub or
    its cache. The pinned sha256 is checked by the caller on load."""
    if card.weights.sha256 is None:
        raise WeightsUnavailableError(
            f"{card.name}: the card pins no sha256, so there are no published weights to load: "
            + (card.weights.note or "convert a checkpoint (see `medssl convert --help`) and load its directory")
        )
    if weights is None and card.weights.repo_id is None:
        weights = SHIPPED_WEIGHTS / card.name
        if not (weights / card.weights.file).is_file():
            raise WeightsUnavailableError(
                f"{card.name}: the card names no Hub repository and the package ships no weights for it "
                f"({weights / card.weights.file} is missing); pass weights=FILE_OR_DIR"
            )
    if weights is None:
        return download_from_hub(card, cache_dir)
    path = Path(weights)
    if path.is_dir():
        path = path / card.weights.file
    if not path.is_file():
        raise WeightsUnavailableError(f"{card.name}: no weights file at {path}")
    return path
