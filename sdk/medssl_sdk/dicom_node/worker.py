"""Inference workers: each holds one loaded model (one worker per GPU, or one on CPU) and takes complete studies
from a shared queue: select a series, segment it, encode the SEG with deterministic UIDs, store it in the
spool's results, mark the job ``inferred`` and hand it to the sender.

The SEG's SeriesInstanceUID is derived from (source SeriesInstanceUID, model name, weights sha256) and its
SOPInstanceUID from those plus the medssl-sdk version and the segmented SOPInstanceUIDs: the same images through
the same model and software always yield the same instance (a re-run is a duplicate the PACS recognises, not a
second result), while different content (more images of the series, another software version) never reuses a UID.
"""

from __future__ import annotations

import io
import logging
import queue
import threading
from collections.abc import Callable, Iterable
from importlib.metadata import version
from pathlib import Path

import pydicom

from medssl_sdk.dicom_node.config import NodeConfig
from medssl_sdk.dicom_node.jobs import Job, JobState, JobStore
from medssl_sdk.dicom_node.selection import select_series
from medssl_sdk.dicom_node.spool import Spool, write_durably
from medssl_sdk.dicom_seg import derived_uid
from medssl_sdk.io.dicom_files import read_dicom_header
from medssl_sdk.model import Model

LOG = logging.getLogger("medssl.dicom_node.worker")


def seg_uids(model: Model, source_series_uid: str, source_instance_uids: Iterable[str]) -> tuple[str, str]:
    """(SOPInstanceUID, SeriesInstanceUID) of the SEG ``model`` makes of these images of ``source_series_uid``.

    The same on every run for the same images (in any order), model and medssl-sdk version (see the module docstring).
    """
    parts = (source_series_uid, model.card.name, model.card.weights.sha256 or "")
    instance = derived_uid(*parts, version("medssl-sdk"), *sorted(source_instance_uids), "seg-instance")
    return instance, derived_uid(*parts, "seg-series")


def encode(dataset: pydicom.Dataset) -> bytes:
    """``dataset`` as DICOM Part 10 bytes."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class InferenceWorker(threading.Thread):
    """Runs ``model`` on the studies put in ``inbox`` (StudyInstanceUIDs of ``complete`` or ``selected`` jobs).

    ``on_inferred(job)`` is called once a job's SEG is stored and the job is ``inferred``.
    """

    def __init__(
        self,
        model: Model,
        config: NodeConfig,
        spool: Spool,
        jobs: JobStore,
        inbox: queue.Queue[str],
        on_inferred: Callable[[Job], None],
        stopping: threading.Event,
    ) -> None:
        super().__init__(name=f"medssl-worker-{model.device}", daemon=True)
        self.model, self.config, self.spool, self.jobs = model, config, spool, jobs
        self.inbox, self.on_inferred, self.stopping = inbox, on_inferred, stopping

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                study_uid = self.inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self.process(study_uid)
            except Exception:  # a bug must not kill the worker; the job stays where it was and resumes on restart
                LOG.exception("study %s: unexpected error; the job is left for the next start", study_uid)
            finally:
                self.inbox.task_done()

    def process(self, study_uid: str) -> None:
        """Take one study from ``complete`` (or ``selected``) to ``inferred``, ``skipped`` or ``failed``."""
        job = self.jobs.get(study_uid)
        if job is None or job.state not in (JobState.COMPLETE, JobState.SELECTED):
            return
        if job.state is JobState.COMPLETE:
            selection = select_series(self.spool.series_folders(study_uid), self.config.selection)
            LOG.info("study %s: %s", study_uid, selection.summary())
            if selection.series_uid is None:
                self.jobs.advance(job, JobState.SKIPPED, reason=f"no eligible series: {selection.summary()}")
                LOG.warning("study %s: skipped, no series passes the selection rules", study_uid)
                return
            job = self.jobs.advance(job, JobState.SELECTED, series_uid=selection.series_uid)
        folder = self.spool.study_folder(study_uid) / str(job.series_uid)
        try:
            segmentation = self.model.segment(folder, progress=False)
            sop_instance_uid, series_instance_uid = seg_uids(
                self.model, str(job.series_uid), segmentation.labels.metadata["sop_instance_uids"]
            )
            segmented = [read_dicom_header(Path(file)) for file in segmentation.labels.metadata["files"]]
            seg = segmentation.to_dicom_seg(
                segmented,  # exactly the images segmented, even if a late instance has joined the folder since
                series_number=self.config.series_number,
                series_description=self.config.series_description,
                sop_instance_uid=sop_instance_uid,
                series_instance_uid=series_instance_uid,
            )
            write_durably(self.spool.result_path(study_uid), encode(seg))
        except Exception as error:  # the reader and the encoder raise many types; the message names files by UID
            reason = f"inference failed: {type(error).__name__}: {' '.join(str(error).split())}"
            self.jobs.advance(job, JobState.FAILED, reason=reason)
            LOG.error("study %s: %s", study_uid, reason)
            return
        job = self.jobs.advance(job, JobState.INFERRED, seg_sop_instance_uid=sop_instance_uid)
        LOG.info("study %s: segmented series %s on %s; SEG %s stored", study_uid, job.series_uid, self.model.device,
                 sop_instance_uid)
        self.on_inferred(job)
