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
import datetime
import math
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
import triton
import triton.testing

from medssl_kernels.sra import sra_attention_reference, sra_attention_triton
from medssl_zoo import mit
from medssl_zoo.files import write_atomically

H200_HBM_BYTES_PER_S = 4.8e12
H200_DENSE_FLOPS = 989e12  # bf16 and fp16, no sparsity
RIDGE_FLOPS_PER_BYTE = H200_DENSE_FLOPS / H200_HBM_BYTES_PER_S
MAX_RELATIVE_ERROR = 2e-2
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
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

    def intensity(self, element_size: int, with_backward: bool) -> float:
        """FLOPs per byte of the minimum traffic."""
        return self.flops(with_backward) / self.bytes(element_size, with_backward)

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


def check_correctness(shape: AttentionShape, inputs: Sequence[torch.Tensor], scale: float) -> str:
    """Ours in the inputs' dtype against the float32 reference on the same values; a markdown row of
    "max abs / relative" errors for out, dq, dk, dv (relative = max abs error / max |reference|)."""
    ours = output_and_gradients(sra_attention_triton, *inputs, scale)
    q, k, v, grad_out = (t.detach().float().requires_grad_(t.requires_grad) for t in inputs)
    expected = output_and_gradients(sra_attention_reference, q, k, v, grad_out, scale)
    cells = []
    for name, actual, reference in zip(("out", "dq", "dk", "dv"), ours, expected):
        max_abs = (actual.float() - reference).abs().max().item()
        relative = max_abs / max(reference.abs().max().item(), 1e-12)
        if not relative <= MAX_RELATIVE_ERROR:  # also catches NaN
            raise SystemExit(
                f"bench/kernels/sra.py: {shape.stage} ({shape.label()}): {name} of sra_attention_triton differs from the "
                f"float32 reference by {relative:.2e} relative (max abs {max_abs:.2e}), above {MAX_RELATIVE_ERROR:.0e}; "
                "fix the kernel before timing it"
            )
        cells.append(f"{max_abs:.1e} / {relative:.1e}")
    return f"| {shape.stage} | {shape.label()} | " + " | ".join(cells) + " |"


def median_ms(fn: Callable[[], object]) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def time_methods(inputs: Sequence[torch.Tensor], scale: float) -> dict[str, tuple[float, float]]:
    """Per method: median ms of the forward and of the forward + backward."""
    q, k, v, grad_out = inputs
    times = {}
    for name, fn in METHODS.items():
        with torch.no_grad():
            forward = median_ms(lambda fn=fn: fn(q, k, v, scale))
        both = median_ms(lambda fn=fn: torch.autograd.grad(fn(q, k, v, scale), (q, k, v), grad_out))
        times[name] = (forward, both)
    return times


TIMING_HEADER = (
    "| stage | B x H x Nq x Nk x D | FLOP/byte | bound | eager ms | SDPA ms | ours ms | eager/ours | SDPA/ours "
    "| ours TB/s (% of 4.8) | ours TFLOP/s (% of 989) |\n|" + "---|" * 11
)
CORRECTNESS_HEADER = "| stage | B x H x Nq x Nk x D | out | dq | dk | dv |\n|" + "---|" * 6


def bound(intensity: float) -> str:
    return "compute" if intensity >= RIDGE_FLOPS_PER_BYTE else "memory"


def timing_row(shape: AttentionShape, times: dict[str, tuple[float, float]], element_size: int, with_backward: bool) -> str:
    ms = {name: pair[with_backward] for name, pair in times.items()}
    intensity = shape.intensity(element_size, with_backward)
    bytes_per_s = shape.bytes(element_size, with_backward) / (ms["ours"] * 1e-3)
    flops_per_s = shape.flops(with_backward) / (ms["ours"] * 1e-3)
    return (
        f"| {shape.stage} | {shape.label()} | {intensity:.0f} | {bound(intensity)} | {ms['eager']:.3f} | {ms['SDPA']:.3f} "
        f"| {ms['ours']:.3f} | {ms['eager'] / ms['ours']:.2f}x | {ms['SDPA'] / ms['ours']:.2f}x "
        f"| {bytes_per_s / 1e12:.2f} ({100 * bytes_per_s / H200_HBM_BYTES_PER_S:.0f}%) "
        f"| {flops_per_s / 1e12:.1f} ({100 * flops_per_s / H200_DENSE_FLOPS:.0f}%) |"
    )


def shape_table(shapes: Sequence[AttentionShape], element_size: int) -> str:
    """Markdown table of the shapes, their work and traffic, and which side of the ridge point they sit."""
    lines = [
        "| stage | B x H x Nq x Nk x D | GFLOP fwd | MB fwd | FLOP/byte fwd | bound fwd | FLOP/byte fwd+bwd | bound fwd+bwd |",
        "|" + "---|" * 8,
    ]
    for shape in shapes:
        forward, both = shape.intensity(element_size, False), shape.intensity(element_size, True)
        lines.append(
            f"| {shape.stage} | {shape.label()} | {shape.flops(False) / 1e9:.1f} | {shape.bytes(element_size, False) / 1e6:.1f} "
            f"| {forward:.0f} | {bound(forward)} | {both:.0f} | {bound(both)} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", choices=("3d", "2d", "all"), default="all", help="which MiT-22 workload (default all)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="dtype of q, k, v (default bf16)")
    parser.add_argument("--dry-run", action="store_true", help="print the shape table and check it against MiT; no GPU, no timing")
    parser.add_argument("--output", type=Path, help="also write the results as markdown to this new file (e.g. bench/results/...)")
    args = parser.parse_args(argv)
    if args.output is not None:
        if args.dry_run:
            parser.error("--output records a timed run; drop --dry-run")
        if args.output.exists():
            parser.error(f"--output {args.output} already exists; choose a new file name (results are never overwritten)")
        if not args.output.parent.is_dir():
            parser.error(f"--output {args.output}: folder {args.output.parent} does not exist; create it first")
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
        f"- date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- device: {torch.cuda.get_device_name()}",
        f"- versions: torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}",
        f"- command: `{shlex.join(sys.orig_argv)}`",
        f"- workloads: {workloads}; dtype {args.dtype}; q, k, v in MiT's strided layouts",
        "- times: median of triton.testing.do_bench (L2 flushed); forward under no_grad; "
        "fwd+bwd = forward + autograd.grad(q, k, v)",
        "- ratios > 1: ours is faster. TB/s and TFLOP/s: ours, minimum traffic and FlashAttention FLOPs, as % of the H200's "
        f"4.8 TB/s and 989 TFLOP/s; ridge point {RIDGE_FLOPS_PER_BYTE:.0f} FLOP/byte",
    ])


def run(args: argparse.Namespace, shapes: Sequence[AttentionShape]) -> str:
    """Check and time every shape; the markdown report."""
    dtype = DTYPES[args.dtype]
    element_size = torch.empty((), dtype=dtype).element_size()
    correctness, forward, both = [], [], []
    torch.manual_seed(0)
    for shape in shapes:
        inputs = model_layout_inputs(shape, dtype, "cuda")
        scale = shape.head_dim**-0.5
        correctness.append(check_correctness(shape, inputs, scale))
        times = time_methods(inputs, scale)
        forward.append(timing_row(shape, times, element_size, with_backward=False))
        both.append(timing_row(shape, times, element_size, with_backward=True))
        print(f"errors (max abs / relative; out, dq, dk, dv) {correctness[-1]}", f"forward {forward[-1]}", f"fwd+bwd {both[-1]}",
              sep="\n", flush=True)
    return "\n\n".join([
        report_header(args),
        "## Forward\n\n" + "\n".join([TIMING_HEADER, *forward]),
        "## Forward + backward\n\n" + "\n".join([TIMING_HEADER, *both]),
        f"## Correctness: ours ({args.dtype}) vs the float32 reference, max abs / relative error\n\n"
        + "\n".join([CORRECTNESS_HEADER, *correctness]),
    ]) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("bench/kernels/sra.py times CUDA kernels and found no CUDA GPU (torch.cuda.is_available() is False); "
              "run it on a GPU machine, or use --dry-run for the shape table", file=sys.stderr)
        return 2
    shapes = selected_shapes(args)
    if args.dry_run:
        element_size = torch.empty((), dtype=DTYPES[args.dtype]).element_size()
        print(f"{VARIANT} SRA calls ({args.dtype}; shapes checked against the model's own calls on the meta device; "
              f"ridge point {RIDGE_FLOPS_PER_BYTE:.0f} FLOP/byte):\n")
        print(shape_table(shapes, element_size))
        return 0
    report = run(args, shapes)
    print("\n" + report)
    if args.output is not None:
        write_atomically(args.output, lambda temporary: temporary.write_text(report))
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
