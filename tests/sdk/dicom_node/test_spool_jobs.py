"""The spool (durable, atomic, UID-checked instance store) and the on-disk job states a restart resumes from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medssl_sdk.dicom_node.jobs import JobState, JobStateError, JobStore
from medssl_sdk.dicom_node.spool import Spool, SpoolError

STUDY, SERIES, SOP = "1.2.3.4", "1.2.3.4.5", "1.2.3.4.5.6"


def test_instances_land_in_the_study_series_layout_without_leftovers(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    path = spool.store(b"first", STUDY, SERIES, SOP)
    assert path == tmp_path / "spool" / "incoming" / STUDY / SERIES / f"{SOP}.dcm"
    assert path.read_bytes() == b"first"
    assert spool.store(b"again", STUDY, SERIES, SOP) == path and path.read_bytes() == b"again"  # a resend replaces itself
    assert spool.studies() == [STUDY] and spool.series_folders(STUDY) == [path.parent]
    assert [p.name for p in path.parent.iterdir()] == [path.name], "no temporary file may stay behind"


def test_a_partial_write_left_by_a_crash_is_removed_at_start(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    kept = spool.store(b"whole", STUDY, SERIES, SOP)
    partial = kept.parent / f".{SOP}.dcm.x1y2.tmp.dcm"  # what write_atomically's temporary looks like
    partial.write_bytes(b"half")
    assert Spool(tmp_path / "spool").remove_temporaries() == 1
    assert not partial.exists() and kept.read_bytes() == b"whole"


@pytest.mark.parametrize("bad", ["../../etc", "1.2.abc", "", "1." * 40 + "1"])
def test_uids_that_are_not_uids_never_become_paths(tmp_path: Path, bad: str) -> None:
    spool = Spool(tmp_path / "spool")
    with pytest.raises(SpoolError, match="StudyInstanceUID is missing or not a valid UID"):
        spool.store(b"x", bad, SERIES, SOP)
    assert spool.studies() == []


def test_job_states_persist_and_a_new_store_resumes_them(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    jobs = JobStore(spool)
    job, created = jobs.create_if_new(STUDY)
    assert created and job.state is JobState.RECEIVED
    assert jobs.create_if_new(STUDY) == (job, False)
    job = jobs.advance(jobs.advance(job, JobState.COMPLETE), JobState.SELECTED, series_uid=SERIES)

    reopened = JobStore(Spool(tmp_path / "spool"))  # as after a restart
    (resumed,) = reopened.all()
    assert resumed == job and resumed.series_uid == SERIES
    assert [state for state, _ in resumed.history] == ["received", "complete", "selected"]
    with pytest.raises(JobStateError, match="cannot go from selected to sent"):
        reopened.advance(resumed, JobState.SENT)
    record = json.loads(reopened.path(STUDY).read_text())
    assert record["state"] == "selected"


def test_an_unreadable_job_file_is_named(tmp_path: Path) -> None:
    jobs = JobStore(Spool(tmp_path / "spool"))
    jobs.path(STUDY).write_text("{not json")
    with pytest.raises(JobStateError, match=rf"{STUDY}.json: unreadable job state .* move it aside"):
        jobs.get(STUDY)
