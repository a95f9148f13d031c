"""The ``medssl`` command line.

    medssl segment ct_dir/ -m phantom-mit-nano -o ct_seg.nii.gz [--overlay ct_seg.png]
    medssl segment ct_dir/ -m phantom-mit-nano -o ct_seg.dcm --format dicom-seg
    medssl classify xray.png -m MODEL
    medssl embed ct.nii.gz -m unimiss-mit7 -o ct_embedding.npy
    medssl export -m phantom-mit-nano -o nano-onnx [--format tensorrt --precision fp16]
    medssl segment ct_dir/ -m nano-onnx -o ct_seg.nii.gz          # runs the export on ONNX Runtime
    medssl zoo list | convert unimiss CKPT -o DIR | demo
    medssl push runs/liver --repo my-lab/mit22-liver [--revision v1] [--private]
    medssl serve-dicom -c node.toml      # DICOM node: receive studies, send DICOM SEG (docs/deployment.md)

Exit code 0 only on success. Errors print one readable line and exit 1 (argparse usage errors exit 2);
``--debug`` shows the traceback instead. Outputs are written atomically: a failed run leaves nothing
behind, and an existing file (or the input itself) is never replaced without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

import numpy as np

from medssl_sdk.dicom_node.cli import add_serve_dicom_parser
from medssl_sdk.dicom_seg import write_dicom_seg
from medssl_sdk.export import DEFAULT_MAX_BATCH, FORMATS, PRECISIONS, ExportManifest
from medssl_sdk.hub import add_push_parser
from medssl_sdk.io import check_output_path
from medssl_sdk.io.dicom_files import looks_like_dicom
from medssl_sdk.loading import load
from medssl_sdk.model import Model, as_volume
from medssl_sdk.overlay import render_overlay
from medssl_sdk.runtimes import BACKENDS
from medssl_sdk.volume import Volume
from medssl_zoo import MedsslError, get_card, list_models
from medssl_zoo.card import BRANCHES
from medssl_zoo.files import write_atomically

#: ``medssl segment --format``: the file endings each output format accepts.
SEGMENT_FORMATS = {"nifti": (".nii.gz", ".nii"), "dicom-seg": (".dcm",)}


def _say(args: argparse.Namespace, *message: object) -> None:
    if not args.quiet:
        print(*message)


def _load(args: argparse.Namespace) -> Model:
    return load(args.model, device=args.device, weights=args.weights, backend=args.backend)


def _read_input(args: argparse.Namespace) -> Volume:
    """The input image (``--series`` picks a series of a DICOM folder; a progress bar unless ``--quiet``)."""
    return as_volume(args.input, series_uid=args.series, progress=not args.quiet)


def _check_output(path: Path, args: argparse.Namespace, suffixes: tuple[str, ...]) -> Path:
    """Refuse, before any work is done, an output that exists (without --overwrite), is the input, or has a wrong suffix."""
    return check_output_path(path, suffixes, overwrite=args.overwrite, source=args.input)


def _segment(args: argparse.Namespace) -> None:
    if args.format == "nifti" and args.output.name.lower().endswith(".dcm"):
        raise ValueError(f"{args.output}: a .dcm output needs --format dicom-seg (the default format writes NIfTI)")
    output = _check_output(args.output, args, SEGMENT_FORMATS[args.format])
    if args.format == "dicom-seg" and not (args.input.is_dir() or looks_like_dicom(args.input)):
        raise ValueError(
            f"{args.input}: --format dicom-seg needs the DICOM images that are segmented (a series folder or a DICOM file), "
            "since the SEG references them; write NIfTI (--format nifti) for other inputs"
        )
    if args.overlay is not None:
        _check_output(args.overlay, args, (".png",))
    volume = _read_input(args)
    if args.overlay is not None and volume.ndim != 3:
        raise ValueError(f"{args.input}: --overlay draws 3D volumes; this input is a 2D image")
    model = _load(args)
    segmentation = model.segment(
        volume,
        overlap=args.overlap,
        sw_batch_size=args.sw_batch_size,
        stitch_device=args.stitch_device,
        low_memory=args.low_memory,
        progress=not args.quiet,
    )
    if args.format == "dicom-seg":
        write_dicom_seg(segmentation, args.input, output, overwrite=args.overwrite)
    else:
        segmentation.save(output, overwrite=args.overwrite)
    if args.overlay is not None:
        try:
            render_overlay(volume, segmentation.labels, args.overlay, overwrite=args.overwrite)
        except BaseException:
            output.unlink()  # all outputs or none
            raise
    volumes = ", ".join(f"{name} {ml:.1f}" for name, ml in segmentation.volumes_ml().items() if ml > 0)
    _say(args, f"wrote {output} ({model.name}; {'ml' if volume.ndim == 3 else 'mm2'}: {volumes or 'nothing found'})")


def _classify(args: argparse.Namespace) -> None:
    probabilities = _load(args).classify(_read_input(args))
    if args.json:
        print(json.dumps(probabilities, indent=2))
        return
    for name, probability in sorted(probabilities.items(), key=lambda item: -item[1]):
        print(f"{name:<24} {probability:.4f}")


def _embed(args: argparse.Namespace) -> None:
    output = _check_output(args.output, args, (".npy",))
    embedding = _load(args).embed(_read_input(args)).numpy()

    def write(temporary: Path) -> None:
        with open(temporary, "wb") as stream:
            np.save(stream, embedding)

    write_atomically(output, write)
    _say(args, f"wrote {output}: embedding of shape {embedding.shape}")


def _export(args: argparse.Namespace) -> None:
    model = load(args.model, device=args.device or "cpu", weights=args.weights)
    branches = tuple(args.branch) if args.branch else None
    folder = model.export(
        args.output, format=args.format, precision=args.precision, branches=branches, max_batch=args.max_batch,
        overwrite=args.overwrite, progress=not args.quiet,
    )
    manifest = ExportManifest.read(folder)
    graphs = ", ".join(f"{g.file} (max |difference| to PyTorch {g.max_abs_difference:.2g})" for g in manifest.graphs.values())
    engines = "".join(f"; {entry.file} for {entry.gpu}, TensorRT {entry.tensorrt_version}" for entry in manifest.engines.values())
    _say(args, f"wrote {folder}: {graphs}{engines}")


def _zoo_list(args: argparse.Namespace) -> None:
    for name in list_models():
        card = get_card(name)
        dims = "/".join(f"{d}D" for d in card.spatial_dims)
        published = "weights pinned" if card.weights.sha256 else "weights not published"
        print(f"{name:<20} {dims:<6} {card.kwargs.get('task', ''):<9} {published:<22} {card.summary.split('. ')[0]}")


def _convert(args: argparse.Namespace) -> None:
    from medssl_zoo.convert import convert_swin_ssl, convert_unimiss

    if args.format == "unimiss":
        card = convert_unimiss(args.checkpoint, args.output, teacher=args.teacher, overwrite=args.overwrite)
    else:
        card = convert_swin_ssl(args.checkpoint, args.output, overwrite=args.overwrite)
    _say(args, f"wrote {args.output} ({card.name}, {card.weights.note}); weights sha256 {card.weights.sha256}")


def _demo(args: argparse.Namespace) -> None:
    from medssl_sdk.demo import run_demo

    report = run_demo(args.output, device=args.device, seed=args.seed, progress=not args.quiet)
    _say(args, report.summary())
    if not report.passed:
        raise MedsslError(f"demo mean Dice {report.mean_dice:.3f} is below the {report.threshold} the demo model promises")


def _add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="a DICOM series folder, a NIfTI file, a PNG/JPEG or a DICOM image")
    parser.add_argument(
        "-m", "--model", required=True, help="a zoo name (`medssl zoo list`), a checkpoint directory or an export folder"
    )
    parser.add_argument("--series", default=None, metavar="UID", help="SeriesInstanceUID to use when a folder holds several")
    _add_model_arguments(parser)
    parser.add_argument(
        "--backend", choices=BACKENDS, default=None,
        help="what runs the network: torch (default for zoo names and checkpoints), onnxruntime (default for ONNX "
        "exports; a zoo name is exported once and cached) or tensorrt",
    )


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cuda, cuda:N, mps or cpu (default: the best available)")
    parser.add_argument("--weights", type=Path, default=None, help="local weights file/dir for a zoo name (air-gapped sites)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medssl", description="medssl: self-supervised 2D/3D medical-imaging models")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('medssl-sdk')}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.add_argument("--quiet", action="store_true", help="print only errors and results (no progress bars)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    segment = commands.add_parser("segment", help="segment an image; writes a NIfTI label map or DICOM SEG on the input's grid")
    _add_inference_arguments(segment)
    segment.add_argument(
        "-o", "--output", type=Path, required=True, help="label map to write (.nii.gz or .nii; .dcm with --format dicom-seg)"
    )
    segment.add_argument(
        "--format", choices=tuple(SEGMENT_FORMATS), default="nifti",
        help="nifti (default) or dicom-seg: a DICOM SEG referencing the input DICOM series (see docs/dicom.md)",
    )
    segment.add_argument("--overlay", type=Path, default=None, help="also write a PNG overlay (3D inputs)")
    segment.add_argument("--overlap", type=float, default=0.25, help="sliding-window overlap in [0, 1) (default 0.25)")
    segment.add_argument("--sw-batch-size", type=int, default=4, help="windows per network call (default 4)")
    segment.add_argument(
        "--stitch-device", default="auto", help="where probabilities are summed: auto (the compute device if they fit), cpu, cuda"
    )
    segment.add_argument("--low-memory", action="store_true", help="fp16 stitching; streaming arg-max when not resampling")
    segment.add_argument("--overwrite", action="store_true", help="replace existing output files")
    segment.set_defaults(run=_segment)

    classify = commands.add_parser("classify", help="class probabilities of an image")
    _add_inference_arguments(classify)
    classify.add_argument("--json", action="store_true", help="print a JSON object {label: probability}")
    classify.set_defaults(run=_classify)

    embed = commands.add_parser("embed", help="write the encoder's embedding of an image as .npy")
    _add_inference_arguments(embed)
    embed.add_argument("-o", "--output", type=Path, required=True, help="embedding to write (.npy)")
    embed.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    embed.set_defaults(run=_embed)

    export = commands.add_parser(
        "export", help="export a model to an ONNX (or TensorRT) folder that `medssl segment -m FOLDER` and load() run"
    )
    export.add_argument("-m", "--model", required=True, help="a zoo name (`medssl zoo list`) or a checkpoint directory")
    export.add_argument("-o", "--output", type=Path, required=True, help="export folder to create")
    export.add_argument("--format", choices=FORMATS, default="onnx", help="onnx (default): graphs; tensorrt: graphs + engines")
    export.add_argument(
        "--precision", choices=PRECISIONS, default="fp32", help="TensorRT engine precision (ONNX graphs are fp32; default fp32)"
    )
    export.add_argument("--branch", action="append", choices=BRANCHES, help="export only this input branch (repeatable)")
    export.add_argument(
        "--max-batch", type=int, default=DEFAULT_MAX_BATCH,
        help=f"largest batch (sliding windows per call) engines are built for (default {DEFAULT_MAX_BATCH})",
    )
    _add_model_arguments(export)
    export.add_argument("--overwrite", action="store_true", help="replace an existing export folder (never anything else)")
    export.set_defaults(run=_export)

    zoo = commands.add_parser("zoo", help="list the zoo's models").add_subparsers(dest="zoo_command", required=True)
    zoo.add_parser("list", help="one line per zoo entry").set_defaults(run=_zoo_list)

    convert = commands.add_parser("convert", help="convert an official checkpoint to a medssl checkpoint directory")
    formats = convert.add_subparsers(dest="format", required=True, metavar="FORMAT")
    unimiss = formats.add_parser("unimiss", help="official UniMiSS pre-training checkpoint.pth (MiT-7/MiT-22)")
    unimiss.add_argument("checkpoint", type=Path, help="official checkpoint.pth")
    unimiss.add_argument("-o", "--output", type=Path, required=True, help="checkpoint directory to write")
    unimiss.add_argument("--teacher", action="store_true", help="convert the teacher (default: the student)")
    unimiss.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --output")
    unimiss.set_defaults(run=_convert)
    swin = formats.add_parser("swin", help="Swin UNETR SSL release model_swinvit.pt (Tang et al., CVPR 2022)")
    swin.add_argument("checkpoint", type=Path, help="official model_swinvit.pt")
    swin.add_argument("-o", "--output", type=Path, required=True, help="checkpoint directory to write")
    swin.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --output")
    swin.set_defaults(run=_convert)

    demo = commands.add_parser("demo", help="segment an unseen synthetic CT phantom with phantom-mit-nano; print Dice")
    demo.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    demo.add_argument("--output", type=Path, default=Path("medssl-demo"), help="folder for its files (default ./medssl-demo)")
    demo.add_argument("--seed", type=int, default=None, help="phantom seed (default: the demo's fixed unseen phantom)")
    demo.set_defaults(run=_demo)

    add_serve_dicom_parser(commands)
    add_push_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (MedsslError, ValueError, OSError, RuntimeError, KeyError) as error:
        if args.debug:
            raise
        message = " ".join(str(error).split())
        print(f"medssl: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("medssl: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug or an input no check foresaw: still one line, and the way to the traceback
        if args.debug:
            raise
        print(f"medssl: internal error: {type(error).__name__}: {error} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
