"""Export to ONNX and the runtimes under Model: self-describing folders, ONNX Runtime == PyTorch, every zoo card
exports, the CLI, and clear errors for what cannot be done."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import onnx
import pytest
import torch
from conftest import nano_task_card

from medssl_sdk import load
from medssl_sdk.cli import main
from medssl_sdk.export import ExportManifest, export_network, is_export_folder
from medssl_sdk.io import write_nifti
from medssl_sdk.model import Model
from medssl_sdk.preprocess import prepare
from medssl_sdk.runtimes.tensorrt_backend import check_engine_compatible
from medssl_sdk.samples import make_phantom
from medssl_zoo import ExportError, ModelCard, create, get_card, list_models, save_checkpoint
from medssl_zoo.export import export_signatures
from medssl_zoo.registry import ARCHITECTURES, Architecture, build_model

#: The issue's parity bound for fp32 outputs (max abs) between ONNX Runtime and PyTorch on the same input.
PARITY = 1e-4
#: TensorRT's largest tensor rank.
TENSORRT_MAX_RANK = 8


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("medssl-cache")


@pytest.fixture(autouse=True)
def _medssl_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exports made by load(..., backend="onnxruntime") go to (and are reused from) this module's cache."""
    monkeypatch.setenv("MEDSSL_CACHE", str(cache))


@pytest.fixture(scope="module")
def nano(cache: Path) -> tuple[Model, Model]:
    """phantom-mit-nano on PyTorch and on ONNX Runtime (exported into the module's cache by load())."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEDSSL_CACHE", str(cache))
        return load("phantom-mit-nano", device="cpu"), load("phantom-mit-nano", backend="onnxruntime")


@pytest.fixture(scope="module")
def zoo_exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[torch.nn.Module, Path]]:
    """Every zoo card's network (random weights) and its export folder."""
    root = tmp_path_factory.mktemp("zoo-exports")
    exports = {}
    for name in list_models():
        card = get_card(name)
        network = create(card).eval()
        exports[name] = (network, export_network(network, card, root / name))
    return exports


@pytest.fixture(scope="module")
def phantom_windows() -> torch.Tensor:
    """(3, 1, 32, 96, 96): windows of a pre-processed phantom, as the sliding-window engine feeds the network."""
    image, _ = make_phantom(seed=7, shape=(40, 120, 110), spacing=(3.0, 1.5, 1.5))
    tensor = prepare(image, get_card("phantom-mit-nano").inputs["3d"]).tensor
    corners = [(0, 0, 0), (4, 10, 6), (8, 24, 14)]
    return torch.stack([tensor[:, d : d + 32, h : h + 96, w : w + 96] for d, h, w in corners])


def nano_2d_task_card(task: str, names: tuple[str, ...]) -> ModelCard:
    """``nano_task_card`` with its 2D input branch only (one small graph to export)."""
    card = nano_task_card(task, names)
    return dataclasses.replace(card, inputs={"2d": card.inputs["2d"]})


def test_export_folder_carries_the_card_and_a_checked_graph(nano) -> None:
    torch_model, onnx_model = nano
    folder = onnx_model.runtime.directory
    manifest = ExportManifest.read(folder)
    assert manifest.card.to_dict() == torch_model.card.to_dict()  # labels, pre-processing, patch size, weights sha256
    assert list(manifest.graphs) == ["3d"] and manifest.format == "onnx" and manifest.precision == "fp32"
    graph = manifest.graphs["3d"]
    file = folder / graph.file
    assert hashlib.sha256(file.read_bytes()).hexdigest() == graph.sha256
    onnx.checker.check_model(str(file), full_check=True)
    proto = onnx.load(str(file))
    (graph_input,) = proto.graph.input
    dims = graph_input.type.tensor_type.shape.dim
    assert graph_input.name == "image" and dims[0].dim_param and not dims[0].dim_value  # the batch axis is dynamic
    assert [d.dim_value for d in dims[1:]] == [1, 32, 96, 96]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert onnx_model.backend == "onnxruntime" and onnx_model.runtime.providers == ["CPUExecutionProvider"]


def test_onnxruntime_gives_torch_logits_on_phantom_windows(nano, phantom_windows) -> None:
    torch_model, onnx_model = nano
    expected = torch_model(phantom_windows)
    for batch in (phantom_windows, phantom_windows[:1]):  # two batch sizes through the one dynamic graph
        produced = onnx_model(batch)
        assert produced.shape == (batch.shape[0], 7, 32, 96, 96)
        assert float((produced - expected[: batch.shape[0]]).abs().max()) <= PARITY


def test_segment_with_backend_onnxruntime_gives_torch_labels(nano, tmp_path: Path, capsys) -> None:
    image, _ = make_phantom(seed=21, shape=(40, 110, 100), spacing=(3.2, 1.6, 1.6))
    ct = write_nifti(image, tmp_path / "ct.nii.gz")
    outputs = {}
    for backend in ("torch", "onnxruntime"):
        outputs[backend] = tmp_path / f"{backend}.nii.gz"
        argv = ["--quiet", "segment", ct, "-m", "phantom-mit-nano", "--backend", backend, "-o", outputs[backend], "--device", "cpu"]
        assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    # the export folder itself is a model too: ONNX Runtime by default
    outputs["folder"] = tmp_path / "folder.nii.gz"
    argv = ["--quiet", "segment", ct, "-m", nano[1].runtime.directory, "-o", outputs["folder"]]
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    labels = {name: np.asarray(nib.load(path).dataobj) for name, path in outputs.items()}
    assert len(np.unique(labels["torch"])) == 7  # every organ found: a real comparison, not of empty maps
    assert np.array_equal(labels["onnxruntime"], labels["torch"])
    assert np.array_equal(labels["folder"], labels["torch"])


@pytest.mark.parametrize("name", list_models())
def test_every_zoo_card_exports_and_runs_on_onnxruntime(zoo_exports, name: str) -> None:
    network, folder = zoo_exports[name]
    card = get_card(name)
    manifest = ExportManifest.read(folder)
    assert set(manifest.graphs) == set(card.inputs)
    model = load(folder)
    for branch, signature in export_signatures(card).items():
        batch = signature.example(3)  # not the traced batch size
        with torch.inference_mode():
            expected = network(batch)
        produced = model(batch)
        assert produced.shape == expected.shape
        assert float((produced - expected).abs().max()) <= PARITY, branch
        graph_file = folder / manifest.graphs[branch].file
        onnx.checker.check_model(str(graph_file), full_check=True)
        inferred = onnx.shape_inference.infer_shapes(onnx.load(str(graph_file))).graph
        ranks = [len(value.type.tensor_type.shape.dim) for value in [*inferred.value_info, *inferred.output]]
        assert max(ranks) <= TENSORRT_MAX_RANK  # else TensorRT cannot build an engine from the graph


def test_mit7_2d_and_3d_embeddings_through_onnxruntime(zoo_exports) -> None:
    network, folder = zoo_exports["unimiss-mit7"]
    card = get_card("unimiss-mit7")
    eager, exported = Model(network, card), load(folder)
    generator = np.random.default_rng(3)
    xray = generator.uniform(0, 255, size=(256, 240)).astype(np.float32)
    ct = generator.normal(0, 300, size=(20, 100, 90)).astype(np.float32)
    for image, spacing in ((xray, (0.5, 0.5)), (ct, (3.0, 1.0, 1.0))):
        expected, produced = eager.embed(image, spacing=spacing), exported.embed(image, spacing=spacing)
        assert produced.shape == (network.embedding_dim,)
        assert float((produced - expected).abs().max()) <= PARITY


def test_classify_through_onnxruntime_and_no_embeddings_from_a_task_graph(tmp_path: Path) -> None:
    card = nano_2d_task_card("classify", ("normal", "effusion", "nodule"))
    network = build_model(card).eval()
    exported = load(export_network(network, card, tmp_path / "classifier"))
    xray = np.random.default_rng(0).uniform(0, 1, size=(90, 80)).astype(np.float32)
    expected, produced = Model(network, card).classify(xray, spacing=(1.0, 1.0)), exported.classify(xray, spacing=(1.0, 1.0))
    assert list(produced) == ["normal", "effusion", "nodule"]
    assert max(abs(produced[k] - expected[k]) for k in expected) <= PARITY
    with pytest.raises(ExportError, match="exported with its 'classify' output only"):
        exported.embed(xray, spacing=(1.0, 1.0))


def test_bad_formats_precisions_and_branches_are_clear_errors(nano, tmp_path: Path) -> None:
    torch_model = nano[0]
    with pytest.raises(ExportError, match="unsupported export format 'savedmodel'; choose one of onnx, tensorrt"):
        torch_model.export(tmp_path / "x", format="savedmodel")
    with pytest.raises(ExportError, match="ONNX graphs are exported in fp32; fp16 applies to TensorRT"):
        torch_model.export(tmp_path / "x", precision="fp16")
    with pytest.raises(ExportError, match="takes 3d input; cannot export branch"):
        torch_model.export(tmp_path / "x", branches=("2d",))
    with pytest.raises(ExportError, match="unknown backend 'openvino'"):
        load("phantom-mit-nano", backend="openvino")
    with pytest.raises(ExportError, match="is an exported model; run it with backend 'onnxruntime' or 'tensorrt'"):
        load(nano[1].runtime.directory, backend="torch")
    assert not (tmp_path / "x").exists()


def test_a_model_without_an_export_path_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    untraceable = Architecture(ARCHITECTURES["mit"].builder, exportable=False, export_note="its attention is data-dependent")
    monkeypatch.setitem(ARCHITECTURES, "mit", untraceable)
    card = nano_task_card("segment", ("background", "liver"))
    with pytest.raises(ExportError, match="has no export path: its attention is data-dependent; run it with backend='torch'"):
        export_network(build_model(card), card, tmp_path / "x")
    checkpoint = tmp_path / "checkpoint"
    save_checkpoint(build_model(card), card, checkpoint)
    with pytest.raises(ExportError, match="has no export path"):
        load(checkpoint, backend="onnxruntime")


def test_existing_folders_are_kept_and_only_exports_are_replaced(tmp_path: Path) -> None:
    card = nano_2d_task_card("segment", ("background", "liver"))
    network = build_model(card).eval()
    checkpoint = tmp_path / "checkpoint"
    save_checkpoint(network, card, checkpoint)
    before = {p.name: p.read_bytes() for p in checkpoint.iterdir()}
    with pytest.raises(ExportError, match="is not a medssl export folder; refusing to replace it even with overwrite"):
        export_network(network, card, checkpoint, overwrite=True)
    assert {p.name: p.read_bytes() for p in checkpoint.iterdir()} == before
    folder = export_network(network, card, tmp_path / "export")
    with pytest.raises(ExportError, match="already exists; pass overwrite=True"):
        export_network(network, card, folder)
    first = ExportManifest.read(folder).graphs["2d"].sha256
    with torch.no_grad():
        network.seg_head["2d"].classifier.bias.add_(1.0)  # other weights: another graph
    export_network(network, card, folder, overwrite=True)
    assert ExportManifest.read(folder).graphs["2d"].sha256 != first
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folders left


def test_a_checkpoint_with_another_card_is_not_served_a_stale_cached_export(tmp_path: Path) -> None:
    """Same name and weights, other labels: the export cache must not hand back the first card."""
    card = nano_2d_task_card("segment", ("background", "liver"))
    network = build_model(card).eval()
    checkpoint = tmp_path / "checkpoint"
    save_checkpoint(network, card, checkpoint)
    first = load(checkpoint, backend="onnxruntime")
    relabelled = dataclasses.replace(card, labels=(card.labels[0], dataclasses.replace(card.labels[1], name="tumour")))
    save_checkpoint(network, relabelled, checkpoint, overwrite=True)
    second = load(checkpoint, backend="onnxruntime")
    assert [label.name for label in first.card.labels] == ["background", "liver"]
    assert [label.name for label in second.card.labels] == ["background", "tumour"]
    assert second.runtime.directory != first.runtime.directory


def test_model_export_shows_its_progress_bar_only_when_asked(tmp_path: Path, capsys) -> None:
    card = nano_2d_task_card("segment", ("background", "liver"))
    model = Model(build_model(card).eval(), card)
    model.export(tmp_path / "quiet")
    assert f"export {card.name}" not in capsys.readouterr().err
    model.export(tmp_path / "shown", progress=True)
    assert f"export {card.name}" in capsys.readouterr().err


def test_a_changed_graph_file_is_refused(tmp_path: Path) -> None:
    card = nano_2d_task_card("segment", ("background", "liver"))
    folder = export_network(build_model(card).eval(), card, tmp_path / "export")
    graph = folder / "model-2d.onnx"
    graph.write_bytes(graph.read_bytes()[:-1] + b"\0")
    with pytest.raises(ExportError, match="model-2d.onnx: sha256 .* differs from the export's config.json"):
        load(folder)
    (folder / "config.json").write_text(json.dumps({"format": "medssl-export", "export": {}}))
    assert is_export_folder(folder)
    with pytest.raises(ExportError, match="config.json: malformed export config"):
        load(folder)


def test_engines_built_on_another_gpu_or_tensorrt_version_are_refused(tmp_path: Path) -> None:
    from medssl_sdk.export import EngineEntry

    engine = EngineEntry("3d", "model-3d.engine", "0" * 64, "1" * 64, "NVIDIA H200", "10.9.0", "fp16", 4)
    check_engine_compatible(engine, "NVIDIA H200", "10.9.0", tmp_path)  # same GPU and version: fine
    with pytest.raises(ExportError, match="built on a NVIDIA H200, this is a NVIDIA A100-SXM4-80GB"):
        check_engine_compatible(engine, "NVIDIA A100-SXM4-80GB", "10.9.0", tmp_path)
    with pytest.raises(ExportError, match="built with TensorRT 10.9.0, this is TensorRT 10.13.3"):
        check_engine_compatible(engine, "NVIDIA H200", "10.13.3", tmp_path)


def test_tensorrt_without_tensorrt_says_what_it_needs(nano) -> None:
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here; this checks the message of machines without it")
    except ImportError:
        pass
    with pytest.raises(ExportError, match="TensorRT is not installed; it comes from NVIDIA"):
        load(nano[1].runtime.directory, backend="tensorrt")
    with pytest.raises(ExportError, match="TensorRT is not installed"):
        nano[0].export("unused", format="tensorrt")


def test_cli_export_writes_a_folder_and_refuses_what_it_cannot_do(tmp_path: Path, capsys) -> None:
    card = nano_task_card("segment", ("background", "liver"))
    checkpoint = tmp_path / "checkpoint"
    save_checkpoint(build_model(card).eval(), card, checkpoint)
    output = tmp_path / "exported"
    assert main(["export", "-m", str(checkpoint), "-o", str(output), "--branch", "3d"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {output}: model-3d.onnx (max |difference| to PyTorch" in out
    assert list(ExportManifest.read(output).graphs) == ["3d"]
    assert main(["export", "-m", str(checkpoint), "-o", str(output)]) == 1
    assert "already exists; pass overwrite=True (CLI: --overwrite)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "-m", str(checkpoint), "-o", str(tmp_path / "y"), "--format", "savedmodel"])
    assert exit_info.value.code == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU and TensorRT (pip install tensorrt)")
def test_tensorrt_engine_segments_like_torch(nano, tmp_path: Path, phantom_windows) -> None:
    pytest.importorskip("tensorrt", reason="needs TensorRT (pip install tensorrt from NVIDIA's index)")
    torch_model = load("phantom-mit-nano", device="cuda")
    folder = torch_model.export(tmp_path / "engine", format="tensorrt", precision="fp16")
    manifest = ExportManifest.read(folder)
    assert manifest.engines["3d"].gpu == torch.cuda.get_device_name()
    engine_model = load(folder)
    assert engine_model.backend == "tensorrt"
    expected = torch_model(phantom_windows).argmax(1)
    agreement = float((engine_model(phantom_windows).argmax(1) == expected).float().mean())
    assert agreement >= 0.99


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU and onnxruntime-gpu")
def test_onnxruntime_cuda_provider_matches_torch(nano, phantom_windows) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("needs onnxruntime-gpu (this ONNX Runtime has no CUDA provider)")
    model = load(nano[1].runtime.directory, device="cuda")
    expected = nano[0](phantom_windows)
    assert float((model(phantom_windows.cuda()).cpu() - expected).abs().max()) <= 1e-3


def test_kernels_take_their_reference_path_while_exporting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Even with the Triton kernels forced (they run under the interpreter here), the graph holds plain ONNX ops."""
    monkeypatch.setenv("MEDSSL_KERNELS", "triton")
    card = nano_task_card("segment", ("background", "liver"))
    card = type(card)(**{**card.__dict__, "inputs": {"3d": card.inputs["3d"]}})
    folder = export_network(build_model(card).eval(), card, tmp_path / "export")
    proto = onnx.load(str(folder / "model-3d.onnx"))
    nodes = [*proto.graph.node, *(node for function in proto.functions for node in function.node)]
    assert {node.domain for node in nodes} <= {"", "ai.onnx"}, "only standard ONNX operators (no custom kernel ops)"
    assert ExportManifest.read(folder).graphs["3d"].max_abs_difference <= PARITY
