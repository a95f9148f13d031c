"""The zoo's registry: named cards, architecture builders, ``create``.

Cards ship as ``medssl_zoo/cards/<name>.toml``; users add their own with :func:`register_card`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from torch import nn

from medssl_zoo.card import ModelCard
from medssl_zoo.errors import CardError
from medssl_zoo.mit import create_mit
from medssl_zoo.swin_unetr import create_swin_unetr
from medssl_zoo.weights import load_weights_file, resolve_weights


@dataclass(frozen=True)
class Architecture:
    """A network family the zoo can build.

    Attributes:
        builder: takes the card's kwargs and ``spatial_dims`` (the card's input branches, e.g. (2, 3)) and
            returns an ``nn.Module`` whose ``forward`` gives the card's task output.
        exportable: whether the network traces to ONNX at its patch size with a dynamic batch axis
            (checked for every shipped card by the zoo's export test); when False, ``export_note`` says why.
    """

    builder: Callable[..., nn.Module]
    exportable: bool = True
    export_note: str = ""


#: Architecture name (a card's ``architecture.name``) -> how to build (and whether it exports).
ARCHITECTURES: dict[str, Architecture] = {"mit": Architecture(create_mit), "swin_unetr": Architecture(create_swin_unetr)}

_USER_CARDS: dict[str, ModelCard] = {}


@cache
def _shipped_cards() -> dict[str, ModelCard]:
    cards = {}
    for entry in sorted((Path(__file__).parent / "cards").glob("*.toml")):
        card = ModelCard.from_toml(entry)
        if card.name != entry.stem:
            raise CardError(f"{entry}: card name {card.name!r} must match its file name")
        cards[card.name] = card
    return cards


def _cards() -> dict[str, ModelCard]:
    return {**_shipped_cards(), **_USER_CARDS}


def list_models() -> list[str]:
    """Names of all zoo entries, sorted."""
    return sorted(_cards())


def get_card(name: str) -> ModelCard:
    """The card of a zoo entry; an unknown name is an error listing the entries and the closest ones."""
    cards = _cards()
    if name not in cards:
        close = difflib.get_close_matches(name, cards, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise CardError(f"no zoo entry named {name!r}.{hint} Available: {', '.join(sorted(cards))}")
    return cards[name]


def register_card(card: ModelCard | Path | str, replace: bool = False) -> ModelCard:
    """Add a card (a :class:`ModelCard` or a TOML file) to the zoo for this process."""
    if not isinstance(card, ModelCard):
        card = ModelCard.from_toml(Path(card))
    if card.name in _cards() and not replace:
        raise CardError(f"a zoo entry named {card.name!r} exists; pass replace=True to shadow it")
    architecture_of(card)
    _USER_CARDS[card.name] = card
    return card


def architecture_of(card: ModelCard) -> Architecture:
    """The registry entry of a card's architecture; an unknown one is an error listing those known."""
    if card.architecture not in ARCHITECTURES:
        raise CardError(f"card {card.name!r}: unknown architecture {card.architecture!r}; known: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[card.architecture]


def build_model(card: ModelCard, **overrides: object) -> nn.Module:
    """Build the card's architecture with random weights; ``overrides`` replace card kwargs."""
    builder = architecture_of(card).builder
    kwargs = {**card.kwargs, **overrides}
    if "spatial_dims" not in kwargs:
        kwargs["spatial_dims"] = card.spatial_dims
    try:
        return builder(**kwargs)
    except (TypeError, ValueError) as error:
        raise CardError(f"card {card.name!r}: cannot build {card.architecture!r} with {kwargs}: {error}") from None


def create(
    card_or_name: ModelCard | str,
    pretrained: bool = False,
    *,
    weights: Path | str | None = None,
    cache_dir: Path | str | None = None,
    **overrides: object,
) -> nn.Module:
    """Build a zoo model, optionally with its pinned pretrained weights.

    Args:
        card_or_name: a zoo name (see :func:`list_models`) or a card.
        pretrained: load the card's weights: ``weights`` if given (a file, or a directory holding the
            card's weights file), else from the Hugging Face Hub or its cache (``HF_HUB_OFFLINE=1``
            honoured). The file's sha256 must match the card's and every tensor must fit.
        cache_dir: Hugging Face cache directory (default: huggingface_hub's).
        overrides: replace architecture kwargs of the card.
    """
    card = get_card(card_or_name) if isinstance(card_or_name, str) else card_or_name
    if weights is not None and not pretrained:
        raise ValueError("weights= is only used with pretrained=True")
    model = build_model(card, **overrides)
    if pretrained:
        path = resolve_weights(card, Path(weights) if weights else None, Path(cache_dir) if cache_dir else None)
        load_weights_file(model, path, card.weights.sha256, f"the card of {card.name!r}")
    return model
