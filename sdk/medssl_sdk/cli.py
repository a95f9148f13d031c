"""The ``medssl`` command line.

Errors print one readable line and exit 1 (argparse usage errors exit 2); ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

import torch

from medssl_sdk.loading import load
from medssl_zoo import MedsslError, create, get_card, list_models, save_checkpoint
from medssl_zoo.card import WeightsSpec


def _zoo_list(args: argparse.Namespace) -> None:
    for name in list_models():
        card = get_card(name)
        dims = "/".join(f"{d}D" for d in card.spatial_dims)
        published = "weights pinned" if card.weights.sha256 else "weights not published"
        print(f"{name:<20} {dims:<6} {card.kwargs.get('task', ''):<9} {published:<22} {card.summary.split('. ')[0]}")


def _convert(args: argparse.Namespace) -> None:
    from medssl_zoo.convert import convert_unimiss

    card = convert_unimiss(args.checkpoint, args.output, teacher=args.teacher, overwrite=args.overwrite)
    if not args.quiet:
        print(f"wrote {args.output} ({card.name}, {card.weights.note}); weights sha256 {card.weights.sha256}")


def _demo(args: argparse.Namespace) -> None:
    """Build MiT-7, write it as a checkpoint, load it back verified, embed a 2D and a 3D input."""
    card = get_card("unimiss-mit7")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="medssl-demo-") as directory:
        network = create(card)
        note = "random initialisation: the published UniMiSS weights are not on the Hub yet"
        written = save_checkpoint(network, card.with_weights(WeightsSpec(note=note)), directory)
        model = load(directory, device=args.device)
        say = (lambda *_: None) if args.quiet else print
        say(f"{card.name}: {sum(p.numel() for p in model.network.parameters()) / 1e6:.2f}M parameters, {note}")
        say(f"checkpoint written, re-loaded strictly and verified (sha256 {written.weights.sha256[:16]}...) on {model.device}")
        for shape in ((1, 1, 224, 224), (1, 1, 16, 96, 96)):
            x = torch.rand(shape)
            start = time.perf_counter()
            embedding = model(x)
            elapsed = time.perf_counter() - start
            say(f"{len(shape) - 2}D input {tuple(shape)} -> embedding {tuple(embedding.shape)} in {elapsed * 1000:.0f} ms")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medssl", description="medssl: self-supervised 2D/3D medical-imaging models")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('medssl-sdk')}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.add_argument("--quiet", action="store_true", help="print only errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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

    demo = commands.add_parser("demo", help="build, save, re-load and run MiT-7 on a 2D and a 3D input")
    demo.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (MedsslError, ValueError, OSError, RuntimeError) as error:
        if args.debug:
            raise
        message = " ".join(str(error).split())
        print(f"medssl: error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
