"""MiT architecture: shapes for 2D and 3D, shared blocks, parameter counts, position resizing, bad input."""

from __future__ import annotations

import pytest
import torch

from medssl_zoo.layers import resize_positions
from medssl_zoo.mit import MiT, MiTConfig, create_mit

SHAPES_2D = [(224, 224), (512, 512)]
SHAPES_3D = [(16, 96, 96), (32, 128, 128), (64, 160, 192)]


@pytest.fixture(scope="module", params=["mit7", "mit22"])
def segmenter(request: pytest.FixtureRequest) -> MiT:
    torch.manual_seed(0)
    return create_mit(request.param, task="segment", num_classes=4).eval()


@pytest.mark.parametrize("size", SHAPES_2D + SHAPES_3D, ids=lambda s: "x".join(map(str, s)))
def test_forward_shapes(segmenter: MiT, size: tuple[int, ...]) -> None:
    x = torch.randn(1, 1, *size)
    with torch.inference_mode():
        encoded, decoded, grid = segmenter.forward_features(x)
        logits = segmenter(x)
    stem_stride = (2, 2) if len(size) == 2 else (1, 2, 2)
    expected_grids = [tuple(s // (st * 2**level) for s, st in zip(size, stem_stride)) for level in range(5)]
    assert [tuple(skip.shape[2:]) for skip in encoded.skips] == expected_grids[:4]
    assert [skip.shape[1] for skip in encoded.skips] == [32, 48, 128, 256]
    assert encoded.grid == expected_grids[4]
    assert encoded.tokens.shape == (1, 1 + torch.Size(expected_grids[4]).numel(), 512)
    assert grid == expected_grids[1]  # the decoder ends on the grid of encoder stage 1
    assert decoded.shape == (1, 1 + torch.Size(grid).numel(), 48)
    assert logits.shape == (1, 4, *size)
    assert torch.isfinite(logits).all()


def test_official_token_grids_for_the_pretraining_sizes() -> None:
    config = MiTConfig()
    assert [config.token_grid((16, 96, 96), level) for level in range(1, 5)] == [
        (8, 24, 24), (4, 12, 12), (2, 6, 6), (1, 3, 3)
    ]
    assert [config.token_grid((224, 224), level) for level in range(1, 5)] == [(56, 56), (28, 28), (14, 14), (7, 7)]


@pytest.mark.parametrize(
    "variant, total, encoder",
    # Counts of the official model_tiny / model_small built with modal_type='MM' (both branches).
    [("mit7", 20_380_336, 13_859_392), ("mit22", 43_942_944, 28_523_888)],
)
def test_parameter_counts_match_the_official_models(variant: str, total: int, encoder: int) -> None:
    model = create_mit(variant)
    assert sum(p.numel() for p in model.parameters()) == total
    assert sum(p.numel() for p in model.encoder.parameters()) == encoder
    paper = {"mit7": 20.4e6, "mit22": 43.9e6}[variant]
    assert abs(total - paper) / paper < 0.01


def _grads_after(model: MiT, x: torch.Tensor) -> dict[str, bool]:
    model.zero_grad(set_to_none=True)
    model(x).square().mean().backward()
    return {name: p.grad is not None and bool(p.grad.abs().sum() > 0) for name, p in model.named_parameters()}


def test_one_set_of_block_weights_serves_both_paths() -> None:
    model = create_mit("mit7")
    from_2d = _grads_after(model, torch.randn(2, 3, 64, 64))
    from_3d = _grads_after(model, torch.randn(2, 1, 16, 64, 64))
    branch_specific = {name for name in from_2d if ".2d" in name or ".3d" in name}
    shared = set(from_2d) - branch_specific
    assert any(".blocks." in name for name in shared) and "encoder.ssl_token" in shared
    assert all(".reduce." not in name for name in shared)
    assert all(from_2d[name] and from_3d[name] for name in shared), "a shared weight missed a path"
    assert all(from_2d[n] and not from_3d[n] for n in branch_specific if ".2d" in n)
    assert all(from_3d[n] and not from_2d[n] for n in branch_specific if ".3d" in n)
    assert not any(".2d" in name or ".3d" in name for name in shared)


def test_grayscale_image_is_repeated_to_three_channels() -> None:
    model = create_mit("mit7").eval()
    gray = torch.randn(2, 1, 64, 96)
    with torch.inference_mode():
        assert torch.equal(model(gray), model(gray.expand(-1, 3, -1, -1)))


def test_classification_head_averages_token_and_pooled_logits() -> None:
    model = create_mit("mit7", task="classify", num_classes=3).eval()
    assert model.decoder is None
    x = torch.randn(2, 1, 16, 64, 64)
    with torch.inference_mode():
        logits = model(x)
        tokens = model.encoder(x).tokens
        head = model.cls_head
        normed = head.norm(tokens)
        expected = (head.fc(normed[:, 0]) + head.fc(normed[:, 1:].mean(1))) / 2
    assert logits.shape == (2, 3)
    torch.testing.assert_close(logits, expected)


def test_embedding_is_final_ssl_token_then_pooled_deepest_tokens() -> None:
    model = create_mit("mit7").eval()
    x = torch.randn(2, 3, 96, 64)
    with torch.inference_mode():
        embedding = model(x)
        encoded, decoded, _ = model.forward_features(x)
    assert embedding.shape == (2, model.embedding_dim) == (2, 48 + 512)
    torch.testing.assert_close(embedding[:, :48], decoded[:, 0])
    torch.testing.assert_close(embedding[:, 48:], encoded.tokens[:, 1:].mean(1))


def test_segmentation_without_ssl_token_has_no_token_parameters() -> None:
    model = create_mit("mit7", task="segment", num_classes=2, ssl_token=False, spatial_dims=(3,)).eval()
    names = [name for name, _ in model.named_parameters()]
    assert not any("token" in name or ".2d" in name for name in names)
    assert model.encoder.stages[0].pos["3d"].shape == (1, 8 * 24 * 24, 48)
    with torch.inference_mode():
        assert model(torch.randn(1, 1, 32, 64, 64)).shape == (1, 2, 32, 64, 64)


def test_positions_unchanged_at_training_grid_and_resampled_per_axis_elsewhere() -> None:
    rows, cols = torch.meshgrid(torch.arange(4.0), torch.arange(6.0), indexing="ij")
    table = torch.stack([rows, cols], dim=-1).reshape(1, 24, 2)
    with_token = torch.cat([torch.full((1, 1, 2), 7.0), table], dim=1)
    assert resize_positions(with_token, (4, 6), (4, 6), 1) is with_token
    resized = resize_positions(with_token, (4, 6), (8, 6), 1)
    assert resized.shape == (1, 1 + 48, 2)
    assert torch.equal(resized[:, 0], with_token[:, 0])
    grid = resized[0, 1:].reshape(8, 6, 2)
    torch.testing.assert_close(grid[..., 1], cols[:1].expand(8, 6))  # columns untouched by a row resize
    assert (grid[1:, :, 0] >= grid[:-1, :, 0] - 1e-6).all() and grid[-1, 0, 0] > grid[0, 0, 0]


def test_3d_positions_resize_for_any_depth() -> None:
    model = create_mit("mit7").eval()
    with torch.inference_mode():
        for depth in (16, 48, 80):
            assert model(torch.randn(1, 1, depth, 64, 96)).shape == (1, model.embedding_dim)


@pytest.mark.parametrize(
    "shape, expected",
    [
        ((1, 224, 224), "(B, 1 or 3, H, W) or a 3D batch (B, 1, D, H, W)"),
        ((1, 2, 224, 224), "(B, 1 or 3, H, W); got 2 channels"),
        ((1, 3, 16, 96, 96), "(B, 1, D, H, W); got 3 channels"),
        ((1, 3, 100, 224), "multiples of (32, 32)"),
        ((1, 1, 20, 96, 96), "multiples of (16, 32, 32)"),
        ((2, 1, 16, 96, 80), "got (2, 1, 16, 96, 80)"),
    ],
)
def test_bad_input_names_the_expected_shape(shape: tuple[int, ...], expected: str) -> None:
    model = create_mit("mit7")
    with pytest.raises(ValueError) as error:
        model(torch.randn(shape))
    assert expected in str(error.value)


@pytest.mark.parametrize(
    "shape, expected",
    [
        ((1, 1, 32, 32), "at least 2 positions at that stride (e.g. (32, 64))"),
        ((1, 1, 16, 32, 32), "at least 2 positions at that stride (e.g. (16, 32, 64))"),
        ((0, 1, 64, 64), "empty batch"),
    ],
)
def test_too_small_or_empty_input(shape: tuple[int, ...], expected: str) -> None:
    with pytest.raises(ValueError) as error:
        create_mit("mit7")(torch.randn(shape))
    assert expected in str(error.value)


def test_smallest_inputs_run() -> None:
    model = create_mit("mit7", task="segment", num_classes=2).eval()
    with torch.inference_mode():
        assert model(torch.randn(1, 1, 32, 64)).shape == (1, 2, 32, 64)
        assert model(torch.randn(1, 1, 16, 32, 64)).shape == (1, 2, 16, 32, 64)


def test_dtype_mismatch_is_explained() -> None:
    with pytest.raises(ValueError, match="dtype torch.float64 but the model's weights are torch.float32"):
        create_mit("mit7")(torch.randn(1, 1, 64, 64, dtype=torch.float64))


def test_batched_segmentation_is_per_sample() -> None:
    model = create_mit("mit7", task="segment", num_classes=3).eval()
    x = torch.randn(3, 1, 16, 64, 64)
    with torch.inference_mode():
        batched = model(x)
        single = torch.cat([model(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("task, num_classes", [("embed", None), ("classify", 5)])
def test_models_without_ssl_token_or_3d_branch(task: str, num_classes: int | None) -> None:
    model = create_mit("mit7", task=task, num_classes=num_classes, ssl_token=False, spatial_dims=(2,)).eval()
    assert not any(".3d" in name for name, _ in model.named_parameters())
    with torch.inference_mode():
        out = model(torch.randn(2, 3, 64, 96))
    assert out.shape == (2, num_classes or model.embedding_dim)
    assert model.embedding_dim == 512


def test_bad_config_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"encoder_depths needs 4 values"):
        create_mit("mit7", encoder_depths=(1, 1, 1))
    with pytest.raises(ValueError, match="num_classes must be at least 1"):
        create_mit("mit7", task="segment", num_classes=0)


def test_missing_branch_is_a_clear_error() -> None:
    model = create_mit("mit7", spatial_dims=(3,))
    with pytest.raises(ValueError, match="built without its 2D branch; it takes 3D input"):
        model(torch.randn(1, 3, 64, 64))
