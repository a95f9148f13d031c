"""Convert the released self-supervised Swin ViT (``model_swinvit.pt``, Tang et al. CVPR 2022) to a checkpoint directory.

The official file is a pickle ``{"state_dict": {...}, ...}`` whose state dict holds the Swin ViT encoder
only, with DDP's ``module.`` prefix and the MLP of each block as ``fc1``/``fc2``. It is read with torch's
``weights_only`` unpickler (tensors and plain containers only); entries other than ``state_dict`` are
ignored. The result is the ``swin-unetr-ssl`` entry (``task="embed"``): every tensor of its ``swinViT``
must come from the file and every key of the file must map to one, else the conversion fails.

Key mapping (official -> medssl), ``k`` in 1..4, ``i`` a block index:

    module.patch_embed.proj.*                     swinViT.patch_embed.proj.*
    module.layers{k}.0.blocks.{i}.mlp.fc1.*       swinViT.layers{k}.0.blocks.{i}.mlp.linear1.*
    module.layers{k}.0.blocks.{i}.mlp.fc2.*       swinViT.layers{k}.0.blocks.{i}.mlp.linear2.*
    module.layers{k}.0.blocks.{i}.<rest>          swinViT.layers{k}.0.blocks.{i}.<rest>
        (<rest>: norm1.*, norm2.*, attn.qkv.*, attn.proj.*, attn.relative_position_bias_table,
        attn.relative_position_index)
    module.layers{k}.0.downsample.*               swinViT.layers{k}.0.downsample.*  (reduction.weight, norm.*)

The pre-training ran on MONAI <= 1.4, whose patch merging orders the neighbours differently from MONAI >= 1.5:
the card keeps ``merging = "merging-legacy"`` so the converted encoder computes what was pre-trained.
Architecture sizes (feature size, input channels, depths, heads) are read from the tensors.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import torch

from medssl_zoo.card import ModelCard, WeightsSpec
from medssl_zoo.checkpoint import save_checkpoint
from medssl_zoo.convert.pickles import load_official_pickle
from medssl_zoo.errors import CheckpointFormatError
from medssl_zoo.registry import build_model, get_card
from medssl_zoo.weights import load_state_dict_strict, sha256_of

#: The zoo entry a converted file becomes.
SSL_CARD = "swin-unetr-ssl"

_BLOCK_REST = r"(norm[12]\.(?:weight|bias)|attn\.(?:qkv|proj)\.(?:weight|bias)|attn\.relative_position_(?:bias_table|index))"
_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(pattern), target)
    for pattern, target in [
        (r"patch_embed\.proj\.(weight|bias)", r"swinViT.patch_embed.proj.\1"),
        (r"layers([1-4])\.0\.blocks\.(\d+)\.mlp\.fc([12])\.(weight|bias)", r"swinViT.layers\1.0.blocks.\2.mlp.linear\3.\4"),
        (rf"layers([1-4])\.0\.blocks\.(\d+)\.{_BLOCK_REST}", r"swinViT.layers\1.0.blocks.\2.\3"),
        (r"layers([1-4])\.0\.downsample\.(reduction\.weight|norm\.weight|norm\.bias)", r"swinViT.layers\1.0.downsample.\2"),
    ]
]


def official_swin_key_to_medssl(key: str) -> str:
    """Map one official key (``module.`` prefix included) to ours; anything else is a CheckpointFormatError."""
    if not key.startswith("module."):
        raise CheckpointFormatError(f"unexpected key {key!r}: official Swin ViT keys start with 'module.'")
    for pattern, target in _RULES:
        match = pattern.fullmatch(key.removeprefix("module."))
        if match:
            return match.expand(target)
    raise CheckpointFormatError(f"unexpected key {key!r}: not part of the Swin ViT encoder (see the mapping table)")


def read_swin_ssl_state(path: Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of an official file, read with the weights-only unpickler."""
    checkpoint = load_official_pickle(path, "the official model_swinvit.pt")
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointFormatError(f"{path}: expected a dict with a 'state_dict' of tensors (model_swinvit.pt); found {found}")
    return state


def _architecture(state: Mapping[str, torch.Tensor], source: str) -> dict[str, object]:
    """feature_size, in_channels, depths and num_heads read from the converted tensors' shapes."""
    embed = state.get("swinViT.patch_embed.proj.weight")
    if embed is None:
        raise CheckpointFormatError(f"{source}: no module.patch_embed.proj.weight; not a Swin ViT state dict")
    depths, heads = [], []
    for stage in range(1, 5):
        prefix = f"swinViT.layers{stage}.0.blocks."
        blocks = {key.removeprefix(prefix).split(".")[0] for key in state if key.startswith(prefix)}
        table = state.get(f"{prefix}0.attn.relative_position_bias_table")
        if not blocks or table is None:
            raise CheckpointFormatError(f"{source}: stage layers{stage} has no blocks; not a 4-stage Swin ViT")
        depths.append(len(blocks))
        heads.append(int(table.shape[1]))
    return {"feature_size": int(embed.shape[0]), "in_channels": int(embed.shape[1]), "depths": depths, "num_heads": heads}


def convert_swin_ssl(checkpoint_path: Path | str, out_dir: Path | str, overwrite: bool = False) -> ModelCard:
    """Convert an official ``model_swinvit.pt`` into a ``swin-unetr-ssl`` checkpoint directory; return its card.

    The directory loads with ``medssl_zoo.load_checkpoint(out_dir)`` (or ``medssl_sdk.load``); its model's
    ``embed`` gives the pooled deepest features of the pre-trained encoder.
    """
    checkpoint_path = Path(checkpoint_path)
    source = str(checkpoint_path)
    official = read_swin_ssl_state(checkpoint_path)
    try:
        converted = {official_swin_key_to_medssl(key): tensor for key, tensor in official.items()}
    except CheckpointFormatError as error:
        raise CheckpointFormatError(f"{source}: {error}") from None
    base = get_card(SSL_CARD)
    kwargs = {**base.kwargs, **_architecture(converted, source)}
    note = f"converted from {checkpoint_path.name}, sha256 {sha256_of(checkpoint_path)}"
    card = replace(base, kwargs=kwargs, weights=WeightsSpec(note=note))
    model = build_model(card)
    load_state_dict_strict(model, converted, source)
    return save_checkpoint(model, card, out_dir, overwrite=overwrite)
