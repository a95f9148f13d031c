"""The node's wiring in-process (no model, so no inference worker): the quiet-period watcher closes studies and
queues them, and a study whose job cannot be written does not stop it for the others."""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import numpy as np
import pytest
from peers import associate, free_port, wait_until
from pydicom import dcmread
from pynetdicom.sop_class import CTImageStorage
from studies import write_dicom_series

from medssl_sdk.dicom_node.config import load_config
from medssl_sdk.dicom_node.jobs import JobState, JobStore
from medssl_sdk.dicom_node.service import DicomNode
from medssl_sdk.volume import Volume


def send_study(port: int, folder: Path, seed: int) -> str:
    """C-STORE a 2-slice CT study to the node; its StudyInstanceUID."""
    paths = write_dicom_series(Volume(np.zeros((2, 8, 8), np.float32), np.eye(4)), folder, seed=seed)
    association = associate(port, CTImageStorage)
    assert [association.send_c_store(dcmread(path)).Status for path in paths] == [0, 0]
    association.release()
    return str(dcmread(paths[0]).StudyInstanceUID)


def test_a_failed_job_write_does_not_stop_the_quiet_period_watcher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    config = load_config(None, {"model": "none", "host": "127.0.0.1", "port": port, "spool_dir": tmp_path / "spool",
                                "quiet_period_s": 0.3, "min_free_mb": 1.0})
    node = DicomNode(config, models=[])
    advance, failures = JobStore.advance, []

    def advance_failing_once(store: JobStore, job, state, **changes):
        if state is JobState.COMPLETE and not failures:
            failures.append(job.study_uid)
            raise OSError(errno.EIO, "Input/output error")  # as a failing disk would
        return advance(store, job, state, **changes)

    monkeypatch.setattr(JobStore, "advance", advance_failing_once)
    node.start()
    try:
        with caplog.at_level(logging.ERROR, logger="medssl.dicom_node"):
            first = send_study(port, tmp_path / "first", seed=1)
            wait_until(lambda: failures, 10, "the failing write")
            second = send_study(port, tmp_path / "second", seed=2)
            queued = {node.inference_queue.get(timeout=10), node.inference_queue.get(timeout=10)}
    finally:
        node.stop()
    assert queued == {first, second}, "both studies are queued: the second after the failure, the first on a retry"
    assert node.jobs.get(first).state is JobState.COMPLETE and node.jobs.get(second).state is JobState.COMPLETE
    assert f"study {first}: could not be marked complete; trying again after another quiet period" in caplog.text
