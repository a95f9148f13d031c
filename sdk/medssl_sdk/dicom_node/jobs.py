"""Job state on disk: one JSON file per study, rewritten atomically at every step, so a restart resumes.

States and transitions::

    received -> complete -> selected -> inferred -> sent
                         \\-> skipped  \\-> failed   \\-> failed

``received``: instances are arriving. ``complete``: the quiet period passed. ``selected``: a series was chosen.
``inferred``: the SEG is in the spool's results. ``sent``: the destination acknowledged it (recorded before
anything else happens, so a restart never sends a finished job again). ``skipped``: no series passed the rules.
``failed``: inference or sending gave up; ``reason`` says why.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from medssl_sdk.dicom_node.spool import Spool, check_uid, finished_files, write_durably
from medssl_zoo import MedsslError


class JobState(StrEnum):
    RECEIVED = "received"
    COMPLETE = "complete"
    SELECTED = "selected"
    INFERRED = "inferred"
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"


#: The states each state may move to.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.RECEIVED: frozenset({JobState.COMPLETE}),
    JobState.COMPLETE: frozenset({JobState.SELECTED, JobState.SKIPPED, JobState.FAILED}),
    JobState.SELECTED: frozenset({JobState.INFERRED, JobState.FAILED}),
    JobState.INFERRED: frozenset({JobState.SENT, JobState.FAILED}),
    JobState.SENT: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.SKIPPED: frozenset(),
}

#: States in which nothing more happens to a job.
FINAL_STATES = frozenset(state for state, following in TRANSITIONS.items() if not following)


class JobStateError(MedsslError):
    """A job file is unreadable or a transition is not allowed."""


@dataclass(frozen=True)
class Job:
    """One study's progress through the node.

    Attributes:
        study_uid: StudyInstanceUID (the job's key).
        state: where it is.
        series_uid: the selected series (from ``selected`` on).
        seg_sop_instance_uid: the SEG's SOPInstanceUID (from ``inferred`` on).
        send_attempts: C-STOREs tried so far.
        reason: why it was skipped or failed (no patient identity).
        history: ``[state, UTC ISO time]`` pairs, oldest first.
    """

    study_uid: str
    state: JobState = JobState.RECEIVED
    series_uid: str | None = None
    seg_sop_instance_uid: str | None = None
    send_attempts: int = 0
    reason: str | None = None
    history: tuple[tuple[str, str], ...] = field(default_factory=tuple)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class JobStore:
    """Reads and writes the job files in ``spool.jobs``; safe to use from several threads."""

    def __init__(self, spool: Spool) -> None:
        self.folder = spool.jobs
        self._lock = threading.Lock()

    def path(self, study_uid: str) -> Path:
        return self.folder / f"{check_uid(study_uid, 'StudyInstanceUID')}.json"

    def get(self, study_uid: str) -> Job | None:
        """The study's job, or None if there is none."""
        path = self.path(study_uid)
        return self._read(path) if path.exists() else None

    def create_if_new(self, study_uid: str) -> tuple[Job, bool]:
        """The study's job, made (state ``received``) if there is none yet; and whether it was made now."""
        with self._lock:
            job = self.get(study_uid)
            if job is not None:
                return job, False
            job = Job(study_uid=study_uid, history=((JobState.RECEIVED.value, _now()),))
            self._write(job)
            return job, True

    def advance(self, job: Job, state: JobState, **changes: Any) -> Job:
        """Move ``job`` to ``state`` (with other fields changed), write it durably, return the new job."""
        if state not in TRANSITIONS[job.state]:
            raise JobStateError(f"study {job.study_uid}: cannot go from {job.state} to {state}")
        updated = replace(job, state=state, history=(*job.history, (state.value, _now())), **changes)
        self.save(updated)
        return updated

    def save(self, job: Job) -> None:
        """Write ``job`` durably as it is (e.g. a new ``send_attempts``)."""
        with self._lock:
            self._write(job)

    def all(self) -> list[Job]:
        """Every job in the spool, by study UID."""
        return [self._read(path) for path in finished_files(self.folder, "*.json")]

    def _write(self, job: Job) -> None:
        record = asdict(job)
        record["state"] = job.state.value
        write_durably(self.path(job.study_uid), (json.dumps(record, indent=1) + "\n").encode())

    def _read(self, path: Path) -> Job:
        try:
            record = json.loads(path.read_text())
            record["state"] = JobState(record["state"])
            record["history"] = tuple(tuple(entry) for entry in record["history"])
            return Job(**record)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise JobStateError(
                f"{path}: unreadable job state ({type(error).__name__}: {error}); move it aside to let the node start"
            ) from error
