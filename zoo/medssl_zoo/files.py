"""Atomic file writes: a failure never leaves a partial file or touches what was there before."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Read once at import: os.umask can only be read by setting it, which is not thread-safe later on.
_UMASK = _current_umask()


def write_atomically(target: Path | str, write: Callable[[Path], None]) -> None:
    """Call ``write(temporary)`` on a temporary file beside ``target``, fsync it, then rename it over ``target``.

    The temporary file keeps ``target``'s suffixes (``.nii.gz`` stays ``.nii.gz``) so writers that pick a
    format from the name still work. On any error the temporary file is removed and ``target`` is untouched.
    """
    target = Path(target)
    suffix = "".join(target.suffixes)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent)
    os.close(handle)
    try:
        os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file a normal file's mode
        write(Path(temporary))
        with open(temporary, "rb") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_directory_atomically(target: Path | str, write: Callable[[Path], None], replace: bool = False) -> None:
    """Call ``write(temporary)`` to fill a temporary folder beside ``target``, then rename it to ``target``.

    Readers never see a half-written folder. ``replace``: an existing ``target`` is renamed aside, the new one
    renamed into place and the old one deleted (the caller decides whether it may be replaced); between the two
    renames ``target`` is briefly absent, and if the second rename fails the old folder is put back. Without
    ``replace`` an existing ``target`` is an error. On any error the temporary folder is removed.
    """
    target = Path(target)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        os.chmod(temporary, 0o777 & ~_UMASK)
        write(temporary)
        for file in (entry for entry in temporary.rglob("*") if entry.is_file()):
            with open(file, "rb") as stream:
                os.fsync(stream.fileno())
        if replace and target.exists():
            retired = temporary.with_suffix(".retired")
            os.rename(target, retired)
            try:
                os.rename(temporary, target)
            except BaseException:
                os.rename(retired, target)  # the caller's folder is never left under a hidden name
                raise
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.rename(temporary, target)  # fails if target exists and is not an empty folder
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
