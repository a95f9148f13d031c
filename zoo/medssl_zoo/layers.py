"""Building blocks shared by the zoo's architectures, switchable between 2D and 3D by ``spatial_dims``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

CONV = {2: nn.Conv2d, 3: nn.Conv3d}
CONV_TRANSPOSE = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
INSTANCE_NORM = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
INTERPOLATION = {2: "bicubic", 3: "trilinear"}


def branch_key(spatial_dims: int) -> str:
    """Name of the 2D or 3D branch in a module dict: ``"2d"`` or ``"3d"``."""
    return f"{spatial_dims}d"


class ConvNormAct(nn.Module):
    """Conv (no bias) -> InstanceNorm(affine) -> LeakyReLU(0.01), as the UniMiSS conv blocks.

    Input (B, C_in, *S) -> output (B, C_out, *S'), S' = floor((S + 2p - k) / stride) + 1.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int | Sequence[int] = 1,
        padding: int = 0,
    ) -> None:
        super().__init__()
        self.conv = CONV[spatial_dims](
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False
        )
        self.norm = INSTANCE_NORM[spatial_dims](out_channels, affine=True)
        self.act = nn.LeakyReLU(negative_slope=0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


def resize_positions(
    positions: torch.Tensor, base_grid: Sequence[int], grid: Sequence[int], num_prefix: int
) -> torch.Tensor:
    """Resize learned positional embeddings from the grid they were trained on to ``grid``.

    Args:
        positions: (1, num_prefix + prod(base_grid), C); the first ``num_prefix`` rows (the SSL token's)
            are kept as they are.
        base_grid: the token grid the table was learned for, e.g. (56, 56) or (8, 24, 24).
        grid: the token grid of the current input, same rank as ``base_grid``, any size.

    Returns:
        (1, num_prefix + prod(grid), C). Bicubic in 2D, trilinear in 3D, sampling the grids'
        cell centres (``align_corners=False``) independently per axis, so non-square images and any
        depth work. The official code scales by ``(n + 0.1) / n_base`` and transposes non-square grids;
        at the training sizes both give the table unchanged.
    """
    grid, base_grid = tuple(int(g) for g in grid), tuple(int(g) for g in base_grid)
    if grid == base_grid:
        return positions
    channels = positions.shape[-1]
    prefix, table = positions[:, :num_prefix], positions[:, num_prefix:]
    table = table.reshape(1, *base_grid, channels).movedim(-1, 1)
    table = F.interpolate(table, size=grid, mode=INTERPOLATION[len(grid)], align_corners=False)
    table = table.movedim(1, -1).reshape(1, -1, channels)
    return torch.cat((prefix, table), dim=1)
