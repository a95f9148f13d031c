"""medssl model zoo: architectures, task heads, model cards, weights and checkpoints.

    import medssl_zoo
    medssl_zoo.list_models()                       # ['unimiss-mit22', 'unimiss-mit7']
    net = medssl_zoo.create("unimiss-mit7")        # random init; pretrained=True loads pinned weights
"""

from medssl_zoo.card import ModelCard
from medssl_zoo.checkpoint import load_checkpoint, save_checkpoint
from medssl_zoo.errors import (
    CardError,
    CheckpointFormatError,
    ChecksumMismatchError,
    ExportError,
    MedsslError,
    StateDictMismatchError,
    WeightsError,
    WeightsUnavailableError,
)
from medssl_zoo.registry import create, get_card, list_models, register_card

__all__ = [
    "CardError",
    "ChecksumMismatchError",
    "CheckpointFormatError",
    "ExportError",
    "MedsslError",
    "ModelCard",
    "StateDictMismatchError",
    "WeightsError",
    "WeightsUnavailableError",
    "create",
    "get_card",
    "list_models",
    "load_checkpoint",
    "register_card",
    "save_checkpoint",
]
