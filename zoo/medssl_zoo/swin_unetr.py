"""Swin UNETR (Hatamizadeh et al. 2022; Tang et al., CVPR 2022 SSL pre-training), 2D and 3D from one code path.

A Swin Transformer encoder (``swinViT``: patch embedding, four stages of shifted-window attention with
patch merging) feeds a CNN decoder with skip connections. The module tree gives the same state-dict keys
and shapes as ``monai.networks.nets.SwinUNETR`` (MONAI >= 1.5, ``downsample="merging"``, ``patch_norm=False``,
``use_v2=False``), so a MONAI state dict loads with ``load_state_dict(..., strict=True)`` and no renaming.
That is why a few modules are thin holders (``encoder1.layer``, ``*.conv.conv``, ``swinViT.layers1.0``).

Tensor layout: images are ``(B, C, H, W)`` or ``(B, C, D, H, W)``; inside the Swin stages tokens are
channels-last ``(B, *grid, C)``. Every spatial input size must be a multiple of 32 (patch 2, four merges).

Facts reproduced from MONAI (they change numbers, so they are deliberate):
- a window no larger than the token grid along an axis shrinks to the grid there and that axis is not
  shifted; the relative-position bias of a shrunk window of N tokens is ``table[index[:N, :N]]`` of the
  full window's index (MONAI's slicing, not the index of the smaller window);
- tokens are padded at the end to a window multiple after ``norm1`` and before ``qkv`` (padded tokens are
  zeros that still get the qkv bias and take part as keys), then cropped;
- the shift mask labels 3 regions per shifted axis and adds -100 between tokens of different regions;
- patch merging concatenates the 2x2(x2) neighbours in MONAI's order (``merging``: MONAI >= 1.5's default;
  ``mergingv2``: lexicographic; ``merging-legacy``: MONAI <= 1.4's ``merging``, which takes two neighbours
  twice and two never, the order of the released SSL weights), then LayerNorm, then a bias-free linear to
  twice the channels;
- each stage output (and the patch embedding) is layer-normalised without affine parameters.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from medssl_kernels import window_attention_3d

Task = Literal["embed", "segment"]
Merging = Literal["merging", "mergingv2", "merging-legacy"]

#: Neighbour offsets concatenated by patch merging, per variant and spatial dims, in MONAI's channel order.
MERGE_OFFSETS: dict[tuple[str, int], tuple[tuple[int, ...], ...]] = {
    ("merging", 3): ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1)),
    ("mergingv2", 3): tuple(itertools.product(range(2), repeat=3)),
    ("merging", 2): ((0, 0), (1, 0), (0, 1), (1, 1)),
    ("mergingv2", 2): ((0, 0), (1, 0), (0, 1), (1, 1)),
    # MONAI <= 1.4 "merging" (the order the released SSL weights were pre-trained with; repeats two neighbours).
    ("merging-legacy", 3): ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 0), (0, 0, 1), (1, 1, 1)),
    ("merging-legacy", 2): ((0, 0), (1, 0), (0, 1), (1, 1)),
}
#: Input sizes must be multiples of this (patch 2 and four 2x merges).
SIZE_MULTIPLE = 32
#: Added to attention logits between tokens of different shift regions.
MASK_VALUE = -100.0


def fit_window(grid: Sequence[int], window: Sequence[int], shift: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Window and shift for a token grid: along an axis with ``grid <= window`` the window is the grid, no shift."""
    fitted = [(g, 0) if g <= w else (w, s) for g, w, s in zip(grid, window, shift)]
    return tuple(w for w, _ in fitted), tuple(s for _, s in fitted)


def relative_position_index(window: Sequence[int]) -> torch.Tensor:
    """``(N, N)`` int64 index into the bias table ``(prod(2w-1), heads)`` for a window of ``N = prod(w)`` tokens.

    Entry ``[i, j]`` encodes the offset of token ``i`` from token ``j`` (row-major over the window's axes).
    """
    coords = torch.stack(torch.meshgrid(*[torch.arange(w) for w in window], indexing="ij")).flatten(1)  # (dims, N)
    offsets = coords[:, :, None] - coords[:, None, :]  # (dims, N, N)
    index = torch.zeros(offsets.shape[1:], dtype=torch.int64)
    for axis, w in enumerate(window):
        stride = 1
        for later in window[axis + 1 :]:
            stride *= 2 * later - 1
        index += (offsets[axis] + w - 1) * stride
    return index


def partition_windows(x: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """``(B, *grid, C)`` -> ``(B, num_windows, N, C)``; windows in row-major grid order, tokens row-major inside."""
    batch, *grid, channels = x.shape
    dims = len(grid)
    split = [size for g, w in zip(grid, window) for size in (g // w, w)]
    x = x.reshape(batch, *split, channels)
    order = [0, *range(1, 2 * dims, 2), *range(2, 2 * dims + 1, 2), 2 * dims + 1]
    return x.permute(order).reshape(batch, -1, math.prod(window), channels)


def merge_windows(windows: torch.Tensor, window: Sequence[int], grid: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`partition_windows`: ``(B, num_windows, N, C)`` -> ``(B, *grid, C)``."""
    batch, channels, dims = windows.shape[0], windows.shape[-1], len(grid)
    counts = [g // w for g, w in zip(grid, window)]
    x = windows.reshape(batch, *counts, *window, channels)
    order = [0, *[i for axis in range(dims) for i in (1 + axis, 1 + dims + axis)], 2 * dims + 1]
    return x.permute(order).reshape(batch, *grid, channels)


def shift_mask(grid: Sequence[int], window: Sequence[int], shift: Sequence[int], device: torch.device) -> torch.Tensor:
    """``(num_windows, N, N)`` additive mask for shifted windows on a padded ``grid``: 0 within a region, -100 across.

    Along a shifted axis of length ``G`` the regions are ``[0, G-w)``, ``[G-w, G-s)``, ``[G-s, G)``.
    """
    region = torch.zeros(grid, device=device)
    for axis, (g, w, s) in enumerate(zip(grid, window, shift)):
        if s == 0:
            continue
        label = torch.zeros(g, device=device)
        label[g - w : g - s] = 1
        label[g - s :] = 2
        view = [1] * len(grid)
        view[axis] = g
        region = region * 3 + label.view(view)
    labels = partition_windows(region[None, ..., None], window)[0, ..., 0]  # (num_windows, N)
    different = labels[:, :, None] != labels[:, None, :]
    return torch.zeros(different.shape, device=device).masked_fill(different, MASK_VALUE)


def shifted_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor,
    window: Sequence[int],
    shift: Sequence[int],
    scale: float,
) -> torch.Tensor:
    """Attention inside (shifted) windows on a padded token grid: the model's eager path for 2D (3D attention
    goes through :func:`medssl_kernels.window_attention_3d`). Written for any number of axes.

    Args:
        q, k, v: ``(B, heads, *grid, head_dim)``, each grid size a multiple of ``window``.
        bias: ``(heads, N, N)`` relative-position bias, ``N = prod(window)``.
        window, shift: per axis, already fitted to the grid (:func:`fit_window`).
        scale: multiplies ``q``.

    Returns:
        ``(B, heads, *grid, head_dim)``: rolled by ``-shift``, attended per window (bias, shift mask,
        softmax), rolled back.
    """
    batch, heads, *grid, head_dim = q.shape
    axes = tuple(range(2, 2 + len(grid)))
    shifted = any(shift)

    def windows(t: torch.Tensor) -> torch.Tensor:  # -> (B, heads, num_windows, N, head_dim)
        if shifted:
            t = torch.roll(t, shifts=[-s for s in shift], dims=axes)
        return partition_windows(t.reshape(batch * heads, *grid, head_dim), window).unflatten(0, (batch, heads))

    logits = (windows(q) * scale) @ windows(k).transpose(-2, -1) + bias[None, :, None]
    if shifted:
        logits = logits + shift_mask(grid, window, shift, q.device)
    out = logits.softmax(dim=-1).to(v.dtype) @ windows(v)
    out = merge_windows(out.flatten(0, 1), window, grid).unflatten(0, (batch, heads))
    return torch.roll(out, shifts=list(shift), dims=axes) if shifted else out


class WindowAttention(nn.Module):
    """Multi-head self-attention in windows with a learned relative-position bias.

    Keys: ``qkv`` (C -> 3C, bias), ``proj`` (C -> C), ``relative_position_bias_table`` ``(prod(2w-1), heads)``,
    buffer ``relative_position_index`` ``(prod(w), prod(w))``.
    """

    def __init__(self, dim: int, num_heads: int, window: tuple[int, ...]) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"channels {dim} are not divisible by {num_heads} heads")
        self.num_heads, self.window = num_heads, window
        self.scale = (dim // num_heads) ** -0.5
        table_size = math.prod([2 * w - 1 for w in window])
        self.relative_position_bias_table = nn.Parameter(nn.init.trunc_normal_(torch.zeros(table_size, num_heads), std=0.02))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def sliced_bias(self, tokens: int) -> torch.Tensor:
        """``(heads, N, N)`` bias for the first ``N`` tokens of the full window's index (MONAI's rule for any window);
        2D only (the 3D kernel reads the table itself)."""
        index = self.relative_position_index[:tokens, :tokens].reshape(-1)
        return self.relative_position_bias_table[index].reshape(tokens, tokens, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, window: tuple[int, ...], shift: tuple[int, ...]) -> torch.Tensor:
        """``(B, *grid, C)`` -> ``(B, *grid, C)``; ``grid`` a multiple of the fitted ``window``.

        3D attention goes through the :func:`medssl_kernels.window_attention_3d` kernel, a shrunk window with the
        module's full window as the index window (MONAI's sliced bias index); 2D through :func:`shifted_window_attention`.
        """
        batch, *grid, channels = x.shape
        qkv = self.qkv(x).reshape(batch, *grid, 3, self.num_heads, channels // self.num_heads)
        q, k, v = qkv.movedim((-3, -2), (0, 2)).unbind(0)  # each (B, heads, *grid, head_dim)
        if len(window) == 3:
            table = self.relative_position_bias_table
            out = window_attention_3d(q, k, v, table, window, shift, self.scale, index_window=self.window)
        else:
            out = shifted_window_attention(q, k, v, self.sliced_bias(math.prod(window)), window, shift, self.scale)
        return self.proj(out.movedim(1, -2).reshape(batch, *grid, channels))


class Mlp(nn.Module):
    """``linear1`` (C -> rC) -> exact GELU -> ``linear2`` (rC -> C), on the last axis."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(F.gelu(self.linear1(x)))


class SwinBlock(nn.Module):
    """Pre-norm block: ``x + attn(norm1(x))`` in (shifted) windows, then ``x + mlp(norm2(x))``; ``(B, *grid, C)``."""

    def __init__(self, dim: int, num_heads: int, window: tuple[int, ...], shift: tuple[int, ...], mlp_ratio: float) -> None:
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = x.shape[1:-1]
        window, shift = fit_window(grid, self.window, self.shift)
        padding = [0, 0]  # channels, then spatial axes last to first
        for g, w in reversed(list(zip(grid, window))):
            padding += [0, -g % w]
        attended = self.attn(F.pad(self.norm1(x), padding), window, shift)
        x = x + attended[(slice(None), *[slice(g) for g in grid])]
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """Concatenate each 2x2(x2) neighbourhood (odd sizes padded at the end), LayerNorm, linear to 2C.

    ``(B, *grid, C)`` -> ``(B, *ceil(grid / 2), 2C)``.
    """

    def __init__(self, dim: int, spatial_dims: int, merging: Merging) -> None:
        super().__init__()
        if (merging, spatial_dims) not in MERGE_OFFSETS:
            raise ValueError(f"merging must be one of 'merging', 'mergingv2', 'merging-legacy'; got {merging!r}")
        self.offsets = MERGE_OFFSETS[merging, spatial_dims]
        self.norm = nn.LayerNorm(len(self.offsets) * dim)
        self.reduction = nn.Linear(len(self.offsets) * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = x.shape[1:-1]
        padding = [0, 0]
        for g in reversed(grid):
            padding += [0, g % 2]
        x = F.pad(x, padding)
        parts = [x[(slice(None), *[slice(o, None, 2) for o in offset])] for offset in self.offsets]
        return self.reduction(self.norm(torch.cat(parts, dim=-1)))


class SwinStage(nn.Module):
    """``depth`` blocks (odd ones shifted by half a window) then patch merging; ``(B, C, *S)`` -> ``(B, 2C, *S/2)``."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: tuple[int, ...], mlp_ratio: float, merging: Merging) -> None:
        super().__init__()
        half = tuple(w // 2 for w in window)
        no_shift = (0,) * len(window)
        self.blocks = nn.ModuleList(SwinBlock(dim, num_heads, window, half if i % 2 else no_shift, mlp_ratio) for i in range(depth))
        self.downsample = PatchMerging(dim, len(window), merging)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.movedim(1, -1)
        for block in self.blocks:
            x = block(x)
        return self.downsample(x).movedim(-1, 1)


class SwinEncoder(nn.Module):
    """The Swin ViT (``swinViT``): patch embedding and four stages; five feature maps, each channel-normalised.

    Outputs for an input ``(B, C_in, *S)``: ``(B, F * 2**i, *S / 2**(i+1))`` for ``i = 0..4`` with ``F = feature_size``.
    """

    def __init__(
        self,
        in_channels: int,
        feature_size: int,
        spatial_dims: int,
        depths: Sequence[int],
        num_heads: Sequence[int],
        window: tuple[int, ...],
        mlp_ratio: float,
        merging: Merging,
        normalize: bool,
    ) -> None:
        super().__init__()
        self.normalize = normalize
        self.patch_embed = _ConvHolder(_conv(spatial_dims)(in_channels, feature_size, kernel_size=2, stride=2), name="proj")
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            stage = SwinStage(feature_size * 2**i, depth, heads, window, mlp_ratio, merging)
            self.add_module(f"layers{i + 1}", nn.ModuleList([stage]))  # MONAI's key layout: layers{k}.0.*
        self.num_stages = len(depths)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [self.patch_embed(x)]
        for i in range(self.num_stages):
            features.append(getattr(self, f"layers{i + 1}")[0](features[-1]))
        return [self._channel_norm(f) for f in features]

    def _channel_norm(self, x: torch.Tensor) -> torch.Tensor:
        if not self.normalize:
            return x
        return F.layer_norm(x.movedim(1, -1), x.shape[1:2]).movedim(-1, 1)


class _ConvHolder(nn.Module):
    """Holds one convolution under a given attribute name (``conv`` or ``proj``) for MONAI's key layout."""

    def __init__(self, conv: nn.Module, name: str = "conv") -> None:
        super().__init__()
        self.name = name
        self.add_module(name, conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, self.name)(x)


class ResidualConvBlock(nn.Module):
    """Two 3x3(x3) bias-free convs with instance norm and LeakyReLU(0.01), plus a (1x1-projected) shortcut."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        conv, norm = _conv(spatial_dims), _instance_norm(spatial_dims)
        self.conv1 = _ConvHolder(conv(in_channels, out_channels, 3, padding=1, bias=False))
        self.conv2 = _ConvHolder(conv(out_channels, out_channels, 3, padding=1, bias=False))
        self.norm1, self.norm2 = norm(out_channels), norm(out_channels)
        self.conv3 = _ConvHolder(conv(in_channels, out_channels, 1, bias=False)) if in_channels != out_channels else None
        self.norm3 = norm(out_channels)  # used with conv3 only; no parameters, so no state-dict keys

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.leaky_relu(self.norm1(self.conv1(x)), 0.01)
        out = self.norm2(self.conv2(out))
        shortcut = x if self.conv3 is None else self.norm3(self.conv3(x))
        return F.leaky_relu(out + shortcut, 0.01)


class SkipEncoder(nn.Module):
    """A :class:`ResidualConvBlock` at full resolution (held as ``layer``): ``(B, C_in, *S)`` -> ``(B, C_out, *S)``."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.layer = ResidualConvBlock(spatial_dims, in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class UpBlock(nn.Module):
    """2x transposed conv, concatenation with the skip, residual conv block: ``(B, C_in, *S)`` -> ``(B, C_out, *2S)``."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        transposed = nn.ConvTranspose3d if spatial_dims == 3 else nn.ConvTranspose2d
        self.transp_conv = _ConvHolder(transposed(in_channels, out_channels, 2, stride=2, bias=False))
        self.conv_block = ResidualConvBlock(spatial_dims, 2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv_block(torch.cat([self.transp_conv(x), skip], dim=1))


class SwinUNETR(nn.Module):
    """Swin UNETR with MONAI's state-dict layout.

    Args:
        task: ``"segment"`` (encoder + decoder + 1x1 head; forward gives logits ``(B, K, *S)``) or ``"embed"``
            (the ``swinViT`` encoder only, as pre-trained; forward gives ``(B, 16F)``).
        num_classes: ``K``, segmentation classes (background included); ``"segment"`` only.
        in_channels: image channels.
        feature_size: ``F``, channels of the patch embedding (multiple of 12; 48 in the paper).
        spatial_dims: 2 or 3.
        depths, num_heads: blocks and heads per stage.
        window_size: attention window (int or one per axis).
        mlp_ratio: MLP hidden width over channels.
        merging: patch-merging order: ``"merging"`` (MONAI >= 1.5's default), ``"mergingv2"`` or
            ``"merging-legacy"`` (MONAI <= 1.4's ``"merging"``; weights trained with it need it).
        normalize: layer-normalise the encoder outputs (MONAI's ``normalize``).
    """

    def __init__(
        self,
        task: Task = "segment",
        num_classes: int | None = None,
        in_channels: int = 1,
        feature_size: int = 48,
        spatial_dims: int = 3,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int | Sequence[int] = 7,
        mlp_ratio: float = 4.0,
        merging: Merging = "merging",
        normalize: bool = True,
    ) -> None:
        super().__init__()
        if task not in ("embed", "segment"):
            raise ValueError(f"task must be 'embed' or 'segment'; got {task!r}")
        if (task == "segment") != (num_classes is not None):
            raise ValueError(f"task {task!r} " + ("needs num_classes" if task == "segment" else "takes no num_classes"))
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3; got {spatial_dims!r}")
        if feature_size % 12:
            raise ValueError(f"feature_size must be a multiple of 12; got {feature_size}")
        if len(depths) != 4 or len(num_heads) != 4:
            raise ValueError(f"depths and num_heads need 4 stages each; got {tuple(depths)} and {tuple(num_heads)}")
        window = (window_size,) * spatial_dims if isinstance(window_size, int) else tuple(window_size)
        if len(window) != spatial_dims:
            raise ValueError(f"window_size {window_size!r} does not have {spatial_dims} entries")
        self.task, self.spatial_dims, self.feature_size = task, spatial_dims, feature_size
        self.swinViT = SwinEncoder(
            in_channels, feature_size, spatial_dims, depths, num_heads, window, mlp_ratio, merging, normalize
        )
        if task == "segment":
            f, d = feature_size, spatial_dims
            self.encoder1 = SkipEncoder(d, in_channels, f)
            self.encoder2 = SkipEncoder(d, f, f)
            self.encoder3 = SkipEncoder(d, 2 * f, 2 * f)
            self.encoder4 = SkipEncoder(d, 4 * f, 4 * f)
            self.encoder10 = SkipEncoder(d, 16 * f, 16 * f)
            self.decoder5 = UpBlock(d, 16 * f, 8 * f)
            self.decoder4 = UpBlock(d, 8 * f, 4 * f)
            self.decoder3 = UpBlock(d, 4 * f, 2 * f)
            self.decoder2 = UpBlock(d, 2 * f, f)
            self.decoder1 = UpBlock(d, f, f)
            self.out = _ConvHolder(_ConvHolder(_conv(d)(f, int(num_classes or 0), 1)))

    @property
    def embedding_dim(self) -> int:
        """Length of :meth:`embed`'s vectors: the deepest encoder channels, ``16 * feature_size``."""
        return 16 * self.feature_size

    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        """Raise ValueError unless ``x`` is ``(B, C, *S)`` with ``spatial_dims`` sizes, each a multiple of 32."""
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(f"expected a {self.spatial_dims + 2}-D input (B, C, *spatial); got shape {tuple(x.shape)}")
        sizes = tuple(x.shape[2:])
        if any(s % SIZE_MULTIPLE for s in sizes):
            raise ValueError(
                f"Swin UNETR needs every spatial size to be a multiple of {SIZE_MULTIPLE}; got {sizes}. "
                "Pad or crop the input (sliding-window inference at the card's patch size does this)."
            )
        return x

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *S)`` -> ``(B, 16F)``: the deepest (normalised) encoder features, averaged over space."""
        return self.swinViT(self.check_input(x))[-1].flatten(2).mean(dim=2)

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *S)`` -> logits ``(B, K, *S)``."""
        if self.task != "segment":
            raise RuntimeError("this Swin UNETR was built with task='embed' (encoder only); build it with task='segment'")
        if math.prod(self.check_input(x).shape[2:]) == SIZE_MULTIPLE**self.spatial_dims:
            raise ValueError(
                f"Swin UNETR cannot segment a {tuple(x.shape[2:])} input: its deepest feature map would be one voxel, "
                f"which instance norm cannot normalise; use at least {2 * SIZE_MULTIPLE} along one axis (the card's patch size)"
            )
        hidden = self.swinViT(x)
        skips = [self.encoder1(x), self.encoder2(hidden[0]), self.encoder3(hidden[1]), self.encoder4(hidden[2])]
        decoded = self.decoder5(self.encoder10(hidden[4]), hidden[3])
        for up, skip in zip((self.decoder4, self.decoder3, self.decoder2, self.decoder1), reversed(skips)):
            decoded = up(decoded, skip)
        return self.out(decoded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The task's output: logits for ``"segment"``, the embedding for ``"embed"``."""
        return self.segment(x) if self.task == "segment" else self.embed(x)


def create_swin_unetr(spatial_dims: int | Sequence[int] = 3, **kwargs: object) -> SwinUNETR:
    """Registry builder: ``spatial_dims`` may be a card's branch tuple, which must name one branch (2D or 3D)."""
    if not isinstance(spatial_dims, int):
        dims = tuple(spatial_dims)
        if len(dims) != 1:
            raise ValueError(f"a Swin UNETR takes one input dimensionality (its weights differ); got {dims}")
        spatial_dims = dims[0]
    return SwinUNETR(spatial_dims=spatial_dims, **kwargs)  # type: ignore[arg-type]


def _conv(spatial_dims: int) -> type[nn.Conv2d] | type[nn.Conv3d]:
    return nn.Conv3d if spatial_dims == 3 else nn.Conv2d


def _instance_norm(spatial_dims: int) -> type[nn.InstanceNorm2d] | type[nn.InstanceNorm3d]:
    return nn.InstanceNorm3d if spatial_dims == 3 else nn.InstanceNorm2d
