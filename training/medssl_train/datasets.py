"""Training data sets: folders of NIfTI/DICOM volumes and 2D images, labelled folders, synthetic phantoms.

    spec = card.inputs["3d"]
    volumes = VolumeFolder("data/ct", spec, SSLViews(3, (16, 96, 96)), seed=0)   # items: (view1, view2)
    loader = make_loader(volumes, batch_size=4, num_workers=4, seed=0)
    cases = SegmentationFolder("data/bcv", spec)                                   # items: PreparedCase
    xrays = ClassificationFolder("data/covid", card.inputs["2d"])                   # items: (image, class index)

Every image is read with :func:`medssl_sdk.io.read_volume` and pre-processed with
:func:`medssl_sdk.preprocess.prepare` (the card's orientation, spacing, intensity and channels), exactly as
at inference. Layouts (see docs/training.md):

- :class:`VolumeFolder`: every NIfTI file (``*.nii``, ``*.nii.gz``) and every DICOM image series under
  ``root`` (searched recursively; a series is the DICOM files of one SeriesInstanceUID in one folder).
- :class:`ImageFolder2D`: every PNG/JPEG file and 2D DICOM file (CR, DX, ...) under ``root``.
- :class:`SegmentationFolder`: ``root/images/<case>`` (a NIfTI/PNG/DICOM file or a DICOM series folder) and
  ``root/labels/<case>.nii.gz`` (``.nii`` or ``.png``), paired by case name (the name without its suffix);
  the label map has the image's shape and geometry.
- :class:`ClassificationFolder`: ``root/<class name>/<case>``, one sub-folder per class.

``cache_dir`` keeps pre-processed tensors on disk (safetensors, keyed by the source's path, size and
modification time and by the input spec), so later epochs and runs skip reading and resampling.

Random transforms: with ``seed`` set, item ``i`` of epoch ``e`` is transformed with the per-item seed
:func:`item_seed` ``(seed, e, i)`` (the transform takes ``seed=``; see :mod:`medssl_train.augment`), so
results do not depend on worker order and a run resumed at an epoch (``set_epoch``) sees what it would
have seen uninterrupted.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset, get_worker_info

from medssl_sdk.io import read_volume
from medssl_sdk.io.dicom_files import frame_count, is_appledouble, read_dicom_header
from medssl_sdk.io.errors import VolumeReadError
from medssl_sdk.io.image_2d import IMAGE_SUFFIXES, is_image_path
from medssl_sdk.io.nifti import NIFTI_SUFFIXES, is_nifti_path
from medssl_sdk.preprocess import prepare, resample
from medssl_sdk.samples import make_radiograph
from medssl_sdk.volume import Volume
from medssl_train.data import PreparedCase, phantom_case, prepare_case
from medssl_zoo.card import InputSpec
from medssl_zoo.files import write_atomically

#: Suffixes a label map of :class:`SegmentationFolder` may have.
LABEL_SUFFIXES = (".nii.gz", ".nii", ".png")


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed for item ``index`` of ``epoch`` in a data set seeded with ``seed`` (well mixed, stable)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


@dataclass(frozen=True)
class ImageSource:
    """One image of a folder: a file, or a DICOM folder (with the series to read); ``name`` for messages."""

    path: Path
    series_uid: str | None = None

    @property
    def name(self) -> str:
        return f"{self.path} (series {self.series_uid})" if self.series_uid else str(self.path)

    def read(self) -> Volume:
        return read_volume(self.path, self.series_uid)

    def cache_key(self, spec: InputSpec, kind: str) -> str:
        """Changes when the file (or the series folder) or the spec changes."""
        stat = self.path.stat()
        text = f"{kind}|{self.path.resolve()}|{self.series_uid}|{stat.st_size}|{stat.st_mtime_ns}|{spec!r}"
        return hashlib.sha256(text.encode()).hexdigest()[:32]


class _Items(Dataset):
    """Base of the data sets: the optional transform, per-item seeds, epochs and the disk cache."""

    def __init__(self, transform: Callable | None, seed: int | None, cache_dir: Path | str | None) -> None:
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)

    def set_epoch(self, epoch: int) -> None:
        """Pick the per-item seeds of ``epoch`` (call before each epoch when ``seed`` is set)."""
        self.epoch = int(epoch)

    def _transformed(self, index: int, *values: torch.Tensor) -> Any:
        """``values`` (one image, or image and labels) through the transform, with the item's seed if seeded."""
        if self.transform is None:
            return values[0] if len(values) == 1 else values
        if self.seed is None:
            return self.transform(*values)
        return self.transform(*values, seed=item_seed(self.seed, self.epoch, index))

    def _labelled(self, index: int, case: PreparedCase) -> Any:
        """A labelled item: ``case`` itself without a transform, else ``transform(image, labels)``."""
        return case if self.transform is None else self._transformed(index, case.image, case.labels)

    def _cached(self, key: str, make: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        if self.cache_dir is None:
            return make()
        path = self.cache_dir / f"{key}.safetensors"
        if path.is_file():
            return load_file(path)
        tensors = {name: tensor.contiguous() for name, tensor in make().items()}
        write_atomically(path, lambda temporary: save_file(tensors, str(temporary)))
        return tensors


def _check_spec(spec: InputSpec, dims: int, what: str) -> None:
    if len(spec.patch_size) != dims:
        raise ValueError(f"{what} reads {dims}D images but the input spec is {len(spec.patch_size)}D (patch {spec.patch_size})")


def _visible_files(root: Path) -> list[Path]:
    """Files under ``root`` (recursively, sorted), hidden ones and macOS AppleDouble files left out."""
    if not root.is_dir():
        raise VolumeReadError(root, "is not a folder" if root.exists() else "does not exist")
    return [
        path for path in sorted(root.rglob("*"))
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts) and not is_appledouble(path)
    ]


def find_volumes(root: Path | str) -> list[ImageSource]:
    """NIfTI files and DICOM image series under ``root``, in path order. A damaged DICOM file is an error naming it."""
    root = Path(root)
    sources, series = [], {}
    for path in _visible_files(root):
        if is_nifti_path(path):
            sources.append(ImageSource(path))
            continue
        dataset = read_dicom_header(path)
        if dataset is not None and "PixelData" in dataset:
            uid = str(dataset.get("SeriesInstanceUID", ""))
            if not uid:
                raise VolumeReadError(path, "is a DICOM image without SeriesInstanceUID; it cannot be assigned to a series")
            series.setdefault((path.parent, uid), ImageSource(path.parent, uid))
    found = sorted([*sources, *series.values()], key=lambda source: (str(source.path), source.series_uid or ""))
    if not found:
        raise VolumeReadError(root, f"holds no NIfTI files ({', '.join(NIFTI_SUFFIXES)}) and no DICOM image series")
    return found


def find_images_2d(root: Path | str) -> list[ImageSource]:
    """PNG/JPEG files and DICOM image files under ``root``, in path order. Slices of cross-sectional series
    (single-frame DICOM with ImagePositionPatient, as ``read_volume`` refuses them) are an error, raised here
    rather than when a training run first draws one."""
    root = Path(root)
    found, slices = [], []
    for path in _visible_files(root):
        if is_image_path(path):
            found.append(ImageSource(path))
            continue
        dataset = read_dicom_header(path)
        if dataset is not None and "PixelData" in dataset:
            if frame_count(dataset) == 1 and "ImagePositionPatient" in dataset:
                slices.append(path)
            else:
                found.append(ImageSource(path))
    if slices:
        raise VolumeReadError(root, f"holds {len(slices)} slices of cross-sectional series (e.g. {slices[0]}), not standalone 2D "
                                    "images (CR, DX, PNG, ...); move the series to the 3D folder (--volumes) or remove them")
    if not found:
        raise VolumeReadError(root, f"holds no 2D images ({', '.join(IMAGE_SUFFIXES)} or DICOM files)")
    return found


class _ImageFolder(_Items):
    """Unlabelled images of a folder, pre-processed for ``spec``; items: the transform's output or ``(C, *S)``."""

    dims = 0

    def __init__(
        self,
        root: Path | str,
        spec: InputSpec,
        transform: Callable | None = None,
        *,
        seed: int | None = None,
        cache_dir: Path | str | None = None,
    ) -> None:
        _check_spec(spec, self.dims, type(self).__name__)
        super().__init__(transform, seed, cache_dir)
        self.root, self.spec = Path(root), spec
        self.sources = find_volumes(self.root) if self.dims == 3 else find_images_2d(self.root)

    def __len__(self) -> int:
        return len(self.sources)

    def image(self, index: int) -> torch.Tensor:
        """Item ``index`` pre-processed, before the transform: ``(C, *S)`` float32."""
        source = self.sources[index]

        def make() -> dict[str, torch.Tensor]:
            volume = source.read()
            if volume.ndim != self.dims:
                raise VolumeReadError(source.path, f"is a {volume.ndim}D image; {type(self).__name__} takes {self.dims}D images")
            return {"image": prepare(volume, self.spec).tensor}

        return self._cached(source.cache_key(self.spec, "image"), make)["image"]

    def __getitem__(self, index: int) -> Any:
        return self._transformed(index, self.image(index))


class VolumeFolder(_ImageFolder):
    """Every NIfTI file and DICOM series under ``root`` (see :func:`find_volumes`), pre-processed for the 3D ``spec``.

    Items: ``transform(image)`` (``transform(image, seed=...)`` when ``seed`` is set), or the ``(C, D, H, W)``
    tensor without a transform. An empty folder or a damaged file is a ``VolumeReadError`` naming it.
    """

    dims = 3


class ImageFolder2D(_ImageFolder):
    """Every PNG/JPEG and 2D DICOM file under ``root`` (see :func:`find_images_2d`), pre-processed for the 2D ``spec``.

    Items as :class:`VolumeFolder`, ``(C, H, W)``. A slice of a 3D DICOM series is refused (read its folder).
    """

    dims = 2


def _case_name(path: Path) -> str:
    """A case's name: the file name without its image suffix, or the folder's name."""
    lower = path.name.lower()
    for suffix in (*NIFTI_SUFFIXES, *IMAGE_SUFFIXES, ".dcm", ".dicom"):
        if lower.endswith(suffix) and path.is_file():
            return path.name[: -len(suffix)]
    return path.name


def _case_entries(folder: Path, what: str) -> list[Path]:
    """The visible entries (files and folders) directly in ``folder``, sorted; an error if none."""
    if not folder.is_dir():
        raise VolumeReadError(folder, f"{'is not a folder' if folder.exists() else 'does not exist'}; {what}")
    entries = sorted(path for path in folder.iterdir() if not path.name.startswith("."))
    if not entries:
        raise VolumeReadError(folder, f"is empty; {what}")
    return entries


class SegmentationFolder(_Items):
    """Labelled images for segmentation: ``root/images/<case>`` with ``root/labels/<case>.nii.gz`` (or .nii/.png).

    Each case is read, pre-processed for ``spec`` and its label map brought onto the same grid
    (:func:`medssl_train.data.prepare_case`). Items: :class:`~medssl_train.data.PreparedCase` (image
    ``(C, *S)`` float32, labels ``(*S)`` uint8), or ``transform(image, labels)`` when a transform is given.
    A case without a label map, or a label map without its image, is an error naming it.
    """

    def __init__(
        self,
        root: Path | str,
        spec: InputSpec,
        transform: Callable | None = None,
        *,
        seed: int | None = None,
        cache_dir: Path | str | None = None,
    ) -> None:
        super().__init__(transform, seed, cache_dir)
        self.root, self.spec = Path(root), spec
        layout = "expected root/images/<case> and root/labels/<case>.nii.gz (see docs/training.md)"
        images = {_case_name(path): path for path in _case_entries(self.root / "images", layout)}
        labels = {_case_name(path): path for path in _case_entries(self.root / "labels", layout)}
        for name, path in images.items():
            if name not in labels:
                raise VolumeReadError(path, f"has no label map: expected labels/{name} with one of {', '.join(LABEL_SUFFIXES)}")
        for name, path in labels.items():
            if name not in images:
                raise VolumeReadError(path, f"is a label map without an image: expected images/{name} (a file or a DICOM folder)")
        self.pairs = [(ImageSource(images[name]), ImageSource(labels[name])) for name in sorted(images)]

    def __len__(self) -> int:
        return len(self.pairs)

    def case(self, index: int) -> PreparedCase:
        """Case ``index`` pre-processed, before the transform."""
        image, labels = self.pairs[index]

        def make() -> dict[str, torch.Tensor]:
            case = prepare_case(image.read(), labels.read(), self.spec)
            return {"image": case.image, "labels": case.labels}

        key = image.cache_key(self.spec, "case") + labels.cache_key(self.spec, "labels")[:8]
        tensors = self._cached(key, make)
        return PreparedCase(tensors["image"], tensors["labels"], image.name)

    def volume_pairs(self) -> Sequence[tuple[Volume, Volume]]:
        """The cases as read, ``(image, labels)`` Volumes on their own grids (for validation with
        ``Model.segment``); each pair is read when indexed, so the whole set is never held in memory."""
        return _ReadPairs(self.pairs)

    def __getitem__(self, index: int) -> Any:
        return self._labelled(index, self.case(index))


class _ReadPairs(Sequence):
    """``(image, labels)`` Volumes read from a list of source pairs on access."""

    def __init__(self, pairs: Sequence[tuple[ImageSource, ImageSource]]) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return _ReadPairs(self.pairs[index])
        image, labels = self.pairs[index]
        return image.read(), labels.read()


class ClassificationFolder(_Items):
    """Labelled images for classification: ``root/<class name>/<case>`` (a file or a DICOM series folder).

    Images are pre-processed for ``spec`` and resized to its patch size, as ``Model.classify`` does.
    ``classes`` fixes the class order (e.g. a card's label names; every sub-folder must be one of them);
    by default the sorted sub-folder names. Items: ``(transform(image), class index)`` with image
    ``(C, *patch)`` float32 (no transform: the image itself).
    """

    def __init__(
        self,
        root: Path | str,
        spec: InputSpec,
        transform: Callable | None = None,
        *,
        classes: Sequence[str] | None = None,
        seed: int | None = None,
        cache_dir: Path | str | None = None,
    ) -> None:
        super().__init__(transform, seed, cache_dir)
        self.root, self.spec = Path(root), spec
        folders = [path for path in _case_entries(self.root, "expected one sub-folder per class") if path.is_dir()]
        names = [folder.name for folder in folders]
        self.classes = tuple(classes) if classes is not None else tuple(names)
        unknown = sorted(set(names) - set(self.classes))
        if unknown:
            raise VolumeReadError(self.root, f"has sub-folders {unknown} that are not classes {list(self.classes)}")
        self.samples: list[tuple[ImageSource, int]] = []
        for folder in folders:
            entries = _case_entries(folder, f"expected the images of class {folder.name!r}")
            self.samples += [(ImageSource(entry), self.classes.index(folder.name)) for entry in entries]

    @property
    def targets(self) -> list[int]:
        """The class index of every item."""
        return [target for _, target in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def image(self, index: int) -> torch.Tensor:
        """Item ``index`` pre-processed and resized to the patch size, before the transform."""
        source = self.samples[index][0]

        def make() -> dict[str, torch.Tensor]:
            prepared = prepare(source.read(), self.spec)
            return {"image": resample(prepared.tensor[None], self.spec.patch_size)[0]}

        return self._cached(source.cache_key(self.spec, "classify"), make)["image"]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self._transformed(index, self.image(index)), self.samples[index][1]


class _Phantoms(_Items):
    """Synthetic images of ``seeds`` pre-processed for the ``dims``-D ``spec``, drawn when an item is read."""

    dims = 0

    def __init__(
        self, seeds: Sequence[int], spec: InputSpec, transform: Callable | None = None, *, labelled: bool = False,
        seed: int | None = None,
    ) -> None:
        _check_spec(spec, self.dims, type(self).__name__)
        super().__init__(transform, seed, None)
        self.seeds, self.spec, self.labelled = list(seeds), spec, labelled

    def __len__(self) -> int:
        return len(self.seeds)

    def case(self, index: int) -> PreparedCase:
        """Item ``index`` pre-processed, before the transform."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> Any:
        case = self.case(index)
        return self._labelled(index, case) if self.labelled else self._transformed(index, case.image)


class PhantomVolumes(_Phantoms):
    """Synthetic CT phantoms (``make_phantom``, each on its own jittered grid) pre-processed for the 3D ``spec``.

    Items: the transform's output, or the ``(C, D, H, W)`` tensor; with ``labelled`` a
    :class:`~medssl_train.data.PreparedCase` (or ``transform(image, labels)``). Phantoms are drawn when
    an item is read (deterministic per phantom seed).
    """

    dims = 3

    def case(self, index: int) -> PreparedCase:
        return phantom_case(self.seeds[index], self.spec)


class PhantomRadiographs(_Phantoms):
    """Synthetic frontal radiographs (``make_radiograph`` of ``shape`` pixels) pre-processed for the 2D ``spec``.

    Items as :class:`PhantomVolumes`, ``(C, H, W)``.
    """

    dims = 2

    def __init__(
        self, seeds: Sequence[int], spec: InputSpec, transform: Callable | None = None, *, labelled: bool = False,
        shape: Sequence[int] = (256, 256), seed: int | None = None,
    ) -> None:
        super().__init__(seeds, spec, transform, labelled=labelled, seed=seed)
        self.shape = tuple(shape)

    def case(self, index: int) -> PreparedCase:
        return prepare_case(*make_radiograph(self.seeds[index], self.shape), self.spec)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed Python's and NumPy's generators from the worker's torch seed, and
    give an unseeded data set's transform its own stream per worker (no two workers repeat each other)."""
    worker_seed = torch.initial_seed() % 2**32
    random.seed(worker_seed)
    np.random.seed(worker_seed)
    info = get_worker_info()
    dataset = info.dataset if info is not None else None
    transform = getattr(dataset, "transform", None)
    if getattr(dataset, "seed", 0) is None and hasattr(transform, "set_random_state"):
        transform.set_random_state(worker_seed)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = True,
    num_workers: int = 0,
    seed: int = 0,
    drop_last: bool = True,
    pin_memory: bool = False,
    collate_fn: Callable | None = None,
) -> DataLoader:
    """A DataLoader with a seeded shuffle and seeded workers (:func:`seed_worker`).

    Workers are started afresh each epoch (not persistent), so they see the data set's current ``set_epoch``.

    For :class:`SegmentationFolder` without a transform (PreparedCase items of different sizes) use
    :class:`medssl_train.data.PatchSampler` instead.
    """
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        worker_init_fn=seed_worker,
        generator=generator,
        drop_last=drop_last,
        pin_memory=pin_memory,
        collate_fn=collate_fn,
    )


def endless(loader: DataLoader) -> Iterator[Any]:
    """The loader's batches, epoch after epoch without end; the data set's ``set_epoch`` (if any) is called
    before each epoch (and a ``DistributedSampler``'s), so seeded transforms differ from epoch to epoch."""
    epoch = 0
    while True:
        for target in (loader.dataset, loader.sampler):
            if hasattr(target, "set_epoch"):
                target.set_epoch(epoch)
        yield from loader
        epoch += 1
