"""Task heads of the UniMiSS paper (Sec. 4.2): segmentation and classification."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medssl_zoo.layers import CONV, CONV_TRANSPOSE, ConvNormAct


class SegmentationHead(nn.Module):
    """Transposed conv (x2) + stem skip -> Conv-IN-LeakyReLU -> 1x1 conv to classes -> upsample to input.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the decoder's last feature map (48 for MiT).
        skip_channels: channels of the stem's output, added after the transposed conv (32 for MiT).
        num_classes: output channels (background included).
        final_scale: upsampling from the stem's grid to the input's grid: (2, 2) in 2D, (1, 2, 2) in 3D.

    Shapes: features (B, in_channels, *G) and stem skip (B, skip_channels, *2G) ->
    logits (B, num_classes, *(2G * final_scale)).

    The official BCV net upsamples the 32-channel map before its 1x1 conv; both are linear and the
    interpolation weights sum to one, so classifying first gives the same logits on fewer channels.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        skip_channels: int,
        num_classes: int,
        final_scale: Sequence[int],
    ) -> None:
        super().__init__()
        self.upsample = CONV_TRANSPOSE[spatial_dims](in_channels, skip_channels, kernel_size=2, stride=2)
        self.block = ConvNormAct(spatial_dims, skip_channels, skip_channels, kernel_size=3, padding=1)
        self.classifier = CONV[spatial_dims](skip_channels, num_classes, kernel_size=1)
        self.final_scale = tuple(final_scale)
        self.interpolation = "bilinear" if spatial_dims == 2 else "trilinear"

    def forward(self, features: torch.Tensor, stem_skip: torch.Tensor) -> torch.Tensor:
        x = self.block(self.upsample(features) + stem_skip)
        logits = self.classifier(x)
        size = [s * f for s, f in zip(logits.shape[2:], self.final_scale)]
        return F.interpolate(logits, size=size, mode=self.interpolation, align_corners=False)


class TokenClassificationHead(nn.Module):
    """LayerNorm then one linear layer, averaged over the SSL token and the mean-pooled patch tokens.

    As the official RICORD net: ``(fc(norm(t)[:, 0]) + fc(mean(norm(t)[:, 1:]))) / 2``. Without an
    SSL token (``num_prefix=0``) only the pooled tokens are classified.

    Shapes: tokens (B, num_prefix + N, dim) -> logits (B, num_classes).
    """

    def __init__(self, dim: int, num_classes: int, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, tokens: torch.Tensor, num_prefix: int) -> torch.Tensor:
        tokens = self.norm(tokens)
        pooled = self.fc(tokens[:, num_prefix:].mean(dim=1))
        if num_prefix == 0:
            return pooled
        return (self.fc(tokens[:, 0]) + pooled) / 2
