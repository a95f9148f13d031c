"""Sliding-window inference: same windows, weights and outputs as MONAI's; streaming argmax; errors."""

from __future__ import annotations

import itertools

import pytest
import torch
from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.inferers import sliding_window_inference as monai_sliding_window_inference
from monai.inferers.utils import _get_scan_interval

from medssl_sdk.sliding_window import importance_map, plan_windows, sliding_window_argmax, sliding_window_inference

IN_CHANNELS, OUT_CHANNELS = 2, 3

#: (image shape, roi): sizes that are not multiples of the step; the last axis of the first two cases and the
#: first axis of the third are shorter than the window (padding).
CASES = [
    ((2, IN_CHANNELS, 37, 50), (16, 64)),
    ((2, IN_CHANNELS, 19, 23, 14), (8, 10, 16)),
    ((2, IN_CHANNELS, 5, 21, 17), (8, 8, 6)),
    ((1, IN_CHANNELS, 45, 39), (16, 12)),
]


def conv_softmax(spatial_dims: int) -> torch.nn.Module:
    """A seeded conv (C=2 -> K=3) then softmax: its output varies in space and depends on the window's border."""
    conv = (torch.nn.Conv2d if spatial_dims == 2 else torch.nn.Conv3d)(IN_CHANNELS, OUT_CHANNELS, 3, padding=1)
    return torch.nn.Sequential(conv, torch.nn.Softmax(dim=1))


def case_inputs(shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.nn.Module]:
    return torch.randn(shape), conv_softmax(len(shape) - 2)


@pytest.mark.parametrize(("shape", "roi"), CASES)
@pytest.mark.parametrize("mode", ["constant", "gaussian"])
@pytest.mark.parametrize(("overlap", "sw_batch_size"), list(itertools.product([0.0, 0.25, 0.5], [1, 3])))
def test_matches_monai(shape: tuple[int, ...], roi: tuple[int, ...], mode: str, overlap: float, sw_batch_size: int) -> None:
    image, predictor = case_inputs(shape)
    with torch.inference_mode():
        ours = sliding_window_inference(image, roi, predictor, sw_batch_size=sw_batch_size, overlap=overlap, mode=mode)
        theirs = monai_sliding_window_inference(image, roi, sw_batch_size, predictor, overlap=overlap, mode=mode)
    assert ours.shape == (shape[0], OUT_CHANNELS, *shape[2:])
    assert ours.dtype == torch.float32 and ours.device == image.device
    assert (ours - theirs).abs().max().item() <= 1e-5


@pytest.mark.parametrize(("padding_mode", "cval"), [("constant", 0.7), ("reflect", 0.0), ("replicate", 0.0), ("circular", 0.0)])
def test_padding_matches_monai(padding_mode: str, cval: float) -> None:
    image, predictor = case_inputs((1, IN_CHANNELS, 5, 9, 13))
    roi, sigma_scale = (8, 12, 6), 0.3
    with torch.inference_mode():
        ours = sliding_window_inference(image, roi, predictor, sw_batch_size=2, sigma_scale=sigma_scale,
                                        padding_mode=padding_mode, cval=cval)
        theirs = monai_sliding_window_inference(image, roi, 2, predictor, mode="gaussian", sigma_scale=sigma_scale,
                                                padding_mode=padding_mode, cval=cval)
    assert (ours - theirs).abs().max().item() <= 1e-5


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.9])
def test_window_plan_matches_monai(overlap: float) -> None:
    for image_size, roi in itertools.product([(7, 64), (33, 100), (128, 256)], [(7, 64), (16, 20), (40, 130)]):
        plan = plan_windows(image_size, roi, overlap)
        padded = tuple(s + before + after for s, (before, after) in zip(image_size, plan.padding))
        assert padded == tuple(max(s, r) for s, r in zip(image_size, roi))
        interval = _get_scan_interval(padded, roi, len(roi), (overlap,) * len(roi))
        assert list(plan.window_slices) == dense_patch_slices(padded, roi, interval)


@pytest.mark.parametrize(("roi", "sigma_scale"), [((8, 10, 16), 0.125), ((7, 30), 0.125), ((9, 12), 0.5), ((64, 5, 33), 0.3)])
def test_importance_map_matches_monai(roi: tuple[int, ...], sigma_scale: float) -> None:
    ours = importance_map(roi, "gaussian", sigma_scale)
    theirs = compute_importance_map(roi, mode="gaussian", sigma_scale=sigma_scale)
    assert ours.shape == roi and ours.min().item() > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
    assert torch.equal(importance_map(roi, "constant"), torch.ones(roi))


@pytest.mark.parametrize(("shape", "roi"), CASES)
@pytest.mark.parametrize("overlap", [0.0, 0.5])
@pytest.mark.parametrize("accumulate_dtype", [torch.float32, torch.float16])
def test_streaming_argmax_equals_argmax_of_inference(
    shape: tuple[int, ...], roi: tuple[int, ...], overlap: float, accumulate_dtype: torch.dtype
) -> None:
    image, predictor = case_inputs(shape)
    options = {"sw_batch_size": 3, "overlap": overlap, "accumulate_dtype": accumulate_dtype}
    with torch.inference_mode():
        labels = sliding_window_argmax(image, roi, predictor, **options)
        probabilities = sliding_window_inference(image, roi, predictor, **options)
    assert labels.dtype == torch.uint8 and labels.shape == (shape[0], *shape[2:])
    assert torch.equal(labels, probabilities.argmax(1))
    assert len(labels.unique()) > 1  # the predictor's classes vary in space, so a misplaced slab would show


def test_float16_accumulation_is_close_to_float32() -> None:
    image, predictor = case_inputs((2, IN_CHANNELS, 19, 23, 14))
    with torch.inference_mode():
        full = sliding_window_inference(image, (8, 10, 16), predictor, overlap=0.5)
        half = sliding_window_inference(image, (8, 10, 16), predictor, overlap=0.5, accumulate_dtype=torch.float16)
    assert half.dtype == torch.float16
    assert (half.float() - full).abs().max().item() <= 1e-2


def test_runs_under_the_callers_grad_mode() -> None:
    image, predictor = case_inputs((1, IN_CHANNELS, 20, 30))
    output = sliding_window_inference(image, (16, 16), predictor)
    output[:, 0].sum().backward()
    assert predictor[0].weight.grad is not None and predictor[0].weight.grad.abs().sum() > 0
    with torch.inference_mode():
        assert sliding_window_inference(image, (16, 16), predictor).is_inference()


def test_progress_bar_counts_every_window_of_every_image(capsys: pytest.CaptureFixture[str]) -> None:
    image, predictor = case_inputs((2, IN_CHANNELS, 37, 50))
    windows = len(plan_windows((37, 50), (16, 20), 0.25).starts)
    with torch.inference_mode():
        sliding_window_inference(image, (16, 20), predictor, sw_batch_size=3, progress=True)
    assert f"{2 * windows}/{2 * windows}" in capsys.readouterr().err
    with torch.inference_mode():
        sliding_window_argmax(image, (16, 20), predictor, progress=False)
    assert capsys.readouterr().err == ""


def test_stitch_device_choice_on_cpu() -> None:
    image, predictor = case_inputs((1, IN_CHANNELS, 20, 30))
    with torch.inference_mode():
        for stitch_device in ("auto", None, "cpu"):
            assert sliding_window_inference(image, (16, 16), predictor, stitch_device=stitch_device).device.type == "cpu"


@pytest.mark.parametrize(
    ("shape", "roi", "options", "message"),
    [
        ((1, 1, 20, 30), (16, 16, 16), {}, "one window size per spatial axis"),
        ((1, 20, 30), (16, 16), {}, r"\(B, C, H, W\) or \(B, C, D, H, W\)"),
        ((1, 1, 20, 30), (16, 0), {}, "positive integers"),
        ((1, 1, 20, 30), (16, 16), {"overlap": 1.0}, r"overlap must be in \[0, 1\)"),
        ((1, 1, 20, 30), (16, 16), {"overlap": -0.1}, r"overlap must be in \[0, 1\)"),
        ((1, 1, 20, 30), (16, 16), {"sw_batch_size": 0}, "sw_batch_size must be an integer >= 1"),
        ((1, 1, 20, 30), (16, 16), {"mode": "linear"}, "mode must be 'constant' or 'gaussian'"),
        ((1, 1, 20, 30), (16, 16), {"sigma_scale": 0.0}, "sigma_scale must be > 0"),
        ((1, 1, 20, 30), (16, 16), {"padding_mode": "zeros"}, "padding_mode must be one of"),
        ((1, 1, 20, 30), (16, 16), {"accumulate_dtype": torch.int32}, "floating-point"),
    ],
)
def test_bad_arguments_are_explained(shape: tuple[int, ...], roi: tuple[int, ...], options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sliding_window_inference(torch.zeros(shape), roi, lambda x: x, **options)
    with pytest.raises(ValueError, match=message):
        sliding_window_argmax(torch.zeros(shape), roi, lambda x: x, **options)


def test_predictor_output_must_keep_the_window_size() -> None:
    image = torch.zeros(1, 1, 20, 30)
    halve = torch.nn.AvgPool2d(2)
    with pytest.raises(ValueError, match=r"returned shape \(2, 1, 8, 8\) for windows of shape \(2, 1, 16, 16\)"):
        sliding_window_inference(image, (16, 16), halve, sw_batch_size=2)
    with pytest.raises(ValueError, match="must return a tensor"):
        sliding_window_argmax(image, (16, 16), lambda x: (x,))
    calls = itertools.count()
    with pytest.raises(ValueError, match="returned 2 channels after returning 1"):
        sliding_window_inference(image, (16, 16), lambda x: x.repeat(1, 1 + (next(calls) > 0), 1, 1), sw_batch_size=1)


def test_auto_stitching_on_cuda_goes_to_the_gpu_only_when_the_output_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU here: the CUDA memory queries are replaced by a GPU with 10 GB free and 2 GB cached by torch."""
    from medssl_sdk.sliding_window import AUTO_STITCH_FREE_FRACTION, _stitch_device

    gib = 1 << 30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 3 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 1 * gib)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    budget = AUTO_STITCH_FREE_FRACTION * 12 * gib
    assert _stitch_device("auto", cpu, cuda, int(budget)) == cuda
    assert _stitch_device("auto", cpu, cuda, int(budget) + 1) == cpu
    assert _stitch_device("cpu", cuda, cuda, 1) == cpu and _stitch_device(None, cuda, cuda, 1) == cuda
