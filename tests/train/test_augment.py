"""Augmentations: view shapes, padding of small images, determinism under seeds, joint image/label geometry."""

from __future__ import annotations

import pytest
import torch

from medssl_train.augment import PAPER_CROP_SIZE, RandomView, SegmentationAugment, SSLViews


@pytest.mark.parametrize("dims", [2, 3])
def test_views_have_the_paper_crop_size(dims: int) -> None:
    image = torch.randn(1, *([40, 260, 250] if dims == 3 else [300, 280]))
    first, second = SSLViews(dims, seed=0)(image)
    assert first.shape == second.shape == (1, *PAPER_CROP_SIZE[dims])
    assert type(first) is torch.Tensor and first.dtype == torch.float32
    assert not torch.equal(first, second)


def test_small_images_are_padded_with_their_minimum() -> None:
    image = torch.full((3, 20, 30), 5.0)
    image[:, 0, 0] = -2.0
    view = RandomView(2, (64, 64), seed=0)
    views = [view(image) for _ in range(6)]
    assert all(v.shape == (3, 64, 64) for v in views)
    # most of each view is padding, with the image's minimum: the dark side of the (jittered) view
    assert all((v < (v.min() + v.max()) / 2).float().mean() > 0.5 for v in views)


def test_views_are_reproducible_from_a_seed() -> None:
    image = torch.randn(1, 24, 100, 100)
    a = SSLViews(3, (16, 64, 64), seed=3)
    b = SSLViews(3, (16, 64, 64), seed=3)
    first = [a(image) for _ in range(3)]
    second = [b(image) for _ in range(3)]
    assert all(torch.equal(x, y) for pair_a, pair_b in zip(first, second) for x, y in zip(pair_a, pair_b))
    # a per-call seed makes that call independent of the history
    other = SSLViews(3, (16, 64, 64), seed=99)
    other(image)
    assert all(torch.equal(x, y) for x, y in zip(a(image, seed=7), other(image, seed=7)))
    assert not torch.equal(a(image, seed=7)[0], a(image, seed=8)[0])
    a.set_random_state(3)
    assert torch.equal(a(image)[0], first[0][0])


def test_segmentation_augment_moves_labels_with_the_image() -> None:
    labels = torch.zeros(16, 48, 48, dtype=torch.long)
    labels[4:12, 10:30, 14:40] = 2
    labels[2:6, 30:44, 5:12] = 1
    image = torch.stack([labels.float() * 100])
    augment = SegmentationAugment(3, flip_axes=(1, 2), seed=0)
    changed = 0
    for seed in range(12):
        out_image, out_labels = augment(image, labels, seed=seed)
        assert out_image.shape == image.shape and out_labels.shape == labels.shape and out_labels.dtype == torch.int64
        assert set(out_labels.unique().tolist()) <= {0, 1, 2}
        # the organ of label 2 is where the image is bright: the same geometry was applied to both
        bright, organ = out_image[0] > 150, out_labels == 2
        assert (bright == organ).float().mean() > 0.9
        assert torch.allclose(_centre(bright), _centre(organ), atol=1.0)
        changed += not torch.equal(out_labels, labels)
    assert changed >= 3
    again = augment(image, labels, seed=5)
    assert torch.equal(again[1], augment(image, labels, seed=5)[1])


def _centre(mask: torch.Tensor) -> torch.Tensor:
    return torch.nonzero(mask).float().mean(0)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="crop_size"):
        SSLViews(3, (96, 96))
    with pytest.raises(ValueError, match="spatial_dims"):
        SSLViews(4, (1, 2, 3, 4))
    with pytest.raises(ValueError, match="spatial shape"):
        SegmentationAugment(2)(torch.zeros(1, 8, 8), torch.zeros(8, 9))


def _view_means(views: SSLViews, image: torch.Tensor, seeds: range) -> torch.Tensor:
    """(len(seeds), 2): the mean of each of the two views per seed."""
    return torch.tensor([[view.mean().item() for view in views(image, seed=seed)] for seed in seeds])


def test_the_two_3d_views_come_from_one_region_of_the_volume() -> None:
    # intensity = position along the width (0 .. 10): a view's mean says where it was cut. Independent crops of a
    # whole CT would be uncorrelated; the official loader cuts both views from one shared region, so they overlap.
    image = torch.linspace(0, 10, 480).expand(1, 40, 64, 480).contiguous()
    means = _view_means(SSLViews(3, (16, 32, 64)), image, range(40))
    correlation = torch.corrcoef(means.T)[0, 1].item()
    assert correlation > 0.8, correlation
    region = SSLViews(3, (16, 32, 64)).region
    region.set_random_state(0)
    sizes = [tuple(region(image).shape[1:]) for _ in range(20)]
    assert all(size[0] == 24 and 45 <= size[1] <= 58 for size in sizes)  # 1.5 x 16 slices; 1.4-1.8 x 32 (clamped to 64)
    assert all(90 <= size[2] <= 116 for size in sizes) and len({size[2] for size in sizes}) > 5


def test_2d_views_cover_14_to_100_percent_of_the_image() -> None:
    # the official 2D views are RandomResizedCrop(224, scale=(0.14, 1)) of the whole radiograph: a view of a
    # 1000-pixel-wide image spans hundreds of its columns, not one 224-pixel patch
    image = torch.linspace(0, 10, 1000).expand(1, 900, 1000).contiguous()
    spans = []
    for seed in range(12):
        for view in SSLViews(2, (64, 64))(image, seed=seed):
            row = view[0].mean(dim=0)
            spans.append((row.quantile(0.95) - row.quantile(0.05)).item())
    assert min(spans) > 2.0 and max(spans) > 6.0, spans  # each view covers >= 0.37 of the width before jitter
