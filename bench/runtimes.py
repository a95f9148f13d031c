"""Runtimes on CPU: PyTorch eager against ONNX Runtime on a batch of MiT-7 3D windows, same weights, same input.

    .venv/bin/python bench/runtimes.py                       # MiT-7 3D segmentation (14 classes), 4 x 1 x 16 x 96 x 96
    .venv/bin/python bench/runtimes.py --quick               # smoke run: the nano widths, 2 windows
    .venv/bin/python bench/runtimes.py --batch 8 --repeats 7

The network is exported with ``medssl_sdk.export.export_network`` (the path ``medssl export`` takes) and run by
the SDK's ONNX Runtime runtime with the CPU provider, the one ``load(..., backend="onnxruntime")`` gives. Both
use the same number of threads (torch's ``get_num_threads``, unless ``--threads``). The two runtimes alternate
which goes first; each time is the median of ``--repeats`` calls after one warm-up call each. The outputs must
agree within 1e-4 (max abs) before anything is timed. Printed: the times, the ratio torch / ONNX Runtime (above 1:
ONNX Runtime is faster), and the five ONNX operator types ONNX Runtime spends most time in (its profiler).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from medssl_sdk.export import ExportManifest, export_network
from medssl_sdk.runtimes.onnxruntime_backend import OnnxRuntimeRuntime
from medssl_zoo import get_card
from medssl_zoo.registry import build_model

NUM_CLASSES = 14
PARITY = 1e-4
#: The nano widths of phantom-mit-nano, for --quick.
NANO = {"encoder_dims": [16, 32, 64, 128], "encoder_heads": [1, 1, 2, 4], "decoder_dims": [64, 32, 16],
        "decoder_heads": [4, 2, 1], "stem_channels": 8}


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def operator_profile(graph: Path, batch: torch.Tensor, threads: int) -> list[tuple[str, float]]:
    """(operator type, share of ONNX Runtime's kernel time) for the five most expensive operator types."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.enable_profiling, options.intra_op_num_threads = True, threads
    options.profile_file_prefix = str(graph.parent / "profile")
    session = onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    session.run(None, {"image": batch.numpy()})
    events = json.loads(Path(session.end_profiling()).read_text())
    totals: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            totals[event["args"]["op_name"]] += event["dur"]
    whole = sum(totals.values()) or 1
    return [(name, microseconds / whole) for name, microseconds in totals.most_common(5)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4, help="windows per call (default 4, the SDK's sw_batch_size)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per runtime (median; default 5)")
    parser.add_argument("--threads", type=int, default=None, help="threads for both (default: torch.get_num_threads())")
    parser.add_argument("--quick", action="store_true", help="nano widths and 2 windows: a smoke run")
    args = parser.parse_args()
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    card = get_card("unimiss-mit7")
    widths = NANO if args.quick else {}
    card = dataclasses.replace(card, kwargs={**card.kwargs, **widths, "task": "segment", "num_classes": NUM_CLASSES},
                               inputs={"3d": card.inputs["3d"]})
    batch_size = 2 if args.quick else args.batch
    network = build_model(card).eval()
    shape = (batch_size, 1, *card.inputs["3d"].patch_size)
    batch = torch.randn(shape, generator=torch.Generator().manual_seed(0))

    with tempfile.TemporaryDirectory() as scratch:
        folder = export_network(network, card, Path(scratch) / "export", max_batch=batch_size)
        manifest = ExportManifest.read(folder)
        exported = OnnxRuntimeRuntime(folder, manifest, torch.device("cpu"), threads=threads)

        def run_torch() -> torch.Tensor:
            with torch.inference_mode():
                return network(batch)

        def run_onnxruntime() -> torch.Tensor:
            return exported(batch)

        difference = float((run_torch() - run_onnxruntime()).abs().max())
        if not difference <= PARITY:
            raise SystemExit(f"outputs differ by {difference:.3g} (> {PARITY}); not timing different computations")
        times: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
        runs = {"torch": run_torch, "onnxruntime": run_onnxruntime}
        for round_index in range(2):  # alternate which runtime goes first
            order = ("torch", "onnxruntime") if round_index == 0 else ("onnxruntime", "torch")
            for name in order:
                runs[name]()  # warm-up
                times[name].append(median_seconds(runs[name], args.repeats))
        profile = operator_profile(folder / manifest.graphs["3d"].file, batch, threads)

    eager, onnxruntime_time = min(times["torch"]), min(times["onnxruntime"])
    print(f"MiT-7 3D segmentation{' (nano widths)' if args.quick else ''}, {NUM_CLASSES} classes, input {shape}, "
          f"{threads} threads, torch {torch.__version__}; max |ONNX Runtime - torch| {difference:.2g}")
    print(f"torch eager   {eager * 1000:8.1f} ms per call")
    print(f"ONNX Runtime  {onnxruntime_time * 1000:8.1f} ms per call")
    print(f"ratio torch / ONNX Runtime: {eager / onnxruntime_time:.2f}x (goal >= 1.3x)")
    print("ONNX Runtime time by operator: " + ", ".join(f"{name} {share:.0%}" for name, share in profile))


if __name__ == "__main__":
    main()
