"""The ``medssl-train`` command line. No recipe is installed yet; the UniMiSS recipe is the first planned."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import version


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="medssl-train",
        description="Pre-train and fine-tune medssl models. No training recipe is installed in this version.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('medssl-sdk')}")
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
