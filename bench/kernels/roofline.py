"""What the kernel benchmarks share: H200 roofline numbers, timing, the correctness gate and the markdown report.

Each script (``sra.py``, ``window3d.py``) describes its shapes with :class:`KernelShape` and its methods as
forward closures; this module times them, checks ours against the float32 reference first, and writes rows.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import torch
import triton
import triton.testing

from medssl_zoo.files import write_atomically

H200_HBM_BYTES_PER_S = 4.8e12
H200_DENSE_FLOPS = 989e12  # bf16 and fp16, no sparsity
RIDGE_FLOPS_PER_BYTE = H200_DENSE_FLOPS / H200_HBM_BYTES_PER_S
MAX_RELATIVE_ERROR = 2e-2
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class KernelShape(Protocol):
    """One timed call: its stage name, a label of its sizes, and its work and minimum traffic."""

    stage: str

    def label(self) -> str: ...
    def flops(self, with_backward: bool) -> float: ...
    def bytes(self, element_size: int, with_backward: bool) -> float: ...


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--dtype``, ``--dry-run`` and ``--output``, shared by every kernel benchmark."""
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="dtype of q, k, v (default bf16)")
    parser.add_argument("--dry-run", action="store_true", help="print the shape table; no GPU, no timing")
    parser.add_argument("--output", type=Path, help="also write the results as markdown to this new file (e.g. bench/results/...)")


def check_output_argument(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.output is not None:
        if args.dry_run:
            parser.error("--output records a timed run; drop --dry-run")
        if args.output.exists():
            parser.error(f"--output {args.output} already exists; choose a new file name (results are never overwritten)")
        if not args.output.parent.is_dir():
            parser.error(f"--output {args.output}: folder {args.output.parent} does not exist; create it first")


def element_size(dtype_name: str) -> int:
    return torch.empty((), dtype=DTYPES[dtype_name]).element_size()


def median_ms(fn: Callable[[], object]) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def time_methods(
    forwards: Mapping[str, Callable[[], torch.Tensor]], wrt: Sequence[torch.Tensor], grad_out: torch.Tensor
) -> dict[str, tuple[float, float]]:
    """Per method: median ms of its forward (under no_grad) and of forward + ``autograd.grad`` for ``wrt``."""
    times = {}
    for name, forward in forwards.items():
        with torch.no_grad():
            forward_ms = median_ms(forward)
        both_ms = median_ms(lambda forward=forward: torch.autograd.grad(forward(), tuple(wrt), grad_out))
        times[name] = (forward_ms, both_ms)
    return times


def correctness_row(
    script: str,
    kernel: str,
    shape: KernelShape,
    names: Sequence[str],
    ours: Sequence[torch.Tensor],
    expected: Sequence[torch.Tensor],
) -> str:
    """A markdown row of "max abs / relative" errors of ``ours`` against the float32 ``expected``; stops the run
    (SystemExit) above :data:`MAX_RELATIVE_ERROR`, as there is no point timing a wrong kernel."""
    cells = []
    for name, actual, reference in zip(names, ours, expected):
        max_abs = (actual.float() - reference).abs().max().item()
        relative = max_abs / max(reference.abs().max().item(), 1e-12)
        if not relative <= MAX_RELATIVE_ERROR:  # also catches NaN
            raise SystemExit(
                f"{script}: {shape.stage} ({shape.label()}): {name} of {kernel} differs from the float32 reference by "
                f"{relative:.2e} relative (max abs {max_abs:.2e}), above {MAX_RELATIVE_ERROR:.0e}; "
                "fix the kernel before timing it"
            )
        cells.append(f"{max_abs:.1e} / {relative:.1e}")
    return f"| {shape.stage} | {shape.label()} | " + " | ".join(cells) + " |"


def intensity(shape: KernelShape, element_size: int, with_backward: bool) -> float:
    """FLOPs per byte of the shape's minimum traffic."""
    return shape.flops(with_backward) / shape.bytes(element_size, with_backward)


def bound(intensity: float) -> str:
    return "compute" if intensity >= RIDGE_FLOPS_PER_BYTE else "memory"


def timing_header(shape_column: str) -> str:
    return (
        f"| stage | {shape_column} | FLOP/byte | bound | eager ms | SDPA ms | ours ms | eager/ours | SDPA/ours "
        "| ours TB/s (% of 4.8) | ours TFLOP/s (% of 989) |\n|" + "---|" * 11
    )


def correctness_header(shape_column: str, names: Sequence[str]) -> str:
    return f"| stage | {shape_column} | " + " | ".join(names) + " |\n|" + "---|" * (2 + len(names))


def method_lines(grad_wrt: str, flop_count: str) -> list[str]:
    """The report lines that say how methods were timed (``grad_wrt``: what ``autograd.grad`` differentiates)
    and how ratios and rates read (``flop_count``: which FLOPs the rates count)."""
    return [
        "- times: median of triton.testing.do_bench (L2 flushed); forward under no_grad; "
        f"fwd+bwd = forward + autograd.grad({grad_wrt})",
        f"- ratios > 1: ours is faster. TB/s and TFLOP/s: ours, minimum traffic and {flop_count}, as % of the H200's "
        f"4.8 TB/s and 989 TFLOP/s; ridge point {RIDGE_FLOPS_PER_BYTE:.0f} FLOP/byte",
    ]


def check_and_time(
    shapes: Sequence[KernelShape],
    dtype_name: str,
    names: Sequence[str],
    measure: Callable[[KernelShape, torch.dtype], tuple[str, Mapping[str, tuple[float, float]]]],
) -> list[tuple[str, str, str]]:
    """Per shape, ``measure`` (shape, dtype) -> (its :func:`correctness_row`, its :func:`time_methods` times),
    which checks before it times, so a wrong kernel stops the run; the ``(correctness, forward,
    forward + backward)`` rows for :func:`report`, each printed as it comes."""
    size = element_size(dtype_name)
    rows = []
    torch.manual_seed(0)
    for shape in shapes:
        correctness, times = measure(shape, DTYPES[dtype_name])
        forward, both = (timing_row(shape, times, size, with_backward) for with_backward in (False, True))
        rows.append((correctness, forward, both))
        print(f"errors (max abs / relative; {', '.join(names)}) {correctness}\nforward {forward}\nfwd+bwd {both}", flush=True)
    return rows


def timing_row(shape: KernelShape, times: Mapping[str, tuple[float, float]], element_size: int, with_backward: bool) -> str:
    ms = {name: pair[with_backward] for name, pair in times.items()}
    flop_per_byte = intensity(shape, element_size, with_backward)
    bytes_per_s = shape.bytes(element_size, with_backward) / (ms["ours"] * 1e-3)
    flops_per_s = shape.flops(with_backward) / (ms["ours"] * 1e-3)
    return (
        f"| {shape.stage} | {shape.label()} | {flop_per_byte:.0f} | {bound(flop_per_byte)} | {ms['eager']:.3f} | {ms['SDPA']:.3f} "
        f"| {ms['ours']:.3f} | {ms['eager'] / ms['ours']:.2f}x | {ms['SDPA'] / ms['ours']:.2f}x "
        f"| {bytes_per_s / 1e12:.2f} ({100 * bytes_per_s / H200_HBM_BYTES_PER_S:.0f}%) "
        f"| {flops_per_s / 1e12:.1f} ({100 * flops_per_s / H200_DENSE_FLOPS:.0f}%) |"
    )


def shape_table(
    shapes: Sequence[KernelShape],
    element_size: int,
    shape_column: str,
    extra: tuple[str, Callable[[KernelShape], str]] | None = None,
) -> str:
    """Markdown table of the shapes, their work and traffic, and which side of the ridge point they sit;
    ``extra`` is an optional (header, cell) column after the shape."""
    extra_header = f" {extra[0]} |" if extra else ""
    lines = [
        f"| stage | {shape_column} |{extra_header} GFLOP fwd | MB fwd | FLOP/byte fwd | bound fwd | FLOP/byte fwd+bwd "
        "| bound fwd+bwd |",
        "|" + "---|" * (8 + bool(extra)),
    ]
    for shape in shapes:
        forward, both = intensity(shape, element_size, False), intensity(shape, element_size, True)
        extra_cell = f" {extra[1](shape)} |" if extra else ""
        lines.append(
            f"| {shape.stage} | {shape.label()} |{extra_cell} {shape.flops(False) / 1e9:.1f} "
            f"| {shape.bytes(element_size, False) / 1e6:.1f} | {forward:.0f} | {bound(forward)} | {both:.0f} | {bound(both)} |"
        )
    return "\n".join(lines)


def environment_lines() -> list[str]:
    """The report lines that say when, on what and how a run was made."""
    return [
        f"- date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- device: {torch.cuda.get_device_name()}",
        f"- versions: torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}",
        f"- command: `{shlex.join(sys.orig_argv)}`",
    ]


def report(
    header: str, shape_column: str, names: Sequence[str], dtype_name: str, rows: Sequence[tuple[str, str, str]]
) -> str:
    """The markdown report: ``header``, then forward, forward + backward and correctness tables from ``rows``
    (one ``(correctness, forward, forward + backward)`` triple per shape)."""
    correctness, forward, both = zip(*rows) if rows else ((), (), ())
    return "\n\n".join([
        header,
        "## Forward\n\n" + "\n".join([timing_header(shape_column), *forward]),
        "## Forward + backward\n\n" + "\n".join([timing_header(shape_column), *both]),
        f"## Correctness: ours ({dtype_name}) vs the float32 reference, max abs / relative error\n\n"
        + "\n".join([correctness_header(shape_column, names), *correctness]),
    ]) + "\n"


def no_cuda(script: str) -> int:
    print(
        f"{script} times CUDA kernels and found no CUDA GPU (torch.cuda.is_available() is False); "
        "run it on a GPU machine, or use --dry-run for the shape table",
        file=sys.stderr,
    )
    return 2


def publish(text: str, output: Path | None) -> None:
    """Print the report and, if asked, write it (atomically, to a new file)."""
    print("\n" + text)
    if output is not None:
        write_atomically(output, lambda temporary: temporary.write_text(text))
        print(f"wrote {output}")
