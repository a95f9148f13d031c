"""``load(name_or_path)``: a zoo entry (weights from the Hub or its cache) or a checkpoint directory."""

from __future__ import annotations

from pathlib import Path

import torch

from medssl_sdk.model import Model, pick_device
from medssl_zoo import CardError, create, get_card, list_models, load_checkpoint


def load(
    name_or_path: str | Path,
    *,
    device: str | torch.device | None = None,
    weights: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> Model:
    """Load a pretrained model ready for inference.

    Args:
        name_or_path: a zoo name (``medssl zoo list``) or a checkpoint directory
            (``config.json`` + ``model.safetensors``, as written by ``medssl convert`` or training).
        device: ``"cuda"``, ``"cpu"``, ... (default: CUDA, then MPS, then CPU).
        weights: for a zoo name, a local weights file or directory to use instead of the Hub
            (air-gapped sites); its sha256 must still match the card's.
        cache_dir: Hugging Face cache directory (default: huggingface_hub's; ``HF_HUB_OFFLINE=1`` honoured).

    Every weights file is checked against its pinned sha256 and loaded strictly.
    """
    path = Path(name_or_path)
    is_zoo_name = str(name_or_path) in list_models()
    if path.is_dir():
        if weights is not None:
            raise ValueError(f"{path} is a checkpoint directory; 'weights' applies to zoo names only")
        network, card = load_checkpoint(path)
    elif path.is_file() and not is_zoo_name:
        raise CardError(
            f"{path} is a file; load() takes a zoo name or a checkpoint directory holding config.json and "
            "model.safetensors (convert official checkpoints with `medssl convert`)"
        )
    elif not is_zoo_name and (path.is_absolute() or len(path.parts) > 1 or path.suffix):
        raise CardError(f"{path}: no such checkpoint directory (and not a zoo name: see `medssl zoo list`)")
    else:
        card = get_card(str(name_or_path))  # an unknown name raises, naming the closest zoo entries
        network = create(card, pretrained=True, weights=weights, cache_dir=cache_dir)
    resolved = pick_device(device)
    return Model(network.to(resolved).eval(), card, resolved)

