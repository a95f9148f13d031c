"""Atomic file writes: a failure never leaves a partial file or touches what was there before."""

from __future__ import annotations

import os
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
