"""What runs the network under the sliding-window engine: PyTorch, ONNX Runtime or TensorRT.

Every runtime takes a batch of prepared windows ``(N, C, *patch)`` and gives the card's task output as
float32 (``(N, K, *patch)`` logits, ``(N, K)`` logits or ``(N, D)`` embeddings), so ``Model.segment``,
``classify`` and ``embed`` are the same whatever runs the network.
"""

from medssl_sdk.runtimes.base import BACKENDS, Runtime

__all__ = ["BACKENDS", "Runtime"]
