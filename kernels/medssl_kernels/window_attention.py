"""Shifted-window attention of 3D Swin (Swin UNETR): attention inside non-overlapping windows of the token grid.

Shapes: q, k, v (B, heads, D, H, W, head_dim) on the token grid, D/H/W multiples of the window; the relative
position bias table ((2wd-1)(2wh-1)(2ww-1), heads) as in MONAI's ``WindowAttention``. The semantics are MONAI's
``SwinTransformerBlock`` attention: roll the grid by ``-shift``, cut it into windows, attend inside each window with
``q k^T * scale + bias[relative position] + shift mask`` (-100 between tokens of different shift regions),
put the windows back and roll by ``+shift``. A window MONAI shrank to a small grid reads its bias from the index of
the module's full window (``index_window``: token t is looked up as token t of that window, MONAI's
``index[:N, :N]``), and the table then has the full window's rows. Three pieces, as in every medssl kernel file:

- :func:`window_attention_3d_reference`: eager roll + partition + attention + reverse, the ground truth;
- :func:`window_attention_3d_triton`: fused Triton kernels in an autograd Function. One program takes a block
  of queries of one window of one (batch, head): it finds its tokens on the grid by index arithmetic (the
  cyclic shift included, so nothing is rolled or partitioned in memory), gathers the bias from the table,
  computes the shift mask from the window's position and walks the window's keys in blocks with an online
  softmax (a 7^3 = 343-token window is 6 x 6 blocks of 64). The backward recomputes the probabilities from
  the saved log-sum-exp in three kernels: dQ per query block and dK/dV per key block of a window (plain
  stores), and the bias gradient per (query block, key block, head), summed in registers over a few
  (batch, window) pairs and then added atomically in float32 to a (heads, N, N) buffer (the order of those
  additions, hence its last bits, may vary between runs), which is folded into the table's rows by the
  relative position index;
- :func:`window_attention_3d`: what the models call; the shared rule of :mod:`medssl_kernels.dispatch`
  (``MEDSSL_KERNELS``) picks Triton for CUDA tensors and the reference elsewhere and while exporting.

Head dims up to 128, padded inside the kernel to a power of two (Swin UNETR at feature 48 uses 16);
float32, float16 and bfloat16, accumulating in float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch

from medssl_kernels import dispatch
from medssl_kernels.triton_support import attention_problem, dot_precision, output_delta, padded_head_dim, strides, tl, triton

MASK_VALUE = -100.0  # MONAI's (and Swin's) logit offset between tokens of different shift regions
PAIRS_PER_PROGRAM = 8  # (batch, window) pairs whose bias gradient one backward program sums before its atomic add


def window_attention_3d_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    relative_position_bias_table: torch.Tensor,
    window_size: Sequence[int],
    shift_size: Sequence[int],
    scale: float,
    *,
    index_window: Sequence[int] | None = None,
) -> torch.Tensor:
    """Eager shifted-window attention, step by step as MONAI's ``SwinTransformerBlock``.

    Args:
        q, k, v: (B, heads, D, H, W, head_dim); D, H, W multiples of ``window_size``.
        relative_position_bias_table: ((2id-1)(2ih-1)(2iw-1), heads) for the index window (id, ih, iw).
        window_size: (wd, wh, ww).
        shift_size: (sd, sh, sw), each in [0, window); all 0 = no shift (and no mask).
        scale: logit scale (``head_dim ** -0.5`` in Swin).
        index_window: the window whose relative position index the bias is read from (default ``window_size``),
            holding at least N = wd*wh*ww tokens: token t of a window is looked up as token t (flattened) of
            the index window, i.e. the bias is ``table[relative_position_index(index_window)[:N, :N]]``. This is
            MONAI's rule for a window shrunk to a small grid (pass the module's full window).

    Returns:
        (B, heads, D, H, W, head_dim).
    """
    window_size, shift_size, index_window = _check(q, k, v, relative_position_bias_table, window_size, shift_size, index_window)
    grid = q.shape[2:5]
    shifted = any(shift_size)
    if shifted:
        q, k, v = (torch.roll(t, tuple(-s for s in shift_size), dims=(2, 3, 4)) for t in (q, k, v))
    q, k, v = (window_partition(t, window_size) for t in (q, k, v))  # (B, heads, windows, N, head_dim)
    tokens = q.shape[3]
    bias = relative_position_bias(relative_position_bias_table, index_window, tokens)
    attn = (q * scale) @ k.transpose(-2, -1) + bias.unsqueeze(1)
    if shifted:
        attn = attn + shift_mask(grid, window_size, shift_size, q.device)
    out = attn.softmax(dim=-1).to(v.dtype) @ v
    out = window_reverse(out, grid, window_size)
    return torch.roll(out, tuple(shift_size), dims=(2, 3, 4)) if shifted else out


def window_attention_3d(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    relative_position_bias_table: torch.Tensor,
    window_size: Sequence[int],
    shift_size: Sequence[int],
    scale: float,
    *,
    index_window: Sequence[int] | None = None,
) -> torch.Tensor:
    """Shifted-window attention as the models call it; arguments and result as :func:`window_attention_3d_reference`.

    Runs :func:`window_attention_3d_triton` when the dispatch rule says so, else the reference.
    """
    args = (q, k, v, relative_position_bias_table, window_size, shift_size, scale)
    if dispatch.use_triton("window attention", attention_problem(q, k, v, relative_position_bias_table), q.device):
        return window_attention_3d_triton(*args, index_window=index_window)
    return window_attention_3d_reference(*args, index_window=index_window)


def relative_position_index(window_size: Sequence[int]) -> torch.Tensor:
    """MONAI's relative position index, (N, N) int64 with N = wd*wh*ww: for query i and key j of a window,
    ``((dz + wd-1) * (2wh-1) + dy + wh-1) * (2ww-1) + dx + ww-1`` with (dz, dy, dx) = coords(i) - coords(j)."""
    return torch.from_numpy(_relative_position_index(tuple(window_size)).copy())


@lru_cache(maxsize=16)
def _relative_position_index(window_size: tuple[int, int, int]) -> np.ndarray:
    """The index as a read-only numpy array: cached outside torch, so a cache filled while ``torch.export`` or
    ``torch.compile`` traces never holds a traced (fake) tensor that later eager calls would get."""
    wd, wh, ww = window_size
    coords = np.stack(np.meshgrid(*(np.arange(w) for w in window_size), indexing="ij")).reshape(3, -1)  # (3, N)
    relative = coords[:, :, None] - coords[:, None, :] + np.array([wd - 1, wh - 1, ww - 1]).reshape(3, 1, 1)
    index = ((relative[0] * (2 * wh - 1) + relative[1]) * (2 * ww - 1) + relative[2]).astype(np.int64)
    index.setflags(write=False)
    return index


def relative_position_bias(table: torch.Tensor, index_window: Sequence[int], tokens: int) -> torch.Tensor:
    """The (heads, tokens, tokens) bias of a window of ``tokens`` tokens gathered from the table
    ((2id-1)(2ih-1)(2iw-1), heads) by the index window's relative position index (its first ``tokens`` rows and
    columns, MONAI's rule)."""
    bias = table[_sliced_index(tuple(index_window), tokens).to(table.device).reshape(-1)]
    return bias.view(tokens, tokens, -1).permute(2, 0, 1)


def _sliced_index(index_window: tuple[int, int, int], tokens: int) -> torch.Tensor:
    """(tokens, tokens) view of the index window's relative position index: its first ``tokens`` rows and columns."""
    return torch.from_numpy(_relative_position_index(index_window)[:tokens, :tokens].copy())  # a writable copy


def shift_mask(
    grid: Sequence[int], window_size: Sequence[int], shift_size: Sequence[int], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The shift mask, (windows, N, N) float32: -100 between tokens of different shift regions, 0 elsewhere.

    On each axis of the rolled grid (length L, window w, shift s > 0) the regions are [0, L-w), [L-w, L-s)
    and [L-s, L) (tokens rolled in from the other side); an axis with s = 0 is one region.
    """
    regions = torch.zeros(tuple(grid), dtype=torch.int64, device=device)
    for axis, (length, window, shift) in enumerate(zip(grid, window_size, shift_size)):
        if shift > 0:
            axis_regions = torch.zeros(length, dtype=torch.int64, device=device)
            axis_regions[length - window : length - shift] = 1
            axis_regions[length - shift :] = 2
            shape = [1, 1, 1]
            shape[axis] = length
            regions = regions * 3 + axis_regions.view(shape)
    ids = window_partition(regions[None, None, ..., None], window_size)[0, 0, :, :, 0]  # (windows, N)
    return torch.where(ids[:, :, None] != ids[:, None, :], MASK_VALUE, 0.0)


def window_partition(x: torch.Tensor, window_size: Sequence[int]) -> torch.Tensor:
    """(B, heads, D, H, W, C) -> (B, heads, windows, N, C); windows in (d, h, w) order, tokens in (z, y, x) order."""
    batch, heads, depth, height, width, channels = x.shape
    wd, wh, ww = window_size
    # batch and heads merged: at most 8-D intermediates (TensorRT's rank limit) in exported graphs
    x = x.reshape(batch * heads, depth // wd, wd, height // wh, wh, width // ww, ww, channels)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(batch, heads, -1, wd * wh * ww, channels)


def window_reverse(windows: torch.Tensor, grid: Sequence[int], window_size: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B, heads, windows, N, C) -> (B, heads, D, H, W, C)."""
    batch, heads, _, _, channels = windows.shape
    (depth, height, width), (wd, wh, ww) = grid, window_size
    x = windows.reshape(batch * heads, depth // wd, height // wh, width // ww, wd, wh, ww, channels)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(batch, heads, depth, height, width, channels)


def _check(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    table: torch.Tensor,
    window_size: Sequence[int],
    shift_size: Sequence[int],
    index_window: Sequence[int] | None,
) -> tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int]]:
    """Validate the arguments (ValueError naming the problem); returns window, shift and index window as int 3-tuples."""
    index_window = window_size if index_window is None else index_window
    if len(tuple(window_size)) != 3 or len(tuple(shift_size)) != 3 or len(tuple(index_window)) != 3:
        raise ValueError(
            "window_attention_3d: window_size, shift_size and index_window must be 3 ints; "
            f"got {window_size}, {shift_size}, {index_window}"
        )
    window, shift = tuple(int(w) for w in window_size), tuple(int(s) for s in shift_size)
    indexed = tuple(int(w) for w in index_window)
    if q.ndim != 6 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            f"window_attention_3d: q, k, v must share one (B, heads, D, H, W, head_dim) shape; "
            f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if any(w < 1 for w in window) or any(not 0 <= s < w for s, w in zip(shift, window)):
        raise ValueError(f"window_attention_3d: need window >= 1 and 0 <= shift < window per axis; got {window}, {shift}")
    if any(length % w for length, w in zip(q.shape[2:5], window)):
        raise ValueError(
            f"window_attention_3d: the grid {tuple(q.shape[2:5])} must be a multiple of the window {window}; "
            "pad the grid first (as MONAI's SwinTransformerBlock does)"
        )
    if min(indexed) < 1 or indexed[0] * indexed[1] * indexed[2] < window[0] * window[1] * window[2]:
        raise ValueError(
            f"window_attention_3d: the index window {indexed} must hold at least as many tokens as the window {window}"
        )
    entries = (2 * indexed[0] - 1) * (2 * indexed[1] - 1) * (2 * indexed[2] - 1)
    if table.shape != (entries, q.shape[1]):
        raise ValueError(
            f"window_attention_3d: the relative position bias table must be ({entries}, {q.shape[1]}) for index window "
            f"{indexed} and {q.shape[1]} heads; got {tuple(table.shape)}"
        )
    return window, shift, indexed


def window_attention_3d_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    relative_position_bias_table: torch.Tensor,
    window_size: Sequence[int],
    shift_size: Sequence[int],
    scale: float,
    *,
    index_window: Sequence[int] | None = None,
) -> torch.Tensor:
    """The fused Triton window attention (forward and backward); arguments and result as the reference."""
    window, shift, indexed = _check(q, k, v, relative_position_bias_table, window_size, shift_size, index_window)
    problem = attention_problem(q, k, v, relative_position_bias_table)
    if problem is not None:
        raise ValueError(f"window_attention_3d_triton: {problem}")
    return _WindowAttention3D.apply(q, k, v, relative_position_bias_table, window, shift, indexed, float(scale))


def _launch(
    q: torch.Tensor, window: tuple[int, int, int], indexed: tuple[int, int, int]
) -> tuple[tuple[int, int, int], dict[str, int | float | str]]:
    """Grid (query blocks, windows, B * heads) and the tile sizes: up to 64 queries x 64 keys, the head dim
    padded to a power of two (at least 16 for tl.dot), the window, index window and mask value as compile-time
    constants."""
    tokens = window[0] * window[1] * window[2]
    block = min(64, max(16, triton.next_power_of_2(tokens)))
    windows = (q.shape[2] // window[0]) * (q.shape[3] // window[1]) * (q.shape[4] // window[2])
    constants = {
        "WD": window[0], "WH": window[1], "WW": window[2], "ID": indexed[0], "IH": indexed[1], "IW": indexed[2],
        "HEAD_DIM": q.shape[-1],
        "BLOCK_M": block, "BLOCK_N": block, "BLOCK_D": padded_head_dim(q.shape[-1]),
        "PRECISION": dot_precision(q.dtype), "MASK_VALUE": MASK_VALUE,
    }  # fmt: skip
    return (triton.cdiv(tokens, block), windows, q.shape[0] * q.shape[1]), constants


class _WindowAttention3D(torch.autograd.Function):
    """Autograd wrapper: saves q, k, v, the table, the output and the log-sum-exp (base 2) for the backward."""

    @staticmethod
    def forward(
        ctx, q, k, v, table, window: tuple[int, int, int], shift: tuple[int, int, int], indexed: tuple[int, int, int], scale: float
    ) -> torch.Tensor:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        lse = torch.empty(q.shape[:5], dtype=torch.float32, device=q.device)
        grid, constants = _launch(q, window, indexed)
        _window_forward_kernel[grid](
            q, k, v, out, table, lse, scale,
            *strides(q), *strides(k), *strides(v), *strides(out), *strides(table),
            q.shape[1], *q.shape[2:5], *shift, **constants,
        )  # fmt: skip
        ctx.save_for_backward(q, k, v, table, out, lse)
        ctx.window, ctx.shift, ctx.indexed, ctx.scale = window, shift, indexed, scale
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable  # the kernels have no double-backward: fail loudly
    def backward(ctx, grad_out: torch.Tensor):
        q, k, v, table, out, lse = ctx.saved_tensors
        batch, heads = q.shape[:2]
        delta = output_delta(grad_out, out)  # (B, heads, D, H, W)
        grad_q, grad_k, grad_v = (torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))
        grid, constants = _launch(q, ctx.window, ctx.indexed)
        inputs = (q, k, v, table, grad_out, lse, delta)
        input_strides = (*strides(q), *strides(k), *strides(v), *strides(table), *strides(grad_out))
        sizes = (heads, *q.shape[2:5], *ctx.shift)
        _window_backward_q_kernel[grid](*inputs, grad_q, ctx.scale, *input_strides, *strides(grad_q), *sizes, **constants)
        _window_backward_kv_kernel[grid](  # BLOCK_M == BLOCK_N: as many key blocks as query blocks
            *inputs, grad_k, grad_v, ctx.scale, *input_strides, *strides(grad_k), *strides(grad_v), *sizes, **constants
        )
        # The bias gradient sums over every (batch, window) pair; each program sums PAIRS_PER_PROGRAM of them in
        # registers, so a (head, query, key) entry receives only a few atomic adds.
        tokens = ctx.window[0] * ctx.window[1] * ctx.window[2]
        grad_bias = torch.zeros((heads, tokens, tokens), dtype=torch.float32, device=q.device)
        pairs = batch * grid[1]
        tiles = grid[0] * triton.cdiv(tokens, constants["BLOCK_N"])
        _window_backward_bias_kernel[(tiles, heads, triton.cdiv(pairs, PAIRS_PER_PROGRAM))](
            *inputs, grad_bias, ctx.scale, *input_strides, *sizes, grid[1], pairs, PAIRS_PER_PROGRAM, **constants
        )
        index = _sliced_index(ctx.indexed, tokens).to(q.device).reshape(-1)
        grad_table = torch.zeros(table.shape, dtype=torch.float32, device=table.device)
        grad_table.index_add_(0, index, grad_bias.view(heads, -1).t())
        return grad_q, grad_k, grad_v, grad_table.to(table.dtype), None, None, None, None


if triton is not None:

    @triton.jit
    def _locate(tokens, window, SHIFT_D, SHIFT_H, SHIFT_W, D, H, W, WD: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr):
        """Tokens (indices in a window, z-y-x order) of window ``window`` (d-h-w order over the rolled grid):
        their grid coordinates before the roll and their shift region."""
        windows_h = H // WH
        windows_w = W // WW
        local_d = tokens // (WH * WW)
        local_h = (tokens // WW) % WH
        local_w = tokens % WW
        grid_d, region_d = _axis(local_d, window // (windows_h * windows_w), SHIFT_D, D, WD)
        grid_h, region_h = _axis(local_h, (window // windows_w) % windows_h, SHIFT_H, H, WH)
        grid_w, region_w = _axis(local_w, window % windows_w, SHIFT_W, W, WW)
        return grid_d, grid_h, grid_w, (region_d * 3 + region_h) * 3 + region_w

    @triton.jit
    def _axis(local, window_index, shift, length, WINDOW: tl.constexpr):
        """One axis: the rolled coordinate's source on the grid, and its shift region (0 when unshifted)."""
        rolled = window_index * WINDOW + local
        region = tl.where(rolled < length - WINDOW, 0, tl.where(rolled < length - shift, 1, 2))
        return ((rolled + shift) % length).to(tl.int64), tl.where(shift == 0, 0, region)

    @triton.jit
    def _tile(base, grid_d, grid_h, grid_w, valid, dims, s_d, s_h, s_w, s_c, HEAD_DIM: tl.constexpr):
        """Load the (tokens, BLOCK_D) tile of the given grid positions, zero outside ``valid`` x ``HEAD_DIM``."""
        rows = grid_d * s_d + grid_h * s_h + grid_w * s_w
        mask = valid[:, None] & (dims[None, :] < HEAD_DIM)
        return tl.load(base + rows[:, None] + dims[None, :] * s_c, mask=mask, other=0.0)

    @triton.jit
    def _store_tile(base, value, grid_d, grid_h, grid_w, valid, dims, s_d, s_h, s_w, s_c, HEAD_DIM: tl.constexpr):
        """Store the (tokens, BLOCK_D) ``value`` at the given grid positions in the buffer's dtype, only inside
        ``valid`` x ``HEAD_DIM``: the inverse of :func:`_tile`."""
        rows = grid_d * s_d + grid_h * s_h + grid_w * s_w
        mask = valid[:, None] & (dims[None, :] < HEAD_DIM)
        tl.store(base + rows[:, None] + dims[None, :] * s_c, value.to(base.dtype.element_ty), mask=mask)

    @triton.jit
    def _program_window(HEADS):
        """This program's batch and head (program_id(2) = b * HEADS + h; int64, as strides x coordinates can pass
        2^31) and its window (program_id(1))."""
        return (tl.program_id(2) // HEADS).to(tl.int64), (tl.program_id(2) % HEADS).to(tl.int64), tl.program_id(1)

    @triton.jit
    def _logits(
        q, k, Table, stt, sth, h, rows, keys, q_region, k_region, valid, key_valid, scale,
        ID: tl.constexpr, IH: tl.constexpr, IW: tl.constexpr, PRECISION: tl.constexpr, MASK_VALUE: tl.constexpr,
    ):  # fmt: skip
        """Base-2 logits (BLOCK_M, BLOCK_N): (q k^T * scale + bias + shift mask) * log2(e); -inf for keys off
        ``key_valid`` (BLOCK_N,), the bias read only where ``valid`` (BLOCK_M, BLOCK_N). The bias of query token
        ``rows`` and key token ``keys`` is the table row of their relative position as tokens of the index
        window (ID, IH, IW)."""
        qd, qh, qw = rows // (IH * IW), (rows // IW) % IH, rows % IW
        kd, kh, kw = keys // (IH * IW), (keys // IW) % IH, keys % IW
        index = ((qd[:, None] - kd[None, :] + ID - 1) * (2 * IH - 1) + qh[:, None] - kh[None, :] + IH - 1) * (2 * IW - 1)
        index = index + qw[:, None] - kw[None, :] + IW - 1
        bias = tl.load(Table + index * stt + h * sth, mask=valid, other=0.0).to(tl.float32)
        logits = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale + bias
        logits = tl.where(q_region[:, None] != k_region[None, :], logits + MASK_VALUE, logits)
        return tl.where(key_valid[None, :], logits * 1.4426950408889634, float("-inf"))

    @triton.jit
    def _window_forward_kernel(
        Q, K, V, Out, Table, Lse, scale,
        sqb, sqh, sqd, sqy, sqx, sqc, skb, skh, skd, sky, skx, skc, svb, svh, svd, svy, svx, svc,
        sob, soh, sod, soy, sox, soc, stt, sth,
        HEADS, D, H, W, SHIFT_D, SHIFT_H, SHIFT_W,
        WD: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr, ID: tl.constexpr, IH: tl.constexpr, IW: tl.constexpr,
        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
        MASK_VALUE: tl.constexpr,
    ):  # fmt: skip
        """One program: BLOCK_M queries of one window of one (batch, head) against the window's keys, online softmax."""
        N = WD * WH * WW
        b, h, window = _program_window(HEADS)
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        dims = tl.arange(0, BLOCK_D)
        gd, gh, gw, q_region = _locate(rows, window, SHIFT_D, SHIFT_H, SHIFT_W, D, H, W, WD, WH, WW)
        q = _tile(Q + b * sqb + h * sqh, gd, gh, gw, rows < N, dims, sqd, sqy, sqx, sqc, HEAD_DIM)
        row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
        row_sum = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for start in range(0, N, BLOCK_N):
            keys = start + tl.arange(0, BLOCK_N)
            hd, hh, hw, k_region = _locate(keys, window, SHIFT_D, SHIFT_H, SHIFT_W, D, H, W, WD, WH, WW)
            k = _tile(K + b * skb + h * skh, hd, hh, hw, keys < N, dims, skd, sky, skx, skc, HEAD_DIM)
            valid = (rows[:, None] < N) & (keys[None, :] < N)
            logits = _logits(
                q, k, Table, stt, sth, h, rows, keys, q_region, k_region, valid, keys < N, scale, ID, IH, IW, PRECISION, MASK_VALUE
            )
            new_max = tl.maximum(row_max, tl.max(logits, 1))
            correction = tl.exp2(row_max - new_max)
            p = tl.exp2(logits - new_max[:, None])
            row_sum = row_sum * correction + tl.sum(p, 1)
            v = _tile(V + b * svb + h * svh, hd, hh, hw, keys < N, dims, svd, svy, svx, svc, HEAD_DIM)
            acc = acc * correction[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            row_max = new_max
        _store_tile(Out + b * sob + h * soh, acc / row_sum[:, None], gd, gh, gw, rows < N, dims, sod, soy, sox, soc, HEAD_DIM)
        lse_rows = ((tl.program_id(2) * D + gd) * H + gh) * W + gw
        tl.store(Lse + lse_rows, row_max + tl.log2(row_sum), mask=rows < N)

    @triton.jit
    def _pair_gradients(
        Q, K, V, Table, dOut, Lse, Delta, scale,
        sqb, sqh, sqd, sqy, sqx, sqc, skb, skh, skd, sky, skx, skc, svb, svh, svd, svy, svx, svc, stt, sth,
        sgb, sgh, sgd, sgy, sgx, sgc,
        b, h, window, rows, keys, dims, HEADS, D, H, W, SHIFT_D, SHIFT_H, SHIFT_W,
        WD: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr, ID: tl.constexpr, IH: tl.constexpr, IW: tl.constexpr,
        HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr, MASK_VALUE: tl.constexpr,
    ):  # fmt: skip
        """For queries ``rows`` and keys ``keys`` of one window of (batch b, head h): the probabilities P and the
        logit gradient dS = P * (dO V^T - rowsum(dO * O)), both (BLOCK_M, BLOCK_N) and 0 off the window, recomputed
        from the saved base-2 log-sum-exp; with the q, k and dO tiles they came from."""
        N = WD * WH * WW
        gd, gh, gw, q_region = _locate(rows, window, SHIFT_D, SHIFT_H, SHIFT_W, D, H, W, WD, WH, WW)
        hd, hh, hw, k_region = _locate(keys, window, SHIFT_D, SHIFT_H, SHIFT_W, D, H, W, WD, WH, WW)
        q = _tile(Q + b * sqb + h * sqh, gd, gh, gw, rows < N, dims, sqd, sqy, sqx, sqc, HEAD_DIM)
        grad_out = _tile(dOut + b * sgb + h * sgh, gd, gh, gw, rows < N, dims, sgd, sgy, sgx, sgc, HEAD_DIM)
        k = _tile(K + b * skb + h * skh, hd, hh, hw, keys < N, dims, skd, sky, skx, skc, HEAD_DIM)
        v = _tile(V + b * svb + h * svh, hd, hh, hw, keys < N, dims, svd, svy, svx, svc, HEAD_DIM)
        row_offsets = (((b * HEADS + h) * D + gd) * H + gh) * W + gw
        lse = tl.load(Lse + row_offsets, mask=rows < N, other=0.0)
        delta = tl.load(Delta + row_offsets, mask=rows < N, other=0.0)
        valid = (rows[:, None] < N) & (keys[None, :] < N)
        logits = _logits(
            q, k, Table, stt, sth, h, rows, keys, q_region, k_region, valid, keys < N, scale, ID, IH, IW, PRECISION, MASK_VALUE
        )
        p = tl.where(valid, tl.exp2(logits - lse[:, None]), 0.0)
        grad_p = tl.dot(grad_out, tl.trans(v), input_precision=PRECISION)
        return p, p * (grad_p - delta[:, None]), q, k, grad_out

    @triton.jit
    def _window_backward_q_kernel(
        Q, K, V, Table, dOut, Lse, Delta, dQ, scale,
        sqb, sqh, sqd, sqy, sqx, sqc, skb, skh, skd, sky, skx, skc, svb, svh, svd, svy, svx, svc, stt, sth,
        sgb, sgh, sgd, sgy, sgx, sgc, sdqb, sdqh, sdqd, sdqy, sdqx, sdqc,
        HEADS, D, H, W, SHIFT_D, SHIFT_H, SHIFT_W,
        WD: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr, ID: tl.constexpr, IH: tl.constexpr, IW: tl.constexpr,
        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
        MASK_VALUE: tl.constexpr,
    ):  # fmt: skip
        """One program: dQ of BLOCK_M queries of one window of one (batch, head), summed over the window's keys."""
        N = WD * WH * WW
        b, h, window = _program_window(HEADS)
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        dims = tl.arange(0, BLOCK_D)
        grad_q = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for start in range(0, N, BLOCK_N):
            _, grad_logits, _, k, _ = _pair_gradients(
                Q, K, V, Table, dOut, Lse, Delta, scale,
                sqb, sqh, sqd, sqy, sqx, sqc, skb, skh, skd, sky, skx, skc, svb, svh, svd, svy, svx, svc, stt, sth,
                sgb, sgh, sgd, sgy, sgx, sgc,
                b, h, window, rows, start + tl.arange(0, BLOCK_N), dims, HEADS, D, H, W, SHIFT_D, SHIFT_H, SHIFT_W,
                WD, WH, WW, ID, IH, IW, HEAD_DIM, PRECISION, MASK_VALUE,
            )  # fmt: skip
            grad_q += tl.dot(grad_logits.to(k.dtype), k, input_precision=PRECISION)
        gd, gh, gw, _ = _locate(rows, window, SHIFT_D, SHIFT_H, SHIFT_W, D, H, W, WD, WH, WW)
        _store_tile(dQ + b * sdqb + h * sdqh, grad_q * scale, gd, gh, gw, rows < N, dims, sdqd, sdqy, sdqx, sdqc, HEAD_DIM)

    @triton.jit
    def _window_backward_kv_kernel(
        Q, K, V, Table, dOut, Lse, Delta, dK, dV, scale,
        sqb, sqh, sqd, sqy, sqx, sqc, skb, skh, skd, sky, skx, skc, svb, svh, svd, svy, svx, svc, stt, sth,
        sgb, sgh, sgd, sgy, sgx, sgc, sdkb, sdkh, sdkd, sdky, sdkx, sdkc, sdvb, sdvh, sdvd, sdvy, sdvx, sdvc,
        HEADS, D, H, W, SHIFT_D, SHIFT_H, SHIFT_W,
        WD: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr, ID: tl.constexpr, IH: tl.constexpr, IW: tl.constexpr,
        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
        MASK_VALUE: tl.constexpr,
    ):  # fmt: skip
        """One program: dK and dV of BLOCK_N keys of one window of one (batch, head), summed over the window's queries."""
        N = WD * WH * WW
        b, h, window = _program_window(HEADS)
        keys = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        dims = tl.arange(0, BLOCK_D)
        grad_k = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        grad_v = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        for start in range(0, N, BLOCK_M):
            p, grad_logits, q, _, grad_out = _pair_gradients(
                Q, K, V, Table, dOut, Lse, Delta, scale,
                sqb, sqh, sqd, sqy, sqx, sqc, skb, skh, skd, sky, skx, skc, svb, svh, svd, svy, svx, svc, stt, sth,
                sgb, sgh, sgd, sgy, sgx, sgc,
                b, h, window, start + tl.arange(0, BLOCK_M), keys, dims, HEADS, D, H, W, SHIFT_D, SHIFT_H, SHIFT_W,
                WD, WH, WW, ID, IH, IW, HEAD_DIM, PRECISION, MASK_VALUE,
            )  # fmt: skip
            grad_v += tl.dot(tl.trans(p.to(grad_out.dtype)), grad_out, input_precision=PRECISION)
            grad_k += tl.dot(tl.trans(grad_logits.to(q.dtype)), q, input_precision=PRECISION)
        hd, hh, hw, _ = _locate(keys, window, SHIFT_D, SHIFT_H, SHIFT_W, D, H, W, WD, WH, WW)
        _store_tile(dK + b * sdkb + h * sdkh, grad_k * scale, hd, hh, hw, keys < N, dims, sdkd, sdky, sdkx, sdkc, HEAD_DIM)
        _store_tile(dV + b * sdvb + h * sdvh, grad_v, hd, hh, hw, keys < N, dims, sdvd, sdvy, sdvx, sdvc, HEAD_DIM)

    @triton.jit
    def _window_backward_bias_kernel(
        Q, K, V, Table, dOut, Lse, Delta, dBias, scale,
        sqb, sqh, sqd, sqy, sqx, sqc, skb, skh, skd, sky, skx, skc, svb, svh, svd, svy, svx, svc, stt, sth,
        sgb, sgh, sgd, sgy, sgx, sgc,
        HEADS, D, H, W, SHIFT_D, SHIFT_H, SHIFT_W, WINDOWS, PAIRS, PAIRS_PER_PROGRAM,
        WD: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr, ID: tl.constexpr, IH: tl.constexpr, IW: tl.constexpr,
        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
        MASK_VALUE: tl.constexpr,
    ):  # fmt: skip
        """One program: the logit gradient of a (BLOCK_M queries, BLOCK_N keys) tile of one head, summed in registers
        over PAIRS_PER_PROGRAM of the PAIRS = B * WINDOWS (batch, window) pairs (program_id(2) picks which), then
        added atomically to the float32 (heads, N, N) buffer."""
        N = WD * WH * WW
        KEY_BLOCKS = (N + BLOCK_N - 1) // BLOCK_N
        h = tl.program_id(1).to(tl.int64)
        rows = (tl.program_id(0) // KEY_BLOCKS) * BLOCK_M + tl.arange(0, BLOCK_M)
        keys = (tl.program_id(0) % KEY_BLOCKS) * BLOCK_N + tl.arange(0, BLOCK_N)
        dims = tl.arange(0, BLOCK_D)
        grad_bias = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        first = tl.program_id(2) * PAIRS_PER_PROGRAM
        for pair in range(first, tl.minimum(first + PAIRS_PER_PROGRAM, PAIRS)):
            _, grad_logits, _, _, _ = _pair_gradients(
                Q, K, V, Table, dOut, Lse, Delta, scale,
                sqb, sqh, sqd, sqy, sqx, sqc, skb, skh, skd, sky, skx, skc, svb, svh, svd, svy, svx, svc, stt, sth,
                sgb, sgh, sgd, sgy, sgx, sgc,
                (pair // WINDOWS).to(tl.int64), h, pair % WINDOWS, rows, keys, dims, HEADS, D, H, W, SHIFT_D, SHIFT_H, SHIFT_W,
                WD, WH, WW, ID, IH, IW, HEAD_DIM, PRECISION, MASK_VALUE,
            )  # fmt: skip
            grad_bias += grad_logits
        valid = (rows[:, None] < N) & (keys[None, :] < N)
        tl.atomic_add(dBias + (h * N + rows[:, None]) * N + keys[None, :], grad_bias, mask=valid)
