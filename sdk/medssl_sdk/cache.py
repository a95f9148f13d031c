"""Where medssl keeps what it derives and can rebuild: exported graphs, TensorRT engines.

``$MEDSSL_CACHE`` if set, else ``$XDG_CACHE_HOME/medssl``, else ``~/.cache/medssl``. Weights are not kept here:
they live in the Hugging Face cache, where huggingface_hub puts them.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The medssl cache folder (created on first use by whoever writes into it)."""
    if os.environ.get("MEDSSL_CACHE"):
        return Path(os.environ["MEDSSL_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "medssl"
