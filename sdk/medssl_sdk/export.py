"""Export a zoo network to a self-describing folder: one ONNX graph per input branch, its card, and (for
TensorRT) engines built from the graphs.

    model = load("phantom-mit-nano")
    model.export("nano-onnx")                                  # CLI: medssl export -m phantom-mit-nano -o nano-onnx
    load("nano-onnx").segment("ct.nii.gz")                     # runs on ONNX Runtime, same API

Folder layout:

    config.json       {"format": "medssl-export", "format_version": 1, "card": {...}, "export": {...}}
    model-3d.onnx     image (N, C, *patch_size) float32 -> logits (N, K, *patch_size) | (N, K), or embedding (N, D);
                      N is dynamic (1 .. max_batch is what engines are built for)
    model-3d.engine   format "tensorrt" only: a serialised engine for the GPU and TensorRT version config.json names

The card inside carries labels, pre-processing and patch size, so the folder alone is enough to run inference.
Graphs are traced at the card's patch size with the kernels on their PyTorch reference path, checked with
``onnx.checker``, and run once through ONNX Runtime against the network: the largest difference is recorded.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from medssl_zoo import ExportError, ModelCard
from medssl_zoo.export import ExportSignature, export_signatures
from medssl_zoo.files import write_directory_atomically
from medssl_zoo.weights import CONFIG_FILE, sha256_of

FORMAT = "medssl-export"
FORMAT_VERSION = 1
FORMATS = ("onnx", "tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16")
#: ONNX opset of the graphs (LayerNormalization needs >= 17).
OPSET = 18
#: Largest network batch (sliding windows per call) engines are built for; the SDK's default sw_batch_size is 4.
DEFAULT_MAX_BATCH = 4
#: The exported graph must agree with the network it came from to this relative error (max abs / max |output|).
VERIFY_RELATIVE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class GraphEntry:
    """One exported graph.

    Attributes:
        signature: branch, input shape ``(C, *patch)`` and task (which names the output).
        file: the ``.onnx`` file's name inside the export folder.
        sha256: its hex digest (checked before a runtime opens it).
        max_abs_difference: largest |ONNX Runtime - PyTorch| on the verification batch at export time.
    """

    signature: ExportSignature
    file: str
    sha256: str
    max_abs_difference: float


@dataclass(frozen=True)
class EngineEntry:
    """A TensorRT engine built from a graph: valid only for the GPU model and TensorRT version it was built with."""

    branch: str
    file: str
    sha256: str
    onnx_sha256: str
    gpu: str
    tensorrt_version: str
    precision: str
    max_batch: int


@dataclass(frozen=True)
class ExportManifest:
    """What ``config.json`` of an export folder says."""

    card: ModelCard
    format: str
    precision: str
    max_batch: int
    graphs: dict[str, GraphEntry]
    engines: dict[str, EngineEntry] = field(default_factory=dict)
    opset: int = OPSET
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        graphs = {
            branch: {
                "file": entry.file,
                "sha256": entry.sha256,
                "input": entry.signature.input_name,
                "input_shape": ["batch", *entry.signature.input_shape],
                "output": entry.signature.output_name,
                "task": entry.signature.task,
                "max_abs_difference": entry.max_abs_difference,
            }
            for branch, entry in self.graphs.items()
        }
        engines = {branch: {k: v for k, v in vars(entry).items() if k != "branch"} for branch, entry in self.engines.items()}
        export = {"format": self.format, "precision": self.precision, "max_batch": self.max_batch, "opset": self.opset,
                  "graphs": graphs, "engines": engines, "versions": self.versions}
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "card": self.card.to_dict(), "export": export}

    @classmethod
    def read(cls, directory: Path | str) -> ExportManifest:
        """Read and validate ``directory/config.json``; errors name the file and the problem."""
        config_path = Path(directory) / CONFIG_FILE
        try:
            data = json.loads(config_path.read_text(encoding="utf-8"))
            if data.get("format") != FORMAT:
                raise ExportError(f"{config_path}: not a medssl export (format {data.get('format')!r}, expected {FORMAT!r})")
            if data.get("format_version", 0) > FORMAT_VERSION:
                newer = data["format_version"]
                raise ExportError(f"{config_path}: export format version {newer} is newer than this medssl; upgrade medssl-sdk")
            export = data["export"]
            card = ModelCard.from_dict(data["card"], str(config_path))
            graphs = {
                branch: GraphEntry(
                    ExportSignature(branch, tuple(int(n) for n in raw["input_shape"][1:]), str(raw["task"])),
                    str(raw["file"]), str(raw["sha256"]), float(raw["max_abs_difference"]),
                )
                for branch, raw in export["graphs"].items()
            }
            engines = {branch: EngineEntry(branch=branch, **raw) for branch, raw in export.get("engines", {}).items()}
            return cls(card, str(export["format"]), str(export["precision"]), int(export["max_batch"]), graphs, engines,
                       int(export["opset"]), dict(export.get("versions", {})))
        except FileNotFoundError:
            raise ExportError(f"{directory}: not an export folder (no {CONFIG_FILE})") from None
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError) as error:
            if isinstance(error, ExportError):
                raise
            raise ExportError(f"{config_path}: malformed export config ({type(error).__name__}: {error})") from None


def is_export_folder(path: Path | str) -> bool:
    """Whether ``path`` is a folder whose ``config.json`` declares a medssl export."""
    config_path = Path(path) / CONFIG_FILE
    try:
        return json.loads(config_path.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def export_network(
    network: nn.Module,
    card: ModelCard,
    path: Path | str,
    *,
    format: str = "onnx",
    precision: str = "fp32",
    branches: tuple[str, ...] | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Export ``network`` (built from ``card``) to the folder ``path``; return it.

    Args:
        format: ``"onnx"`` (graphs only) or ``"tensorrt"`` (graphs + engines for this machine's GPU).
        precision: ``"fp32"`` for ONNX; ``"fp32"``, ``"fp16"`` or ``"bf16"`` for TensorRT engines (norms
            kept in fp32). ONNX graphs are always fp32.
        branches: input branches to export (default: all of the card's).
        max_batch: the largest batch (sliding windows per call) engines are built for.
        overwrite: replace an existing export folder; anything else (a checkpoint, a file) is never replaced.
        progress: show a progress bar over the graphs (tracing a large model takes a minute each).

    The folder appears complete or not at all (written beside it, then renamed).
    """
    path = Path(path)
    if format not in FORMATS:
        raise ExportError(f"unsupported export format {format!r}; choose one of {', '.join(FORMATS)}")
    if precision not in PRECISIONS:
        raise ExportError(f"unsupported precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if format == "onnx" and precision != "fp32":
        raise ExportError(
            f"ONNX graphs are exported in fp32; {precision} applies to TensorRT engines (format 'tensorrt', built "
            "from the fp32 graph with norms kept in fp32)"
        )
    if max_batch < 1:
        raise ExportError(f"max_batch must be at least 1; got {max_batch}")
    signatures = export_signatures(card, branches)
    _check_export_target(path, overwrite)
    _require_exporter()
    if format == "tensorrt":
        from medssl_sdk.runtimes.tensorrt_backend import require_tensorrt

        require_tensorrt()  # before minutes of tracing

    def write(folder: Path) -> None:
        steps = tqdm(signatures.items(), desc=f"export {card.name}", unit="graph", disable=not progress)
        graphs = {branch: _export_graph(network, signature, folder, max_batch) for branch, signature in steps}
        engines: dict[str, EngineEntry] = {}
        if format == "tensorrt":
            from medssl_sdk.runtimes.tensorrt_backend import build_engine

            for branch, graph in graphs.items():
                engines[branch] = build_engine(folder / graph.file, graph, folder / f"model-{branch}.engine", precision, max_batch)
        manifest = ExportManifest(card, format, precision, max_batch, graphs, engines, OPSET, _versions())
        (folder / CONFIG_FILE).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n", encoding="utf-8")

    write_directory_atomically(path, write, replace=overwrite)
    return path


def _check_export_target(path: Path, overwrite: bool) -> None:
    if path.exists():
        if not path.is_dir():
            raise ExportError(f"{path}: exists and is not a folder; choose a folder name for the export")
        if not overwrite:
            raise ExportError(f"{path}: already exists; pass overwrite=True (CLI: --overwrite) or choose another folder")
        if not is_export_folder(path):
            raise ExportError(f"{path}: exists and is not a medssl export folder; refusing to replace it even with overwrite")
    if not path.parent.is_dir():
        raise ExportError(f"{path}: the parent folder {path.parent} does not exist; create it first")


def _export_graph(network: nn.Module, signature: ExportSignature, folder: Path, max_batch: int) -> GraphEntry:
    """Trace one branch to ``folder/model-<branch>.onnx``, check it, and compare ONNX Runtime with the network."""
    onnx = _require_exporter()

    file = folder / f"model-{signature.branch}.onnx"
    parameter = next(network.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    example = signature.example(min(2, max_batch)).to(device)
    batch = torch.export.Dim("batch", min=1, max=max(max_batch, 2))
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad(), _quiet_exporter():
            torch.onnx.export(
                network, (example,), str(file), input_names=[signature.input_name], output_names=[signature.output_name],
                dynamic_shapes=({0: batch},), opset_version=OPSET, dynamo=True, external_data=False, verbose=False,
            )
            expected = network(example).float().cpu()
    except Exception as error:  # the exporter raises many types; the message is what helps
        raise ExportError(f"could not export the {signature.branch} branch to ONNX: {type(error).__name__}: {error}") from error
    finally:
        network.train(was_training)
    onnx.checker.check_model(str(file), full_check=True)
    from medssl_sdk.runtimes.onnxruntime_backend import open_session

    produced = torch.from_numpy(open_session(file).run(None, {signature.input_name: example.cpu().numpy()})[0])
    difference = float((produced - expected).abs().max())
    scale = float(expected.abs().max()) or 1.0
    if not difference <= VERIFY_RELATIVE_TOLERANCE * scale:
        raise ExportError(
            f"the exported {signature.branch} graph disagrees with the network: max |difference| {difference:.3g} "
            f"(outputs up to {scale:.3g}); please report this with the model name"
        )
    return GraphEntry(signature, file.name, sha256_of(file), difference)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's progress prints, optional-package notices and deprecation warnings (errors still raise)."""
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        exporter_log.setLevel(level)


def _require_exporter():
    """The ``onnx`` module, once the exporter's packages (onnx, onnxscript, onnxruntime) are known to be present."""
    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(f"exporting needs {', '.join(missing)}: pip install 'medssl-sdk[onnx]'")
    import onnx

    return onnx


def _versions() -> dict[str, str]:
    onnx = _require_exporter()
    return {"medssl-sdk": version("medssl-sdk"), "torch": torch.__version__, "onnx": onnx.__version__}


