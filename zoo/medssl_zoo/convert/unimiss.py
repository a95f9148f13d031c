"""Convert an official UniMiSS pre-training checkpoint (``checkpoint.pth``) to a checkpoint directory.

The official file is a pickle: ``{"student", "teacher", "optimizer", "epoch", "args", ...}`` with
student keys under ``module.backbone.`` (DDP), teacher keys under ``backbone.``, the DINO projection
head under ``[module.]head.`` and ``args`` an ``argparse.Namespace``. It is read with torch's
``weights_only`` unpickler, which allows tensors and plain containers, plus ``argparse.Namespace``
and nothing else. The DINO head is a pre-training device and is not converted.

Key mapping (official -> medssl), ``X`` in {2D, 3D} -> ``x`` in {2d, 3d}, ``i`` 1-based, ``j`` 0-based:

    transformer.patch_embedX0.*            encoder.stem.x.*
    transformer.patch_embedXi.proj.*       encoder.stages.{i-1}.embed.x.*
    transformer.pos_embedXi                encoder.stages.{i-1}.pos.x
    transformer.cls_tokens1                encoder.ssl_token
    transformer.cls_tokens{i>1}.*          encoder.stages.{i-1}.token_proj.*
    transformer.block{i}.*                 encoder.stages.{i-1}.blocks.*
    DecEmbedX{j}.proj.*                    decoder.stages.{j}.embed.x.*
    DecPosEmbedX{j}                        decoder.stages.{j}.pos.x
    cls_tokens{j}.*                        decoder.stages.{j}.token_proj.*
    Decblock{j}.*                          decoder.stages.{j}.blocks.*
    norm.*                                 decoder.norm.*
    inside blocks: attn.srXD -> attn.reduce.x, attn.norm -> attn.reduce_norm
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import torch

from medssl_zoo.card import ModelCard, WeightsSpec
from medssl_zoo.checkpoint import save_checkpoint
from medssl_zoo.convert.pickles import load_official_pickle
from medssl_zoo.errors import CheckpointFormatError
from medssl_zoo.registry import build_model, get_card
from medssl_zoo.weights import load_state_dict_strict, sha256_of

#: Official ``--arch`` -> zoo entry.
OFFICIAL_ARCHES = {"model_tiny": "unimiss-mit7", "model_small": "unimiss-mit22"}
#: Encoder depths of the official architectures, to recognise a checkpoint without ``args``.
_DEPTHS = {(1, 1, 1, 1): "model_tiny", (2, 3, 4, 3): "model_small"}

_Rule = tuple[re.Pattern[str], Callable[[re.Match[str]], str]]
_RULES: list[_Rule] = [
    (re.compile(p), f)
    for p, f in [
        (r"transformer\.patch_embed([23])D0\.(.+)", lambda m: f"encoder.stem.{m[1]}d.{m[2]}"),
        (r"transformer\.patch_embed([23])D(\d)\.proj\.(.+)", lambda m: f"encoder.stages.{int(m[2]) - 1}.embed.{m[1]}d.{m[3]}"),
        (r"transformer\.pos_embed([23])D(\d)", lambda m: f"encoder.stages.{int(m[2]) - 1}.pos.{m[1]}d"),
        (r"transformer\.cls_tokens1", lambda m: "encoder.ssl_token"),
        (r"transformer\.cls_tokens(\d)\.(.+)", lambda m: f"encoder.stages.{int(m[1]) - 1}.token_proj.{m[2]}"),
        (r"transformer\.block(\d)\.(.+)", lambda m: f"encoder.stages.{int(m[1]) - 1}.blocks.{_block_key(m[2])}"),
        (r"DecEmbed([23])D(\d)\.proj\.(.+)", lambda m: f"decoder.stages.{m[2]}.embed.{m[1]}d.{m[3]}"),
        (r"DecPosEmbed([23])D(\d)", lambda m: f"decoder.stages.{m[2]}.pos.{m[1]}d"),
        (r"cls_tokens(\d)\.(.+)", lambda m: f"decoder.stages.{m[1]}.token_proj.{m[2]}"),
        (r"Decblock(\d)\.(.+)", lambda m: f"decoder.stages.{m[1]}.blocks.{_block_key(m[2])}"),
        (r"norm\.(.+)", lambda m: f"decoder.norm.{m[1]}"),
    ]
]


def _block_key(rest: str) -> str:
    return re.sub(r"attn\.sr([23])D\.", r"attn.reduce.\1d.", rest).replace("attn.norm.", "attn.reduce_norm.")


def official_key_to_medssl(key: str) -> str:
    """Map one official backbone key (prefix removed) to ours; an unknown key is an error."""
    for pattern, rename in _RULES:
        match = pattern.fullmatch(key)
        if match:
            return rename(match)
    raise CheckpointFormatError(f"unexpected key {key!r} in the UniMiSS backbone; not an official MiT checkpoint?")


def read_official_checkpoint(path: Path) -> dict:
    """Load the pickle with the weights-only unpickler, allowing ``argparse.Namespace`` only."""
    checkpoint = load_official_pickle(path, "an official UniMiSS checkpoint", allowed=[argparse.Namespace])
    if not isinstance(checkpoint, dict):
        raise CheckpointFormatError(f"{path}: expected a dict with 'student'/'teacher'; got {type(checkpoint).__name__}")
    return checkpoint


def _backbone(state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Official backbone keys with the ``module.``/``backbone.`` prefixes removed; the head dropped."""
    backbone = {}
    for key, tensor in state.items():
        key = key.removeprefix("module.")
        if key.startswith("backbone."):
            backbone[key.removeprefix("backbone.")] = tensor
        elif not key.startswith("head."):
            raise CheckpointFormatError(f"{source}: unexpected key {key!r} (neither backbone. nor head.)")
    if not backbone:
        raise CheckpointFormatError(f"{source}: no backbone.* keys; not a UniMiSS pre-training checkpoint")
    return backbone


def _official_arch(checkpoint: Mapping, backbone: Mapping[str, torch.Tensor], source: str) -> str:
    args = checkpoint.get("args")
    arch = getattr(args, "arch", None)
    if arch is None:
        depths = tuple(
            len({key.split(".")[2] for key in backbone if key.startswith(f"transformer.block{i}.")}) for i in range(1, 5)
        )
        arch = _DEPTHS.get(depths)
        if arch is None:
            raise CheckpointFormatError(f"{source}: encoder depths {depths} match no official MiT ({_DEPTHS})")
    if arch not in OFFICIAL_ARCHES:
        raise CheckpointFormatError(f"{source}: args.arch {arch!r} is not one of {sorted(OFFICIAL_ARCHES)}")
    return arch


def _position_overrides(args: object) -> dict[str, tuple[int, ...]]:
    """Position-table sizes from the training ``args`` when they differ from the defaults."""
    overrides = {}
    size_2d, size_3d = getattr(args, "img_size2D", None), getattr(args, "img_size3D", None)
    if size_2d is not None:
        overrides["position_size_2d"] = (int(size_2d),) * 2 if isinstance(size_2d, int) else tuple(size_2d)
    if size_3d is not None:
        overrides["position_size_3d"] = (int(size_3d),) * 3 if isinstance(size_3d, int) else tuple(size_3d)
    return overrides


def convert_unimiss(
    checkpoint_path: Path | str, output_dir: Path | str, teacher: bool = False, overwrite: bool = False
) -> ModelCard:
    """Convert the student (default) or teacher of an official checkpoint; return the written card.

    The result loads with ``medssl_sdk.load(output_dir)``; the first 48 values of its embedding are the
    official network's output (the decoder's normed SSL token), the rest the pooled deepest tokens.
    """
    checkpoint_path = Path(checkpoint_path)
    which = "teacher" if teacher else "student"
    checkpoint = read_official_checkpoint(checkpoint_path)
    if which not in checkpoint:
        raise CheckpointFormatError(f"{checkpoint_path}: no {which!r} entry; top-level keys: {sorted(checkpoint)}")
    source = f"{checkpoint_path} [{which}]"
    backbone = _backbone(checkpoint[which], source)
    try:
        converted = {official_key_to_medssl(key): tensor for key, tensor in backbone.items()}
    except CheckpointFormatError as error:
        raise CheckpointFormatError(f"{source}: {error}") from None
    base = get_card(OFFICIAL_ARCHES[_official_arch(checkpoint, backbone, source)])
    kwargs = {**base.kwargs, **_position_overrides(checkpoint.get("args"))}
    note = f"converted from {checkpoint_path.name} ({which}), sha256 {sha256_of(checkpoint_path)}"
    card = replace(base, kwargs=kwargs, weights=WeightsSpec(note=note))
    model = build_model(card)
    load_state_dict_strict(model, converted, source)
    return save_checkpoint(model, card, output_dir, overwrite=overwrite)
