"""write_directory_atomically: a folder appears complete, replaces only when asked, and never loses the old one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medssl_zoo import files
from medssl_zoo.files import write_directory_atomically


def _fill(content: str):
    def write(folder: Path) -> None:
        (folder / "config.json").write_text(content)
        (folder / "graphs").mkdir()  # a nested folder is written (and synced) too
        (folder / "graphs" / "model.onnx").write_text(content * 2)

    return write


def _listing(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_folder_with_subfolders_appears_complete_and_is_replaced_only_when_asked(tmp_path: Path) -> None:
    target = tmp_path / "export"
    write_directory_atomically(target, _fill("old"))
    assert _listing(target) == {"config.json": "old", "graphs/model.onnx": "oldold"}
    with pytest.raises(OSError):
        write_directory_atomically(target, _fill("new"))
    assert _listing(target)["config.json"] == "old"
    write_directory_atomically(target, _fill("new"), replace=True)
    assert _listing(target) == {"config.json": "new", "graphs/model.onnx": "newnew"}
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no temporary or retired folders left


def test_the_old_folder_is_put_back_when_the_new_one_cannot_be_renamed_into_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "export"
    write_directory_atomically(target, _fill("old"))
    real_rename = os.rename

    def rename(source, destination) -> None:  # the disk refuses the new folder's rename (EIO, quota, ...)
        if str(source).endswith(".partial"):
            raise OSError(5, "Input/output error", str(source))
        real_rename(source, destination)

    monkeypatch.setattr(files.os, "rename", rename)
    with pytest.raises(OSError, match="Input/output error"):
        write_directory_atomically(target, _fill("new"), replace=True)
    assert _listing(target) == {"config.json": "old", "graphs/model.onnx": "oldold"}
    assert [p.name for p in tmp_path.iterdir()] == ["export"]
