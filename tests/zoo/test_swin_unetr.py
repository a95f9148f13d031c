"""Swin UNETR: MONAI state dicts load strictly and give MONAI's outputs (2D, 3D, window shrinking, padding), the
kernel is on the 3D attention path, the cards build, and the SSL converter maps the release layout.

MONAI models here use feature_size 12 (same code path as 48, a fraction of the CPU time).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from monai.networks.nets import SwinUNETR as MonaiSwinUNETR
from monai.networks.nets.swin_unetr import compute_mask

import medssl_zoo
from medssl_zoo import swin_unetr
from medssl_zoo.convert import convert_swin_ssl
from medssl_zoo.errors import CheckpointFormatError
from medssl_zoo.swin_unetr import PatchMerging, SwinUNETR, shift_mask

FEATURES = 12
TOLERANCE = 1e-5


def monai_and_ours(spatial_dims: int, merging: str = "merging", num_classes: int = 3) -> tuple[torch.nn.Module, SwinUNETR]:
    """A seeded MONAI SwinUNETR and ours loaded (strictly, no renaming) from its state dict, both in eval mode."""
    torch.manual_seed(spatial_dims)
    reference = MonaiSwinUNETR(
        in_channels=1, out_channels=num_classes, feature_size=FEATURES, spatial_dims=spatial_dims, downsample=merging
    ).eval()
    ours = SwinUNETR(num_classes=num_classes, feature_size=FEATURES, spatial_dims=spatial_dims, merging=merging).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


@pytest.fixture(scope="module")
def pair_3d() -> tuple[torch.nn.Module, SwinUNETR]:
    return monai_and_ours(3)


# 96^3: the last stage's 6^3 grid shrinks the window to 6 (MONAI's sliced bias index), other stages pad 48->49 etc.
# 32x64x96 (non-cubic, smaller than 64x128x160 to fit the shared CPU): stage grids 16x32x48, 8x16x24, 4x8x12,
# 2x4x6, so stage 3 shrinks on D only and still shifts on H and W, and stage 1 pads 16->21, 32->35, 48->49.
@pytest.mark.parametrize("size", [(96, 96, 96), (32, 64, 96), (64, 128, 160)], ids=lambda s: "x".join(map(str, s)))
def test_3d_matches_monai(pair_3d: tuple[torch.nn.Module, SwinUNETR], size: tuple[int, ...]) -> None:
    reference, ours = pair_3d
    x = torch.randn(1, 1, *size)
    with torch.no_grad():
        expected, actual = reference(x), ours(x)
    assert actual.shape == (1, 3, *size)
    assert (actual - expected).abs().max().item() <= TOLERANCE


def test_embedding_is_pooled_deepest_monai_features(pair_3d: tuple[torch.nn.Module, SwinUNETR]) -> None:
    reference, ours = pair_3d
    x = torch.randn(2, 1, 32, 32, 64)
    with torch.no_grad():
        expected = reference.swinViT(x, normalize=True)[4].mean(dim=(2, 3, 4))
        actual = ours.embed(x)
    assert actual.shape == (2, ours.embedding_dim) == (2, 16 * FEATURES)
    assert (actual - expected).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("size", [(64, 96), (96, 160)], ids=lambda s: "x".join(map(str, s)))
def test_2d_matches_monai(size: tuple[int, int]) -> None:
    reference, ours = monai_and_ours(2)
    x = torch.randn(2, 1, *size)
    with torch.no_grad():
        assert (ours(x) - reference(x)).abs().max().item() <= TOLERANCE


def test_mergingv2_matches_monai() -> None:
    reference, ours = monai_and_ours(3, merging="mergingv2")
    x = torch.randn(1, 1, 32, 64, 96)
    with torch.no_grad():
        assert (ours(x) - reference(x)).abs().max().item() <= TOLERANCE


def test_legacy_merging_takes_monai_1_4_neighbours() -> None:
    """MONAI <= 1.4 concatenated x[d0::2, h0::2, w0::2] for these (d0, h0, w0), in this order (two repeated)."""
    merge = PatchMerging(dim=2, spatial_dims=3, merging="merging-legacy")
    x = torch.randn(1, 4, 6, 8, 2)
    offsets = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 0), (0, 0, 1), (1, 1, 1)]
    expected = merge.reduction(merge.norm(torch.cat([x[:, d::2, h::2, w::2] for d, h, w in offsets], dim=-1)))
    with torch.no_grad():
        assert torch.equal(merge(x), expected)


@pytest.mark.parametrize("grid, window, shift", [((14, 28), (7, 7), (3, 3)), ((4, 21), (4, 7), (0, 3))])
def test_2d_shift_mask_matches_monai(grid: tuple[int, ...], window: tuple[int, ...], shift: tuple[int, ...]) -> None:
    assert torch.equal(shift_mask(grid, window, shift, torch.device("cpu")), compute_mask(list(grid), window, shift, None))


def test_every_3d_attention_goes_through_the_kernel(
    monkeypatch: pytest.MonkeyPatch, pair_3d: tuple[torch.nn.Module, SwinUNETR]
) -> None:
    """Full and shrunk windows alike; a shrunk one reads the bias from the full 7^3 window's index."""
    calls, eager_calls = [], []
    kernel = swin_unetr.window_attention_3d

    def counting(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append((*args[4:6], kwargs["index_window"]))  # window, shift, index window
        return kernel(*args, **kwargs)

    monkeypatch.setattr(swin_unetr, "window_attention_3d", counting)
    monkeypatch.setattr(swin_unetr, "shifted_window_attention", lambda *args: eager_calls.append(args))
    with torch.no_grad():
        pair_3d[1].embed(torch.randn(1, 1, 64, 64, 64))  # token grids 32, 16, 8: full windows; 4: shrunk, no shift
    full = [((7, 7, 7), (0, 0, 0), (7, 7, 7)), ((7, 7, 7), (3, 3, 3), (7, 7, 7))]
    assert calls == full * 3 + [((4, 4, 4), (0, 0, 0), (7, 7, 7))] * 2
    assert eager_calls == []


def test_bad_inputs_and_arguments_are_refused() -> None:
    model = SwinUNETR(num_classes=2, feature_size=FEATURES)
    with pytest.raises(ValueError, match="multiple of 32"):
        model(torch.randn(1, 1, 32, 48, 32))
    with pytest.raises(ValueError, match="5-D input"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="needs num_classes"):
        SwinUNETR(task="segment")
    with pytest.raises(ValueError, match="multiple of 12"):
        SwinUNETR(num_classes=2, feature_size=20)
    with pytest.raises(ValueError, match="deepest feature map would be one voxel"):
        model(torch.randn(1, 1, 32, 32, 32))
    with pytest.raises(RuntimeError, match="task='embed'"):
        SwinUNETR(task="embed", feature_size=FEATURES).segment(torch.randn(1, 1, 32, 32, 32))


def shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(tensor.shape) for key, tensor in state.items()}


def test_cards_have_monai_state_dict_layout() -> None:
    with torch.device("meta"):
        btcv = medssl_zoo.create("swin-unetr-btcv")
        ssl = medssl_zoo.create("swin-unetr-ssl")
    reference = MonaiSwinUNETR(in_channels=1, out_channels=14, feature_size=48)  # MONAI cannot build on "meta"
    expected = shapes(reference.state_dict())
    assert shapes(btcv.state_dict()) == expected
    assert shapes(ssl.state_dict()) == {key: shape for key, shape in expected.items() if key.startswith("swinViT.")}
    card = medssl_zoo.get_card("swin-unetr-btcv")
    assert len(card.labels) == 14 and card.inputs["3d"].orientation == "SAR"
    assert card.weights.sha256 is None and medssl_zoo.get_card("swin-unetr-ssl").weights.sha256 is None


def release_layout(encoder_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our ``swinViT.*`` keys renamed to the released model_swinvit.pt layout (``module.*``, ``mlp.fc1/fc2``)."""
    renamed = {}
    for key, tensor in encoder_state.items():
        key = "module." + key.removeprefix("swinViT.")
        renamed[key.replace("mlp.linear1.", "mlp.fc1.").replace("mlp.linear2.", "mlp.fc2.")] = tensor.clone()
    return renamed


@pytest.fixture(scope="module")
def ssl_encoder() -> SwinUNETR:
    torch.manual_seed(7)
    return SwinUNETR(task="embed", feature_size=FEATURES, depths=(2, 2, 4, 2), merging="merging-legacy").eval()


def test_convert_release_layout(tmp_path, ssl_encoder: SwinUNETR) -> None:
    official = tmp_path / "model_swinvit.pt"
    torch.save({"epoch": 100, "state_dict": release_layout(ssl_encoder.state_dict())}, official)
    card = convert_swin_ssl(official, tmp_path / "converted")
    model, loaded_card = medssl_zoo.load_checkpoint(tmp_path / "converted")
    assert loaded_card == card and card.weights.sha256 is not None
    assert card.kwargs["feature_size"] == FEATURES and list(card.kwargs["depths"]) == [2, 2, 4, 2]
    assert card.kwargs["merging"] == "merging-legacy"
    for key, tensor in ssl_encoder.state_dict().items():
        assert torch.equal(model.state_dict()[key], tensor), key
    x = torch.randn(1, 1, 32, 32, 64)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), ssl_encoder(x))
    with pytest.raises(medssl_zoo.MedsslError, match="already holds a checkpoint"):
        convert_swin_ssl(official, tmp_path / "converted")


def test_convert_refuses_unknown_and_missing_keys(tmp_path, ssl_encoder: SwinUNETR) -> None:
    state = release_layout(ssl_encoder.state_dict())
    extra = tmp_path / "extra.pt"
    torch.save({"state_dict": {**state, "module.norm.weight": torch.ones(FEATURES * 8)}}, extra)
    with pytest.raises(CheckpointFormatError, match=r"extra\.pt.*'module\.norm\.weight'"):
        convert_swin_ssl(extra, tmp_path / "out")
    missing = tmp_path / "missing.pt"
    torch.save({"state_dict": {k: v for k, v in state.items() if "layers2.0.blocks.1.mlp.fc2" not in k}}, missing)
    with pytest.raises(medssl_zoo.MedsslError, match="linear2"):
        convert_swin_ssl(missing, tmp_path / "out")
    no_state = tmp_path / "no_state.pt"
    torch.save({"model": state}, no_state)
    with pytest.raises(CheckpointFormatError, match="'state_dict'"):
        convert_swin_ssl(no_state, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_convert_refuses_pickled_objects(tmp_path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "hook": itertools.count()}, path)
    with pytest.raises(CheckpointFormatError, match="refused"):
        convert_swin_ssl(path, tmp_path / "out")


def test_cli_converts_the_release_and_the_result_embeds_through_the_sdk(tmp_path, ssl_encoder: SwinUNETR, capsys) -> None:
    from medssl_sdk import load
    from medssl_sdk.cli import main

    official = tmp_path / "model_swinvit.pt"
    torch.save({"state_dict": release_layout(ssl_encoder.state_dict())}, official)
    assert main(["--quiet", "convert", "swin", str(official), "-o", str(tmp_path / "swin")]) == 0
    assert main(["convert", "swin", str(official), "-o", str(tmp_path / "swin")]) == 1
    assert "already holds a checkpoint" in capsys.readouterr().err
    embedding = load(tmp_path / "swin", device="cpu").embed(torch.zeros(32, 32, 64).numpy(), spacing=(2.0, 1.5, 1.5))
    assert embedding.shape == (ssl_encoder.embedding_dim,)


def test_3d_matches_monai_with_the_triton_window_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every 3D attention through the fused kernel (Triton's interpreter on CPU). Window 4 instead of 7 keeps the
    interpreter's time in bounds; the kernel's own tests cover 343-token windows. 32x32x64: stage grids 16x16x32
    (shifted), 8x8x16, 4x4x8 (shrunk on D and H) and 2x2x4."""
    torch.manual_seed(5)
    reference = MonaiSwinUNETR(in_channels=1, out_channels=3, feature_size=FEATURES, window_size=4, spatial_dims=3).eval()
    ours = SwinUNETR(num_classes=3, feature_size=FEATURES, window_size=4).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    kernel_calls = []
    triton_path = swin_unetr.window_attention_3d
    monkeypatch.setattr(swin_unetr, "window_attention_3d", lambda *a, **k: kernel_calls.append(1) or triton_path(*a, **k))
    monkeypatch.setenv("MEDSSL_KERNELS", "triton")
    x = torch.randn(1, 1, 32, 32, 64)
    with torch.no_grad():
        expected, actual = reference(x), ours(x)
    assert len(kernel_calls) == 8
    assert (actual - expected).abs().max().item() <= TOLERANCE
