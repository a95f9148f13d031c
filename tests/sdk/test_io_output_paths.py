"""check_output_path: suffixes in any case, existing files, the input itself (however spelled), missing folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from medssl_sdk.io import VolumeWriteError, check_output_path

NIFTI = (".nii", ".nii.gz")


@pytest.mark.parametrize("name", ["seg.nii.gz", "SEG.NII.GZ", "seg.Nii", "scan.v2.nii"])
def test_accepted_names_come_back_as_paths(tmp_path: Path, name: str) -> None:
    assert check_output_path(str(tmp_path / name), NIFTI, overwrite=False) == tmp_path / name


@pytest.mark.parametrize("name", ["seg.nrrd", "seg.nii.gz.tmp", "seg", "nii.gz.png"])
def test_other_suffixes_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(VolumeWriteError, match=rf"{name}: the file name must end in \.nii or \.nii\.gz"):
        check_output_path(tmp_path / name, NIFTI, overwrite=False)


def test_existing_file_needs_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "seg.png"
    target.write_bytes(b"old")
    with pytest.raises(VolumeWriteError, match=r"seg.png: already exists; pass overwrite=True \(CLI: --overwrite\)"):
        check_output_path(target, (".png",), overwrite=False)
    assert check_output_path(target, (".png",), overwrite=True) == target
    assert target.read_bytes() == b"old"  # checking never touches the file


def test_source_is_refused_however_spelled_even_with_overwrite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "ct.nii.gz"
    source.write_bytes(b"input")
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.nii.gz").symlink_to(source)
    monkeypatch.chdir(tmp_path / "sub")
    spellings = [source, tmp_path / "sub" / ".." / "ct.nii.gz", Path("../ct.nii.gz"), tmp_path / "link.nii.gz"]
    for spelling in spellings:
        for given_source in (source, Path("../ct.nii.gz"), str(tmp_path / "link.nii.gz")):
            with pytest.raises(VolumeWriteError, match=r"is the input this output is made from .*inputs are never overwritten"):
                check_output_path(spelling, NIFTI, overwrite=True, source=given_source)
    other = tmp_path / "ct2.nii.gz"
    assert check_output_path(other, NIFTI, overwrite=True, source=source) == other  # a neighbour of the input is fine
    assert source.read_bytes() == b"input"


def test_source_that_does_not_exist_yet_is_compared_by_resolved_path(tmp_path: Path) -> None:
    with pytest.raises(VolumeWriteError, match="is the input this output is made from"):
        check_output_path(tmp_path / "a" / ".." / "x.nii", NIFTI, overwrite=True, source=tmp_path / "x.nii")


def test_folders_are_refused(tmp_path: Path) -> None:
    (tmp_path / "out.nii.gz").mkdir()
    with pytest.raises(VolumeWriteError, match=r"out.nii.gz: is a folder; give a file name ending in \.nii or \.nii\.gz"):
        check_output_path(tmp_path / "out.nii.gz", NIFTI, overwrite=True)
    with pytest.raises(VolumeWriteError, match=r"the folder .*missing does not exist; create it first"):
        check_output_path(tmp_path / "missing" / "seg.nii", NIFTI, overwrite=False)
    (tmp_path / "file").write_text("")
    with pytest.raises(VolumeWriteError, match=r"the folder .*file is not a folder"):
        check_output_path(tmp_path / "file" / "seg.nii", NIFTI, overwrite=False)


def test_no_suffix_is_a_programming_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one accepted suffix"):
        check_output_path(tmp_path / "seg.nii", (), overwrite=False)
