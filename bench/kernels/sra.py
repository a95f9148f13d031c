"""The fused Triton SRA kernel against eager attention and PyTorch's SDPA, at every attention call of MiT-22.

    .venv/bin/python bench/kernels/sra.py                          # all shapes, bf16 (needs a CUDA GPU)
    .venv/bin/python bench/kernels/sra.py --shapes 3d --dtype fp16
    .venv/bin/python bench/kernels/sra.py --output bench/results/sra-h200.md
    .venv/bin/python bench/kernels/sra.py --dry-run                 # the shape table only; runs anywhere

Shapes: MiT-22 (``medssl_zoo.mit.VARIANTS["mit22"]``) on a 3D patch 64 x 192 x 192 (batch 2) and a 2D image
512 x 512 (batch 8): every encoder stage and every decoder stage, since both use spatial-reduction attention.
Queries are a stage's token grid plus the SSL token; keys/values the grid reduced by the stage's strided conv
(kernel = stride = sr ratio) plus the SSL token. The derived shapes are checked against the calls the model
itself makes on the meta device. Inputs have the layouts MiT hands over (strided views of the projections).

Per shape: a correctness check first (ours in the benchmark dtype against the float32 reference on the same
inputs: output and dq, dk, dv; it stops the run above 2e-2 relative), then the median time
(``triton.testing.do_bench``, L2 flushed between calls) of the forward (under ``torch.no_grad``) and of the
forward + backward (``torch.autograd.grad`` with respect to q, k, v) of eager attention, SDPA and ours.
Achieved rates count the minimum traffic (q, k, v read and the output written once; the backward adds dO
read and dq, dk, dv written) and FlashAttention's FLOPs (4 B H Nq Nk D forward, 2.5x that backward); they are
given as percentages of an H200 (4.8 TB/s HBM, 989 TFLOP/s dense bf16/fp16).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from unittest import mock

import roofline
import torch
import torch.nn.functional as F

from medssl_kernels.sra import sra_attention_reference, sra_attention_triton
from medssl_zoo import mit

VARIANT = "mit22"

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


METHODS: dict[str, Attention] = {"eager": sra_attention_reference, "SDPA": sdpa, "ours": sra_attention_triton}


@dataclass(frozen=True)
class Workload:
    """A MiT input: (batch, channels, *size)."""

    name: str
    batch: int
    channels: int
    size: tuple[int, ...]


WORKLOADS = {"3d": Workload("3d", 2, 1, (64, 192, 192)), "2d": Workload("2d", 8, 3, (512, 512))}


@dataclass(frozen=True)
class AttentionShape:
    """One SRA call: q (batch, heads, num_queries, head_dim), k and v (batch, heads, num_keys, head_dim)."""

    stage: str
    batch: int
    heads: int
    num_queries: int
    num_keys: int
    head_dim: int

    @property
    def q_and_k_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return (self.batch, self.heads, self.num_queries, self.head_dim), (self.batch, self.heads, self.num_keys, self.head_dim)

    def flops(self, with_backward: bool) -> float:
        """FlashAttention's count: two matmuls forward (4 B H Nq Nk D), 2.5x that for the backward."""
        forward = 4.0 * self.batch * self.heads * self.num_queries * self.num_keys * self.head_dim
        return forward * 3.5 if with_backward else forward

    def bytes(self, element_size: int, with_backward: bool) -> float:
        """Minimum HBM traffic: q, k, v read and o written once; the backward adds dO read and dq, dk, dv written."""
        forward = element_size * self.batch * self.heads * self.head_dim * 2 * (self.num_queries + self.num_keys)
        return 2 * forward if with_backward else forward

    def label(self) -> str:
        return f"{self.batch}x{self.heads}x{self.num_queries}x{self.num_keys}x{self.head_dim}"


def mit_attention_shapes(config: mit.MiTConfig, workload: Workload) -> list[AttentionShape]:
    """The SRA call of every stage of a MiT forward on ``workload``: encoder 1..4, then decoder 1..3.

    A stage on the grid of encoder level ``l`` has ``token_grid(size, l)`` query tokens; its reduction conv
    (kernel = stride = sr, no padding) leaves ``grid // sr`` per axis for the keys; the SSL token joins both.
    """
    ssl = int(config.ssl_token)
    levels = len(config.encoder_dims)
    encoder = zip(range(1, levels + 1), config.encoder_dims, config.encoder_heads, config.encoder_sr_ratios)
    decoder = zip(range(levels - 1, 0, -1), config.decoder_dims, config.decoder_heads, config.decoder_sr_ratios)
    stages = [(f"encoder {i + 1}", *stage) for i, stage in enumerate(encoder)]
    stages += [(f"decoder {i + 1}", *stage) for i, stage in enumerate(decoder)]
    shapes = []
    for name, level, dim, heads, sr_ratio in stages:
        grid = config.token_grid(workload.size, level)
        reduced = tuple(g // sr_ratio for g in grid)
        shapes.append(
            AttentionShape(
                f"{workload.name} {name}", workload.batch, heads, ssl + math.prod(grid), ssl + math.prod(reduced), dim // heads
            )
        )
    return shapes


def traced_attention_shapes(config: mit.MiTConfig, workload: Workload) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(q shape, k shape) of every distinct ``sra_attention`` call of the real model, in call order.

    Runs MiT (segment task) on the meta device: shapes only, no memory, no arithmetic.
    """
    calls = []

    def record(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
        calls.append((tuple(q.shape), tuple(k.shape)))
        return torch.empty_like(q)

    with mock.patch.object(mit, "sra_attention", record), torch.device("meta"):
        model = mit.MiT(config, task="segment", num_classes=2)
        model(torch.empty(workload.batch, workload.channels, *workload.size))
    return list(dict.fromkeys(calls))


def check_shapes_against_model(config: mit.MiTConfig, workload: Workload, shapes: Sequence[AttentionShape]) -> None:
    derived = list(dict.fromkeys(shape.q_and_k_shapes for shape in shapes))
    traced = traced_attention_shapes(config, workload)
    if derived != traced:
        raise SystemExit(
            f"bench/kernels/sra.py: the derived {workload.name} attention shapes {derived} differ from the calls MiT "
            f"makes {traced}; update mit_attention_shapes to follow medssl_zoo/mit.py"
        )


def model_layout_inputs(shape: AttentionShape, dtype: torch.dtype, device: str) -> tuple[torch.Tensor, ...]:
    """q, k, v as MiT hands them over, and a gradient for the output.

    q is a (B, Nq, H*D) projection viewed as (B, H, Nq, D); k and v are views of one (B, Nk, 2*H*D) projection
    permuted to (2, B, H, Nk, D). The projections require grad, so q, k, v are differentiable views.
    """
    b, h, nq, nk, d = shape.batch, shape.heads, shape.num_queries, shape.num_keys, shape.head_dim
    q_projection = torch.randn(b, nq, h * d, dtype=dtype, device=device, requires_grad=True)
    kv_projection = torch.randn(b, nk, 2 * h * d, dtype=dtype, device=device, requires_grad=True)
    q = q_projection.view(b, nq, h, d).transpose(1, 2)
    k, v = kv_projection.view(b, nk, 2, h, d).permute(2, 0, 3, 1, 4)
    return q, k, v, torch.randn(b, h, nq, d, dtype=dtype, device=device)


def output_and_gradients(fn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad_out: torch.Tensor,
                         scale: float) -> tuple[torch.Tensor, ...]:
    out = fn(q, k, v, scale)
    return (out.detach(), *torch.autograd.grad(out, (q, k, v), grad_out))


NAMES = ("out", "dq", "dk", "dv")
SHAPE_COLUMN = "B x H x Nq x Nk x D"


def check_correctness(shape: AttentionShape, inputs: Sequence[torch.Tensor], scale: float) -> str:
    """Ours in the inputs' dtype against the float32 reference on the same values (out, dq, dk, dv)."""
    ours = output_and_gradients(sra_attention_triton, *inputs, scale)
    q, k, v, grad_out = (t.detach().float().requires_grad_(t.requires_grad) for t in inputs)
    expected = output_and_gradients(sra_attention_reference, q, k, v, grad_out, scale)
    return roofline.correctness_row("bench/kernels/sra.py", "sra_attention_triton", shape, NAMES, ours, expected)


def time_methods(inputs: Sequence[torch.Tensor], scale: float) -> dict[str, tuple[float, float]]:
    """Per method: median ms of the forward and of the forward + backward."""
    q, k, v, grad_out = inputs
    forwards = {name: (lambda fn=fn: fn(q, k, v, scale)) for name, fn in METHODS.items()}
    return roofline.time_methods(forwards, (q, k, v), grad_out)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", choices=("3d", "2d", "all"), default="all", help="which MiT-22 workload (default all)")
    roofline.add_arguments(parser)
    args = parser.parse_args(argv)
    roofline.check_output_argument(parser, args)
    return args


def selected_shapes(args: argparse.Namespace) -> list[AttentionShape]:
    """The shapes of the chosen workloads, each checked against the model's own calls."""
    config = mit.VARIANTS[VARIANT]
    shapes = []
    for name in ("3d", "2d") if args.shapes == "all" else (args.shapes,):
        workload_shapes = mit_attention_shapes(config, WORKLOADS[name])
        check_shapes_against_model(config, WORKLOADS[name], workload_shapes)
        shapes += workload_shapes
    return shapes


def report_header(args: argparse.Namespace) -> str:
    workloads = ", ".join(
        f"{w.name} {'x'.join(map(str, w.size))} (batch {w.batch})" for name, w in WORKLOADS.items() if args.shapes in (name, "all")
    )
    return "\n".join([
        f"# SRA attention: fused Triton kernel vs eager and SDPA, {VARIANT} shapes",
        "",
        *roofline.environment_lines(),
        f"- workloads: {workloads}; dtype {args.dtype}; q, k, v in MiT's strided layouts",
        *roofline.method_lines("q, k, v", "FlashAttention FLOPs"),
    ])


def run(args: argparse.Namespace, shapes: Sequence[AttentionShape]) -> str:
    """Check and time every shape; the markdown report."""

    def measure(shape: AttentionShape, dtype: torch.dtype) -> tuple[str, dict[str, tuple[float, float]]]:
        inputs = model_layout_inputs(shape, dtype, "cuda")
        scale = shape.head_dim**-0.5
        return check_correctness(shape, inputs, scale), time_methods(inputs, scale)

    rows = roofline.check_and_time(shapes, args.dtype, NAMES, measure)
    return roofline.report(report_header(args), SHAPE_COLUMN, NAMES, args.dtype, rows)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        return roofline.no_cuda("bench/kernels/sra.py")
    shapes = selected_shapes(args)
    if args.dry_run:
        print(f"{VARIANT} SRA calls ({args.dtype}; shapes checked against the model's own calls on the meta device; "
              f"ridge point {roofline.RIDGE_FLOPS_PER_BYTE:.0f} FLOP/byte):\n")
        print(roofline.shape_table(shapes, roofline.element_size(args.dtype), SHAPE_COLUMN))
        return 0
    roofline.publish(run(args, shapes), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
