"""Hot-spot kernels of the medssl models.

Each kernel module holds the plain-PyTorch reference (the ground truth) and, where one exists, the Triton
implementation with its dispatch. Models import the public function only.
"""

from medssl_kernels.sra import sra_attention, sra_attention_reference
from medssl_kernels.window_attention import window_attention_3d, window_attention_3d_reference

__all__ = ["sra_attention", "sra_attention_reference", "window_attention_3d", "window_attention_3d_reference"]
