"""``load(name_or_path)``: a zoo entry (weights from the Hub or its cache), a checkpoint folder or an export folder,
run by PyTorch, ONNX Runtime or TensorRT."""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import version
from pathlib import Path

import torch
from torch import nn

from medssl_sdk.cache import cache_root
from medssl_sdk.export import ExportManifest, export_network, is_export_folder
from medssl_sdk.model import Model, pick_device
from medssl_sdk.runtimes import BACKENDS, Runtime
from medssl_zoo import CardError, ExportError, ModelCard, create, get_card, list_models, load_checkpoint


def load(
    name_or_path: str | Path,
    *,
    device: str | torch.device | None = None,
    weights: str | Path | None = None,
    cache_dir: str | Path | None = None,
    backend: str | None = None,
    precision: str = "fp16",
) -> Model:
    """Load a pretrained model ready for inference.

    Args:
        name_or_path: a zoo name (``medssl zoo list``), a checkpoint folder (``config.json`` +
            ``model.safetensors``, as written by ``medssl convert`` or training), or an export folder
            (``medssl export``).
        device: ``"cuda"``, ``"cpu"``, ... (default: CUDA, then MPS, then CPU; CPU for ONNX Runtime
            without GPU providers).
        weights: for a zoo name, a local weights file or directory to use instead of the Hub
            (air-gapped sites); its sha256 must still match the card's.
        cache_dir: Hugging Face cache directory (default: huggingface_hub's; ``HF_HUB_OFFLINE=1`` honoured).
        backend: what runs the network: ``"torch"`` (default for zoo names and checkpoints),
            ``"onnxruntime"`` (default for ONNX exports) or ``"tensorrt"`` (default for TensorRT exports).
            A zoo name or checkpoint with another backend than torch is exported to ONNX once and cached
            under the medssl cache (``$MEDSSL_CACHE``, default ``~/.cache/medssl``).
        precision: TensorRT engines built at load time: ``"fp16"``, ``"bf16"`` or ``"fp32"``.

    Every weights and graph file is checked against its pinned sha256; weights load strictly.
    """
    if backend is not None and backend not in BACKENDS:
        raise ExportError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    path = Path(name_or_path)
    if path.is_dir() and is_export_folder(path):
        if weights is not None:
            raise ValueError(f"{path} is an export folder; 'weights' applies to zoo names only")
        return _load_export(path, device, backend, precision)
    network, card = _load_network(name_or_path, weights, cache_dir)
    if backend in (None, "torch"):
        resolved = pick_device(device)
        return Model(network.to(resolved).eval(), card, resolved)
    return _load_export(_cached_export(network, card), device, backend, precision)


def _load_network(
    name_or_path: str | Path, weights: str | Path | None, cache_dir: str | Path | None
) -> tuple[nn.Module, ModelCard]:
    """The network and card of a zoo name or checkpoint folder."""
    path = Path(name_or_path)
    is_zoo_name = str(name_or_path) in list_models()
    if path.is_dir():
        if weights is not None:
            raise ValueError(f"{path} is a checkpoint directory; 'weights' applies to zoo names only")
        return load_checkpoint(path)
    if path.is_file() and not is_zoo_name:
        raise CardError(
            f"{path} is a file; load() takes a zoo name, a checkpoint directory holding config.json and "
            "model.safetensors (convert official checkpoints with `medssl convert`), or an export folder"
        )
    if not is_zoo_name and (path.is_absolute() or len(path.parts) > 1 or path.suffix):
        raise CardError(f"{path}: no such checkpoint directory (and not a zoo name: see `medssl zoo list`)")
    card = get_card(str(name_or_path))  # an unknown name raises, naming the closest zoo entries
    return create(card, pretrained=True, weights=weights, cache_dir=cache_dir), card


def _cached_export(network: nn.Module, card: ModelCard) -> Path:
    """The ONNX export of a network from the medssl cache, keyed by its whole card (weights sha256, labels,
    pre-processing, patch size) and the medssl-sdk version that exports it."""
    if card.weights.sha256 is None:
        raise ExportError(f"model {card.name!r} has no pinned weights sha256 to key an export cache entry by")
    described = json.dumps({"card": card.to_dict(), "medssl-sdk": version("medssl-sdk")}, sort_keys=True)
    folder = cache_root() / "exports" / f"{card.name}-{hashlib.sha256(described.encode()).hexdigest()[:16]}"
    if is_export_folder(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        return export_network(network.cpu().eval(), card, folder)
    except (ExportError, OSError):
        if is_export_folder(folder):  # another process exported it meanwhile (its rename came first)
            return folder
        raise


def _load_export(folder: Path, device: str | torch.device | None, backend: str | None, precision: str) -> Model:
    manifest = ExportManifest.read(folder)
    backend = backend or ("tensorrt" if manifest.format == "tensorrt" else "onnxruntime")
    if backend == "torch":
        raise ExportError(
            f"{folder} is an exported model; run it with backend 'onnxruntime' or 'tensorrt' (load the zoo name or "
            "checkpoint it came from for PyTorch)"
        )
    runtime: Runtime
    if backend == "tensorrt":
        from medssl_sdk.runtimes.tensorrt_backend import TensorRTRuntime, require_tensorrt

        require_tensorrt()
        resolved = pick_device(device or "cuda")
        runtime = TensorRTRuntime(folder, manifest, resolved, precision)
    else:
        from medssl_sdk.runtimes.onnxruntime_backend import OnnxRuntimeRuntime, providers_for

        resolved = pick_device(device) if device is not None else torch.device("cpu")
        if device is None and torch.cuda.is_available():
            try:  # a GPU build of ONNX Runtime takes the GPU by default, as PyTorch would
                providers_for(torch.device("cuda"))
                resolved = torch.device("cuda")
            except ExportError:
                pass
        runtime = OnnxRuntimeRuntime(folder, manifest, resolved)
    return Model(runtime, manifest.card)
