"""Sending results: exponential back-off, retries against a peer that refuses, giving up after max_attempts."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from peers import free_port, wait_until
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import SegmentationStorage
from pynetdicom.transport import ThreadedAssociationServer

from medssl_sdk.dicom_node.config import Destination
from medssl_sdk.dicom_node.jobs import Job, JobState, JobStore
from medssl_sdk.dicom_node.sender import ResultSender, backoff_delay
from medssl_sdk.dicom_node.spool import Spool

STUDY = "1.2.826.0.1.3680043.8.498.1"


def test_backoff_doubles_up_to_its_cap() -> None:
    assert [backoff_delay(k, 2.0, 20.0) for k in (1, 2, 3, 4, 5, 6)] == [2.0, 4.0, 8.0, 16.0, 20.0, 20.0]


def inferred_job(spool: Spool, jobs: JobStore, study_uid: str = STUDY) -> Job:
    """A study whose (stand-in) result file is ready to send."""
    dataset = Dataset()
    dataset.SOPClassUID, dataset.SOPInstanceUID = SegmentationStorage, generate_uid()
    dataset.StudyInstanceUID, dataset.Modality = study_uid, "SEG"
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.save_as(spool.result_path(study_uid), enforce_file_format=True)
    job, _ = jobs.create_if_new(study_uid)
    for state in (JobState.COMPLETE, JobState.SELECTED):
        job = jobs.advance(job, state)
    return jobs.advance(job, JobState.INFERRED, seg_sop_instance_uid=dataset.SOPInstanceUID)


@pytest.fixture
def spool_and_jobs(tmp_path: Path) -> tuple[Spool, JobStore]:
    spool = Spool(tmp_path / "spool")
    return spool, JobStore(spool)


def start_peer(on_store: Callable[[evt.Event], int]) -> tuple[ThreadedAssociationServer, int]:
    """A PACS on a free loopback port answering C-STOREs of SEG with ``on_store(event)``; the server and its port."""
    peer = AE(ae_title="PACS")
    peer.add_supported_context(SegmentationStorage, ExplicitVRLittleEndian)
    port = free_port()
    return peer.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]), port


def send_until(spool: Spool, jobs: JobStore, destination: Destination, state: JobState, what: str) -> Job:
    """Run a sender on STUDY until its job reaches ``state`` (failing with ``what`` after 30 s); that job."""
    stopping = threading.Event()
    sender = ResultSender(spool, jobs, destination, "MEDSSL", stopping)
    sender.start()
    sender.submit(STUDY)
    try:
        return wait_until(lambda: (job := jobs.get(STUDY)).state is state and job, 30, what)
    finally:
        stopping.set()
        sender.join()


def test_a_refusing_peer_is_retried_with_backoff_until_it_stores(spool_and_jobs: tuple[Spool, JobStore]) -> None:
    spool, jobs = spool_and_jobs
    inferred_job(spool, jobs)
    arrivals: list[float] = []

    def busy_twice(event: evt.Event) -> int:
        arrivals.append(time.monotonic())
        return 0xA700 if len(arrivals) <= 2 else 0x0000  # out of resources, twice

    server, port = start_peer(busy_twice)
    destination = Destination(ae_title="PACS", host="127.0.0.1", port=port, max_attempts=5, backoff_initial_s=0.2,
                              backoff_max_s=1.0, timeout_s=5)
    try:
        job = send_until(spool, jobs, destination, JobState.SENT, "the job to be sent")
    finally:
        server.shutdown()
    assert job.send_attempts == 3 and len(arrivals) == 3
    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:])]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4, f"back-off not respected: {gaps}"


def test_an_unreachable_peer_fails_the_job_after_max_attempts(spool_and_jobs: tuple[Spool, JobStore]) -> None:
    spool, jobs = spool_and_jobs
    inferred_job(spool, jobs)
    destination = Destination(ae_title="PACS", host="127.0.0.1", port=free_port(), max_attempts=2, backoff_initial_s=0.1,
                              backoff_max_s=0.1, timeout_s=2)
    job = send_until(spool, jobs, destination, JobState.FAILED, "the job to fail")
    assert job.send_attempts == 2
    assert job.reason.startswith(f"sending to PACS@127.0.0.1:{destination.port} failed: no association with")


def test_an_unreadable_result_fails_and_an_unexpected_error_does_not_stop_the_others(
    spool_and_jobs: tuple[Spool, JobStore], caplog: pytest.LogCaptureFixture
) -> None:
    spool, jobs = spool_and_jobs
    damaged, broken_job, intact = (f"1.2.826.0.1.3680043.8.498.{n}" for n in (2, 3, 4))
    inferred_job(spool, jobs, damaged)
    spool.result_path(damaged).write_bytes(b"not a DICOM file")  # pydicom raises InvalidDicomError, not OSError
    inferred_job(spool, jobs, broken_job)
    jobs.path(broken_job).write_text("{not json")  # jobs.get raises JobStateError
    inferred_job(spool, jobs, intact)
    stored: list[str] = []
    server, port = start_peer(lambda event: stored.append(event.dataset.StudyInstanceUID) or 0x0000)
    destination = Destination(ae_title="PACS", host="127.0.0.1", port=port, max_attempts=2, backoff_initial_s=0.1,
                              backoff_max_s=0.1, timeout_s=5)
    stopping = threading.Event()
    sender = ResultSender(spool, jobs, destination, "MEDSSL", stopping)
    sender.start()
    try:
        with caplog.at_level(logging.ERROR, logger="medssl.dicom_node.sender"):
            sender.submit(damaged)
            sender.submit(broken_job)
            sender.submit(intact, delay_s=0.2)
            wait_until(lambda: jobs.get(intact).state is JobState.SENT, 30, "the intact result to be sent after the others")
            failed = wait_until(lambda: (job := jobs.get(damaged)).state is JobState.FAILED and job, 30, "the damaged one to fail")
        assert sender.is_alive()
    finally:
        stopping.set()
        sender.join()
        server.shutdown()
    assert stored == [intact]
    assert failed.send_attempts == 2 and "InvalidDicomError" in failed.reason
    assert f"study {broken_job}: unexpected error while sending its SEG" in caplog.text
