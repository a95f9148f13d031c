"""Reading official pickled checkpoints safely: torch's weights-only unpickler plus a named allow-list."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from medssl_zoo.errors import CheckpointFormatError


def load_official_pickle(path: Path | str, release: str, allowed: Sequence[type] = ()) -> Any:
    """``torch.load`` of ``path`` (on the CPU) that only builds tensors, plain containers and ``allowed`` classes.

    Anything else in the pickle is refused without being run; errors name the file and say which release
    (``release``, e.g. "an official UniMiSS checkpoint") was expected.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointFormatError(f"{path}: no such checkpoint file")
    permitted = ", ".join(["tensors", "containers", *(f"{c.__module__}.{c.__qualname__}" for c in allowed)])
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        detail = next((line.strip() for line in str(error).splitlines() if "Unsupported global" in line), "")
        raise CheckpointFormatError(
            f"{path}: refused: the pickle holds objects outside the allow-list ({permitted})"
            f"{': ' + detail if detail else ''}. It is not {release} or it has been tampered with; it was not executed."
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise CheckpointFormatError(f"{path}: not a readable torch checkpoint ({error})") from None
