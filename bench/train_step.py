"""Steps/s of UniMiSS pre-training of MiT-7 with the reference SRA attention against the Triton kernel.

    .venv/bin/python bench/train_step.py                      # MiT-7, batch 8, paper crops, bf16 (needs a CUDA GPU)
    .venv/bin/python bench/train_step.py --batch-size 24 --output bench/results/train-step-h200.md
    .venv/bin/python bench/train_step.py --dry-run            # one tiny step per domain on CPU; no timing

One training step is ``UniMiSSTrainer.step`` as ``medssl-train pretrain unimiss`` runs it: student forward
and backward under bf16 autocast, teacher forward, loss, per-parameter clipping, AdamW, EMA and centre
update. A 2D step takes B pairs of 224 x 224 views; a 3D step B pairs of 16 x 96 x 96 volumes, whose
16 x 2B slices also run through the 2D path (the volume-slice loss). Views are fixed random tensors on
the GPU, so data loading is not timed. Both backends run in the same process on the same trainer:
``MEDSSL_KERNELS=torch`` (the plain-PyTorch reference attention) and ``MEDSSL_KERNELS=triton`` (the fused
SRA kernel), in two alternating rounds, each round ``--warmup`` untimed then ``--steps`` timed steps per
domain; the best round counts. Before timing, the student's logits of one batch under each backend are
compared (bf16; the run stops above 5e-2 relative). It prints steps/s per backend and domain and the
ratio triton/torch (> 1: the kernel is faster) with the peak GPU memory of each.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from medssl_kernels.dispatch import KERNELS_ENV
from medssl_train.distributed import DistributedContext
from medssl_train.unimiss import PretrainConfig, UniMiSSTrainer
from medssl_zoo import get_card
from medssl_zoo.files import write_atomically

CARD = "unimiss-mit7"
CROPS = {2: (224, 224), 3: (16, 96, 96)}
BACKENDS = ("torch", "triton")
MAX_RELATIVE_ERROR = 5e-2
#: --dry-run: MiT-7 at test widths and small crops, so one step of each domain runs in seconds on a CPU.
DRY_RUN_KWARGS = {"encoder_dims": [16, 32, 64, 128], "encoder_heads": [1, 1, 2, 4], "decoder_dims": [64, 32, 16],
                  "decoder_heads": [4, 2, 1], "stem_channels": 8}
DRY_RUN_CROPS = {2: (64, 64), 3: (16, 32, 64)}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=8, help="view pairs per step (default 8)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per backend, domain and round (default 20)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before each timing (default 5)")
    parser.add_argument("--out-dim", type=int, default=PretrainConfig.out_dim, help="DINO head width (default 65536)")
    parser.add_argument("--dry-run", action="store_true", help="one tiny step per domain on CPU; no GPU, no timing")
    parser.add_argument("--output", type=Path, help="also write the report as markdown to this new file")
    args = parser.parse_args(argv)
    if args.output is not None and (args.dry_run or args.output.exists()):
        parser.error("--output records a timed run into a new file; drop --dry-run or choose a file that does not exist")
    if min(args.batch_size, args.steps, args.out_dim) < 1 or args.warmup < 0:
        parser.error("--batch-size, --steps and --out-dim must be at least 1, --warmup not negative")
    return args


def make_trainer(args: argparse.Namespace, device: torch.device, dry_run: bool) -> UniMiSSTrainer:
    card = get_card(CARD)
    if dry_run:
        card = dataclasses.replace(card, kwargs={**card.kwargs, **DRY_RUN_KWARGS})
    config = PretrainConfig(steps=1_000_000, batch_size=args.batch_size, out_dim=args.out_dim, warmup_steps=0)
    return UniMiSSTrainer(card, config, DistributedContext(device=device))


def random_views(batch_size: int, crops: dict[int, tuple[int, ...]], device: torch.device) -> dict[int, torch.Tensor]:
    """Fixed (2B, 1, *crop) view batches per domain."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    return {d: torch.rand((2 * batch_size, 1, *crop), generator=generator).to(device) for d, crop in crops.items()}


def dry_run(args: argparse.Namespace) -> int:
    os.environ[KERNELS_ENV] = "torch"
    trainer = make_trainer(argparse.Namespace(**{**vars(args), "batch_size": 1, "out_dim": 64}), torch.device("cpu"), True)
    views = random_views(1, DRY_RUN_CROPS, torch.device("cpu"))
    for step, domain in enumerate((2, 3)):
        start = time.perf_counter()
        loss = trainer.step(step, domain, views[domain]).item()
        print(f"dry run: one {domain}D step of {CARD} at test widths, crops {DRY_RUN_CROPS[domain]}, batch 1, CPU, "
              f"{KERNELS_ENV}=torch: loss {loss:.4f} ({time.perf_counter() - start:.1f} s)")
    print("dry run ok (no timing; the benchmark itself needs a CUDA GPU)")
    return 0


def check_backends_agree(trainer: UniMiSSTrainer, views: dict[int, torch.Tensor]) -> list[str]:
    """The student's logits of each domain's batch under both backends; stops the run if they disagree."""
    lines = []
    for domain, batch in views.items():
        outputs = {}
        for backend in BACKENDS:
            os.environ[KERNELS_ENV] = backend
            with torch.no_grad(), trainer.autocast:
                outputs[backend] = trainer.student(batch, with_slices=domain == 3).float()
        error = (outputs["triton"] - outputs["torch"]).abs().max().item() / outputs["torch"].abs().max().item()
        lines.append(f"{domain}D student logits, triton vs torch: relative error {error:.2e}")
        if not error <= MAX_RELATIVE_ERROR:
            raise SystemExit(f"the Triton SRA kernel disagrees with the reference ({lines[-1]}); not timing it")
    return lines


def time_steps(trainer: UniMiSSTrainer, views: dict[int, torch.Tensor], args: argparse.Namespace,
               step: int) -> tuple[dict[tuple[str, int], float], dict[str, float], int]:
    """Two alternating rounds per backend and domain; best steps/s, peak GiB per backend, next step index."""
    rates: dict[tuple[str, int], float] = {}
    peaks: dict[str, float] = {}
    for round_backends in (BACKENDS, tuple(reversed(BACKENDS))):
        for backend in round_backends:
            os.environ[KERNELS_ENV] = backend
            torch.cuda.reset_peak_memory_stats()
            for domain, batch in views.items():
                for _ in range(args.warmup):
                    trainer.step(step, domain, batch)
                    step += 1
                torch.cuda.synchronize()
                start = time.perf_counter()
                for _ in range(args.steps):
                    trainer.step(step, domain, batch)
                    step += 1
                torch.cuda.synchronize()
                rate = args.steps / (time.perf_counter() - start)
                rates[backend, domain] = max(rate, rates.get((backend, domain), 0.0))
            peaks[backend] = max(peaks.get(backend, 0.0), torch.cuda.max_memory_allocated() / 2**30)
    return rates, peaks, step


def report(args: argparse.Namespace, agreement: list[str], rates: dict[tuple[str, int], float], peaks: dict[str, float]) -> str:
    lines = [
        f"# UniMiSS pre-training step of {CARD}: reference SRA attention vs the Triton kernel",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- device: {torch.cuda.get_device_name()}; torch {torch.__version__} (CUDA {torch.version.cuda})",
        f"- command: `{' '.join(sys.orig_argv)}`",
        f"- batch {args.batch_size} view pairs per step; crops 2D {CROPS[2]}, 3D {CROPS[3]}; bf16 autocast; "
        f"DINO head out_dim {args.out_dim}; best of 2 rounds of {args.steps} steps after {args.warmup} warm-up",
        *(f"- {line}" for line in agreement),
        "",
        "| domain | torch steps/s | triton steps/s | triton/torch |",
        "|---|---|---|---|",
        *(f"| {d}D | {rates['torch', d]:.2f} | {rates['triton', d]:.2f} | {rates['triton', d] / rates['torch', d]:.2f}x |"
          for d in CROPS),
        "",
        f"Peak GPU memory: torch {peaks['torch']:.1f} GiB, triton {peaks['triton']:.1f} GiB.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        return dry_run(args)
    if not torch.cuda.is_available():
        print("bench/train_step.py times training steps on a CUDA GPU and found none (torch.cuda.is_available() is False); "
              "run it on a GPU machine, or use --dry-run to check that one tiny step runs", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    trainer = make_trainer(args, device, dry_run=False)
    views = random_views(args.batch_size, CROPS, device)
    agreement = check_backends_agree(trainer, views)
    print("\n".join(agreement), flush=True)
    rates, peaks, _ = time_steps(trainer, views, args, step=0)
    text = report(args, agreement, rates, peaks)
    print("\n" + text)
    if args.output is not None:
        write_atomically(args.output, lambda temporary: temporary.write_text(text))
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
