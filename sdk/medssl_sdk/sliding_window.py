"""Sliding-window inference over 2D images and 3D volumes, and a low-memory streaming argmax.

    probabilities = sliding_window_inference(image, (64, 160, 192), predictor)   # (B, K, D, H, W)
    labels = sliding_window_argmax(image, (64, 160, 192), predictor)             # (B, D, H, W) int64

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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

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
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    padding = tuple(((max(r - s, 0)) // 2, max(r - s, 0) - max(r - s, 0) // 2) for s, r in zip(image_size, roi_size))
    axis_starts = []
    for size, roi, (before, after) in zip(image_size, roi_size, padding):
        padded = size + before + after
        step = roi if roi == padded else max(int(roi * (1.0 - overlap)), 1)
        count = -(-(padded - roi) // step) + 1
        axis_starts.append([min(i * step, padded - roi) for i in range(count)])
    return WindowPlan(
        image_size=tuple(image_size),
        roi_size=tuple(roi_size),
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
            (the final division is computed in float32 and stored back).
        progress: show a tqdm bar over the B x (number of windows) windows.

    Returns:
        (B, K, *spatial): the importance-weighted mean of the window outputs covering each voxel, dtype
        ``accumulate_dtype``, on the stitch device.
    """
    run = _prepare(image, roi_size, sw_batch_size, overlap, mode, sigma_scale, padding_mode, cval, accumulate_dtype)
    batches = run.predict_in_batches(predictor, sw_batch_size, sw_device, progress)
    first_windows, first_predictions = next(batches)
    batch_size, num_classes = image.shape[0], first_predictions.shape[1]
    voxels = math.prod(run.plan.image_size)
    needed = batch_size * num_classes * voxels * accumulate_dtype.itemsize + voxels * 4
    stitching = run.start_stitching(image.device, torch.device(sw_device or image.device), stitch_device, needed)
    output = torch.zeros((batch_size, num_classes, *run.plan.image_size), dtype=accumulate_dtype, device=stitching.device)
    for windows, predictions in itertools.chain([(first_windows, first_predictions)], batches):
        for (b, w), prediction in zip(windows, predictions.to(stitching.device)):
            inside, within = run.plan.placements[w]
            output[b][(slice(None), *inside)].addcmul_(prediction[(slice(None), *within)], stitching.importance[within])
    first_axis_step = max(1, _NORMALISE_STEP_ELEMENTS // (num_classes * voxels // run.plan.image_size[0]))
    for b in range(batch_size):
        for lo in range(0, run.plan.image_size[0], first_axis_step):
            hi = lo + first_axis_step
            _normalise_(output[b, :, lo:hi], stitching.weight_sum[lo:hi])
    return output


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
    freed. Peak memory: the (B, *spatial) int64 labels, a (*spatial) float32 weight sum, and K-channel
    accumulators over at most one window's extent along the first axis (the full other axes).

    Returns:
        (B, *spatial) int64 class indices (the first of equal maxima), on the stitch device.
    """
    run = _prepare(image, roi_size, sw_batch_size, overlap, mode, sigma_scale, padding_mode, cval, accumulate_dtype)
    batches = run.predict_in_batches(predictor, sw_batch_size, sw_device, progress)
    first_windows, first_predictions = next(batches)
    batch_size, num_classes = image.shape[0], first_predictions.shape[1]
    voxels = math.prod(run.plan.image_size)
    band_bytes = num_classes * run.plan.roi_size[0] * (voxels // run.plan.image_size[0]) * accumulate_dtype.itemsize
    needed = batch_size * voxels * 8 + voxels * 4 + band_bytes
    stitching = run.start_stitching(image.device, torch.device(sw_device or image.device), stitch_device, needed)
    labels = torch.empty((batch_size, *run.plan.image_size), dtype=torch.int64, device=stitching.device)
    band = _ArgmaxBand(run.plan, stitching, labels, num_classes, accumulate_dtype)
    for windows, predictions in itertools.chain([(first_windows, first_predictions)], batches):
        for (b, w), prediction in zip(windows, predictions.to(stitching.device)):
            band.add(b, w, prediction)
    band.finish()
    return labels


@dataclass(frozen=True)
class _Stitching:
    """Where window outputs are accumulated, with the weights to do it.

    importance: (*roi) float32; weight_sum: (*spatial) float32, the importance summed over all windows.
    """

    device: torch.device
    importance: torch.Tensor
    weight_sum: torch.Tensor


@dataclass(frozen=True)
class _Run:
    """One call's checked inputs: the window plan and the (padded if needed) image (B, C, *padded)."""

    plan: WindowPlan
    padded: torch.Tensor
    mode: BlendMode
    sigma_scale: float

    def predict_in_batches(
        self, predictor: Predictor, sw_batch_size: int, sw_device: DeviceLike | None, progress: bool
    ) -> Iterator[tuple[list[tuple[int, int]], torch.Tensor]]:
        """Yield ([(batch index, window index), ...], predictions (N, K, *roi) on sw_device), windows of
        image 0 first, each image's windows in plan order."""
        device = torch.device(sw_device) if sw_device is not None else self.padded.device
        jobs = list(itertools.product(range(self.padded.shape[0]), range(len(self.plan.starts))))
        num_classes = None
        with tqdm(total=len(jobs), disable=not progress, desc="sliding window", unit="window") as bar:
            for first in range(0, len(jobs), sw_batch_size):
                chunk = jobs[first : first + sw_batch_size]
                windows = torch.stack([self.padded[b][(slice(None), *self.plan.window_slices[w])] for b, w in chunk])
                predictions = predictor(windows.to(device))
                _check_prediction(predictions, windows.shape, num_classes)
                num_classes = predictions.shape[1]
                bar.update(len(chunk))
                yield chunk, predictions

    def start_stitching(
        self,
        image_device: torch.device,
        sw_device: torch.device,
        requested: DeviceLike | Literal["auto"] | None,
        needed_bytes: int,
    ) -> _Stitching:
        """Pick the stitch device and make the importance map and the weight sum there."""
        device = _stitch_device(requested, image_device, sw_device, needed_bytes)
        importance = _cached_importance_map(self.plan.roi_size, self.mode, self.sigma_scale, device)
        weight_sum = torch.zeros(self.plan.image_size, dtype=torch.float32, device=device)
        for inside, within in self.plan.placements:
            weight_sum[inside].add_(importance[within])
        return _Stitching(device, importance, weight_sum)


class _ArgmaxBand:
    """K-channel accumulators for the slabs of the first spatial axis that windows still touch.

    The first axis is cut at every window's first and last voxel; a window covers whole slabs. A slab's
    accumulator, (K, slab length, *other axes), is made when a window first touches it and reduced to
    labels when a window of the same image starts at or after its end (windows come in order of start).
    """

    def __init__(
        self, plan: WindowPlan, stitching: _Stitching, labels: torch.Tensor, num_classes: int, dtype: torch.dtype
    ) -> None:
        self.plan, self.stitching, self.labels = plan, stitching, labels
        self.slab_shape = (num_classes, *plan.image_size[1:])
        self.dtype = dtype
        self.bounds = sorted({edge for inside, _ in plan.placements for edge in (inside[0].start, inside[0].stop)})
        self.live: dict[int, torch.Tensor] = {}
        self.batch_index = 0

    def add(self, b: int, w: int, prediction: torch.Tensor) -> None:
        """Accumulate window ``w`` of image ``b``, prediction (K, *roi)."""
        if b != self.batch_index:
            self._finalise_before(self.plan.image_size[0])
            self.batch_index = b
        inside, within = self.plan.placements[w]
        self._finalise_before(inside[0].start)
        first_slab = bisect.bisect_left(self.bounds, inside[0].start)
        last_slab = bisect.bisect_left(self.bounds, inside[0].stop)
        offset = within[0].start - inside[0].start
        for slab in range(first_slab, last_slab):
            lo, hi = self.bounds[slab], self.bounds[slab + 1]
            if slab not in self.live:
                self.live[slab] = torch.zeros((self.slab_shape[0], hi - lo, *self.slab_shape[1:]), dtype=self.dtype,
                                              device=self.stitching.device)
            window_part = (slice(lo + offset, hi + offset), *within[1:])
            self.live[slab][(slice(None), slice(None), *inside[1:])].addcmul_(
                prediction[(slice(None), *window_part)], self.stitching.importance[window_part]
            )

    def finish(self) -> None:
        """Reduce the slabs still held (the last image's end)."""
        self._finalise_before(self.plan.image_size[0])

    def _finalise_before(self, stop: int) -> None:
        for slab in sorted(self.live):
            lo, hi = self.bounds[slab], self.bounds[slab + 1]
            if hi > stop:
                break
            accumulated = _normalise_(self.live.pop(slab), self.stitching.weight_sum[lo:hi])
            self.labels[self.batch_index, lo:hi] = accumulated.argmax(0)


def _normalise_(accumulated: torch.Tensor, weight_sum: torch.Tensor) -> torch.Tensor:
    """Divide (K, n, *rest) accumulators in place by the (n, *rest) weight sum, in float32 or wider."""
    if accumulated.dtype.itemsize >= 4:
        return accumulated.div_(weight_sum)
    return accumulated.copy_(accumulated.float().div_(weight_sum))


def _prepare(
    image: torch.Tensor,
    roi_size: Sequence[int],
    sw_batch_size: int,
    overlap: float,
    mode: BlendMode,
    sigma_scale: float,
    padding_mode: str,
    cval: float,
    accumulate_dtype: torch.dtype,
) -> _Run:
    """Check the arguments, plan the windows and pad the image if a window is larger than it."""
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
    if isinstance(sw_batch_size, bool) or not isinstance(sw_batch_size, int) or sw_batch_size < 1:
        raise ValueError(f"sw_batch_size must be an integer >= 1, got {sw_batch_size!r}")
    _check_blending(mode, sigma_scale)
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    if not accumulate_dtype.is_floating_point:
        raise ValueError(f"accumulate_dtype must be a floating-point dtype (float32, float16, ...), got {accumulate_dtype}")
    plan = plan_windows(spatial, roi_size, overlap)
    padded = image
    if plan.needs_padding:
        widths = [width for before_after in reversed(plan.padding) for width in before_after]  # last axis first
        padded = F.pad(image, widths, mode=padding_mode, value=cval if padding_mode == "constant" else None)
    return _Run(plan, padded, mode, sigma_scale)


def _check_sizes(image_size: Sequence[int], roi_size: Sequence[int]) -> None:
    if len(image_size) != len(roi_size):
        raise ValueError(f"roi_size {tuple(roi_size)} and image size {tuple(image_size)} have different numbers of axes")
    if not all(isinstance(r, int) and not isinstance(r, bool) and r > 0 for r in roi_size):
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
