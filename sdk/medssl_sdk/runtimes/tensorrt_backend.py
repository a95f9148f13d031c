"""The TensorRT runtime: engines built from an export's ONNX graphs, run on their own CUDA stream.

An engine is built for one GPU model and one TensorRT version. Engines in an export folder (``medssl export
--format tensorrt``) are checked against this machine before use; graphs without an engine here are built
once and cached under ``<medssl cache>/tensorrt/`` keyed by (graph sha256, GPU name, TensorRT version,
precision, max batch). Building: an optimisation profile for batch 1..max_batch, fp16 or bf16 kernels where
TensorRT chooses them, normalisation layers constrained to fp32.

TensorRT is not a PyPI dependency of medssl (NVIDIA distributes it): ``pip install tensorrt`` from NVIDIA's
index, or use an NGC container.
"""

from __future__ import annotations

import functools
import json
import re
import threading
from pathlib import Path

import torch

from medssl_sdk.cache import cache_root
from medssl_sdk.export import EngineEntry, ExportManifest, GraphEntry
from medssl_sdk.runtimes.base import ExportedRuntime, check_export_file, run_in_chunks
from medssl_zoo import ExportError
from medssl_zoo.files import write_atomically
from medssl_zoo.weights import sha256_of

#: Scratch memory TensorRT may use while building (tactics needing more are skipped).
BUILD_WORKSPACE_BYTES = 8 << 30


def require_tensorrt():
    """The ``tensorrt`` module, on a machine with a CUDA GPU; else an error saying what is missing."""
    try:
        import tensorrt
    except ImportError:
        raise ExportError(
            "TensorRT is not installed; it comes from NVIDIA, not with medssl: "
            "pip install tensorrt --extra-index-url https://pypi.nvidia.com (or use an NGC PyTorch container); "
            "backend='onnxruntime' runs without it"
        ) from None
    if not torch.cuda.is_available():
        raise ExportError("TensorRT needs a CUDA GPU and none is visible to torch; use backend='onnxruntime' on this machine")
    return tensorrt


@functools.cache
def _logger():
    """The one TensorRT logger of this process: TensorRT keeps a single logger pointer for all builders and runtimes,
    so every one of them gets this object, which lives as long as the process."""
    trt = require_tensorrt()
    return trt.Logger(trt.Logger.WARNING)


def current_target(device: torch.device) -> tuple[str, str]:
    """(GPU name, TensorRT version) engines built on ``device`` now are tied to."""
    return torch.cuda.get_device_name(device), require_tensorrt().__version__


def check_engine_compatible(entry: EngineEntry, gpu: str, tensorrt_version: str, where: Path) -> None:
    """Refuse an engine built for another GPU model or TensorRT version (TensorRT would reject or misrun it)."""
    problems = []
    if entry.gpu != gpu:
        problems.append(f"it was built on a {entry.gpu}, this is a {gpu}")
    if entry.tensorrt_version != tensorrt_version:
        problems.append(f"it was built with TensorRT {entry.tensorrt_version}, this is TensorRT {tensorrt_version}")
    if problems:
        raise ExportError(
            f"{where}: cannot use this TensorRT engine: {'; '.join(problems)}. Rebuild it on this machine with "
            "`medssl export --format tensorrt` from the model (or load the model's zoo name or checkpoint with "
            "backend='tensorrt', which builds and caches an engine here), or run this folder's ONNX graphs with "
            "backend='onnxruntime'"
        )


def build_engine(
    onnx_file: Path, graph: GraphEntry, engine_file: Path, precision: str, max_batch: int, device: torch.device | None = None
) -> EngineEntry:
    """Build and serialise a TensorRT engine for ``graph`` (its ONNX at ``onnx_file``) to ``engine_file``."""
    trt = require_tensorrt()
    device = device or torch.device("cuda", torch.cuda.current_device())
    with torch.cuda.device(device):  # TensorRT builds for the current CUDA device
        serialized = _build_serialized(trt, onnx_file, graph, precision, max_batch)
    write_atomically(engine_file, lambda path: path.write_bytes(bytes(serialized)))
    gpu, tensorrt_version = torch.cuda.get_device_name(device), trt.__version__
    return EngineEntry(graph.signature.branch, engine_file.name, sha256_of(engine_file), graph.sha256, gpu,
                       tensorrt_version, precision, max_batch)


def _build_serialized(trt, onnx_file: Path, graph: GraphEntry, precision: str, max_batch: int):
    """Parse ``onnx_file`` and build its engine on the current CUDA device; the serialised engine (``IHostMemory``)."""
    builder = trt.Builder(_logger())
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, _logger())
    if not parser.parse_from_file(str(onnx_file)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"{onnx_file}: TensorRT cannot parse this graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, BUILD_WORKSPACE_BYTES)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # on by default: fp32 means fp32 matmuls and convolutions, not TF32
    if precision in ("fp16", "bf16"):
        if not hasattr(trt.BuilderFlag, "OBEY_PRECISION_CONSTRAINTS"):  # TensorRT 11 removed weakly typed builds
            raise ExportError(
                f"TensorRT {trt.__version__} builds strongly typed networks only, so a {precision} engine needs a "
                f"{precision} ONNX graph, which medssl does not write; use precision='fp32' or TensorRT 10.x for "
                f"{precision} engines"
            )
        config.set_flag(trt.BuilderFlag.FP16 if precision == "fp16" else trt.BuilderFlag.BF16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        for index in range(network.num_layers):  # statistics of normalisation in fp32: fp16 sums overflow
            layer = network.get_layer(index)
            if layer.type == trt.LayerType.NORMALIZATION:
                layer.precision = trt.float32
                layer.set_output_type(0, trt.float32)
    profile = builder.create_optimization_profile()
    shape = graph.signature.input_shape
    profile.set_shape(graph.signature.input_name, (1, *shape), (max_batch, *shape), (max_batch, *shape))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"{onnx_file}: TensorRT could not build an engine (see its log above)")
    return serialized


def cached_engine(
    onnx_file: Path, graph: GraphEntry, precision: str, max_batch: int, device: torch.device
) -> tuple[Path, EngineEntry]:
    """The engine for ``graph`` on this GPU and TensorRT version from the cache, built there first if absent."""
    gpu, tensorrt_version = current_target(device)
    key = "-".join((graph.sha256[:16], re.sub(r"[^A-Za-z0-9.]+", "_", gpu), tensorrt_version, precision, f"b{max_batch}"))
    folder = cache_root() / "tensorrt"
    engine_file, record = folder / f"{key}.engine", folder / f"{key}.json"
    if engine_file.is_file() and record.is_file():
        try:
            entry = EngineEntry(**json.loads(record.read_text(encoding="utf-8")))
        except (ValueError, TypeError):  # a record from another medssl version or a torn disk: build again
            entry = None
        if entry is not None and sha256_of(engine_file) == entry.sha256:
            return engine_file, entry
    folder.mkdir(parents=True, exist_ok=True)
    entry = build_engine(onnx_file, graph, engine_file, precision, max_batch, device)
    write_atomically(record, lambda path: path.write_text(json.dumps(vars(entry), indent=2), encoding="utf-8"))
    return engine_file, entry


class TensorRTRuntime(ExportedRuntime):
    """Runs TensorRT engines (one per branch) on a CUDA device, on a stream of their own.

    Calls from several threads are serialised (an execution context runs one inference at a time).
    """

    backend = "tensorrt"

    def __init__(self, directory: Path, manifest: ExportManifest, device: torch.device, precision: str = "fp16") -> None:
        trt = require_tensorrt()
        if device.type != "cuda":
            raise ExportError(f"TensorRT runs on CUDA devices; got {device}")
        self.directory, self.manifest, self.device = Path(directory), manifest, device
        self._torch_dtypes = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16}
        self._runtime = trt.Runtime(_logger())  # kept: a runtime must outlive the engines it deserialised
        gpu, tensorrt_version = current_target(device)
        self._engines, self._contexts, self._limits = {}, {}, {}
        for branch, graph in manifest.graphs.items():
            if branch in manifest.engines:
                entry = manifest.engines[branch]
                engine_file = Path(directory) / entry.file
                check_engine_compatible(entry, gpu, tensorrt_version, engine_file)
                check_export_file(engine_file, entry.sha256)
            else:
                engine_file, entry = cached_engine(Path(directory) / graph.file, graph, precision, manifest.max_batch, device)
            with torch.cuda.device(device):  # the engine's weights and the context's scratch memory go to this device
                engine = self._runtime.deserialize_cuda_engine(engine_file.read_bytes())
                if engine is None:
                    raise ExportError(f"{engine_file}: TensorRT could not load this engine (see its log above)")
                self._engines[branch], self._contexts[branch] = engine, engine.create_execution_context()
            self._limits[branch] = entry.max_batch
        self.stream = torch.cuda.Stream(device)
        self._lock = threading.Lock()

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        branch = self.branch_of(batch, self._engines)
        batch = batch.to(self.device, torch.float32).contiguous()
        return run_in_chunks(batch, self._limits[branch], lambda chunk: self._execute(branch, chunk))

    def _execute(self, branch: str, batch: torch.Tensor) -> torch.Tensor:
        """One engine call on ``batch`` (at most the profile's max batch), ordered with the caller's stream."""
        with self._lock, torch.cuda.device(self.device):
            return self._execute_locked(branch, batch)

    def _execute_locked(self, branch: str, batch: torch.Tensor) -> torch.Tensor:
        signature = self.manifest.graphs[branch].signature
        engine, context = self._engines[branch], self._contexts[branch]
        context.set_input_shape(signature.input_name, tuple(batch.shape))
        shape = tuple(context.get_tensor_shape(signature.output_name))
        dtype = self._torch_dtypes[engine.get_tensor_dtype(signature.output_name)]
        output = torch.empty(shape, dtype=dtype, device=self.device)
        context.set_tensor_address(signature.input_name, batch.data_ptr())
        context.set_tensor_address(signature.output_name, output.data_ptr())
        caller = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)  # the input is ready before the engine reads it
        if not context.execute_async_v3(self.stream.cuda_stream):
            raise ExportError(f"TensorRT failed to run the {branch} engine (see its log above)")
        batch.record_stream(self.stream)  # not reused by the allocator while the engine reads it
        output.record_stream(self.stream)
        caller.wait_stream(self.stream)
        return output.float()
