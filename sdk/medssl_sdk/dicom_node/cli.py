"""``medssl serve-dicom``: the node's command line (a config file plus flags that override it)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from medssl_sdk.dicom_node.config import load_config


def configure_logging(level: str) -> None:
    """Log lines to stderr; libraries that may print data-set content (pynetdicom's DIMSE dumps, pydicom's
    value warnings) are kept quiet so no patient identity reaches the log."""
    import pydicom.config

    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("pynetdicom").setLevel(logging.ERROR)
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    logging.getLogger("highdicom").setLevel(logging.WARNING)
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE


def _serve(args: argparse.Namespace) -> None:
    from medssl_sdk.dicom_node.service import DicomNode, load_models

    overrides = {
        "ae_title": args.ae_title,
        "host": args.host,
        "port": args.port,
        "model": args.model,
        "weights": args.weights,
        "devices": tuple(args.device) if args.device else None,
        "destination": args.destination,
        "spool_dir": args.spool_dir,
        "quiet_period_s": args.quiet_period,
        "min_free_mb": args.min_free_mb,
        "log_level": args.log_level,
    }
    config = load_config(args.config, overrides)
    configure_logging(config.log_level)
    node = DicomNode(config, load_models(config))
    node.start()
    node.wait()


def add_serve_dicom_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``serve-dicom`` to the ``medssl`` sub-commands."""
    serve = commands.add_parser(
        "serve-dicom",
        help="run a DICOM node: receive CT/MR studies, segment them, send DICOM SEG to a PACS",
        description="Flags override the config file (docs/deployment.md has its reference and a systemd unit).",
    )
    serve.add_argument("-c", "--config", type=Path, default=None, help="TOML config file")
    serve.add_argument("--ae-title", default=None, help="our AE title (default MEDSSL)")
    serve.add_argument("--host", default=None, help="address to listen on (default 0.0.0.0)")
    serve.add_argument("--port", type=int, default=None, help="port to listen on (default 11112)")
    serve.add_argument("-m", "--model", default=None, help="zoo name or checkpoint directory")
    serve.add_argument("--weights", type=Path, default=None, help="local weights file/dir for a zoo name")
    serve.add_argument("--device", action="append", default=None, help="a worker device (repeat for several); default auto")
    serve.add_argument("--destination", default=None, metavar="AE@HOST:PORT", help="where SEG results are sent")
    serve.add_argument("--spool-dir", type=Path, default=None, help="folder for received instances, job state and results")
    serve.add_argument("--quiet-period", type=float, default=None, metavar="SECONDS", help="a study is complete after this")
    serve.add_argument("--min-free-mb", type=float, default=None, help="refuse associations below this free space")
    serve.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR")
    serve.set_defaults(run=_serve)
