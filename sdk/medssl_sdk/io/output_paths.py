"""``check_output_path``: the checks every writer makes before it creates a file, so no input is ever lost."""

from __future__ import annotations

import os
from pathlib import Path

from medssl_sdk.io.errors import VolumeWriteError


def check_output_path(path: str | Path, suffixes: tuple[str, ...], *, overwrite: bool, source: str | Path | None = None) -> Path:
    """Return ``path`` as a ``Path`` if a file may be written there; else raise ``VolumeWriteError`` saying why.

    Refused, in this order: a name that does not end in one of ``suffixes`` (compared case-insensitively,
    so ``.NII.GZ`` passes for ``".nii.gz"``); the ``source`` file the data were read from, however it is
    spelled (``..``, symbolic links), even with ``overwrite``; an existing file unless ``overwrite``; a
    folder; a path whose parent folder does not exist.

    Args:
        path: the file to write.
        suffixes: accepted endings, e.g. ``(".nii", ".nii.gz")``; at least one.
        overwrite: whether an existing file (other than ``source``) may be replaced.
        source: the input the written data come from (e.g. ``volume.metadata["source"]``), or None.
    """
    if not suffixes:
        raise ValueError("check_output_path needs at least one accepted suffix")
    path = Path(path)
    accepted = " or ".join(suffixes)
    if not path.name.lower().endswith(tuple(suffix.lower() for suffix in suffixes)):
        raise VolumeWriteError(f"{path}: the file name must end in {accepted}")
    if source is not None and _is_same_file(path, Path(source)):
        raise VolumeWriteError(
            f"{path}: is the input this output is made from ({source}); inputs are never overwritten, choose another path"
        )
    if path.is_dir():
        raise VolumeWriteError(f"{path}: is a folder; give a file name ending in {accepted}")
    if path.exists() and not overwrite:
        raise VolumeWriteError(f"{path}: already exists; pass overwrite=True (CLI: --overwrite) or choose another path")
    if not path.parent.is_dir():
        problem = "is not a folder" if path.parent.exists() else "does not exist; create it first"
        raise VolumeWriteError(f"{path}: the folder {path.parent} {problem}")
    return path


def _is_same_file(target: Path, source: Path) -> bool:
    """True if ``target`` names the same file as ``source`` (through links, ``..`` and relative paths)."""
    if target.exists() and source.exists():
        return os.path.samefile(target, source)
    return target.resolve() == source.resolve()
