"""Phantom training data: synthetic CT phantoms pre-processed as a card's 3D input, sampled as patches.

    cases = prepare_phantoms(range(48), card.inputs["3d"])
    sampler = PatchSampler(cases, card.inputs["3d"].patch_size, seed=0)
    images, labels = sampler.sample(batch_size=2)        # (2, C, *patch) float32, (2, *patch) int64

Each training phantom is drawn on its own grid around the card's spacing (spacing and field of view
jittered per seed) and resampled by the SDK's :func:`medssl_sdk.preprocess.prepare`, as images are at
inference; its labels are resampled to the same grid by nearest neighbour.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import nibabel.orientations as orientations
import numpy as np
import torch

from medssl_sdk.preprocess import prepare, reorient, resample
from medssl_sdk.samples import PHANTOM_LABELS, make_phantom
from medssl_sdk.volume import Volume
from medssl_train.augment import pad_to_size
from medssl_zoo.card import InputSpec

#: Per-axis factor range applied to the card's spacing when drawing a training phantom.
SPACING_JITTER = (0.8, 1.25)
#: Seeds of validation phantoms start here (training phantoms use 0 .. N-1).
VALIDATION_SEED_BASE = 10_000
#: Seeds of the default held-out evaluation phantoms start here.
EVALUATION_SEED_BASE = 20_000
#: Field of view (mm) of training phantoms: along the first (superior) axis, and in-plane.
FIELD_OF_VIEW_MM = {"axial": (110.0, 200.0), "in_plane": (170.0, 215.0)}


@dataclass(frozen=True)
class PreparedCase:
    """One image on the network's grid.

    Attributes:
        image: ``(C, *S)`` float32, resampled and intensity-normalised as at inference.
        labels: ``(*S)`` uint8 class indices on the same grid.
        name: where it came from (for messages).
    """

    image: torch.Tensor
    labels: torch.Tensor
    name: str


#: Largest difference between the affines of a 3D image and its label map, as a fraction of the smallest voxel size.
GRID_TOLERANCE = 0.05


def prepare_case(image: Volume, labels: Volume, spec: InputSpec) -> PreparedCase:
    """Pre-process ``image`` for ``spec`` and bring ``labels`` onto its grid: the same reorientation, then
    nearest-neighbour resampling.

    A 3D label map may store its voxels in another axis order or direction than the image (e.g. a DICOM
    series with a NIfTI label map from another tool): it is first flipped/permuted into the image's layout by
    the two affines, which must then agree (same grid); a 2D label map must have the image's shape.
    """
    labels = _in_image_layout(labels, image)
    prepared = prepare(image, spec)
    labels = reorient(labels, spec.orientation)  # the layout prepare() gave the image
    label_grid = torch.from_numpy(np.ascontiguousarray(labels.array, dtype=np.float32))[None, None]
    resampled = resample(label_grid, prepared.tensor.shape[1:], mode="nearest")[0, 0].to(torch.uint8)
    return PreparedCase(prepared.tensor, resampled, image.source)


def _in_image_layout(labels: Volume, image: Volume) -> Volume:
    if labels.ndim == 3 and image.ndim == 3:
        labels = reorient(labels, "".join(orientations.aff2axcodes(image.affine)))
    if image.shape != labels.shape:
        raise ValueError(f"{labels.source}: label map shape {labels.shape} differs from the image's {image.shape} "
                         f"({image.source}); a label map must be drawn on its image's grid")
    if image.ndim == 3:
        difference = float(np.abs(labels.affine - image.affine).max())
        if difference > GRID_TOLERANCE * min(image.spacing):
            raise ValueError(f"{labels.source}: the label map lies on another grid than its image {image.source} (their "
                             f"affines differ by up to {difference:.3g} mm); resample it onto the image's grid first")
    return labels


def jittered_grid(seed: int, spacing: Sequence[float]) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """A (shape, spacing) for the training phantom of ``seed``: each axis's spacing times U(0.8, 1.25) and a
    field of view of 110-200 mm along the first axis and 170-215 mm in-plane."""
    rng = np.random.default_rng([seed, 7])
    jittered = tuple(float(s * rng.uniform(*SPACING_JITTER)) for s in spacing)
    extents = [rng.uniform(*FIELD_OF_VIEW_MM["axial"]), *rng.uniform(*FIELD_OF_VIEW_MM["in_plane"], size=len(spacing) - 1)]
    return tuple(max(1, round(e / s)) for e, s in zip(extents, jittered)), jittered


def validation_phantoms(count: int, spacing: Sequence[float]) -> list[tuple[Volume, Volume]]:
    """``(image, labels)`` of the first ``count`` validation phantoms (seeds from :data:`VALIDATION_SEED_BASE`),
    each on its own :func:`jittered_grid` around ``spacing``."""
    seeds = range(VALIDATION_SEED_BASE, VALIDATION_SEED_BASE + count)
    return [make_phantom(seed, *jittered_grid(seed, spacing)) for seed in seeds]


def prepare_phantoms(seeds: Iterable[int], spec: InputSpec, jitter: bool = True) -> list[PreparedCase]:
    """Phantoms of ``seeds`` pre-processed for the 3D input ``spec``: on a :func:`jittered_grid` each, or, without
    ``jitter``, at the default phantom shape drawn at ``spec.spacing``."""
    return [phantom_case(seed, spec, jitter) for seed in seeds]


def phantom_case(seed: int, spec: InputSpec, jitter: bool = True) -> PreparedCase:
    """The phantom of ``seed`` pre-processed for the 3D input ``spec`` (see :func:`prepare_phantoms`)."""
    if spec.spacing is None or len(spec.spacing) != 3:
        raise ValueError(f"phantom training needs a 3D input spec with a spacing; got spacing {spec.spacing}")
    shape, spacing = jittered_grid(seed, spec.spacing) if jitter else ((64, 128, 128), spec.spacing)
    return prepare_case(*make_phantom(seed, shape, spacing), spec)


class PatchSampler:
    """Random training patches, biased towards foreground.

    With probability ``foreground_fraction`` a patch is centred on a random voxel of a foreground class
    picked uniformly among the classes present in a random case (so small organs are seen as often as
    large ones); otherwise it is placed uniformly. Cases smaller than the patch are padded with their
    minimum (air) and background labels.

    Args:
        cases: the images to sample from.
        patch_size: ``(D, H, W)`` (or ``(H, W)``) patch size.
        foreground_fraction: share of foreground-centred patches, in [0, 1].
        seed: seeds the sampling (a ``torch.Generator``) and ``augment``'s stream, so a run is reproducible.
        augment: applied to each patch, ``augment(image, labels) -> (image, labels)`` (e.g.
            :class:`medssl_train.augment.SegmentationAugment`); None: patches as cut.
    """

    def __init__(self, cases: Sequence[PreparedCase], patch_size: Sequence[int], foreground_fraction: float = 2 / 3,
                 seed: int = 0, augment: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
                 ) -> None:
        if not cases:
            raise ValueError("PatchSampler needs at least one case")
        if not 0.0 <= foreground_fraction <= 1.0:
            raise ValueError(f"foreground_fraction must be in [0, 1]; got {foreground_fraction}")
        self.patch_size = tuple(int(p) for p in patch_size)
        self.foreground_fraction = foreground_fraction
        self.cases = [_pad_to(case, self.patch_size) for case in cases]
        self.generator = torch.Generator().manual_seed(seed)
        self.augment = augment
        if hasattr(augment, "set_random_state"):
            augment.set_random_state(seed)
        #: Per case, per foreground class present: flat indices of its voxels.
        self.foreground = [_foreground_voxels(case.labels) for case in self.cases]

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` patches: images ``(B, C, *patch)`` float32 and labels ``(B, *patch)`` int64."""
        images, labels = [], []
        for _ in range(batch_size):
            index = self._randint(len(self.cases))
            case = self.cases[index]
            crop = self._crop(case, self.foreground[index])
            image, label = case.image[(slice(None), *crop)], case.labels[crop].long()
            if self.augment is not None:
                image, label = self.augment(image, label)
            images.append(image)
            labels.append(label)
        return torch.stack(images), torch.stack(labels)

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """:meth:`sample` batches without end (what the fine-tuning loop takes)."""
        while True:
            yield self.sample(batch_size)

    def _crop(self, case: PreparedCase, foreground: list[torch.Tensor]) -> tuple[slice, ...]:
        size = case.labels.shape
        if foreground and torch.rand((), generator=self.generator) < self.foreground_fraction:
            voxels = foreground[self._randint(len(foreground))]
            flat = int(voxels[self._randint(len(voxels))])
            centre = np.unravel_index(flat, size)
        else:
            centre = [self._randint(n) for n in size]
        starts = [min(max(int(c) - p // 2, 0), n - p) for c, p, n in zip(centre, self.patch_size, size)]
        return tuple(slice(s, s + p) for s, p in zip(starts, self.patch_size))

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (), generator=self.generator))


def _foreground_voxels(labels: torch.Tensor) -> list[torch.Tensor]:
    """Flat int32 indices of the voxels of each foreground class present in ``labels``, in class order."""
    flat = labels.flatten()
    per_class = (torch.nonzero(flat == value)[:, 0].to(torch.int32) for value in range(1, int(flat.max()) + 1))
    return [indices for indices in per_class if indices.numel()]


def _pad_to(case: PreparedCase, patch_size: tuple[int, ...]) -> PreparedCase:
    """The case padded at the end of each axis shorter than the patch (image with its minimum, labels with 0)."""
    size = case.labels.shape
    if len(size) != len(patch_size):
        raise ValueError(f"{case.name}: patch size {patch_size} does not match the case's {len(size)} spatial axes {tuple(size)}")
    if all(s >= p for s, p in zip(size, patch_size)):
        return case
    image = pad_to_size(case.image, patch_size, float(case.image.min()))
    labels = pad_to_size(case.labels[None], patch_size, 0)[0]
    return PreparedCase(image, labels, case.name)


def phantom_class_names() -> tuple[str, ...]:
    """The label names a phantom segmentation card must have, background first."""
    return ("background", *PHANTOM_LABELS)
