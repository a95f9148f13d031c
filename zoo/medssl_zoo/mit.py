"""MiT: the dimension-free pyramid U-like medical transformer of UniMiSS (Xie et al., ECCV 2022, Sec. 3.2).

One network takes 2D images (B, 3, H, W) and 3D volumes (B, 1, D, H, W); the branch is picked from the
input's rank. Separate per dimension (the switchable patch embedding, "SPE"): the stems, the strided-conv
patch embeddings, the learned positions and the attention's reduction convs. Shared by both: every
transformer block, the SSL token and the linear layers that carry it from stage to stage.

Token grids (H, W multiples of 32; D a multiple of 16):

    stage           2D grid         3D grid
    stem            H/2  x W/2      D    x H/2  x W/2     (32 channels, conv 7, stride 2 / (1, 2, 2))
    encoder 1..4    H/2^(k+1) ...   D/2^k x H/2^(k+1) x W/2^(k+1)    dims 48, 128, 256, 512
    decoder 1..3    the encoder grids of stages 3, 2, 1                dims 256, 128, 48

The decoder upsamples with transposed convs, adds the encoder map of the same grid, and carries the
SSL token on. Key facts (dims, heads, reduction ratios, norms, eps) follow the official code;
see docs/models/mit.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from medssl_kernels import sra_attention
from medssl_zoo.heads import SegmentationHead, TokenClassificationHead
from medssl_zoo.layers import CONV, CONV_TRANSPOSE, ConvNormAct, branch_key, resize_positions

Task = Literal["embed", "segment", "classify"]

#: Stem strides per spatial dimension (depth is kept at full resolution in 3D).
STEM_STRIDE = {2: (2, 2), 3: (1, 2, 2)}


@dataclass(frozen=True)
class MiTConfig:
    """Hyper-parameters of a MiT network. Defaults are MiT-7 (the official ``model_tiny``)."""

    encoder_dims: tuple[int, ...] = (48, 128, 256, 512)
    encoder_depths: tuple[int, ...] = (1, 1, 1, 1)
    encoder_heads: tuple[int, ...] = (1, 2, 4, 8)
    encoder_sr_ratios: tuple[int, ...] = (6, 4, 2, 1)
    encoder_qkv_bias: bool = True
    encoder_norm_eps: float = 1e-6
    decoder_dims: tuple[int, ...] = (256, 128, 48)
    decoder_depths: tuple[int, ...] = (1, 1, 1)
    decoder_heads: tuple[int, ...] = (8, 4, 2)
    decoder_sr_ratios: tuple[int, ...] = (2, 4, 6)
    decoder_qkv_bias: bool = False
    decoder_norm_eps: float = 1e-5
    #: LayerNorm after the reduction conv (the official code leaves it at PyTorch's default eps).
    reduction_norm_eps: float = 1e-5
    stem_channels: int = 32
    mlp_ratio: float = 4.0
    #: Which branches to build: (2,), (3,) or (2, 3).
    spatial_dims: tuple[int, ...] = (2, 3)
    #: Input size the positional tables were learned for (2D (H, W), 3D (D, H, W)).
    position_size_2d: tuple[int, ...] = (224, 224)
    position_size_3d: tuple[int, ...] = (16, 96, 96)
    #: Carry the SSL token through the stages (pre-training, embedding, classification).
    ssl_token: bool = True

    def __post_init__(self) -> None:
        if len(self.encoder_dims) != 4 or len(self.decoder_dims) != 3:
            raise ValueError("MiT has 4 encoder stages and 3 decoder stages")
        if self.decoder_dims != tuple(reversed(self.encoder_dims[:-1])):
            raise ValueError(
                f"decoder dims {self.decoder_dims} must mirror the encoder dims {self.encoder_dims} "
                "(the decoder adds the encoder maps of the same grid)"
            )
        if not set(self.spatial_dims) <= {2, 3} or not self.spatial_dims:
            raise ValueError(f"spatial_dims must be (2,), (3,) or (2, 3); got {self.spatial_dims}")
        for side, stages in (("encoder", 4), ("decoder", 3)):
            for name in ("depths", "heads", "sr_ratios"):
                values = getattr(self, f"{side}_{name}")
                if len(values) != stages:
                    raise ValueError(f"{side}_{name} needs {stages} values (one per stage); got {values}")

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, object]) -> MiTConfig:
        """Build from JSON/TOML values (lists become tuples); unknown names are an error."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unknown MiT config field(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})

    def to_kwargs(self) -> dict[str, object]:
        """JSON-ready values (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

    def input_multiple(self, spatial_dims: int) -> tuple[int, ...]:
        """The input's spatial sizes must be multiples of this: total stride of the deepest stage."""
        return tuple(s * 2 ** len(self.encoder_dims) for s in STEM_STRIDE[spatial_dims])

    def token_grid(self, size: Sequence[int], level: int) -> tuple[int, ...]:
        """Token grid of encoder stage ``level`` (1..4) for an input of spatial ``size``."""
        return tuple(s // (st * 2**level) for s, st in zip(size, STEM_STRIDE[len(size)]))

    def position_grids(self, level: int) -> dict[str, tuple[int, ...]]:
        """The grids the positional tables of encoder stage ``level`` were learned on, per branch."""
        sizes = {2: self.position_size_2d, 3: self.position_size_3d}
        return {branch_key(d): self.token_grid(sizes[d], level) for d in self.spatial_dims}


VARIANTS: dict[str, MiTConfig] = {
    "mit7": MiTConfig(),
    "mit22": MiTConfig(encoder_depths=(2, 3, 4, 3), decoder_depths=(3, 4, 3)),
}


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2. (B, N, dim) -> (B, N, dim)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SpatialReductionAttention(nn.Module):
    """Multi-head attention whose keys/values come from a strided-conv-reduced map (UniMiSS Eq. 1).

    The reduction conv (kernel = stride = ``sr_ratio``; one per branch) sees the patch tokens only; the
    SSL token, when present, is put back in front before the LayerNorm and the K/V projection.

    Shapes: tokens (B, P + prod(grid), dim) with P in {0, 1} leading SSL tokens -> same shape.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sr_ratio: int,
        qkv_bias: bool,
        reduction_norm_eps: float,
        spatial_dims: Sequence[int],
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.reduce: nn.ModuleDict | None = None
        if sr_ratio > 1:
            self.reduce = nn.ModuleDict(
                {branch_key(d): CONV[d](dim, dim, sr_ratio, stride=sr_ratio) for d in spatial_dims}
            )
            self.reduce_norm = nn.LayerNorm(dim, eps=reduction_norm_eps)

    def forward(self, tokens: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        batch, n, dim = tokens.shape
        head_dim = dim // self.num_heads
        q = self.q(tokens).reshape(batch, n, self.num_heads, head_dim).transpose(1, 2)
        kv_source = tokens
        if self.reduce is not None:
            prefix = n - math.prod(grid)
            fmap = tokens[:, prefix:].transpose(1, 2).reshape(batch, dim, *grid)
            reduced = self.reduce[branch_key(len(grid))](fmap).flatten(2).transpose(1, 2)
            kv_source = self.reduce_norm(torch.cat((tokens[:, :prefix], reduced), dim=1))
        k, v = self.kv(kv_source).reshape(batch, -1, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        out = sra_attention(q, k, v, self.scale)
        return self.proj(out.transpose(1, 2).reshape(batch, n, dim))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + SRA(LN(x)), then x + MLP(LN(x)). Shared by the 2D and 3D paths."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sr_ratio: int,
        mlp_ratio: float,
        qkv_bias: bool,
        norm_eps: float,
        reduction_norm_eps: float,
        spatial_dims: Sequence[int],
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = SpatialReductionAttention(
            dim, num_heads, sr_ratio, qkv_bias, reduction_norm_eps, spatial_dims
        )
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, tokens: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        tokens = tokens + self.attn(self.norm1(tokens), grid)
        return tokens + self.mlp(self.norm2(tokens))


def split_tokens(
    tokens: torch.Tensor, grid: Sequence[int], num_prefix: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Tokens (B, P + prod(grid), C) -> patch map (B, C, *grid) and SSL token (B, C) (None if P = 0)."""
    fmap = tokens[:, num_prefix:].transpose(1, 2).reshape(tokens.shape[0], -1, *grid).contiguous()
    return fmap, tokens[:, 0] if num_prefix else None


class PyramidStage(nn.Module):
    """One MiT stage: switchable patch embedding, SSL token hand-over, positions, transformer blocks.

    The embedding (per branch) maps (B, C_in, *G_in) to (B, dim, *G); encoder stages use a strided
    Conv-IN-LeakyReLU, decoder stages a transposed conv. A decoder stage adds the encoder map of the
    same grid (``skip``) before the token is prepended.
    """

    def __init__(
        self,
        embed: Mapping[str, nn.Module],
        dim: int,
        depth: int,
        num_heads: int,
        sr_ratio: int,
        qkv_bias: bool,
        norm_eps: float,
        position_grids: Mapping[str, tuple[int, ...]],
        token_in_dim: int | None,
        config: MiTConfig,
    ) -> None:
        super().__init__()
        self.embed = nn.ModuleDict(embed)
        self.num_prefix = int(config.ssl_token)
        self.position_grids = dict(position_grids)
        self.pos = nn.ParameterDict(
            {
                key: _truncated_normal(1, self.num_prefix + math.prod(grid), dim)
                for key, grid in position_grids.items()
            }
        )
        self.token_proj = (
            nn.Linear(token_in_dim, dim) if config.ssl_token and token_in_dim is not None else None
        )
        self.blocks = nn.ModuleList(
            TransformerBlock(
                dim, num_heads, sr_ratio, config.mlp_ratio, qkv_bias, norm_eps,
                config.reduction_norm_eps, config.spatial_dims,
            )
            for _ in range(depth)
        )

    def tokens(
        self, x: torch.Tensor, token: torch.Tensor | None, skip: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Run the stage; returns tokens (B, P + prod(grid), dim) and the grid."""
        key = branch_key(x.ndim - 2)
        fmap = self.embed[key](x)
        if skip is not None:
            fmap = fmap + skip
        grid = tuple(fmap.shape[2:])
        tokens = fmap.flatten(2).transpose(1, 2)
        if token is not None:
            if self.token_proj is not None:
                token = self.token_proj(token)
            tokens = torch.cat((token.unsqueeze(1), tokens), dim=1)
        tokens = tokens + resize_positions(self.pos[key], self.position_grids[key], grid, self.num_prefix)
        for block in self.blocks:
            tokens = block(tokens, grid)
        return tokens, grid


def _pyramid_stages(
    config: MiTConfig,
    make_embed: Callable[[int, int, int], nn.Module],
    dims: Sequence[int],
    depths: Sequence[int],
    heads: Sequence[int],
    sr_ratios: Sequence[int],
    qkv_bias: bool,
    norm_eps: float,
    in_dims: Sequence[int],
    levels: Sequence[int],
    token_in_dims: Sequence[int | None],
) -> nn.ModuleList:
    """One side's stages. ``make_embed(spatial_dims, c_in, c_out)`` builds a stage's embedding per
    branch; ``levels`` are the encoder stages (1..4) whose grids the stages work on (position tables)."""
    return nn.ModuleList(
        PyramidStage(
            embed={branch_key(d): make_embed(d, in_dims[i], dim) for d in config.spatial_dims},
            dim=dim,
            depth=depths[i],
            num_heads=heads[i],
            sr_ratio=sr_ratios[i],
            qkv_bias=qkv_bias,
            norm_eps=norm_eps,
            position_grids=config.position_grids(level),
            token_in_dim=token_in_dims[i],
            config=config,
        )
        for i, (dim, level) in enumerate(zip(dims, levels))
    )


@dataclass
class EncoderOutput:
    """Encoder features. ``skips``: stem map and the maps of stages 1..3, finest first;
    ``tokens``: the last stage's tokens (B, P + N4, C4) with its ``grid``."""

    skips: list[torch.Tensor]
    tokens: torch.Tensor
    grid: tuple[int, ...]


class MiTEncoder(nn.Module):
    """Stem + four down-sampling stages. Input (B, C, *S) -> :class:`EncoderOutput`."""

    def __init__(self, config: MiTConfig) -> None:
        super().__init__()
        stem_in = {2: 3, 3: 1}
        self.stem = nn.ModuleDict(
            {
                branch_key(d): ConvNormAct(d, stem_in[d], config.stem_channels, 7, STEM_STRIDE[d], 3)
                for d in config.spatial_dims
            }
        )
        self.ssl_token = _truncated_normal(1, 1, config.encoder_dims[0]) if config.ssl_token else None
        in_dims = (config.stem_channels, *config.encoder_dims[:-1])
        self.stages = _pyramid_stages(
            config,
            lambda d, c_in, c_out: ConvNormAct(d, c_in, c_out, kernel_size=3, stride=2, padding=1),
            config.encoder_dims, config.encoder_depths, config.encoder_heads, config.encoder_sr_ratios,
            config.encoder_qkv_bias, config.encoder_norm_eps,
            in_dims=in_dims,
            levels=range(1, len(config.encoder_dims) + 1),
            token_in_dims=(None, *in_dims[1:]),  # stage 1 takes the SSL token as it is
        )

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        fmap = self.stem[branch_key(x.ndim - 2)](x)
        skips = [fmap]
        token = self.ssl_token[:, 0].expand(x.shape[0], -1) if self.ssl_token is not None else None
        for stage in self.stages[:-1]:
            fmap, token = split_tokens(*stage.tokens(fmap, token), stage.num_prefix)
            skips.append(fmap)
        tokens, grid = self.stages[-1].tokens(fmap, token)
        return EncoderOutput(skips, tokens, grid)


class MiTDecoder(nn.Module):
    """Three up-sampling stages with skips, then LayerNorm. :class:`EncoderOutput` -> tokens, grid.

    Output tokens (B, P + N1, decoder_dims[-1]) on the grid of encoder stage 1.
    """

    def __init__(self, config: MiTConfig) -> None:
        super().__init__()
        in_dims = (config.encoder_dims[-1], *config.decoder_dims[:-1])
        self.stages = _pyramid_stages(
            config,
            lambda d, c_in, c_out: CONV_TRANSPOSE[d](c_in, c_out, kernel_size=2, stride=2),
            config.decoder_dims, config.decoder_depths, config.decoder_heads, config.decoder_sr_ratios,
            config.decoder_qkv_bias, config.decoder_norm_eps,
            in_dims=in_dims,
            levels=range(len(config.encoder_dims) - 1, 0, -1),  # each decodes to an encoder stage's grid
            token_in_dims=in_dims,
        )
        self.norm = nn.LayerNorm(config.decoder_dims[-1], eps=config.decoder_norm_eps)

    def forward(self, encoded: EncoderOutput) -> tuple[torch.Tensor, tuple[int, ...]]:
        num_prefix = self.stages[0].num_prefix
        tokens, grid = encoded.tokens, encoded.grid
        for stage, skip in zip(self.stages, reversed(encoded.skips[1:])):
            tokens, grid = stage.tokens(*split_tokens(tokens, grid, num_prefix), skip)
        return self.norm(tokens), grid


class MiT(nn.Module):
    """MiT network with the paper's task heads.

    Args:
        config: hyper-parameters (see :data:`VARIANTS`).
        task: ``"embed"`` (encoder + decoder; forward gives the embedding), ``"segment"`` (encoder +
            decoder + :class:`SegmentationHead`; forward gives logits) or ``"classify"`` (encoder +
            :class:`TokenClassificationHead`; forward gives logits).
        num_classes: classes of the segment/classify head (background included for segmentation).

    Inputs: 2D (B, 3, H, W) — a 1-channel image is repeated to 3 — with H, W multiples of 32; 3D
    (B, 1, D, H, W) with D a multiple of 16 and H, W multiples of 32.
    Outputs: embed (B, embedding_dim); segment (B, num_classes, *S); classify (B, num_classes).
    """

    def __init__(self, config: MiTConfig | None = None, task: Task = "embed", num_classes: int | None = None):
        super().__init__()
        self.config = config = config or MiTConfig()
        if task not in ("embed", "segment", "classify"):
            raise ValueError(f"task must be 'embed', 'segment' or 'classify'; got {task!r}")
        if (task == "embed") != (num_classes is None):
            raise ValueError(f"task {task!r} " + ("takes no num_classes" if task == "embed" else "needs num_classes"))
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be at least 1; got {num_classes}")
        self.task = task
        self.encoder = MiTEncoder(config)
        self.decoder = MiTDecoder(config) if task != "classify" else None
        if task == "segment":
            self.seg_head = nn.ModuleDict(
                {
                    branch_key(d): SegmentationHead(
                        d, config.decoder_dims[-1], config.stem_channels, num_classes,
                        final_scale=(*STEM_STRIDE[d],),
                    )
                    for d in config.spatial_dims
                }
            )
        if task == "classify":
            self.cls_head = TokenClassificationHead(config.encoder_dims[-1], num_classes, config.encoder_norm_eps)
        self.apply(_init_weights)

    @property
    def embedding_dim(self) -> int:
        """Width of :meth:`embed`: the final SSL token (if any) then the pooled deepest encoder tokens."""
        token_dim = self.config.decoder_dims[-1] if self.decoder is not None else self.config.encoder_dims[-1]
        return token_dim * self.config.ssl_token + self.config.encoder_dims[-1]

    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        """Validate ``x`` and return it ready for the network (1-channel 2D images repeated to 3)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"MiT expects a torch.Tensor; got {type(x).__name__}")
        if x.ndim not in (4, 5):
            raise ValueError(
                "MiT expects a 2D batch (B, 1 or 3, H, W) or a 3D batch (B, 1, D, H, W); "
                f"got a {x.ndim}-D tensor of shape {tuple(x.shape)}"
            )
        dims = x.ndim - 2
        expected = "(B, 1 or 3, H, W)" if dims == 2 else "(B, 1, D, H, W)"
        if dims not in self.config.spatial_dims:
            built = " and ".join(f"{d}D" for d in self.config.spatial_dims)
            raise ValueError(f"this MiT was built without its {dims}D branch; it takes {built} input")
        if x.shape[0] == 0:
            raise ValueError(f"MiT got an empty batch: {tuple(x.shape)}")
        weight_dtype = self.encoder.stem[branch_key(dims)].conv.weight.dtype
        if x.dtype != weight_dtype:
            raise ValueError(
                f"MiT input has dtype {x.dtype} but the model's weights are {weight_dtype}; "
                f"convert with x.to({weight_dtype}) (or the model with .to(dtype))"
            )
        if x.shape[1] not in ((1, 3) if dims == 2 else (1,)):
            raise ValueError(f"MiT {dims}D input must be {expected}; got {x.shape[1]} channels in {tuple(x.shape)}")
        multiple = self.config.input_multiple(dims)
        spatial = tuple(x.shape[2:])
        deepest = self.config.token_grid(spatial, len(self.config.encoder_dims))
        if any(s == 0 or s % m for s, m in zip(spatial, multiple)) or math.prod(deepest) < 2:
            names = "H, W" if dims == 2 else "D, H, W"
            raise ValueError(
                f"MiT {dims}D input must be {expected} with ({names}) positive multiples of {multiple} "
                f"(the network's total stride), large enough for at least 2 positions at that stride "
                f"(e.g. {tuple(m * (1 + (i == dims - 1)) for i, m in enumerate(multiple))}); "
                f"got {tuple(x.shape)}. Pad or crop the image first."
            )
        if dims == 2 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return x

    def forward_features(self, x: torch.Tensor) -> tuple[EncoderOutput, torch.Tensor | None, tuple[int, ...]]:
        """Encoder output, then the decoder's normed tokens (B, P + N1, C) and grid (None, () without decoder)."""
        x = self.check_input(x)
        encoded = self.encoder(x)
        if self.decoder is None:
            return encoded, None, ()
        tokens, grid = self.decoder(encoded)
        return encoded, tokens, grid

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Embedding (B, embedding_dim): [final SSL token, mean of the deepest encoder patch tokens]."""
        encoded, decoded, _ = self.forward_features(x)
        prefix = int(self.config.ssl_token)
        pooled = encoded.tokens[:, prefix:].mean(dim=1)
        if not prefix:
            return pooled
        token = decoded[:, 0] if decoded is not None else encoded.tokens[:, 0]
        return torch.cat((token, pooled), dim=1)

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """Segmentation logits (B, num_classes, *S) at the input's size."""
        if self.task != "segment":
            raise RuntimeError(f"this MiT was built for task {self.task!r}, not 'segment'")
        encoded, decoded, grid = self.forward_features(x)
        fmap, _ = split_tokens(decoded, grid, int(self.config.ssl_token))
        return self.seg_head[branch_key(len(grid))](fmap, encoded.skips[0])

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Classification logits (B, num_classes)."""
        if self.task != "classify":
            raise RuntimeError(f"this MiT was built for task {self.task!r}, not 'classify'")
        encoded, _, _ = self.forward_features(x)
        return self.cls_head(encoded.tokens, int(self.config.ssl_token))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return {"embed": self.embed, "segment": self.segment, "classify": self.classify}[self.task](x)


def _truncated_normal(*shape: int) -> nn.Parameter:
    """A learned table (positions, SSL token) initialised N(0, 0.02), truncated, as the official code."""
    return nn.Parameter(nn.init.trunc_normal_(torch.empty(shape), std=0.02))


def _init_weights(module: nn.Module) -> None:
    """The official initialisation: trunc-normal linears, Kaiming (fan-out) convs, unit norms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.Conv2d, nn.Conv3d)):
        nn.init.kaiming_normal_(module.weight, mode="fan_out")
    elif isinstance(module, (nn.LayerNorm, nn.InstanceNorm2d, nn.InstanceNorm3d)) and module.weight is not None:
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def create_mit(
    variant: str = "mit7", task: Task = "embed", num_classes: int | None = None, **config_overrides: object
) -> MiT:
    """Build a MiT from a named variant (``mit7``, ``mit22``) with optional config overrides."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown MiT variant {variant!r}; known: {sorted(VARIANTS)}")
    base = VARIANTS[variant].to_kwargs()
    config = MiTConfig.from_kwargs({**base, **config_overrides})
    return MiT(config, task=task, num_classes=num_classes)
