"""The ONNX Runtime runtime: an export folder's graphs run by ONNX Runtime.

The CPU provider runs everywhere; on a CUDA device the TensorRT and CUDA providers are used when the installed
ONNX Runtime has them (``pip install onnxruntime-gpu``), and inputs and outputs stay on the GPU (I/O binding).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medssl_sdk.export import ExportManifest, GraphEntry
from medssl_sdk.runtimes.base import ExportedRuntime, check_export_file
from medssl_zoo import ExportError

#: GPU providers in order of preference.
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ExportError("ONNX Runtime is not installed: pip install 'medssl-sdk[onnx]' (or onnxruntime-gpu for CUDA)") from None
    return onnxruntime


def providers_for(device: torch.device) -> list[str]:
    """The execution providers for ``device``: the GPU ones ONNX Runtime has (then CPU) on CUDA, else CPU."""
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    available = _onnxruntime().get_available_providers()
    gpu = [provider for provider in GPU_PROVIDERS if provider in available]
    if device.type != "cuda" or not gpu:
        raise ExportError(
            f"this ONNX Runtime has no provider for {device} (it has {', '.join(available)}); "
            "use device='cpu', or install onnxruntime-gpu for CUDA"
        )
    return [*gpu, "CPUExecutionProvider"]


def open_session(file: Path, providers: list[str] | None = None, device_id: int = 0, threads: int | None = None):
    """An ``onnxruntime.InferenceSession`` on ``file`` with all graph optimisations, warnings silenced.

    ``threads``: intra-op threads on CPU (default: ONNX Runtime's, one per physical core).
    """
    onnxruntime = _onnxruntime()
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
    providers = providers or ["CPUExecutionProvider"]
    provider_options = [{"device_id": device_id} if provider in GPU_PROVIDERS else {} for provider in providers]
    return onnxruntime.InferenceSession(str(file), options, providers=providers, provider_options=provider_options)


class OnnxRuntimeRuntime(ExportedRuntime):
    """Runs the graphs of an export folder, choosing the graph by the batch's rank (2D or 3D)."""

    backend = "onnxruntime"

    def __init__(self, directory: Path, manifest: ExportManifest, device: torch.device, threads: int | None = None) -> None:
        self.directory, self.manifest, self.device = Path(directory), manifest, device
        providers = providers_for(device)
        self._sessions = {}
        for branch, graph in manifest.graphs.items():
            file = Path(directory) / graph.file
            check_export_file(file, graph.sha256)
            self._sessions[branch] = open_session(file, providers, device.index or 0, threads)

    @property
    def providers(self) -> list[str]:
        """The providers the sessions use, best first."""
        return next(iter(self._sessions.values())).get_providers()

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        branch = self.branch_of(batch, self._sessions)
        graph, session = self.manifest.graphs[branch], self._sessions[branch]
        run = self._run_bound if self.device.type == "cuda" else self._run_host
        return run(session, graph, batch.float())

    def _run_host(self, session, graph: GraphEntry, batch: torch.Tensor) -> torch.Tensor:
        inputs = {graph.signature.input_name: np.ascontiguousarray(batch.detach().cpu().numpy())}
        return torch.from_numpy(session.run([graph.signature.output_name], inputs)[0]).to(self.device)

    def _run_bound(self, session, graph: GraphEntry, batch: torch.Tensor) -> torch.Tensor:
        """Run with inputs and outputs bound to CUDA memory (no host round trip)."""
        batch = batch.to(self.device).contiguous()
        output_shape = [batch.shape[0], *session.get_outputs()[0].shape[1:]]
        output = torch.empty(output_shape, dtype=torch.float32, device=self.device)
        binding = session.io_binding()
        index = self.device.index or 0
        binding.bind_input(graph.signature.input_name, "cuda", index, np.float32, list(batch.shape), batch.data_ptr())
        binding.bind_output(graph.signature.output_name, "cuda", index, np.float32, output_shape, output.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()  # the input is written before ONNX Runtime reads it
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()  # the output is written before torch reads it (whatever the run options)
        return output
