"""Sliding-window inference: medssl's engine against MONAI's, same network, same windows, same outputs.

    .venv/bin/python bench/sliding_window.py                 # 1x1x128x256x256, roi 64x160x192 (MiT-7 BCV)
    .venv/bin/python bench/sliding_window.py --quick         # a small smoke run
    .venv/bin/python bench/sliding_window.py --size 96 192 192 --roi 64 160 160 --repeats 3

The predictor is softmax(MiT-7 3D segmentation network(x)) (random weights, 14 classes), run under
torch.inference_mode with Gaussian blending and the same overlap and sw_batch_size for both engines.
Times come from this process, the two engines alternating; each time is split into the predictor's share
(network + softmax, timed around each call) and the rest (window extraction, blending, normalisation).

Peak memory is measured per method in a fresh subprocess that builds the same network and volume, then
resets the kernel's peak-RSS counter (``echo 5 > /proc/self/clear_refs``), runs the method once and
reads ``VmHWM``: the figure is the peak resident memory above what the process held before the call
(network activations, windows, predictions and stitching buffers; the output counts too). torch's CPU
allocator has no peak statistics and tracemalloc does not see its allocations, so RSS is what is left.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from monai.inferers import sliding_window_inference as monai_sliding_window_inference

from medssl_sdk.sliding_window import plan_windows, sliding_window_argmax, sliding_window_inference
from medssl_zoo.mit import create_mit

NUM_CLASSES = 14
OVERLAP = 0.25


class TimedPredictor:
    """softmax(network(windows)) over the classes, adding up the seconds spent in it."""

    def __init__(self, network: torch.nn.Module) -> None:
        self.network, self.seconds = network, 0.0

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        probabilities = torch.softmax(self.network(windows), dim=1)
        self.seconds += time.perf_counter() - start
        return probabilities


def run_monai(image: torch.Tensor, args: argparse.Namespace, predictor: TimedPredictor) -> torch.Tensor:
    return monai_sliding_window_inference(image, args.roi, args.sw_batch_size, predictor, overlap=OVERLAP, mode="gaussian")


def run_ours(image: torch.Tensor, args: argparse.Namespace, predictor: TimedPredictor) -> torch.Tensor:
    return sliding_window_inference(image, args.roi, predictor, sw_batch_size=args.sw_batch_size, overlap=OVERLAP, mode="gaussian")


def run_ours_argmax(image: torch.Tensor, args: argparse.Namespace, predictor: TimedPredictor) -> torch.Tensor:
    return sliding_window_argmax(image, args.roi, predictor, sw_batch_size=args.sw_batch_size, overlap=OVERLAP, mode="gaussian")


METHODS: dict[str, Callable[[torch.Tensor, argparse.Namespace, TimedPredictor], torch.Tensor]] = {
    "monai": run_monai,
    "ours": run_ours,
    "ours-argmax": run_ours_argmax,
}


def build(args: argparse.Namespace) -> tuple[torch.Tensor, TimedPredictor]:
    """The (1, 1, D, H, W) volume and the MiT-7 predictor, both seeded."""
    torch.manual_seed(0)
    network = create_mit("mit7", task="segment", num_classes=NUM_CLASSES, spatial_dims=(3,)).eval()
    image = torch.randn(1, 1, *args.size)
    return image, TimedPredictor(network)


def timed(
    method: str, image: torch.Tensor, args: argparse.Namespace, predictor: TimedPredictor
) -> tuple[torch.Tensor, float, float]:
    """(output, total seconds, predictor seconds) of one call."""
    predictor.seconds = 0.0
    start = time.perf_counter()
    with torch.inference_mode():
        output = METHODS[method](image, args, predictor)
    return output, time.perf_counter() - start, predictor.seconds


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return int(re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.MULTILINE).group(1))


def measure_memory_here(method: str, args: argparse.Namespace) -> None:
    """In a fresh process: print JSON {"peak_mib": peak RSS above the pre-call RSS during one call}."""
    image, predictor = build(args)
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # the peak-RSS counter restarts from the current RSS
    before = _status_kib("VmRSS")
    output, _, _ = timed(method, image, args, predictor)
    peak = _status_kib("VmHWM")
    print(json.dumps({"peak_mib": (peak - before) / 1024, "output_mib": output.numel() * output.element_size() / 2**20}))


def measure_memory(method: str, args: argparse.Namespace) -> dict[str, float]:
    command = [sys.executable, __file__, "--memory-of", method, "--size", *map(str, args.size), "--roi", *map(str, args.roi),
               "--sw-batch-size", str(args.sw_batch_size)]
    finished = subprocess.run(command, capture_output=True, text=True)
    if finished.returncode:
        raise SystemExit(f"memory measurement of {method} failed:\n{finished.stderr}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs=3, default=[128, 256, 256], metavar=("D", "H", "W"))
    parser.add_argument("--roi", type=int, nargs=3, default=[64, 160, 192], metavar=("D", "H", "W"),
                        help="window size; MiT-7 needs multiples of (16, 32, 32)")
    parser.add_argument("--sw-batch-size", type=int, default=1, help="windows per network call, same for both engines")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per engine (the median is reported)")
    parser.add_argument("--quick", action="store_true", help="smoke run: volume 40x72x100, roi 16x32x64, 2 repeats")
    parser.add_argument("--memory-of", choices=sorted(METHODS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.quick:
        args.size, args.roi, args.repeats = [40, 72, 100], [16, 32, 64], 2
    if args.memory_of:
        measure_memory_here(args.memory_of, args)
        return

    windows = len(plan_windows(args.size, args.roi, OVERLAP).starts)
    print(f"volume 1x1x{'x'.join(map(str, args.size))}, roi {'x'.join(map(str, args.roi))}, overlap {OVERLAP}, gaussian, "
          f"{windows} windows, sw_batch_size {args.sw_batch_size}, MiT-7 3D segment ({NUM_CLASSES} classes), "
          f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}")
    image, predictor = build(args)
    with torch.inference_mode():
        predictor(torch.zeros(1, 1, *args.roi))  # warm-up: first-call allocations and kernel set-up

    seconds: dict[str, list[float]] = {method: [] for method in METHODS}
    network_seconds: dict[str, list[float]] = {method: [] for method in METHODS}
    for repeat in range(args.repeats):
        order = ["monai", "ours"] if repeat % 2 == 0 else ["ours", "monai"]
        outputs = {}
        for method in [*order, "ours-argmax"]:
            outputs[method], total, in_network = timed(method, image, args, predictor)
            seconds[method].append(total)
            network_seconds[method].append(in_network)
        difference = (outputs["ours"] - outputs["monai"]).abs().max().item()
        assert difference <= 1e-5, f"outputs differ from MONAI's by {difference}"
        # Against our own blended output: exact. (MONAI's output differs by ~1 ulp, which may flip near-ties.)
        assert torch.equal(outputs["ours-argmax"], outputs["ours"].argmax(1).to(outputs["ours-argmax"].dtype)), (
            "streaming argmax differs from the argmax of the blended output"
        )
    print(f"max |ours - MONAI| = {difference:.2e}; streaming argmax == argmax(blended output): yes")

    median = {method: statistics.median(values) for method, values in seconds.items()}
    rest = {method: median[method] - statistics.median(network_seconds[method]) for method in METHODS}
    print(f"\n{'method':<14}{'total s':>9}{'network s':>11}{'rest s':>9}   (median of {args.repeats})")
    for method in METHODS:
        print(f"{method:<14}{median[method]:>9.2f}{median[method] - rest[method]:>11.2f}{rest[method]:>9.2f}")
    print(f"MONAI / ours, total time:           {median['monai'] / median['ours']:.2f}x")
    print(f"MONAI / ours, time outside network: {rest['monai'] / rest['ours']:.2f}x", flush=True)

    memory = {method: measure_memory(method, args) for method in METHODS}
    print("\npeak RSS above the pre-call RSS, one call in a fresh process:")
    for method in METHODS:
        print(f"{method:<14}{memory[method]['peak_mib']:>9.0f} MiB (output {memory[method]['output_mib']:.0f} MiB)")
    print(f"ours / MONAI: {memory['ours']['peak_mib'] / memory['monai']['peak_mib']:.2f}; "
          f"ours-argmax / MONAI: {memory['ours-argmax']['peak_mib'] / memory['monai']['peak_mib']:.2f}")


if __name__ == "__main__":
    main()
