"""The node: wires the storage SCP, the spool, the job store, the quiet-period watcher, the inference workers and
the sender; resumes unfinished jobs at start; stops gracefully on SIGTERM/SIGINT.

At start every job is picked up where it stopped: ``received`` studies wait a fresh quiet period (their
senders may still be resending), ``complete``/``selected`` ones go back to the inference queue, ``inferred``
ones to the sender; ``sent``, ``skipped`` and ``failed`` are left alone.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from collections.abc import Sequence

from medssl_sdk.dicom_node.config import NodeConfig
from medssl_sdk.dicom_node.jobs import Job, JobState, JobStore
from medssl_sdk.dicom_node.scp import StorageSCP
from medssl_sdk.dicom_node.sender import ResultSender
from medssl_sdk.dicom_node.spool import Spool, finished_files
from medssl_sdk.dicom_node.worker import InferenceWorker
from medssl_sdk.model import Model

LOG = logging.getLogger("medssl.dicom_node")

#: How often the watcher looks for studies whose quiet period has passed (seconds).
WATCH_INTERVAL_S = 0.2


def worker_devices(devices: Sequence[str]) -> list[str]:
    """Expand ``"auto"`` into one entry per visible CUDA device, or ``"cpu"`` when there is none."""
    import torch

    expanded: list[str] = []
    for device in devices:
        if device == "auto":
            count = torch.cuda.device_count()
            expanded.extend([f"cuda:{index}" for index in range(count)] or ["cpu"])
        else:
            expanded.append(device)
    return expanded


def load_models(config: NodeConfig) -> list[Model]:
    """One model per worker device (``config.devices``), loaded before the node listens so a bad model fails fast."""
    from medssl_sdk.loading import load

    return [load(config.model, device=device, weights=config.weights) for device in worker_devices(config.devices)]


class DicomNode:
    """A running ``medssl serve-dicom``: ``start()``, then ``wait()`` until ``stop()`` (or a signal)."""

    def __init__(self, config: NodeConfig, models: Sequence[Model]) -> None:
        self.config = config
        self.spool = Spool(config.spool_dir)
        self.jobs = JobStore(self.spool)
        self.stopping = threading.Event()
        self.inference_queue: queue.Queue[str] = queue.Queue()
        self.sender = ResultSender(self.spool, self.jobs, config.destination, config.ae_title, self.stopping)
        self.workers = [
            InferenceWorker(model, config, self.spool, self.jobs, self.inference_queue, self._on_inferred, self.stopping)
            for model in models
        ]
        self.scp = StorageSCP(self.spool, config.ae_title, config.min_free_mb, config.max_associations, self._on_instance)
        self._last_instance: dict[str, float] = {}  # receiving studies -> monotonic time of their latest instance
        self._lock = threading.Lock()
        self._watcher = threading.Thread(target=self._watch, name="medssl-quiet-period", daemon=True)

    def start(self) -> None:
        """Resume unfinished jobs, start the threads, then listen."""
        removed = self.spool.remove_temporaries()
        if removed:
            LOG.info("removed %d partial files left by an interrupted run", removed)
        self._resume()
        for thread in (*self.workers, self.sender, self._watcher):
            thread.start()
        self.scp.start(self.config.host, self.config.port)
        LOG.info(
            "ready: %d inference worker(s) on %s; results go to %s",
            len(self.workers), ", ".join(str(worker.model.device) for worker in self.workers), self.config.destination.describe(),
        )

    def wait(self) -> None:
        """Block until ``stop()`` is called or SIGTERM/SIGINT arrives (main thread only for the signals)."""
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda number, frame: self.stopping.set())
        self.stopping.wait()
        self.stop()

    def stop(self) -> None:
        """Stop listening, let the running inference and send finish, and return. Unfinished jobs resume on the next start."""
        self.stopping.set()
        self.scp.stop()
        for thread in (*self.workers, self.sender, self._watcher):
            if thread.is_alive():
                thread.join()
        LOG.info("stopped")

    def _resume(self) -> None:
        counts: dict[str, int] = {}
        now = time.monotonic()
        known = set()
        for job in self.jobs.all():
            known.add(job.study_uid)
            counts[job.state.value] = counts.get(job.state.value, 0) + 1
            if job.state is JobState.RECEIVED:
                self._last_instance[job.study_uid] = now
            elif job.state in (JobState.COMPLETE, JobState.SELECTED):
                self.inference_queue.put(job.study_uid)
            elif job.state is JobState.INFERRED:
                self.sender.submit(job.study_uid)
        for study_uid in set(self.spool.studies()) - known:  # instances stored, job file not yet written
            self.jobs.create_if_new(study_uid)
            self._last_instance[study_uid] = now
            counts["received"] = counts.get("received", 0) + 1
        if counts:
            LOG.info("resuming jobs: %s", ", ".join(f"{count} {state}" for state, count in sorted(counts.items())))

    def _on_instance(self, study_uid: str, series_uid: str) -> None:
        with self._lock:  # against the watcher closing the study between the state check and the time stamp
            job, created = self.jobs.create_if_new(study_uid)
            if job.state is JobState.RECEIVED:
                self._last_instance[study_uid] = time.monotonic()
        if created:
            LOG.info("study %s: receiving", study_uid)
        if job.state is not JobState.RECEIVED:
            LOG.warning(
                "study %s: an instance of series %s arrived after the study was closed (%s); stored, not processed",
                study_uid, series_uid, job.state.value,
            )

    def _watch(self) -> None:
        """Mark studies complete once no instance arrived for the quiet period; queue them for inference."""
        while not self.stopping.wait(WATCH_INTERVAL_S):
            deadline = time.monotonic() - self.config.quiet_period_s
            with self._lock:
                quiet = [uid for uid, last in self._last_instance.items() if last <= deadline]
                closed = []
                for study_uid in quiet:
                    try:
                        job = self.jobs.get(study_uid)
                        if job is not None and job.state is JobState.RECEIVED:
                            closed.append(self.jobs.advance(job, JobState.COMPLETE))
                    except Exception:  # an unreadable job file or a failed write must not stop the watcher for all studies
                        LOG.exception("study %s: could not be marked complete; trying again after another quiet period", study_uid)
                        self._last_instance[study_uid] = time.monotonic()
                        continue
                    del self._last_instance[study_uid]
            for job in closed:
                folders = self.spool.series_folders(job.study_uid)
                images = sum(len(finished_files(folder, "*.dcm")) for folder in folders)
                LOG.info("study %s: complete (%d series, %d instances)", job.study_uid, len(folders), images)
                self.inference_queue.put(job.study_uid)

    def _on_inferred(self, job: Job) -> None:
        self.sender.submit(job.study_uid)
