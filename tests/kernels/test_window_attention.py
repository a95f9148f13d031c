"""3D shifted-window attention: the reference against MONAI's Swin block, the Triton kernel (under the interpreter
on CPU) against the reference, forward and gradients, and the dispatch."""

from __future__ import annotations

import pytest
import torch
from closeness import HALF_PRECISION_CASES, assert_relative_close
from monai.networks.nets.swin_unetr import SwinTransformerBlock, compute_mask, get_window_size
from sm90 import compile_for_sm90
from torch import nn

from medssl_kernels import window_attention as module
from medssl_kernels import window_attention_3d, window_attention_3d_reference
from medssl_kernels.window_attention import relative_position_index, shift_mask, window_attention_3d_triton

# (grid, requested window, requested shift): a small anisotropic window, Swin UNETR's 7^3 window (343
# tokens, several key blocks) on a grid where MONAI shrinks the shift of the 7-long axes to 0, and grids where
# MONAI shrinks the window itself (to 4^3; to 4x7x7 with only W shifted) and reads the bias from the 7^3 index.
CASES = {
    "small-shifted": ((4, 6, 6), (2, 3, 3), (1, 1, 1)),
    "small-unshifted": ((4, 6, 6), (2, 3, 3), (0, 0, 0)),
    "343-tokens": ((7, 7, 14), (7, 7, 7), (3, 3, 3)),
    "shrunk": ((4, 4, 4), (7, 7, 7), (0, 0, 0)),
    "shrunk-depth": ((4, 7, 14), (7, 7, 7), (3, 3, 3)),
}


def monai_attention(x: torch.Tensor, heads: int, window: tuple[int, ...], shift: tuple[int, ...]):
    """MONAI's block attention (norm and output projection removed) on x (B, D, H, W, C); returns its output,
    q, k, v as (B, heads, D, H, W, head_dim), its bias table, and the window and shift it really used."""
    block = SwinTransformerBlock(x.shape[-1], heads, window, shift)
    block.norm1, block.attn.proj = nn.Identity(), nn.Identity()
    nn.init.normal_(block.attn.relative_position_bias_table, std=1.0)
    used_window, used_shift = get_window_size(x.shape[1:4], window, shift)
    with torch.no_grad():
        out = block.forward_part1(x, compute_mask(list(x.shape[1:4]), used_window, used_shift, x.device))
        qkv = block.attn.qkv(x).unflatten(-1, (3, heads, -1)).permute(4, 0, 5, 1, 2, 3, 6)  # (3, B, heads, D, H, W, hd)
    per_head = out.unflatten(-1, (heads, -1)).permute(0, 4, 1, 2, 3, 5)
    return per_head, *qkv, block.attn.relative_position_bias_table.detach().clone(), used_window, used_shift


@pytest.mark.parametrize("case", CASES)
def test_reference_matches_monai_swin_block(case: str) -> None:
    grid, window, shift = CASES[case]
    heads, head_dim = 2, 16
    expected, q, k, v, table, used_window, used_shift = monai_attention(
        torch.randn(2, *grid, heads * head_dim), heads, window, shift
    )
    ours = window_attention_3d_reference(q, k, v, table, used_window, used_shift, head_dim**-0.5, index_window=window)
    assert_relative_close(ours, expected, 1e-5, f"reference vs MONAI ({case})")


def test_relative_position_index_is_monais() -> None:
    from monai.networks.nets.swin_unetr import WindowAttention

    attention = WindowAttention(8, 2, (2, 3, 4))
    assert torch.equal(relative_position_index((2, 3, 4)), attention.relative_position_index)


@pytest.mark.parametrize("grid, window, shift", [((4, 6, 6), (2, 3, 3), (1, 1, 1)), ((7, 7, 14), (7, 7, 7), (0, 0, 3))])
def test_shift_mask_is_monais(grid, window, shift) -> None:
    assert torch.equal(shift_mask(grid, window, shift), compute_mask(list(grid), window, shift, "cpu"))


def inputs(grid, window, head_dim, heads=2, batch=1):
    """q, k, v, dO (batch, heads, *grid, head_dim) and a bias table for ``window`` (the index window)."""
    q, k, v, grad_out = (torch.randn(batch, heads, *grid, head_dim) for _ in range(4))
    table = torch.randn((2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1), heads)
    return q, k, v, table, grad_out


def run_with_grads(fn, q, k, v, table, grad_out, window, shift, scale, index_window=None):
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v, table)]
    out = fn(*leaves, window, shift, scale, index_window=index_window)
    out.backward(grad_out)
    return (out.detach(), *(t.grad for t in leaves))


@pytest.mark.parametrize(
    "case, head_dim, batch",
    [("small-shifted", 16, 2), ("small-unshifted", 32, 2), ("343-tokens", 16, 1), ("shrunk", 16, 2), ("shrunk-depth", 16, 1)],
)
def test_triton_forward_and_gradients_match_the_reference_in_fp32(case: str, head_dim: int, batch: int) -> None:
    """With MONAI's fitted window and shift, and the requested window as the index window (the table's shape)."""
    grid, requested, shift = CASES[case]
    window, shift = get_window_size(grid, requested, shift)
    q, k, v, table, grad_out = inputs(grid, requested, head_dim, batch=batch)
    args = (q, k, v, table, grad_out, window, shift, head_dim**-0.5, requested)
    ours = run_with_grads(window_attention_3d_triton, *args)
    expected = run_with_grads(window_attention_3d_reference, *args)
    for name, a, e in zip(("out", "dq", "dk", "dv", "dtable"), ours, expected):
        assert_relative_close(a, e, 1e-4, f"{name} ({case}, head dim {head_dim})")


def test_strided_inputs_and_an_odd_head_dim() -> None:
    """The model hands over views of one qkv projection; head dim 12 is padded to 16 inside the kernel."""
    qkv = torch.randn(1, 4, 6, 6, 3, 2, 12).permute(4, 0, 5, 1, 2, 3, 6)  # (3, B, heads, D, H, W, hd)
    q, k, v = qkv
    assert not q.is_contiguous()
    _, _, _, table, grad_out = inputs((4, 6, 6), (2, 3, 3), 12)
    ours = run_with_grads(window_attention_3d_triton, q, k, v, table, grad_out, (2, 3, 3), (1, 0, 2), 0.3)
    expected = run_with_grads(window_attention_3d_reference, q, k, v, table, grad_out, (2, 3, 3), (1, 0, 2), 0.3)
    for name, a, e in zip(("out", "dq", "dk", "dv", "dtable"), ours, expected):
        assert_relative_close(a, e, 1e-4, name)


@pytest.mark.parametrize("dtype, device", HALF_PRECISION_CASES)
def test_half_precision_against_the_fp32_reference(dtype: torch.dtype, device: str) -> None:
    q, k, v, table, grad_out = inputs((4, 6, 6), (2, 3, 3), 16)
    half = [t.to(device, dtype) for t in (q, k, v, table, grad_out)]
    ours = [t.float().cpu() for t in run_with_grads(window_attention_3d_triton, *half, (2, 3, 3), (1, 1, 1), 0.25)]
    expected = run_with_grads(window_attention_3d_reference, q, k, v, table, grad_out, (2, 3, 3), (1, 1, 1), 0.25)
    for name, a, e in zip(("out", "dq", "dk", "dv", "dtable"), ours, expected):
        assert_relative_close(a, e, 2e-2, f"{name} ({dtype})")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"grid": (5, 6, 6)}, "must be a multiple of the window"),
        ({"shift": (2, 1, 1)}, "0 <= shift < window"),
        ({"table_rows": 10}, "relative position bias table must be"),
        ({"window": (2, 3)}, "must be 3 ints"),
        ({"k_head_dim": 8}, "must share one"),
        ({"index_window": (1, 3, 3)}, "must hold at least as many tokens"),
        ({"index_window": (3, 3, 3)}, r"table must be \(125, 2\) for index window \(3, 3, 3\)"),
    ],
)
@pytest.mark.parametrize("fn", [window_attention_3d_reference, window_attention_3d_triton])
def test_bad_inputs_are_named(fn, change: dict, message: str) -> None:
    grid, window = change.get("grid", (4, 6, 6)), change.get("window", (2, 3, 3))
    q, v = torch.randn(1, 2, *grid, 16), torch.randn(1, 2, *grid, 16)
    k = torch.randn(1, 2, *grid, change.get("k_head_dim", 16))
    table = torch.randn(change.get("table_rows", 3 * 5 * 5), 2)
    with pytest.raises(ValueError, match=message):
        fn(q, k, v, table, window, change.get("shift", (1, 1, 1)), 0.25, index_window=change.get("index_window"))


def count_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    calls: list[int] = []
    original = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


@pytest.mark.parametrize("setting, expect_triton", [(None, False), ("torch", False), ("triton", True)])
def test_dispatch_follows_medssl_kernels(monkeypatch: pytest.MonkeyPatch, setting: str | None, expect_triton: bool) -> None:
    """CPU tensors: the reference unless MEDSSL_KERNELS=triton forces the kernel (here under the interpreter)."""
    if setting is None:
        monkeypatch.delenv("MEDSSL_KERNELS", raising=False)
    else:
        monkeypatch.setenv("MEDSSL_KERNELS", setting)
    triton_calls = count_calls(monkeypatch, "window_attention_3d_triton")
    reference_calls = count_calls(monkeypatch, "window_attention_3d_reference")
    q, k, v, table, _ = inputs((4, 6, 6), (2, 3, 3), 16)
    out = window_attention_3d(q, k, v, table, (2, 3, 3), (1, 1, 1), 0.25)
    assert (len(triton_calls), len(reference_calls)) == ((1, 0) if expect_triton else (0, 1))
    assert_relative_close(out, window_attention_3d_reference(q, k, v, table, (2, 3, 3), (1, 1, 1), 0.25), 1e-4, "out")


class ShiftedWindowAttention(torch.nn.Module):
    def forward(self, q, k, v, table):
        return window_attention_3d(q, k, v, table, (2, 3, 3), (1, 1, 1), 0.25)


def test_export_traces_the_reference_even_when_triton_is_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDSSL_KERNELS", "triton")
    triton_calls = count_calls(monkeypatch, "window_attention_3d_triton")
    q, k, v, table, _ = inputs((4, 6, 6), (2, 3, 3), 16)
    exported = torch.export.export(ShiftedWindowAttention(), (q, k, v, table))
    assert triton_calls == []
    assert any("softmax" in str(node.target) for node in exported.graph.nodes)  # the reference's eager softmax
    expected = window_attention_3d_reference(q, k, v, table, (2, 3, 3), (1, 1, 1), 0.25)
    assert_relative_close(exported.module()(q, k, v, table), expected, 1e-6, "exported")


def test_kernels_compile_for_sm90_in_bf16() -> None:
    window = dict(WD=7, WH=7, WW=7, ID=7, IH=7, IW=7)
    constants = dict(window, HEAD_DIM=16, BLOCK_M=64, BLOCK_N=64, BLOCK_D=16, PRECISION="tf32", MASK_VALUE=-100.0)
    types = dict.fromkeys(("Q", "K", "V", "Out", "dOut", "dQ", "dK", "dV"), "*bf16")
    types.update(dict.fromkeys(("Table", "Lse", "Delta", "dBias"), "*fp32"), scale="fp32")
    names = [name for name in dir(module) if name.startswith("_window_") and name.endswith("_kernel")]
    compiled = compile_for_sm90(module.__name__, {name: (constants, types) for name in names})
    assert sorted(compiled) == sorted(names) and all(size > 0 for size in compiled.values())
