"""Errors of volume I/O. Each message names the path, what is wrong with it and what to do."""

from __future__ import annotations

from pathlib import Path

from medssl_zoo import MedsslError


class VolumeReadError(MedsslError, ValueError):
    """A file or folder could not be read as a ``Volume``.

    ``str(error)`` is ``"<path>: <problem>"``; ``path`` and ``problem`` are kept as attributes for callers
    (the CLI) that format them differently. Messages never contain patient names or IDs.
    """

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem

    def __reduce__(self) -> tuple[type[VolumeReadError], tuple[Path, str]]:
        return type(self), (self.path, self.problem)


class VolumeWriteError(MedsslError, ValueError):
    """A volume was not written: its target was refused (``check_output_path``) or its data cannot be stored."""
