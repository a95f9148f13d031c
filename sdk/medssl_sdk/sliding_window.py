"""Sliding-window inference over 2D images and 3D volumes, and a low-memory streaming argmax.

    probabilities = sliding_window_inference(image, (64, 160, 192), predictor)   # (B, K, D, H, W)
    labels = sliding_window_argmax(image, (64, 160, 192), predictor)             # (B, D, H, W) uint8

Window placement, padding, importance map and normalisation follow MONAI's
``monai.inferers.sliding_window_inference`` (same windows, same weights, outputs equal to within float
rounding), with these differences in how the work is done:

- each window's prediction is multiplied by the importance map and added in one fused in-place pass
  (``addcmul_`` on a view of the output), where MONAI multiplies the prediction batch in place and adds it
  in a second pass;
- the sum of importance weights is made once per call over the image's own voxels, and padding (only when
  the window is larger than the image) never reaches the output: windows are clipped to the image when
  stitched, so no padded output is allocated and cropped;
- ``sliding_window_argmax`` keeps K-channel accumulators only for the slabs of the first spatial axis that
  a window still has to touch, and turns each slab into labels as soon as the windows have passed it.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

__all__ = ["WindowPlan", "importance_map", "plan_windows", "sliding_window_argmax", "sliding_window_inference"]

BlendMode = Literal["constant", "gaussian"]
Predictor = Callable[[torch.Tensor], torch.Tensor]
DeviceLike = torch.device | str

PADDING_MODES = ("constant", "reflect", "replicate", "circular")
#: Gaussian weights are clamped from below to max(smallest weight, this), as MONAI does, so that every
#: voxel a window covers gets a positive weight.
MIN_IMPORTANCE = 1e-3
#: With ``stitch_device="auto"`` on CUDA, the accumulators go on the GPU only if they take at most this
#: fraction of its free memory (the rest is left to the network's activations).
AUTO_STITCH_FREE_FRACTION = 0.5
#: Elements normalised per step at the end (bounds the float32 temporaries of float16 accumulation).
_NORMALISE_STEP_ELEMENTS = 1 << 24

Slices = tuple[slice, ...]


@dataclass(frozen=True)
class WindowPlan:
    """Where the windows of an image of a given size go (MONAI's placement), spatial axes in array order.

    image_size: the image's spatial size (S1, ..., Sn), n = 2 or 3.
    roi_size: the window size (R1, ..., Rn).
    padding: per axis, (before, after): an axis shorter than the window is padded to the window's size,
        ``before = (R - S) // 2``; other axes are not padded.
    starts: each window's first voxel in padded coordinates, first axis slowest.
    """

    image_size: tuple[int, ...]
    roi_size: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    starts: tuple[tuple[int, ...], ...]

    @property
    def needs_padding(self) -> bool:
        return any(before or after for before, after in self.padding)

    @functools.cached_property
    def window_slices(self) -> tuple[Slices, ...]:
        """Per window, its region of the padded image (n slices)."""
        return tuple(tuple(slice(s, s + r) for s, r in zip(start, self.roi_size)) for start in self.starts)

    @functools.cached_property
    def placements(self) -> tuple[tuple[Slices, Slices], ...]:
        """Per window, (region in the image, matching region in the window): the window clipped to the image."""
        placed = []
        for start in self.starts:
            inside, within = [], []
            for s, r, size, (before, _) in zip(start, self.roi_size, self.image_size, self.padding):
                lo, hi = max(s - before, 0), min(s - before + r, size)
                inside.append(slice(lo, hi))
                within.append(slice(lo - (s - before), hi - (s - before)))
            placed.append((tuple(inside), tuple(within)))
        return tuple(placed)


def plan_windows(image_size: Sequence[int], roi_size: Sequence[int], overlap: float) -> WindowPlan:
    """Windows of ``roi_size`` over an image of ``image_size`` overlapping by ``overlap`` (MONAI's rules).

    Along each axis of the (padded) image the step is ``int(R * (1 - overlap))`` (at least 1; R when the
    window spans the axis), windows start at multiples of the step, the last one is moved back to end at
    the image's edge, and no window starts after the first one that reaches the edge.
    """
    _check_sizes(image_size, roi_size)
    image_size, roi_size = tuple(map(int, image_size)), tuple(map(int, roi_size))
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    shortfalls = [max(r - s, 0) for s, r in zip(image_size, roi_size)]
    padding = tuple((shortfall // 2, shortfall - shortfall // 2) for shortfall in shortfalls)
    axis_starts = []
    for size, roi, (before, after) in zip(image_size, roi_size, padding):
        padded = size + before + after
        step = roi if roi == padded else max(int(roi * (1.0 - overlap)), 1)
        count = -(-(padded - roi) // step) + 1
        axis_starts.append([min(i * step, padded - roi) for i in range(count)])
    return WindowPlan(
        image_size=image_size,
        roi_size=roi_size,
        padding=padding,
        starts=tuple(itertools.product(*axis_starts)),
    )


def importance_map(
    roi_size: Sequence[int], mode: BlendMode = "gaussian", sigma_scale: float = 0.125, device: DeviceLike = "cpu"
) -> torch.Tensor:
    """Per-voxel weight of a window's prediction, shape (*roi_size), float32 (a new tensor).

    ``constant``: all ones. ``gaussian``: the product over axes of exp(-x^2 / (2 sigma^2)), x the distance
    to the window's centre along the axis and sigma = ``sigma_scale`` * the window's size along it, then
    clamped from below to max(its smallest value, 1e-3).
    """
    _check_blending(mode, sigma_scale)
    return _cached_importance_map(tuple(roi_size), mode, sigma_scale, torch.device(device)).clone()


@functools.lru_cache(maxsize=8)
def _cached_importance_map(roi_size: tuple[int, ...], mode: BlendMode, sigma_scale: float, device: torch.device) -> torch.Tensor:
    """``importance_map`` (arguments already checked), shared between calls: never modify the result."""
    if mode == "constant":
        return torch.ones(roi_size, dtype=torch.float32, device=device)
    profiles = []
    for size in roi_size:
        offset = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2.0
        profiles.append(torch.exp(offset.square() / (-2.0 * (sigma_scale * size) ** 2)))
    weights = functools.reduce(lambda product, profile: product.unsqueeze(-1) * profile, profiles)
    return weights.clamp_(min=max(weights.min().item(), MIN_IMPORTANCE))


def sliding_window_inference(
    image: torch.Tensor,
    roi_size: Sequence[int],
    predictor: Predictor,
    *,
    sw_batch_size: int = 4,
    overlap: float = 0.25,
    mode: BlendMode = "gaussian",
    sigma_scale: float = 0.125,
    padding_mode: str = "constant",
    cval: float = 0.0,
    sw_device: DeviceLike | None = None,
    stitch_device: DeviceLike | Literal["auto"] | None = "auto",
    accumulate_dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> torch.Tensor:
    """Run ``predictor`` on overlapping windows of ``image`` and blend the window outputs.

    Args:
        image: (B, C, *spatial) with 2 or 3 spatial axes, on any device.
        roi_size: the window's spatial size, one entry per spatial axis. An axis shorter than the window
            is padded (``padding_mode``, ``cval``) to the window's size; the output has the image's size.
        predictor: (N, C, *roi_size) -> (N, K, *roi_size), N <= ``sw_batch_size``; K may differ from C.
            It runs under the caller's grad mode (wrap the call in ``torch.inference_mode()``).
        sw_batch_size: windows per ``predictor`` call (windows of different images may share a call).
        overlap: fraction of the window shared by neighbouring windows along each axis, in [0, 1).
        mode: ``"gaussian"`` weights a window's voxels by a Gaussian centred on it (``sigma_scale`` times
            the window's size per axis), ``"constant"`` weights all voxels equally.
        padding_mode: ``"constant"`` (with ``cval``), ``"reflect"``, ``"replicate"`` or ``"circular"``.
        sw_device: where windows are sent before ``predictor`` (default: the image's device).
        stitch_device: where the outputs are accumulated and returned. ``"auto"``: ``sw_device`` when it is
            the CPU, or a CUDA device with the accumulators fitting in half its free memory; else the CPU.
            ``None``: the image's device.
        accumulate_dtype: dtype of the accumulated output; ``torch.float16`` halves the stitching memory
            (the final division is computed in float32 and stored back). Its rounding error grows with the
            number of windows summed per voxel: measured max error vs float32 about 1e-3 at overlap 0.5 and
            about 1e-2 at 0.875 for softmax outputs, enough to flip near-tied arg-maxes.
        progress: show a tqdm bar over the B x (number of windows) windows.

    Returns:
        (B, K, *spatial): the importance-weighted mean of the window outputs covering each voxel, dtype
        ``accumulate_dtype``, on the stitch device.
    """
    options = _Options(sw_batch_size, overlap, mode, sigma_scale, padding_mode, cval, sw_device, stitch_device,
                       accumulate_dtype, progress)
    return _sliding_window(image, roi_size, predictor, options, _BlendedOutput)


def sliding_window_argmax(
    image: torch.Tensor,
    roi_size: Sequence[int],
    predictor: Predictor,
    *,
    sw_batch_size: int = 4,
    overlap: float = 0.25,
    mode: BlendMode = "gaussian",
    sigma_scale: float = 0.125,
    padding_mode: str = "constant",
    cval: float = 0.0,
    sw_device: DeviceLike | None = None,
    stitch_device: DeviceLike | Literal["auto"] | None = "auto",
    accumulate_dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> torch.Tensor:
    """Labels ``sliding_window_inference(...).argmax(1)`` with a slab band of accumulators, not the volume.

    Takes the same arguments as ``sliding_window_inference``. Windows are visited in order along the first
    spatial axis; the K-channel accumulators of a slab of that axis exist only from the first window that
    touches it to the first window that starts after it, when the slab is normalised, reduced to labels and
    freed. Peak memory: the (B, *spatial) labels (uint8, or int16 above 256 classes), a (*spatial) float32
    weight sum, and K-channel accumulators over at most one window's extent along the first axis (the full
    other axes).

    Returns:
        (B, *spatial) uint8 (int16 above 256 classes) class indices (the first of equal maxima), on the
        stitch device.
    """
    options = _Options(sw_batch_size, overlap, mode, sigma_scale, padding_mode, cval, sw_device, stitch_device,
                       accumulate_dtype, progress)
    return _sliding_window(image, roi_size, predictor, options, _ArgmaxBand)


@dataclass(frozen=True)
class _Options:
    """The keyword arguments of ``sliding_window_inference``."""

    sw_batch_size: int
    overlap: float
    mode: BlendMode
    sigma_scale: float
    padding_mode: str
    cval: float
    sw_device: DeviceLike | None
    stitch_device: DeviceLike | Literal["auto"] | None
    accumulate_dtype: torch.dtype
    progress: bool

    def check(self) -> None:
        if isinstance(self.sw_batch_size, bool) or not isinstance(self.sw_batch_size, int) or self.sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be an integer >= 1, got {self.sw_batch_size!r}")
        _check_blending(self.mode, self.sigma_scale)
        if self.padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {self.padding_mode!r}")
        if not self.accumulate_dtype.is_floating_point:
            raise ValueError(
                f"accumulate_dtype must be a floating-point dtype (float32, float16, ...), got {self.accumulate_dtype}"
            )


@dataclass(frozen=True)
class _Stitching:
    """Where window outputs are accumulated, with the weights to do it.

    importance: (*roi) float32; weight_sum: (*spatial) float32, the importance summed over all windows.
    """

    device: torch.device
    importance: torch.Tensor
    weight_sum: torch.Tensor

    @classmethod
    def make(cls, plan: WindowPlan, device: torch.device, mode: BlendMode, sigma_scale: float) -> _Stitching:
        importance = _cached_importance_map(plan.roi_size, mode, sigma_scale, device)
        weight_sum = torch.zeros(plan.image_size, dtype=torch.float32, device=device)
        for inside, within in plan.placements:
            weight_sum[inside].add_(importance[within])
        return cls(device, importance, weight_sum)


class _Sink(Protocol):
    """What the window outputs are stitched into: the blended output, or labels from a slab band."""

    stitching: _Stitching

    @staticmethod
    def bytes_needed(plan: WindowPlan, batch_size: int, num_classes: int, dtype: torch.dtype) -> int: ...

    def __init__(
        self, plan: WindowPlan, stitching: _Stitching, batch_size: int, num_classes: int, dtype: torch.dtype
    ) -> None: ...

    def add(self, b: int, w: int, prediction: torch.Tensor) -> None:
        """Accumulate window ``w`` of image ``b``, prediction (K, *roi) on the stitch device."""

    def finish(self) -> torch.Tensor: ...


def _sliding_window(
    image: torch.Tensor, roi_size: Sequence[int], predictor: Predictor, options: _Options, sink_type: type[_Sink]
) -> torch.Tensor:
    """Predict the windows in batches, in plan order, and hand each prediction to a ``sink_type`` sink."""
    options.check()
    plan, padded = _plan_and_pad(image, roi_size, options)
    sw_device = torch.device(options.sw_device) if options.sw_device is not None else image.device
    jobs = list(itertools.product(range(image.shape[0]), range(len(plan.starts))))  # (image, window), plan order
    sink: _Sink | None = None
    num_classes: int | None = None
    with tqdm(total=len(jobs), disable=not options.progress, desc="sliding window", unit="window") as bar:
        for first in range(0, len(jobs), options.sw_batch_size):
            chunk = jobs[first : first + options.sw_batch_size]
            views = [padded[b][(slice(None), *plan.window_slices[w])] for b, w in chunk]
            windows = views[0].unsqueeze(0) if len(views) == 1 else torch.stack(views)  # a lone window is not copied
            predictions = predictor(windows.to(sw_device))
            _check_prediction(predictions, windows.shape, num_classes)
            if sink is None:
                num_classes = predictions.shape[1]
                needed = sink_type.bytes_needed(plan, image.shape[0], num_classes, options.accumulate_dtype)
                device = _stitch_device(options.stitch_device, image.device, sw_device, needed)
                stitching = _Stitching.make(plan, device, options.mode, options.sigma_scale)
                sink = sink_type(plan, stitching, image.shape[0], num_classes, options.accumulate_dtype)
            for (b, w), prediction in zip(chunk, predictions.to(sink.stitching.device)):
                sink.add(b, w, prediction)
            del windows, predictions, prediction  # not held while the next windows are predicted
            bar.update(len(chunk))
    return sink.finish()


class _BlendedOutput:
    """The (B, K, *spatial) importance-weighted sum of the window outputs, divided by the weight sum at the end."""

    @staticmethod
    def bytes_needed(plan: WindowPlan, batch_size: int, num_classes: int, dtype: torch.dtype) -> int:
        return (batch_size * num_classes * dtype.itemsize + 4) * math.prod(plan.image_size)

    def __init__(
        self, plan: WindowPlan, stitching: _Stitching, batch_size: int, num_classes: int, dtype: torch.dtype
    ) -> None:
        self.plan, self.stitching = plan, stitching
        self.output = torch.zeros((batch_size, num_classes, *plan.image_size), dtype=dtype, device=stitching.device)

    def add(self, b: int, w: int, prediction: torch.Tensor) -> None:
        inside, within = self.plan.placements[w]
        self.output[b][(slice(None), *inside)].addcmul_(prediction[(slice(None), *within)], self.stitching.importance[within])

    def finish(self) -> torch.Tensor:
        for b in range(self.output.shape[0]):
            _normalise_(self.output[b], self.stitching.weight_sum)
        return self.output


class _ArgmaxBand:
    """Labels (B, *spatial) from K-channel accumulators held only for the slabs that windows still touch.

    The first spatial axis is cut at every window's first and last voxel; a window covers whole slabs. A
    slab's accumulator, (K, slab length, *other axes), is made when a window first touches it and reduced
    to labels when a window of the same image starts at or after its end (windows come in order of start).
    """

    @staticmethod
    def bytes_needed(plan: WindowPlan, batch_size: int, num_classes: int, dtype: torch.dtype) -> int:
        slab_voxels = math.prod(plan.image_size[1:])
        band = num_classes * min(plan.roi_size[0], plan.image_size[0]) * slab_voxels * dtype.itemsize
        return (batch_size * label_dtype(num_classes).itemsize + 4) * math.prod(plan.image_size) + band

    def __init__(
        self, plan: WindowPlan, stitching: _Stitching, batch_size: int, num_classes: int, dtype: torch.dtype
    ) -> None:
        self.plan, self.stitching, self.num_classes, self.dtype = plan, stitching, num_classes, dtype
        self.labels = torch.empty((batch_size, *plan.image_size), dtype=label_dtype(num_classes), device=stitching.device)
        self.bounds = sorted({edge for inside, _ in plan.placements for edge in (inside[0].start, inside[0].stop)})
        self.live: dict[int, torch.Tensor] = {}
        self.batch_index = 0

    def add(self, b: int, w: int, prediction: torch.Tensor) -> None:
        if b != self.batch_index:
            self._finalise_before(self.plan.image_size[0])
            self.batch_index = b
        inside, within = self.plan.placements[w]
        self._finalise_before(inside[0].start)
        offset = within[0].start - inside[0].start
        first_slab = bisect.bisect_left(self.bounds, inside[0].start)
        for slab in range(first_slab, bisect.bisect_left(self.bounds, inside[0].stop)):
            lo, hi = self.bounds[slab], self.bounds[slab + 1]
            if slab not in self.live:
                shape = (self.num_classes, hi - lo, *self.plan.image_size[1:])
                self.live[slab] = torch.zeros(shape, dtype=self.dtype, device=self.stitching.device)
            window_part = (slice(lo + offset, hi + offset), *within[1:])
            self.live[slab][(slice(None), slice(None), *inside[1:])].addcmul_(
                prediction[(slice(None), *window_part)], self.stitching.importance[window_part]
            )

    def finish(self) -> torch.Tensor:
        self._finalise_before(self.plan.image_size[0])
        return self.labels

    def _finalise_before(self, stop: int) -> None:
        """Reduce to labels, and free, the held slabs of the current image that end at or before ``stop``."""
        for slab in sorted(self.live):
            lo, hi = self.bounds[slab], self.bounds[slab + 1]
            if hi > stop:
                break
            accumulated = _normalise_(self.live.pop(slab), self.stitching.weight_sum[lo:hi])
            self.labels[self.batch_index, lo:hi] = accumulated.max(0).indices  # the first maximum, as argmax; faster


def label_dtype(num_classes: int) -> torch.dtype:
    """The smallest integer dtype holding class indices ``0 .. num_classes - 1``: uint8 up to 256 classes, else int16."""
    return torch.uint8 if num_classes <= 256 else torch.int16


def _normalise_(accumulated: torch.Tensor, weight_sum: torch.Tensor) -> torch.Tensor:
    """Divide (K, n, *rest) accumulators in place by the (n, *rest) weight sum, in float32 or wider.

    Half-precision accumulators are divided a few rows at a time, so the float32 temporary stays under
    ``_NORMALISE_STEP_ELEMENTS`` elements instead of doubling the accumulators' memory.
    """
    if accumulated.dtype.itemsize >= 4:
        return accumulated.div_(weight_sum)
    step = max(1, _NORMALISE_STEP_ELEMENTS // (accumulated.shape[0] * math.prod(accumulated.shape[2:])))
    for lo in range(0, accumulated.shape[1], step):
        rows = accumulated[:, lo : lo + step]
        rows.copy_(rows.float().div_(weight_sum[lo : lo + step]))
    return accumulated


def _plan_and_pad(image: torch.Tensor, roi_size: Sequence[int], options: _Options) -> tuple[WindowPlan, torch.Tensor]:
    """Check the image against the window, plan the windows, and pad the image (B, C, *padded) if a window is
    larger than it."""
    if not isinstance(image, torch.Tensor) or image.ndim not in (4, 5):
        got = f"shape {tuple(image.shape)}" if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image must be a (B, C, H, W) or (B, C, D, H, W) tensor, got {got}")
    if 0 in image.shape:
        raise ValueError(f"image has an empty axis: shape {tuple(image.shape)}")
    spatial = tuple(image.shape[2:])
    if len(roi_size) != len(spatial):
        raise ValueError(
            f"roi_size {tuple(roi_size)} has {len(roi_size)} entries but the image (B, C, *spatial) = {tuple(image.shape)} "
            f"has {len(spatial)} spatial axes: give one window size per spatial axis"
        )
    plan = plan_windows(spatial, roi_size, options.overlap)
    if not plan.needs_padding:
        return plan, image
    widths = [width for before_after in reversed(plan.padding) for width in before_after]  # last axis first
    value = options.cval if options.padding_mode == "constant" else None
    return plan, F.pad(image, widths, mode=options.padding_mode, value=value)


def _check_sizes(image_size: Sequence[int], roi_size: Sequence[int]) -> None:
    if len(image_size) != len(roi_size):
        raise ValueError(f"roi_size {tuple(roi_size)} and image size {tuple(image_size)} have different numbers of axes")
    if not all(isinstance(r, numbers.Integral) and not isinstance(r, bool) and r > 0 for r in roi_size):
        raise ValueError(f"roi_size entries must be positive integers, got {tuple(roi_size)}")


def _check_blending(mode: str, sigma_scale: float) -> None:
    if mode not in ("constant", "gaussian"):
        raise ValueError(f"mode must be 'constant' or 'gaussian', got {mode!r}")
    if mode == "gaussian" and not sigma_scale > 0:
        raise ValueError(f"sigma_scale must be > 0 for mode='gaussian', got {sigma_scale}")


def _check_prediction(predictions: object, windows_shape: torch.Size, num_classes: int | None) -> None:
    """The predictor must map (N, C, *roi) windows to (N, K, *roi), the same K for every call."""
    if not isinstance(predictions, torch.Tensor):
        raise ValueError(f"predictor must return a tensor (N, K, *roi), got {type(predictions).__name__}")
    expected = f"(N={windows_shape[0]}, K, {', '.join(map(str, windows_shape[2:]))})"
    if predictions.shape[:1] != windows_shape[:1] or predictions.shape[2:] != windows_shape[2:]:
        raise ValueError(
            f"predictor returned shape {tuple(predictions.shape)} for windows of shape {tuple(windows_shape)}; "
            f"it must return {expected}: the windows' spatial size (resample inside the predictor if the network "
            "changes it)"
        )
    if num_classes is not None and predictions.shape[1] != num_classes:
        raise ValueError(f"predictor returned {predictions.shape[1]} channels after returning {num_classes} for earlier windows")


def _stitch_device(
    requested: DeviceLike | Literal["auto"] | None, image_device: torch.device, sw_device: torch.device, needed_bytes: int
) -> torch.device:
    """The device to accumulate on: see ``stitch_device`` in ``sliding_window_inference``."""
    if requested is None:
        return image_device
    if requested != "auto":
        return torch.device(requested)
    if sw_device.type == "cpu":
        return sw_device
    if sw_device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(sw_device)
        cached = torch.cuda.memory_reserved(sw_device) - torch.cuda.memory_allocated(sw_device)
        if needed_bytes <= AUTO_STITCH_FREE_FRACTION * (free + cached):
            return sw_device
    return torch.device("cpu")
