"""The inference worker in-process: a study's series segmented into a SEG in the spool's results, referencing exactly
the images that were segmented even when a late instance joins the series folder during inference."""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from studies import write_study

from medssl_sdk import load
from medssl_sdk.dicom_node.config import load_config
from medssl_sdk.dicom_node.jobs import Job, JobState, JobStore
from medssl_sdk.dicom_node.spool import Spool
from medssl_sdk.dicom_node.worker import InferenceWorker, encode


def test_a_late_instance_during_inference_is_not_referenced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study = write_study(tmp_path / "studies", seed=11)
    spool = Spool(tmp_path / "spool")
    segmented_uids = set()
    for path in sorted(study.series_folder.iterdir()):
        dataset = pydicom.dcmread(path)
        segmented_uids.add(dataset.SOPInstanceUID)
        spool.store(encode(dataset), study.study_uid, study.series_uid, dataset.SOPInstanceUID)
    jobs = JobStore(spool)
    job, _ = jobs.create_if_new(study.study_uid)
    jobs.advance(job, JobState.COMPLETE)

    late = pydicom.dcmread(path)  # one more slice of the same series, past the last one
    late.SOPInstanceUID = generate_uid()
    late.ImagePositionPatient = [*late.ImagePositionPatient[:2], float(late.ImagePositionPatient[2]) + 500.0]
    model = load("phantom-mit-nano", device="cpu")
    segment = model.segment

    def segment_then_a_late_instance_arrives(*args, **kwargs):
        result = segment(*args, **kwargs)
        spool.store(encode(late), study.study_uid, study.series_uid, late.SOPInstanceUID)  # as the SCP would, meanwhile
        return result

    monkeypatch.setattr(model, "segment", segment_then_a_late_instance_arrives)
    config = load_config(None, {"model": "phantom-mit-nano", "spool_dir": spool.root})
    inferred: list[Job] = []
    worker = InferenceWorker(model, config, spool, jobs, queue.Queue(), inferred.append, threading.Event())
    worker.process(study.study_uid)

    job = jobs.get(study.study_uid)
    assert job.state is JobState.INFERRED, job.reason
    assert inferred == [job] and len(list(spool.series_folders(study.study_uid)[0].iterdir())) == len(segmented_uids) + 1
    seg = pydicom.dcmread(spool.result_path(study.study_uid))
    (referenced_series,) = seg.ReferencedSeriesSequence
    assert {item.ReferencedSOPInstanceUID for item in referenced_series.ReferencedInstanceSequence} == segmented_uids
