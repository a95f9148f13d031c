"""Training data sets: folders of NIfTI + DICOM volumes, 2D images, labelled layouts, phantoms, seeded loaders."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medssl_sdk.io import VolumeReadError, write_nifti
from medssl_sdk.preprocess import prepare, resample
from medssl_sdk.samples import make_phantom
from medssl_sdk.volume import Volume
from medssl_train.augment import SegmentationAugment, SSLViews
from medssl_train.data import phantom_case
from medssl_train.datasets import (
    ClassificationFolder,
    ImageFolder2D,
    PhantomRadiographs,
    PhantomVolumes,
    SegmentationFolder,
    VolumeFolder,
    item_seed,
    make_loader,
)
from medssl_zoo.card import InputSpec, Intensity

sys.path.insert(0, str(Path(__file__).parents[1] / "sdk"))  # the DICOM writer shared with the SDK tests
from dicom_series import write_dicom_image_2d, write_dicom_series  # noqa: E402

SPEC_3D = InputSpec(channels=1, patch_size=(8, 32, 32), spacing=(6.0, 3.0, 3.0),
                    intensity=Intensity("affine", clip=(-1000.0, 1000.0), scale=1000.0))
SPEC_2D = InputSpec(channels=3, patch_size=(32, 32), intensity=Intensity("unit-range"))
PHANTOM_GRID = ((16, 40, 36), (6.0, 4.0, 4.0))


@pytest.fixture(scope="module")
def phantoms() -> list[tuple[Volume, Volume]]:
    return [make_phantom(seed, *PHANTOM_GRID) for seed in range(2)]


def test_volume_folder_reads_nifti_and_dicom_series(tmp_path: Path, phantoms: list[tuple[Volume, Volume]]) -> None:
    (tmp_path / "nifti").mkdir()
    write_nifti(phantoms[0][0], tmp_path / "nifti" / "a.nii.gz")
    write_dicom_series(phantoms[1][0], tmp_path / "dicom" / "b")
    (tmp_path / "notes.txt").write_text("not an image")
    folder = VolumeFolder(tmp_path, SPEC_3D, cache_dir=tmp_path / ".cache")
    assert [source.path.name for source in folder.sources] == ["b", "a.nii.gz"]  # dicom/b sorts before nifti/a
    for index, (image, _) in zip((1, 0), phantoms):
        item = folder[index]
        expected = prepare(image, SPEC_3D).tensor
        assert item.shape == expected.shape == (1, 16, 53, 48)
        assert torch.allclose(item, expected, atol=2e-3)  # DICOM stores integers
    assert len(list((tmp_path / ".cache").glob("*.safetensors"))) == 2
    assert torch.equal(folder[0], folder[0])  # from the cache


def test_volume_folder_gives_two_seeded_views(tmp_path: Path, phantoms: list[tuple[Volume, Volume]]) -> None:
    write_nifti(phantoms[0][0], tmp_path / "a.nii.gz")
    folder = VolumeFolder(tmp_path, SPEC_3D, SSLViews(3, (8, 32, 32)), seed=4)
    first, second = folder[0]
    assert first.shape == second.shape == (1, 8, 32, 32)
    again = folder[0]
    assert torch.equal(first, again[0]) and torch.equal(second, again[1])
    folder.set_epoch(1)
    assert not torch.equal(first, folder[0][0])
    views = SSLViews(3, (8, 32, 32))(prepare(phantoms[0][0], SPEC_3D).tensor, seed=item_seed(4, 1, 0))
    assert torch.equal(views[0], folder[0][0])


def test_image_folder_reads_png_jpeg_and_dicom(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(tmp_path / "b.jpg")
    (tmp_path / "sub").mkdir()
    write_dicom_image_2d(rng.integers(0, 4000, (64, 48)).astype(np.uint16), tmp_path / "sub" / "c.dcm")
    folder = ImageFolder2D(tmp_path, SPEC_2D)
    assert len(folder) == 3
    shapes = [tuple(folder[i].shape) for i in range(3)]
    assert shapes == [(3, 40, 50), (3, 30, 30), (3, 64, 48)]
    assert all(0.0 <= folder[i].min() and folder[i].max() <= 1.0 for i in range(3))


def test_slices_of_a_ct_series_in_a_2d_folder_are_refused_when_listed(tmp_path: Path,
                                                                       phantoms: list[tuple[Volume, Volume]]) -> None:
    # not hours into a pre-training run, when the first of them is drawn
    Image.fromarray(np.zeros((40, 50), dtype=np.uint8)).save(tmp_path / "a.png")
    write_dicom_series(phantoms[0][0], tmp_path / "ct")
    with pytest.raises(VolumeReadError, match=r"holds 16 slices of cross-sectional series .*ct.*--volumes"):
        ImageFolder2D(tmp_path, SPEC_2D)


def test_empty_and_bad_folders_are_named(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(VolumeReadError, match=r"empty: holds no NIfTI files .*DICOM image series"):
        VolumeFolder(tmp_path / "empty", SPEC_3D)
    with pytest.raises(VolumeReadError, match="holds no 2D images"):
        ImageFolder2D(tmp_path / "empty", SPEC_2D)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.nii.gz").write_bytes(b"not a nifti file")
    folder = VolumeFolder(tmp_path / "bad", SPEC_3D)
    with pytest.raises(VolumeReadError, match="broken.nii.gz"):
        folder[0]
    (tmp_path / "bad" / "slice.dcm").write_bytes(b"neither")
    with pytest.raises(VolumeReadError, match="slice.dcm"):
        VolumeFolder(tmp_path / "bad", SPEC_3D)
    with pytest.raises(ValueError, match="2D images but the input spec is 3D"):
        ImageFolder2D(tmp_path, SPEC_3D)


def test_segmentation_folder_pairs_images_with_label_maps(tmp_path: Path, phantoms: list[tuple[Volume, Volume]]) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    write_nifti(phantoms[0][0], tmp_path / "images" / "case0.nii.gz")
    write_nifti(phantoms[0][1], tmp_path / "labels" / "case0.nii.gz")
    write_dicom_series(phantoms[1][0], tmp_path / "images" / "case1")
    write_nifti(phantoms[1][1], tmp_path / "labels" / "case1.nii.gz")
    folder = SegmentationFolder(tmp_path, SPEC_3D)
    assert len(folder) == 2
    for index, (_, labels) in enumerate(phantoms):
        case = folder[index]
        assert case.image.shape[1:] == case.labels.shape == (16, 53, 48)
        # the label map follows the image onto the spec's grid: bright kidneys/liver sit on their labels
        assert set(case.labels.unique().tolist()) == set(np.unique(labels.array).tolist())
        liver = case.labels == 1
        assert case.image[0][liver].mean() > case.image[0][~liver].mean()
    augmented = SegmentationFolder(tmp_path, SPEC_3D, SegmentationAugment(3), seed=0)
    image, labels = augmented[0]
    assert image.shape == (1, 16, 53, 48) and labels.dtype == torch.int64
    (tmp_path / "labels" / "case1.nii.gz").rename(tmp_path / "labels" / "other.nii.gz")
    with pytest.raises(VolumeReadError, match=r"case1: has no label map: expected labels/case1"):
        SegmentationFolder(tmp_path, SPEC_3D)
    with pytest.raises(VolumeReadError, match=r"missing/images: does not exist; expected root/images"):
        SegmentationFolder(tmp_path / "missing", SPEC_3D)


def test_classification_folder_uses_class_subfolders(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for name, count in (("normal", 2), ("covid", 1)):
        (tmp_path / name).mkdir()
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (48, 40), dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    folder = ClassificationFolder(tmp_path, SPEC_2D, classes=("normal", "covid"))
    assert sorted(folder.targets) == [0, 0, 1]
    image, target = folder[0]
    assert image.shape == (3, 32, 32) and target == folder.targets[0]
    source = folder.samples[0][0].read()
    assert torch.allclose(image, resample(prepare(source, SPEC_2D).tensor[None], (32, 32))[0])
    assert ClassificationFolder(tmp_path, SPEC_2D).classes == ("covid", "normal")
    with pytest.raises(VolumeReadError, match=r"sub-folders \['normal'\] that are not classes"):
        ClassificationFolder(tmp_path, SPEC_2D, classes=("covid",))


def test_phantom_data_sets() -> None:
    volumes = PhantomVolumes([3, 4], SPEC_3D)
    assert torch.equal(volumes[0], phantom_case(3, SPEC_3D).image)
    labelled = PhantomVolumes([3], SPEC_3D, labelled=True)[0]
    assert labelled.labels.shape == labelled.image.shape[1:]
    radiographs = PhantomRadiographs([0, 1], SPEC_2D, SSLViews(2, (32, 32)), seed=0, shape=(64, 64))
    first, second = radiographs[1]
    assert first.shape == second.shape == (3, 32, 32)


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_batches_are_reproducible_with_workers(workers: int) -> None:
    radiographs = PhantomRadiographs(range(4), SPEC_2D, SSLViews(2, (32, 32)), seed=0, shape=(48, 48))
    runs = []
    for _ in range(2):
        loader = make_loader(radiographs, batch_size=2, num_workers=workers, seed=5)
        runs.append([views[0] for views in loader])
    assert len(runs[0]) == 2 and runs[0][0].shape == (2, 3, 32, 32)
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_a_folder_holding_two_series_gives_two_volumes(tmp_path: Path, phantoms: list[tuple[Volume, Volume]]) -> None:
    write_dicom_series(phantoms[0][0], tmp_path / "study", series_uid="1.2.3.1", series_number=1)
    write_dicom_series(phantoms[1][0], tmp_path / "study", series_uid="1.2.3.2", series_number=2, seed=1)  # other file names
    folder = VolumeFolder(tmp_path, SPEC_3D)
    assert [(source.path.name, source.series_uid) for source in folder.sources] == [("study", "1.2.3.1"), ("study", "1.2.3.2")]
    for index, (image, _) in enumerate(phantoms):
        assert torch.allclose(folder[index], prepare(image, SPEC_3D).tensor, atol=2e-3)
