"""medssl inference SDK.

    from medssl_sdk import load
    model = load("unimiss-mit22")          # or a checkpoint directory
"""

from medssl_sdk.loading import load
from medssl_sdk.model import Model

__all__ = ["Model", "load"]
