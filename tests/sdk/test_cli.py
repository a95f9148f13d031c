"""The `medssl` CLI end to end: segment/classify/embed on real files, exit codes, nothing partial left behind."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import nano_card, nano_task_card
from dicom_series import write_dicom_series

from medssl_sdk.cli import main
from medssl_sdk.io import read_volume, write_nifti
from medssl_sdk.samples import make_phantom
from medssl_zoo import save_checkpoint
from medssl_zoo.registry import build_model

CLASSES = ("background", "liver", "spleen")


def checkpoint(card, directory: Path) -> Path:
    save_checkpoint(build_model(card).eval(), card, directory)
    return directory


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    image, _ = make_phantom(seed=11, shape=(20, 48, 40), spacing=(4.0, 1.8, 1.9))
    write_nifti(image, root / "ct.nii.gz")
    segment_card = nano_task_card("segment", CLASSES)
    only_2d = type(segment_card)(**{**segment_card.__dict__, "inputs": {"2d": segment_card.inputs["2d"]}})
    return {
        "root": root,
        "ct": root / "ct.nii.gz",
        "segmenter": checkpoint(segment_card, root / "segmenter"),
        "segmenter_2d": checkpoint(only_2d, root / "segmenter-2d"),
        "classifier": checkpoint(nano_task_card("classify", ("normal", "abnormal")), root / "classifier"),
        "encoder": checkpoint(nano_card(), root / "encoder"),
    }


def run(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_segment_writes_labels_on_the_input_grid_and_an_overlay(files, tmp_path, capsys) -> None:
    output, overlay = tmp_path / "seg.nii.gz", tmp_path / "seg.png"
    code, out, err = run(
        capsys, "--quiet", "segment", files["ct"], "-m", files["segmenter"], "-o", output,
        "--overlay", overlay, "--stitch-device", "cpu",
    )
    assert code == 0, err
    labels, image = read_volume(output), read_volume(files["ct"])
    assert labels.shape == image.shape and np.allclose(labels.affine, image.affine, atol=1e-5)
    assert overlay.stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.nii.gz", "seg.png"]


def test_segment_refuses_to_replace_an_existing_output(files, tmp_path, capsys) -> None:
    output = tmp_path / "seg.nii.gz"
    output.write_bytes(b"keep me")
    code, _, err = run(capsys, "segment", files["ct"], "-m", files["segmenter"], "-o", output)
    assert code == 1 and "--overwrite" in err and output.read_bytes() == b"keep me"
    code, _, err = run(capsys, "--quiet", "segment", files["ct"], "-m", files["segmenter"], "-o", output, "--overwrite")
    assert code == 0, err
    assert read_volume(output).shape == read_volume(files["ct"]).shape


def test_segment_never_writes_over_its_input(files, capsys) -> None:
    before = files["ct"].read_bytes()
    code, _, err = run(capsys, "segment", files["ct"], "-m", files["segmenter"], "-o", files["ct"], "--overwrite")
    assert code == 1 and "is the input this output is made from" in err and files["ct"].read_bytes() == before


def nifti(path: Path, array: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array, np.diag([2.0, 2.0, 3.0, 1.0])), str(path))
    return path


def garbage(path: Path) -> Path:
    path.write_bytes(b"\x1f\x8b garbage")
    return path


def empty_folder(path: Path) -> Path:
    path.mkdir()
    return path


@pytest.mark.parametrize(
    "make_input, message",
    [
        (lambda d: nifti(d / "nan.nii.gz", np.where(np.arange(32 * 32 * 8).reshape(32, 32, 8) == 7, np.nan, 0.0)), "NaN"),
        (lambda d: nifti(d / "4d.nii.gz", np.zeros((16, 16, 8, 3), np.float32)), "4"),
        (lambda d: garbage(d / "broken.nii.gz"), "broken.nii.gz"),
        (lambda d: empty_folder(d / "empty"), "empty"),
        (lambda d: d / "missing.nii.gz", "missing.nii.gz"),
    ],
    ids=["nan", "4d", "corrupt", "empty-folder", "missing"],
)
def test_bad_inputs_exit_1_with_a_clear_line_and_no_output(files, tmp_path, capsys, make_input, message) -> None:
    source = make_input(tmp_path)
    output = tmp_path / "seg.nii.gz"
    code, _, err = run(capsys, "--quiet", "segment", source, "-m", files["segmenter"], "-o", output)
    assert code == 1
    assert err.startswith("medssl: error:") and message in err and err.count("\n") == 1
    assert not output.exists() and not any(p.name.startswith(".seg") for p in tmp_path.iterdir())


def test_2d_model_on_a_3d_input_is_refused(files, tmp_path, capsys) -> None:
    code, _, err = run(capsys, "segment", files["ct"], "-m", files["segmenter_2d"], "-o", tmp_path / "seg.nii.gz")
    assert code == 1 and "takes 2D input" in err and "3D volume" in err


def test_mixed_series_folder_lists_the_series_and_series_picks_one(files, tmp_path, capsys) -> None:
    first, _ = make_phantom(seed=12, shape=(16, 40, 40), spacing=(3.0, 2.0, 2.0))
    second, _ = make_phantom(seed=13, shape=(18, 40, 40), spacing=(3.0, 2.0, 2.0))
    folder = tmp_path / "study"
    write_dicom_series(first, folder, series_uid="1.2.826.0.1.3680043.8.498.1", seed=1)
    write_dicom_series(second, folder, series_uid="1.2.826.0.1.3680043.8.498.2", seed=2)
    output = tmp_path / "seg.nii.gz"
    code, _, err = run(capsys, "segment", folder, "-m", files["segmenter"], "-o", output)
    assert code == 1 and "1.2.826.0.1.3680043.8.498.1" in err and "1.2.826.0.1.3680043.8.498.2" in err
    assert not output.exists()
    second_uid = "1.2.826.0.1.3680043.8.498.2"
    code, _, err = run(capsys, "--quiet", "segment", folder, "-m", files["segmenter"], "-o", output, "--series", second_uid)
    assert code == 0, err
    assert read_volume(output).shape == second.shape


def test_classify_prints_json_probabilities(files, tmp_path, capsys) -> None:
    image = tmp_path / "xray.png"
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((80, 64)) * 255).astype(np.uint8)).save(image)
    code, out, err = run(capsys, "classify", image, "-m", files["classifier"], "--json")
    assert code == 0, err
    probabilities = json.loads(out)
    assert list(probabilities) == ["normal", "abnormal"] and sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_embed_writes_npy(files, tmp_path, capsys) -> None:
    output = tmp_path / "embedding.npy"
    code, _, err = run(capsys, "--quiet", "embed", files["ct"], "-m", files["encoder"], "-o", output)
    assert code == 0, err
    assert np.load(output).shape == (build_model(nano_card()).embedding_dim,)


def test_overlay_of_a_2d_input_is_refused_before_anything_is_written(files, tmp_path, capsys) -> None:
    from PIL import Image

    image = tmp_path / "xray.png"
    Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)).save(image)
    output, overlay = tmp_path / "seg.nii.gz", tmp_path / "seg.png"
    code, _, err = run(capsys, "segment", image, "-m", files["segmenter"], "-o", output, "--overlay", overlay)
    assert code == 1 and "--overlay draws 3D volumes" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["xray.png"]


def test_an_unforeseen_exception_is_still_one_line(files, tmp_path, capsys, monkeypatch) -> None:
    import medssl_sdk.cli as cli

    def broken(*args, **kwargs):
        raise TypeError("'NoneType' object is not iterable")

    monkeypatch.setattr(cli, "as_volume", broken)
    code, _, err = run(capsys, "segment", files["ct"], "-m", files["segmenter"], "-o", tmp_path / "seg.nii.gz")
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("medssl: internal error: TypeError:") and "--debug" in err
