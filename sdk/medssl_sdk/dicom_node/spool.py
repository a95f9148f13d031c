"""The spool: every received instance on disk, durably, before the C-STORE is acknowledged.

Layout under the spool folder::

    incoming/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm   instances as received (DICOM Part 10)
    jobs/<StudyInstanceUID>.json                                          job state (see jobs.py)
    results/<StudyInstanceUID>.dcm                                        the SEG made for the study

A file is written under a hidden temporary name in its final folder, fsynced, renamed into place and the
folder fsynced, so after a crash a file is either complete or absent (a leftover temporary is removed at
start). A SOP instance received twice replaces itself (same UID, same content), so a resent study is harmless.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from medssl_zoo import MedsslError
from medssl_zoo.files import write_atomically

#: What a UID may look like (DICOM UI: digits and dots, at most 64 characters); anything else never becomes a path.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class SpoolError(MedsslError):
    """An instance cannot be stored (bad UID, disk full)."""


def check_uid(value: object, keyword: str) -> str:
    """``value`` as a UID string, or a SpoolError saying which attribute is missing or malformed."""
    text = str(value or "").strip().rstrip("\0")
    if len(text) > 64 or not _UID.match(text):
        raise SpoolError(f"{keyword} is missing or not a valid UID (digits and dots, at most 64 characters)")
    return text


def finished_files(folder: Path, pattern: str) -> list[Path]:
    """Files in ``folder`` matching ``pattern``, sorted, without the hidden temporaries of writes in progress."""
    return sorted(path for path in folder.glob(pattern) if not path.name.startswith("."))


def fsync_directory(directory: Path) -> None:
    """Make a rename or a new entry in ``directory`` durable."""
    handle = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def make_directory_durably(directory: Path) -> None:
    """Create ``directory`` and any missing parents, fsyncing each new entry's parent."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for folder in reversed(missing):
        folder.mkdir(exist_ok=True)
        fsync_directory(folder.parent)


def write_durably(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically (temporary file, fsync, rename) and fsync its folder."""
    make_directory_durably(target.parent)
    write_atomically(target, lambda temporary: temporary.write_bytes(data))
    fsync_directory(target.parent)


class Spool:
    """The node's folder of received instances, job states and results (layout in the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.incoming = self.root / "incoming"
        self.jobs = self.root / "jobs"
        self.results = self.root / "results"
        for folder in (self.incoming, self.jobs, self.results):
            make_directory_durably(folder)

    def store(self, encoded: bytes, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
        """Write one instance (Part 10 bytes) durably; return its path. UIDs are checked before they become names."""
        study_uid = check_uid(study_uid, "StudyInstanceUID")
        series_uid = check_uid(series_uid, "SeriesInstanceUID")
        sop_instance_uid = check_uid(sop_instance_uid, "SOPInstanceUID")
        target = self.incoming / study_uid / series_uid / f"{sop_instance_uid}.dcm"
        write_durably(target, encoded)
        return target

    def study_folder(self, study_uid: str) -> Path:
        return self.incoming / check_uid(study_uid, "StudyInstanceUID")

    def series_folders(self, study_uid: str) -> list[Path]:
        """The study's series folders, sorted by name."""
        folder = self.study_folder(study_uid)
        return sorted(path for path in folder.iterdir() if path.is_dir()) if folder.is_dir() else []

    def studies(self) -> list[str]:
        """StudyInstanceUIDs with instances in the spool."""
        return sorted(path.name for path in self.incoming.iterdir() if path.is_dir())

    def result_path(self, study_uid: str) -> Path:
        return self.results / f"{check_uid(study_uid, 'StudyInstanceUID')}.dcm"

    def free_mb(self) -> float:
        """Free space (MiB) on the spool's file system, for unprivileged users."""
        return shutil.disk_usage(self.root).free / 2**20

    def remove_temporaries(self) -> int:
        """Delete temporary files a crash left behind (hidden ``.NAME.*.tmp*``); return how many."""
        leftovers = [path for path in self.root.rglob(".*") if path.is_file() and ".tmp" in path.name]
        for path in leftovers:
            path.unlink(missing_ok=True)
        return len(leftovers)
