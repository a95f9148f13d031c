"""Augmentations: the two SSL views of the UniMiSS paper, and joint image + label augmentation for fine-tuning.

    views = SSLViews(3, (16, 96, 96), seed=0)
    first, second = views(image)               # image (C, *S) -> two overlapping (C, 16, 96, 96) views
    first, second = views(image, seed=1234)    # the same two views whenever this seed is given

    augment = SegmentationAugment(3, seed=0)
    image, labels = augment(image, labels)     # (C, *P), (*P): one geometric draw for both, intensity on the image

Every random draw comes from MONAI's per-transform ``numpy.random.RandomState``. An augmenter made with
``seed=s`` gives the same stream of outputs in every process; ``set_random_state(s)`` restarts it; a call
with ``seed=`` re-seeds first, so that call's output depends on that seed only (not on what ran before).
Data sets pass a per-item seed derived from their own seed, the epoch and the item index
(:func:`medssl_train.datasets.item_seed`), which makes a run independent of worker order and lets a
resumed run see the same views as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import (
    Compose,
    RandAdjustContrast,
    RandAdjustContrastd,
    RandAffined,
    RandFlip,
    RandFlipd,
    RandGaussianNoise,
    RandGaussianNoised,
    RandGaussianSmooth,
    RandGaussianSmoothd,
    Randomizable,
    RandScaleIntensity,
    RandScaleIntensityd,
    RandShiftIntensity,
    RandShiftIntensityd,
    RandSpatialCrop,
    Resize,
)
from monai.utils import convert_to_tensor

#: The paper's pre-training crops (Sec. 4.1): 224 x 224 in 2D, 16 x 96 x 96 in 3D.
PAPER_CROP_SIZE = {2: (224, 224), 3: (16, 96, 96)}
#: Per-axis size of the region cut for a view, relative to the crop size, before it is resized to it (zoom).
VIEW_SCALE = (0.8, 1.25)
#: A 2D SSL view covers this fraction of the image's area, with an aspect ratio in VIEW_ASPECT_2D, before it is
#: resized to the crop: the official loader's ``RandomResizedCrop(224, scale=(0.14, 1))`` of the whole radiograph.
VIEW_AREA_2D = (0.14, 1.0)
VIEW_ASPECT_2D = (3 / 4, 4 / 3)
#: The two 3D SSL views come from one region of the volume, per axis (depth, height, width) this many times the
#: crop size (the official loader: 24-slice sub-volumes for 16-slice views, an in-plane region of 1.4-1.8 crops),
#: so that they overlap, as the two views of one image should.
PAIR_REGION_3D = ((1.5, 1.5), (1.4, 1.8), (1.4, 1.8))
#: Largest in-plane rotation (radians, about the first axis in 3D) and scaling of fine-tuning patches.
ROTATION = 0.26
SCALING = 0.15

_MAX_SEED = 2**32


def pad_to_size(image: torch.Tensor, size: Sequence[int], value: float) -> torch.Tensor:
    """``image`` ``(C, *S)`` padded with ``value`` at the end of every spatial axis shorter than ``size``."""
    spatial = image.shape[1:]
    if len(spatial) != len(size):
        raise ValueError(f"size {tuple(size)} does not match the image's {len(spatial)} spatial axes {tuple(spatial)}")
    widths = [w for s, p in zip(reversed(spatial), reversed(size)) for w in (0, max(int(p) - s, 0))]
    return F.pad(image, widths, value=value) if any(widths) else image


class _Seeded:
    """A MONAI ``Compose`` whose randomness is restartable (``set_random_state``) and settable per call."""

    def __init__(self, pipeline: Compose, seed: int | None) -> None:
        self.pipeline = pipeline
        self.set_random_state(seed)

    def set_random_state(self, seed: int | None) -> None:
        """Restart the random stream from ``seed`` (None: from fresh OS entropy)."""
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        self.pipeline.set_random_state(seed=int(seed) % _MAX_SEED)

    def _reseed(self, seed: int | None) -> None:
        if seed is not None:
            self.set_random_state(seed)


class _RandomRegion(Randomizable):
    """Cuts a region of a ``(C, *S)`` tensor at a uniformly random place; its size (at most the image's) comes
    from :meth:`size`. A MONAI ``Randomizable``: ``set_random_state`` seeds it, alone or inside a ``Compose``."""

    def size(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        raise NotImplementedError

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        spatial = tuple(image.shape[1:])
        size = [min(max(1, s), n) for s, n in zip(self.size(spatial), spatial)]
        starts = [int(self.R.randint(0, n - s + 1)) for s, n in zip(size, spatial)]
        return image[(slice(None), *(slice(a, a + s) for a, s in zip(starts, size)))]


class _AreaRegion(_RandomRegion):
    """A region of U(``area``) times the image's area with an aspect ratio log-uniform in ``aspect``
    (torchvision's ``RandomResizedCrop`` region; clipped to the image)."""

    def __init__(self, area: tuple[float, float], aspect: tuple[float, float]) -> None:
        self.area, self.aspect = area, aspect

    def size(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        height, width = spatial
        target = self.R.uniform(*self.area) * height * width
        ratio = math.exp(self.R.uniform(math.log(self.aspect[0]), math.log(self.aspect[1])))
        return round(math.sqrt(target / ratio)), round(math.sqrt(target * ratio))


class _ScaledRegion(_RandomRegion):
    """A region of ``crop_size`` times U(low, high) per axis (``scales``: one (low, high) per axis)."""

    def __init__(self, crop_size: Sequence[int], scales: Sequence[tuple[float, float]]) -> None:
        self.crop_size, self.scales = tuple(crop_size), tuple(scales)

    def size(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(round(c * self.R.uniform(low, high)) for c, (low, high) in zip(self.crop_size, self.scales))


def _check_dims(spatial_dims: int, size: Sequence[int], what: str) -> tuple[int, ...]:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3; got {spatial_dims}")
    size = tuple(int(s) for s in size)
    if len(size) != spatial_dims or min(size) < 1:
        raise ValueError(f"{what} must be {spatial_dims} positive sizes for {spatial_dims}D images; got {size}")
    return size


def _intensity_transforms(spatial_dims: int, keys: Sequence[str] | None = None) -> list:
    """Colour jitter for grey images (brightness shift, contrast scale, gamma), Gaussian blur and noise.

    Intensities are the card-normalised ones (about unit scale), so the magnitudes are in those units.
    With ``keys`` the dictionary versions are returned, acting on those keys only.
    """
    sigma = (0.25, 1.0)
    smooth = {"sigma_x": sigma, "sigma_y": sigma, "sigma_z": sigma if spatial_dims == 3 else (0.0, 0.0)}
    if keys is None:
        return [
            RandShiftIntensity(offsets=0.1, prob=0.8),
            RandScaleIntensity(factors=0.2, prob=0.8),
            RandAdjustContrast(gamma=(0.7, 1.5), prob=0.5),
            RandGaussianSmooth(prob=0.3, **smooth),
            RandGaussianNoise(prob=0.3, std=0.05),
        ]
    return [
        RandShiftIntensityd(keys, offsets=0.1, prob=0.3),
        RandScaleIntensityd(keys, factors=0.2, prob=0.3),
        RandAdjustContrastd(keys, gamma=(0.7, 1.5), prob=0.3),
        RandGaussianSmoothd(keys, prob=0.2, **smooth),
        RandGaussianNoised(keys, prob=0.2, std=0.05),
    ]


class RandomView(_Seeded):
    """One augmented view of an image: random crop with zoom, flips, colour jitter, blur and noise.

    The crop: a region of ``crop_size`` times U(0.8, 1.25) per axis (at most the image) at a random place,
    resized (bi/trilinear) to ``crop_size``: zooming in or out by up to 25 %. With ``area`` (2D only) the region
    covers instead U(``area``) of the image's area, aspect ratio 3/4-4/3 (torchvision's ``RandomResizedCrop``).
    An image smaller than the crop is first padded with its minimum (air for CT). Then each axis is flipped with
    probability 0.5 (``flip_axes``, default all) and the intensity transforms of :func:`_intensity_transforms`
    follow.

    Args:
        spatial_dims: 2 or 3.
        crop_size: ``(H, W)`` or ``(D, H, W)`` output size.
        flip_axes: spatial axes that may be flipped.
        area: (2D) the range of the region's share of the image's area, e.g. :data:`VIEW_AREA_2D`.
        seed: starts the random stream (None: OS entropy).

    Shapes: ``(C, *S)`` float -> ``(C, *crop_size)`` float32 (a plain tensor).
    """

    def __init__(
        self, spatial_dims: int, crop_size: Sequence[int], *, flip_axes: Sequence[int] | None = None,
        area: tuple[float, float] | None = None, seed: int | None = None,
    ) -> None:
        self.crop_size = _check_dims(spatial_dims, crop_size, "crop_size")
        axes = range(spatial_dims) if flip_axes is None else flip_axes
        if area is None:
            smallest = [max(1, round(c * VIEW_SCALE[0])) for c in self.crop_size]
            largest = [max(1, round(c * VIEW_SCALE[1])) for c in self.crop_size]
            region: Randomizable = RandSpatialCrop(smallest, max_roi_size=largest, random_size=True)
        elif spatial_dims == 2 and 0 < area[0] <= area[1] <= 1:
            region = _AreaRegion(area, VIEW_ASPECT_2D)
        else:
            raise ValueError(f"area must be a (low, high) share of a 2D image's area in (0, 1]; got {area} for {spatial_dims}D")
        pipeline = Compose([
            region,
            Resize(self.crop_size, mode="bilinear" if spatial_dims == 2 else "trilinear", anti_aliasing=False),
            *(RandFlip(prob=0.5, spatial_axis=axis) for axis in axes),
            *_intensity_transforms(spatial_dims),
        ])
        super().__init__(pipeline, seed)

    def __call__(self, image: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """One view of ``image`` ``(C, *S)``; ``seed`` re-seeds first (the view then depends on it alone)."""
        self._reseed(seed)
        image = pad_to_size(torch.as_tensor(image, dtype=torch.float32), self.crop_size, float(image.min()))
        return convert_to_tensor(self.pipeline(image), track_meta=False, dtype=torch.float32)


class SSLViews:
    """The two augmented views of one image that UniMiSS's student and teacher see (paper Sec. 4.1, with the
    official data loaders' crops).

    2D: each view is a :class:`RandomView` of a region covering 14-100 % of the image's area
    (:data:`VIEW_AREA_2D`), resized to the crop, so a radiograph is seen whole or in large parts, as at
    inference. 3D: a region of :data:`PAIR_REGION_3D` times the crop size is cut first, and both views
    (:class:`RandomView`: crop x U(0.8, 1.25) per axis, resized) come from it, so they overlap.

    Args:
        spatial_dims: 2 or 3.
        crop_size: view size; the paper's is :data:`PAPER_CROP_SIZE` (224 x 224, 16 x 96 x 96).
        seed: starts the random stream (None: OS entropy); see the module docstring for per-item seeds.

    Shapes: ``(C, *S)`` -> a tuple of two ``(C, *crop_size)`` float32 tensors, drawn one after the other
    from the same stream (so they differ).
    """

    def __init__(self, spatial_dims: int, crop_size: Sequence[int] | None = None, *, seed: int | None = None) -> None:
        crop_size = crop_size or PAPER_CROP_SIZE[spatial_dims]
        self.view = RandomView(spatial_dims, crop_size, area=VIEW_AREA_2D if spatial_dims == 2 else None)
        self.region = _ScaledRegion(self.view.crop_size, PAIR_REGION_3D) if spatial_dims == 3 else None
        self.set_random_state(seed)

    @property
    def crop_size(self) -> tuple[int, ...]:
        return self.view.crop_size

    def set_random_state(self, seed: int | None) -> None:
        """Restart the random stream from ``seed`` (None: from fresh OS entropy)."""
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        self.view.set_random_state(seed)
        if self.region is not None:  # its own stream, apart from the views'
            self.region.set_random_state(int(np.random.SeedSequence([int(seed) % _MAX_SEED, 3]).generate_state(1)[0]))

    def __call__(self, image: torch.Tensor, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Two views of ``image``; ``seed`` re-seeds first, so the pair depends on it alone."""
        if seed is not None:
            self.set_random_state(seed)
        if self.region is not None:
            image = torch.as_tensor(image, dtype=torch.float32)
            image = self.region(pad_to_size(image, self.crop_size, float(image.min())))
        return self.view(image), self.view(image)


class SegmentationAugment(_Seeded):
    """Fine-tuning augmentation of an image patch and its label map together (paper, Appendix, Table 9).

    Geometric, drawn once and applied to both (labels by nearest neighbour): with probability 0.3 a rotation
    of up to +-15 degrees in the plane of the last two axes and a scaling of up to +-15 %, and flips of
    ``flip_axes`` (default none: left and right are part of the anatomy). Intensity, on the image only:
    brightness, contrast, gamma, Gaussian blur and noise (:func:`_intensity_transforms`). Sizes are kept.

    Shapes: image ``(C, *P)`` float, labels ``(*P)`` integer -> the same shapes (float32, int64).
    """

    def __init__(self, spatial_dims: int, *, flip_axes: Sequence[int] = (), seed: int | None = None) -> None:
        _check_dims(spatial_dims, (1,) * spatial_dims, "spatial_dims")
        keys = ("image", "label")
        rotation = (ROTATION,) if spatial_dims == 2 else (ROTATION, 0.0, 0.0)
        pipeline = Compose([
            RandAffined(keys, prob=0.3, rotate_range=rotation, scale_range=(SCALING,) * spatial_dims,
                        mode=("bilinear", "nearest"), padding_mode="border"),
            *(RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in flip_axes),
            *_intensity_transforms(spatial_dims, keys=("image",)),
        ])
        super().__init__(pipeline, seed)

    def __call__(
        self, image: torch.Tensor, labels: torch.Tensor, seed: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The augmented ``(image, labels)``; ``seed`` re-seeds first."""
        if tuple(image.shape[1:]) != tuple(labels.shape):
            raise ValueError(f"labels {tuple(labels.shape)} must have the image's spatial shape {tuple(image.shape[1:])}")
        self._reseed(seed)
        out = self.pipeline({"image": image.float(), "label": labels[None].float()})
        image = convert_to_tensor(out["image"], track_meta=False, dtype=torch.float32)
        labels = convert_to_tensor(out["label"], track_meta=False)[0].round().long()
        return image, labels
