"""Sending results: one C-STORE of a DICOM file to the destination, the back-off between failed attempts, and the
thread that sends every inferred job's SEG."""

from __future__ import annotations

import heapq
import logging
import threading
import time
from dataclasses import replace
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from medssl_sdk.dicom_node.config import Destination
from medssl_sdk.dicom_node.jobs import JobState, JobStore
from medssl_sdk.dicom_node.spool import Spool
from medssl_zoo import MedsslError

LOG = logging.getLogger("medssl.dicom_node.sender")

#: C-STORE statuses that mean "stored": success and the three warnings (coercion, elements discarded, mismatch).
STORED_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})


class SendError(MedsslError):
    """The destination could not be reached or did not store the instance."""


def backoff_delay(failures: int, initial_s: float, max_s: float) -> float:
    """Seconds to wait after the ``failures``-th failed attempt (1, 2, ...): ``min(initial * 2**(failures - 1), max)``."""
    return min(initial_s * 2 ** max(failures - 1, 0), max_s)


def send_file(path: Path, destination: Destination, calling_ae_title: str) -> int:
    """C-STORE the DICOM file at ``path`` to ``destination``; return the status (one of ``STORED_STATUSES``).

    Raises ``SendError`` when the association is refused or aborted, times out, or the status is a failure.
    """
    dataset = pydicom.dcmread(path)
    transfer_syntax = dataset.file_meta.TransferSyntaxUID
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = destination.timeout_s
    ae.connection_timeout = destination.timeout_s
    syntaxes = list(dict.fromkeys([transfer_syntax, ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
    ae.add_requested_context(dataset.SOPClassUID, syntaxes)
    where = destination.describe()
    association = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not association.is_established:
        if association.is_rejected:
            raise SendError(f"{where} rejected the association")
        raise SendError(f"no association with {where} (connection refused, timed out or aborted)")
    try:
        status = association.send_c_store(dataset)
    finally:
        association.release()
    code = getattr(status, "Status", None)
    if code is None:
        raise SendError(f"no C-STORE response from {where} (timeout or connection lost)")
    if code not in STORED_STATUSES:
        raise SendError(f"{where} answered C-STORE with status 0x{code:04X}")
    return int(code)


class ResultSender(threading.Thread):
    """Sends each ``inferred`` job's SEG, retrying with exponential back-off; records ``sent`` before anything else.

    Jobs wait in a heap ordered by when their next attempt is due, so one unreachable study does not hold
    back the others' first attempts. ``send_attempts`` is saved after every failure: a restart keeps counting.
    """

    def __init__(self, spool: Spool, jobs: JobStore, destination: Destination, calling_ae_title: str, stopping: threading.Event):
        super().__init__(name="medssl-sender", daemon=True)
        self.spool, self.jobs, self.destination, self.calling_ae_title = spool, jobs, destination, calling_ae_title
        self.stopping = stopping
        self._due: list[tuple[float, str]] = []
        self._wake = threading.Condition()

    def submit(self, study_uid: str, delay_s: float = 0.0) -> None:
        """Queue the study's result for an attempt ``delay_s`` seconds from now."""
        with self._wake:
            heapq.heappush(self._due, (time.monotonic() + delay_s, study_uid))
            self._wake.notify()

    def run(self) -> None:
        while not self.stopping.is_set():
            with self._wake:
                wait = self._due[0][0] - time.monotonic() if self._due else 0.5
                if wait > 0:
                    self._wake.wait(min(wait, 0.5))
                    continue
                _, study_uid = heapq.heappop(self._due)
            try:
                self.attempt(study_uid)
            except Exception:  # e.g. an unreadable job file or a failed job write: other results still go out
                LOG.exception("study %s: unexpected error while sending its SEG; the job is left for the next start", study_uid)

    def attempt(self, study_uid: str) -> None:
        """One C-STORE attempt of the study's result; the job moves to sent, stays queued or fails."""
        job = self.jobs.get(study_uid)
        if job is None or job.state is not JobState.INFERRED:
            return
        attempt = job.send_attempts + 1
        where = self.destination.describe()
        try:
            send_file(self.spool.result_path(study_uid), self.destination, self.calling_ae_title)
        except Exception as error:  # also what pydicom and pynetdicom raise (unreadable result, association lost mid-way)
            if not isinstance(error, SendError | OSError):
                error = SendError(f"{type(error).__name__}: {' '.join(str(error).split())}")
            if attempt >= self.destination.max_attempts:
                self.jobs.advance(job, JobState.FAILED, send_attempts=attempt, reason=f"sending to {where} failed: {error}")
                LOG.error("study %s: giving up sending its SEG after %d attempts: %s", study_uid, attempt, error)
                return
            delay = backoff_delay(attempt, self.destination.backoff_initial_s, self.destination.backoff_max_s)
            self.jobs.save(replace(job, send_attempts=attempt))
            LOG.warning("study %s: send attempt %d failed (%s); retrying in %.1f s", study_uid, attempt, error, delay)
            self.submit(study_uid, delay)
            return
        self.jobs.advance(job, JobState.SENT, send_attempts=attempt)
        LOG.info("study %s: SEG %s sent to %s (attempt %d)", study_uid, job.seg_sop_instance_uid, where, attempt)
