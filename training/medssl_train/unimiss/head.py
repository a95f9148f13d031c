"""The DINO projection head and the network it sits on (backbone SSL token -> head), student or teacher."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medssl_zoo.mit import MiT


class DINOHead(nn.Module):
    """MLP (Linear-GELU x ``layers - 1``, Linear to ``bottleneck_dim``), L2 normalisation, then a bias-free linear
    layer with unit-norm rows to ``out_dim`` logits: the official ``Head`` with ``norm_last_layer=True`` (its
    weight-norm gain fixed at 1 is the same as normalising each row of the weight).

    Args:
        in_dim: width of the SSL token (MiT: ``decoder_dims[-1]``, 48 for MiT-7/22).
        out_dim: number of logits (official 65536).
        hidden_dim: MLP width (official 2048).
        bottleneck_dim: width before the last layer (official 256).
        layers: linear layers in the MLP (official 3).

    Input (B, in_dim) -> output (B, out_dim).
    """

    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256, layers: int = 3):
        super().__init__()
        if layers < 1:
            raise ValueError(f"the DINO head needs at least 1 MLP layer; got {layers}")
        widths = [in_dim, *[hidden_dim] * (layers - 1), bottleneck_dim]
        blocks: list[nn.Module] = []
        for i, (width_in, width_out) in enumerate(zip(widths[:-1], widths[1:])):
            blocks.append(nn.Linear(width_in, width_out))
            if i < layers - 1:
                blocks.append(nn.GELU())
        self.mlp = nn.Sequential(*blocks)
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = F.normalize(self.mlp(x), dim=-1)
        return F.linear(features, F.normalize(self.last_layer.weight, dim=1))


class SSLNetwork(nn.Module):
    """A MiT (task ``"embed"``, with its SSL token) and a :class:`DINOHead` on the final decoder SSL token.

    ``forward(x)``: 2D (N, 1 or 3, H, W) or 3D (N, 1, D, H, W) -> logits (N, out_dim). With
    ``with_slices=True`` a 3D batch also runs its D axial slices through the 2D path (1 channel repeated to 3)
    and averages their logits per volume (the paper's f'); the result is then (2N, out_dim): the N volume
    logits, then the N slice-mean logits. One forward computes both, so DDP sees a single forward per step.
    """

    def __init__(self, backbone: MiT, head: DINOHead) -> None:
        super().__init__()
        if not isinstance(backbone, MiT) or backbone.decoder is None or not backbone.config.ssl_token:
            raise ValueError("UniMiSS pre-training needs a MiT with task 'embed' and ssl_token=True (the card's kwargs)")
        self.backbone, self.head = backbone, head

    def ssl_token(self, x: torch.Tensor) -> torch.Tensor:
        """The final decoder SSL token (N, decoder_dims[-1])."""
        _, decoded, _ = self.backbone.forward_features(x)
        return decoded[:, 0]

    def forward(self, x: torch.Tensor, with_slices: bool = False) -> torch.Tensor:
        logits = self.head(self.ssl_token(x))
        if not with_slices:
            return logits
        if x.ndim != 5:
            raise ValueError(f"with_slices needs a 3D batch (N, 1, D, H, W); got shape {tuple(x.shape)}")
        n, channels, depth, height, width = x.shape
        slices = x.movedim(2, 1).reshape(n * depth, channels, height, width)
        slice_logits = self.head(self.ssl_token(slices)).view(n, depth, -1).mean(dim=1)
        return torch.cat((logits, slice_logits), dim=0)
