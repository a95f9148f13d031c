"""The fused Triton 3D shifted-window attention against MONAI-style eager attention and SDPA, at Swin UNETR's shapes.

    .venv/bin/python bench/kernels/window3d.py                           # stages 1 and 2, bf16, batch 2 (needs a CUDA GPU)
    .venv/bin/python bench/kernels/window3d.py --batch 1 --dtype fp16
    .venv/bin/python bench/kernels/window3d.py --output bench/results/window3d-h200.md
    .venv/bin/python bench/kernels/window3d.py --dry-run                 # the shape table only; runs anywhere

Shapes: Swin UNETR (MONAI's defaults: feature size 48, heads 3/6/12/24, patch size 2, window 7) on a 96^3 input.
Stage 1 runs on the 48^3 token grid with 3 heads of dim 16, stage 2 on 24^3 with 6 heads of dim 16; MONAI pads
the grid to a multiple of the window (49^3 and 28^3) before the attention. Swin blocks alternate unshifted and
shifted windows (shift 3), so each stage is timed both ways. q, k, v are the strided views of one qkv projection
(B, D, H, W, 3 * heads * head_dim), as the model hands them over.

Per shape: a correctness check first (ours in the benchmark dtype against the float32 reference on the same
values: output and dq, dk, dv, d(table); the run stops above 2e-2 relative), then the median time
(``triton.testing.do_bench``, L2 flushed) of the forward (under ``torch.no_grad``) and of the forward + backward
(``torch.autograd.grad`` for q, k, v and the bias table) of

- eager: :func:`window_attention_3d_reference`, MONAI's steps (roll, partition, matmul + bias + mask, softmax,
  matmul, reverse, roll back);
- SDPA: roll and partition, then ``F.scaled_dot_product_attention`` with the gathered bias and the shift mask
  folded into ``attn_mask``, then reverse and roll back;
- ours: :func:`window_attention_3d_triton`.

FLOPs count the two matmuls (4 B heads windows N^2 head_dim forward, 2.5x that backward); traffic is the minimum
(q, k, v read and o written once; the backward adds dO read and dq, dk, dv written).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import roofline
import torch
import torch.nn.functional as F

from medssl_kernels.window_attention import (
    relative_position_bias,
    shift_mask,
    window_attention_3d_reference,
    window_attention_3d_triton,
    window_partition,
    window_reverse,
)

INPUT_SIZE = 96
WINDOW = (7, 7, 7)
SHIFT = (3, 3, 3)

WindowAttention = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class WindowShape:
    """One window-attention call: q, k, v (batch, heads, *grid, head_dim), the grid padded to the window."""

    stage: str
    batch: int
    heads: int
    grid: tuple[int, int, int]
    head_dim: int
    shift: tuple[int, int, int]

    @property
    def tokens_per_window(self) -> int:
        return WINDOW[0] * WINDOW[1] * WINDOW[2]

    @property
    def windows(self) -> int:
        return (self.grid[0] // WINDOW[0]) * (self.grid[1] // WINDOW[1]) * (self.grid[2] // WINDOW[2])

    def flops(self, with_backward: bool) -> float:
        """Two matmuls per window forward (4 B heads windows N^2 head_dim), 2.5x that for the backward."""
        forward = 4.0 * self.batch * self.heads * self.windows * self.tokens_per_window**2 * self.head_dim
        return forward * 3.5 if with_backward else forward

    def bytes(self, element_size: int, with_backward: bool) -> float:
        """Minimum HBM traffic: q, k, v read and o written once; the backward doubles it (dO, dq, dk, dv)."""
        forward = 4.0 * element_size * self.batch * self.heads * self.windows * self.tokens_per_window * self.head_dim
        return 2 * forward if with_backward else forward

    def label(self) -> str:
        return f"{self.batch}x{self.heads}x{'x'.join(map(str, self.grid))}x{self.head_dim} shift {max(self.shift)}"


def swin_unetr_shapes(batch: int) -> list[WindowShape]:
    """Stages 1 and 2 of Swin UNETR (feature 48) on a 96^3 input, unshifted and shifted."""
    shapes = []
    for stage, (heads, downsampling) in enumerate(((3, 2), (6, 4)), start=1):
        size = INPUT_SIZE // downsampling
        padded = -(-size // WINDOW[0]) * WINDOW[0]
        for shift in ((0, 0, 0), SHIFT):
            shapes.append(WindowShape(f"stage {stage} ({size}^3 -> {padded}^3)", batch, heads, (padded,) * 3, 16, shift))
    return shapes


def sdpa_window_attention(q, k, v, table, window_size, shift_size, scale) -> torch.Tensor:
    """Roll + partition, SDPA with the bias and the shift mask as ``attn_mask``, reverse + roll back."""
    batch, heads, depth, height, width, head_dim = q.shape
    tokens = window_size[0] * window_size[1] * window_size[2]
    shifted = any(shift_size)
    q, k, v = (torch.roll(t, tuple(-s for s in shift_size), dims=(2, 3, 4)) if shifted else t for t in (q, k, v))
    q, k, v = (window_partition(t, window_size).flatten(1, 2) for t in (q, k, v))  # (B, heads * windows, N, head_dim)
    mask = relative_position_bias(table, window_size, tokens).unsqueeze(1)  # (heads, 1, N, N)
    if shifted:
        mask = mask + shift_mask((depth, height, width), window_size, shift_size, q.device)
    mask = mask.expand(heads, q.shape[1] // heads, tokens, tokens).reshape(1, q.shape[1], tokens, tokens)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype), scale=scale)
    out = window_reverse(out.unflatten(1, (heads, -1)), (depth, height, width), window_size)
    return torch.roll(out, tuple(shift_size), dims=(2, 3, 4)) if shifted else out


METHODS: dict[str, WindowAttention] = {
    "eager": window_attention_3d_reference,
    "SDPA": sdpa_window_attention,
    "ours": window_attention_3d_triton,
}


def model_layout_inputs(shape: WindowShape, dtype: torch.dtype, device: str) -> tuple[torch.Tensor, ...]:
    """q, k, v as views of one (B, D, H, W, 3 * heads * head_dim) projection; the bias table (float32, as the
    model's parameter); a gradient for the output."""
    projection = torch.randn(shape.batch, *shape.grid, 3 * shape.heads * shape.head_dim, dtype=dtype, device=device)
    projection.requires_grad_(True)
    q, k, v = projection.unflatten(-1, (3, shape.heads, shape.head_dim)).permute(4, 0, 5, 1, 2, 3, 6)
    entries = (2 * WINDOW[0] - 1) * (2 * WINDOW[1] - 1) * (2 * WINDOW[2] - 1)
    table = (torch.randn(entries, shape.heads, device=device) * 0.02).requires_grad_(True)
    grad_out = torch.randn(shape.batch, shape.heads, *shape.grid, shape.head_dim, dtype=dtype, device=device)
    return q, k, v, table, grad_out


def output_and_gradients(fn: WindowAttention, shape: WindowShape, q, k, v, table, grad_out) -> tuple[torch.Tensor, ...]:
    out = fn(q, k, v, table, WINDOW, shape.shift, shape.head_dim**-0.5)
    return (out.detach(), *torch.autograd.grad(out, (q, k, v, table), grad_out))


NAMES = ("out", "dq", "dk", "dv", "dtable")
SHAPE_COLUMN = "B x heads x grid x D"


def check_correctness(shape: WindowShape, inputs: Sequence[torch.Tensor]) -> str:
    """Ours in the inputs' dtype against the float32 reference on the same values (out, dq, dk, dv, d(table))."""
    ours = output_and_gradients(window_attention_3d_triton, shape, *inputs)
    q, k, v, table, grad_out = (t.detach().float().requires_grad_(t.requires_grad) for t in inputs)
    expected = output_and_gradients(window_attention_3d_reference, shape, q, k, v, table, grad_out)
    return roofline.correctness_row("bench/kernels/window3d.py", "window_attention_3d_triton", shape, NAMES, ours, expected)


def time_methods(shape: WindowShape, inputs: Sequence[torch.Tensor]) -> dict[str, tuple[float, float]]:
    """Per method: median ms of the forward and of the forward + backward."""
    q, k, v, table, grad_out = inputs
    scale = shape.head_dim**-0.5
    forwards = {name: (lambda fn=fn: fn(q, k, v, table, WINDOW, shape.shift, scale)) for name, fn in METHODS.items()}
    return roofline.time_methods(forwards, (q, k, v, table), grad_out)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, choices=(1, 2), default=2, help="batch size (default 2)")
    roofline.add_arguments(parser)
    args = parser.parse_args(argv)
    roofline.check_output_argument(parser, args)
    return args


def report_header(args: argparse.Namespace) -> str:
    return "\n".join(
        [
            "# 3D shifted-window attention: fused Triton kernel vs MONAI-style eager and SDPA, Swin UNETR shapes",
            "",
            *roofline.environment_lines(),
            f"- workload: Swin UNETR feature 48 on {INPUT_SIZE}^3, batch {args.batch}, window 7, dtype {args.dtype}; "
            "q, k, v as views of one qkv projection; float32 bias table",
            *roofline.method_lines("q, k, v, table", "matmul FLOPs"),
        ]
    )


def run(args: argparse.Namespace, shapes: Sequence[WindowShape]) -> str:
    """Check and time every shape; the markdown report."""

    def measure(shape: WindowShape, dtype: torch.dtype) -> tuple[str, dict[str, tuple[float, float]]]:
        inputs = model_layout_inputs(shape, dtype, "cuda")
        return check_correctness(shape, inputs), time_methods(shape, inputs)

    rows = roofline.check_and_time(shapes, args.dtype, NAMES, measure)
    return roofline.report(report_header(args), SHAPE_COLUMN, NAMES, args.dtype, rows)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    shapes = swin_unetr_shapes(args.batch)
    if args.dry_run:
        print(f"Swin UNETR window-attention calls ({args.dtype}; ridge point {roofline.RIDGE_FLOPS_PER_BYTE:.0f} FLOP/byte):\n")
        windows = ("windows x tokens", lambda shape: f"{shape.windows} x {shape.tokens_per_window}")
        print(roofline.shape_table(shapes, roofline.element_size(args.dtype), SHAPE_COLUMN, windows))
        return 0
    if not torch.cuda.is_available():
        return roofline.no_cuda("bench/kernels/window3d.py")
    roofline.publish(run(args, shapes), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
