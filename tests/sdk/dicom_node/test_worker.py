"""The inference worker in-process: a study's series segmented into a SEG in the spool's results, referencing exactly
the images that were segmented even when a late instance joins the series folder during inference; SEG UIDs that
repeat for the same images and change with them."""

from __future__ import annotations

import copy
import queue
import threading
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from studies import Study, write_study

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


def segment_in_a_spool(root: Path, study: Study, datasets: list[pydicom.Dataset]) -> pydicom.Dataset:
    """Spool ``datasets`` (the study's images), run a worker on the study; the stored SEG's header."""
    spool = Spool(root)
    for dataset in datasets:
        spool.store(encode(dataset), study.study_uid, study.series_uid, dataset.SOPInstanceUID)
    jobs = JobStore(spool)
    jobs.advance(jobs.create_if_new(study.study_uid)[0], JobState.COMPLETE)
    config = load_config(None, {"model": "phantom-mit-nano", "spool_dir": root})
    model = load("phantom-mit-nano", device="cpu")
    worker = InferenceWorker(model, config, spool, jobs, queue.Queue(), lambda job: None, threading.Event())
    worker.process(study.study_uid)
    assert jobs.get(study.study_uid).state is JobState.INFERRED, jobs.get(study.study_uid).reason
    return pydicom.dcmread(spool.result_path(study.study_uid), stop_before_pixels=True)


def test_seg_uids_repeat_for_the_same_images_and_change_with_them(tmp_path: Path) -> None:
    study = write_study(tmp_path / "studies", seed=12)
    datasets = sorted((pydicom.dcmread(path) for path in study.series_folder.iterdir()), key=lambda d: d.ImagePositionPatient[2])
    extra = copy.deepcopy(datasets[-1])  # one more slice, one step past the last: a longer series of the same study
    step = float(datasets[-1].ImagePositionPatient[2]) - float(datasets[-2].ImagePositionPatient[2])
    extra.SOPInstanceUID = generate_uid()
    extra.ImagePositionPatient = [*extra.ImagePositionPatient[:2], float(extra.ImagePositionPatient[2]) + step]

    first = segment_in_a_spool(tmp_path / "first", study, datasets)
    again = segment_in_a_spool(tmp_path / "again", study, datasets[::-1])
    longer = segment_in_a_spool(tmp_path / "longer", study, [*datasets, extra])
    assert first.SOPInstanceUID == again.SOPInstanceUID, "a re-run on the same images must be the same instance"
    assert longer.SOPInstanceUID != first.SOPInstanceUID, "different content under an existing SOPInstanceUID"
    assert first.SeriesInstanceUID == again.SeriesInstanceUID == longer.SeriesInstanceUID
    assert len(longer.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == len(datasets) + 1
