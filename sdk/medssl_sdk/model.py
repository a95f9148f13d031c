"""The object ``medssl_sdk.load`` returns: a network with its card on a device, and the inference API.

    model = load("phantom-mit-nano")
    seg = model.segment("ct_dir/")        # DICOM folder | NIfTI / PNG / DICOM file | Volume | array (+ spacing)
    seg.save("ct_seg.nii.gz")
    model.classify(xray)                  # {label: probability}
    model.embed(volume)                   # (embedding_dim,) tensor
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from medssl_sdk.export import DEFAULT_MAX_BATCH, export_network
from medssl_sdk.hub import PushResult, push_checkpoint
from medssl_sdk.io import read_volume
from medssl_sdk.preprocess import PreparedInput, prepare, resample, restore_labels, restore_orientation
from medssl_sdk.runtimes import Runtime
from medssl_sdk.runtimes.eager import TorchRuntime
from medssl_sdk.segmentation import Segmentation
from medssl_sdk.sliding_window import sliding_window_argmax, sliding_window_inference
from medssl_sdk.volume import Volume
from medssl_zoo import MedsslError, ModelCard, save_checkpoint
from medssl_zoo.card import InputSpec

#: What the inference methods accept: a Volume, a path (DICOM series folder, NIfTI, PNG/JPEG, DICOM file),
#: or a spatial array ``(D, H, W)`` / ``(H, W)`` with ``spacing=`` in mm (array order).
ImageInput = Volume | str | Path | np.ndarray | torch.Tensor


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given (checked to exist), else CUDA, then Apple MPS, then CPU."""
    if device is not None:
        try:
            chosen = torch.device(device)
        except RuntimeError as error:
            raise MedsslError(f"unknown device {device!r} ({error}); use cuda, cuda:N, mps or cpu") from None
        available = {"cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}
        if chosen.type in available and not available[chosen.type]():
            raise MedsslError(f"device {device!r} was asked for but this torch build or machine has no {chosen.type.upper()}")
        return chosen
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def as_volume(
    image: ImageInput, spacing: tuple[float, ...] | None = None, series_uid: str | None = None, progress: bool = False
) -> Volume:
    """Turn any accepted input into a Volume: files are read (``progress``: a bar over a DICOM folder's files),
    arrays get an axis-aligned affine from ``spacing`` (see :meth:`Volume.from_array`)."""
    if isinstance(image, (str, Path)):
        if spacing is not None:
            raise ValueError(f"{image}: spacing= applies to arrays; files carry their own geometry")
        return read_volume(image, series_uid=series_uid, progress=progress)
    if series_uid is not None:
        raise ValueError("series_uid= picks a series of a DICOM folder; this input is not a path")
    if isinstance(image, Volume):
        if spacing is not None:
            raise ValueError("spacing= applies to arrays; a Volume carries its own geometry")
        return image
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3):
            raise ValueError(
                f"an array input must be one spatial image, (H, W) or (D, H, W); got shape {image.shape} "
                "(drop batch/channel axes; call once per image)"
            )
        return Volume.from_array(image, spacing)
    raise TypeError(f"cannot read an image from {type(image).__name__}; pass a path, a Volume or a numpy array")


class Model:
    """A loaded zoo model: a runtime that runs the network, its card, and the inference API.

    ``Model(network, card, device)`` wraps an ``nn.Module`` (the PyTorch runtime); ``Model(runtime, card)``
    wraps an exported model's runtime (ONNX Runtime, TensorRT). Either way ``segment``, ``classify`` and
    ``embed`` behave the same.

    Attributes:
        runtime: what runs the network (:mod:`medssl_sdk.runtimes`); ``runtime.backend`` names it.
        card: the model card (architecture, inputs, labels, weights with the verified sha256).
        device: where the network runs.
    """

    def __init__(self, network: nn.Module | Runtime, card: ModelCard, device: torch.device | None = None) -> None:
        if isinstance(network, nn.Module):
            network = TorchRuntime(network, device or torch.device("cpu"))
        elif device is not None and torch.device(device) != network.device:
            raise ValueError(f"the {network.backend} runtime runs on {network.device}, not {device}")
        self.runtime: Runtime = network
        self.card = card

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @property
    def backend(self) -> str:
        """``"torch"``, ``"onnxruntime"`` or ``"tensorrt"``."""
        return self.runtime.backend

    @property
    def network(self) -> nn.Module:
        """The ``nn.Module`` (eval mode, on ``device``); only the PyTorch runtime has one."""
        if not isinstance(self.runtime, TorchRuntime):
            raise MedsslError(f"model {self.name!r} runs an exported graph on {self.backend}; it has no PyTorch network")
        return self.runtime.network

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def task(self) -> str:
        """``"segment"``, ``"classify"`` or ``"embed"``: what the network's forward gives."""
        return self.card.task

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Run the network on a prepared batch ``(N, C, *patch)`` in inference mode; float32 output on ``device``."""
        return self.runtime(x)

    def segment(
        self,
        image: ImageInput,
        *,
        spacing: tuple[float, ...] | None = None,
        series_uid: str | None = None,
        overlap: float = 0.25,
        sw_batch_size: int = 4,
        stitch_device: str | torch.device | Literal["auto"] = "auto",
        low_memory: bool = False,
        progress: bool = True,
    ) -> Segmentation:
        """Segment an image with sliding windows of the card's patch size; labels come back on the input's grid.

        Args:
            image: see :data:`ImageInput`.
            spacing: voxel size (mm, array order) for array inputs.
            series_uid: which series of a DICOM folder holding several.
            overlap: window overlap fraction in [0, 1); windows are blended with a gaussian importance map.
            sw_batch_size: windows run per network call.
            stitch_device: where probabilities are accumulated: ``"auto"`` (the compute device if the
                output fits its free memory, else CPU), or a device.
            low_memory: accumulate in float16 on the stitch device; when no resampling is needed, stream
                the arg-max slab by slab so the full probability volume is never held.
            progress: show a progress bar over windows.

        Returns:
            a :class:`Segmentation` whose label Volume has the input's shape and affine.
        """
        self._require_task("segment")
        volume = as_volume(image, spacing, series_uid, progress)
        spec = self._input_spec(volume)
        prepared = prepare(volume, spec)
        windows = self._windows(
            spec.patch_size, overlap, sw_batch_size, stitch_device, progress, low_memory, float(prepared.tensor.min())
        )
        batch = prepared.tensor[None]
        with torch.inference_mode():
            if low_memory and prepared.tensor.shape[1:] == prepared.oriented.shape:
                labels = sliding_window_argmax(batch, predictor=self._probabilities, **windows)[0].cpu().numpy()  # uint8 | int16
                array = restore_orientation(labels, prepared.oriented, volume)
            else:
                probabilities = sliding_window_inference(batch, predictor=self._probabilities, **windows)[0]
                array = restore_labels(probabilities, prepared)
        return Segmentation(volume.with_array(array), self._class_names(), self.card)

    def classify(
        self, image: ImageInput, *, spacing: tuple[float, ...] | None = None, series_uid: str | None = None
    ) -> dict[str, float]:
        """Class probabilities (softmax) of the whole image, resized to the card's patch size, by label name."""
        self._require_task("classify")
        logits = self.runtime(self._whole_image(image, spacing, series_uid))
        probabilities = logits.softmax(dim=1)[0].cpu().tolist()
        return dict(zip(self._class_names(len(probabilities)), probabilities))

    def embed(
        self, image: ImageInput, *, spacing: tuple[float, ...] | None = None, series_uid: str | None = None
    ) -> torch.Tensor:
        """The encoder's embedding ``(embedding_dim,)`` (float32, CPU) of the whole image at the card's patch size."""
        return self.runtime.embed(self._whole_image(image, spacing, series_uid))[0].cpu()

    def export(
        self,
        path: str | Path,
        *,
        format: str = "onnx",
        precision: str = "fp32",
        branches: tuple[str, ...] | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        overwrite: bool = False,
        progress: bool = False,
    ) -> Path:
        """Export the network to a self-describing folder that ``load(path)`` runs on ONNX Runtime or TensorRT.

        One graph per input branch at the card's patch size with a dynamic batch axis; see
        :func:`medssl_sdk.export.export_network` for the arguments and the folder layout.
        """
        return export_network(
            self.network, self.card, path, format=format, precision=precision, branches=branches, max_batch=max_batch,
            overwrite=overwrite, progress=progress,
        )

    def push_to_hub(
        self,
        repo_id: str,
        *,
        revision: str | None = None,
        private: bool = False,
        commit_message: str | None = None,
        token: str | None = None,
    ) -> PushResult:
        """Save the network as a checkpoint and upload it with a model card, as ``medssl push`` does
        (:func:`medssl_sdk.hub.push_checkpoint`); the PyTorch runtime only."""
        with tempfile.TemporaryDirectory(prefix="medssl-checkpoint-") as directory:
            save_checkpoint(self.network, self.card, directory)
            return push_checkpoint(directory, repo_id, revision=revision, private=private, commit_message=commit_message,
                                   token=token)

    def _require_task(self, task: str) -> None:
        if self.task != task:
            raise MedsslError(
                f"model {self.name!r} is a {self.task!r} model; {task}() needs a model fine-tuned for it "
                f"(see `medssl zoo list`); {self.task}() works with this one"
            )

    def _input_spec(self, volume: Volume) -> InputSpec:
        branch = f"{volume.ndim}d"
        if branch not in self.card.inputs:
            takes = " and ".join(f"{d}D" for d in self.card.spatial_dims)
            kind = "a 2D image" if volume.ndim == 2 else "a 3D volume"
            raise MedsslError(f"model {self.name!r} takes {takes} input; {volume.source} is {kind} of shape {volume.shape}")
        return self.card.inputs[branch]

    def _whole_image(self, image: ImageInput, spacing: tuple[float, ...] | None, series_uid: str | None) -> torch.Tensor:
        """``(1, C, *patch_size)``: the pre-processed image resized to the card's patch size."""
        volume = as_volume(image, spacing, series_uid)
        spec = self._input_spec(volume)
        prepared: PreparedInput = prepare(volume, spec)
        return resample(prepared.tensor[None], spec.patch_size)

    def _windows(
        self,
        roi_size: tuple[int, ...],
        overlap: float,
        sw_batch_size: int,
        stitch_device: str | torch.device,
        progress: bool,
        low_memory: bool,
        padding_value: float,
    ) -> dict[str, object]:
        """Sliding-window options shared by the probability and streaming-argmax paths.

        ``padding_value`` fills windows that reach past an image smaller than the patch: the image's
        minimum (air for CT, not the 0 that means water after normalisation).
        """
        return {
            "roi_size": roi_size,
            "overlap": overlap,
            "sw_batch_size": sw_batch_size,
            "mode": "gaussian",
            "sw_device": self.device,
            "stitch_device": stitch_device,
            "accumulate_dtype": torch.float16 if low_memory else torch.float32,
            "progress": progress,
            "cval": padding_value,
        }

    def _probabilities(self, windows: torch.Tensor) -> torch.Tensor:
        """Softmax class probabilities ``(N, K, *roi)`` (float32) of a batch of windows ``(N, C, *roi)``."""
        return self.runtime(windows).softmax(dim=1)

    def _class_names(self, count: int | None = None) -> tuple[str, ...]:
        names = tuple(label.name for label in self.card.labels)
        count = count if count is not None else int(self.card.kwargs.get("num_classes", len(names)))
        return names if len(names) == count else tuple(f"class_{i}" for i in range(count))

    def __repr__(self) -> str:
        return (
            f"Model({self.card.name!r}, task={self.task!r}, backend={self.backend!r}, device={self.device}, "
            f"weights sha256={self.card.weights.sha256})"
        )

