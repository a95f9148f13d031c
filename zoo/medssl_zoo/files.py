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

    Readers see either the old folder or the complete new one, never a half-written one. ``replace``: an
    existing ``target`` is swapped out and deleted after the new one is in place (the caller decides whether
    it may be); otherwise an existing ``target`` is an error. On any error the temporary folder is removed.
    """
    target = Path(target)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        os.chmod(temporary, 0o777 & ~_UMASK)
        write(temporary)
        for entry in temporary.iterdir():
            with open(entry, "rb") as stream:
                os.fsync(stream.fileno())
        if replace and target.exists():
            retired = temporary.with_suffix(".retired")
            os.rename(target, retired)
            os.rename(temporary, target)
            shutil.rmtree(retired)
        else:
            os.rename(temporary, target)  # fails if target exists and is not an empty folder
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
