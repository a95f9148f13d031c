"""Integration, faults: SIGKILL mid-study and mid-send with restarts (nothing lost, no SEG sent twice), a crash
between "sent" and "recorded" (the resend is the same instance to the PACS), and bad input the node rejects or
skips with a clear log line while it keeps serving."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from peers import Orthanc, associate, echoscu, free_port, storescu, wait_until
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom.sop_class import CTImageStorage
from studies import Study, write_study

from medssl_sdk.dicom_node.spool import finished_files


def job_of(spool: Path, study: Study) -> dict:
    path = spool / "jobs" / f"{study.study_uid}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def test_sigkill_mid_study_then_restart_completes_it_once(orthanc: Orthanc, make_node, tmp_path: Path) -> None:
    study = write_study(tmp_path / "studies", seed=301, shape=(96, 48, 48))
    node = make_node(f"{orthanc.ae_title}@127.0.0.1:{orthanc.dicom_port}").start()
    spool = tmp_path / "node-spool"
    series = spool / "incoming" / study.study_uid / study.series_uid
    sender = storescu(node.port, study.folder, background=True)
    wait_until(lambda: series.is_dir() and len(finished_files(series, "*.dcm")) >= 10, 60, "the first instances", 0.005)
    node.kill()
    received_before_kill = len(finished_files(series, "*.dcm"))
    sender.communicate(timeout=60)
    assert received_before_kill < 96, "the study finished arriving before the kill; the test did not kill mid-study"
    assert sender.returncode != 0, "storescu should see the association die"
    assert job_of(spool, study)["state"] == "received"
    # A second study as a kill during its inference leaves it: all instances spooled, job "selected".
    interrupted = write_study(tmp_path / "studies", seed=303)
    shutil.copytree(interrupted.series_folder, spool / "incoming" / interrupted.study_uid / interrupted.series_uid,
                    copy_function=lambda source, target: shutil.copy(source, f"{target}.dcm"))
    history = [["received", "2026-01-01T00:00:00"], ["complete", "2026-01-01T00:00:01"], ["selected", "2026-01-01T00:00:02"]]
    (spool / "jobs" / f"{interrupted.study_uid}.json").write_text(json.dumps(
        {"study_uid": interrupted.study_uid, "state": "selected", "series_uid": interrupted.series_uid,
         "seg_sop_instance_uid": None, "send_attempts": 0, "reason": None, "history": history}
    ))

    node.start()  # same config, same spool
    sent = storescu(node.port, study.folder)  # the modality resends the whole study
    assert sent.returncode == 0, sent.stdout + sent.stderr
    wait_until(lambda: job_of(spool, study).get("state") == "sent", 120, "the study to be sent after the restart")
    job = job_of(spool, study)
    assert len(finished_files(series, "*.dcm")) == 96 and not list(spool.rglob(".*tmp*"))
    assert [state for state, _ in job["history"]] == ["received", "complete", "selected", "inferred", "sent"]
    assert len(orthanc.seg_instances(study.study_uid)) == 1
    assert orthanc.store_count(job["seg_sop_instance_uid"]) == 1
    assert "resuming jobs: 1 received, 1 selected" in node.log()
    wait_until(lambda: job_of(spool, interrupted).get("state") == "sent", 60, "the interrupted inference to be redone and sent")
    resumed = job_of(spool, interrupted)
    assert len(orthanc.seg_instances(interrupted.study_uid)) == 1 and orthanc.store_count(resumed["seg_sop_instance_uid"]) == 1


def test_sigkill_while_sending_then_restart_sends_once(orthanc: Orthanc, make_node, tmp_path: Path) -> None:
    study = write_study(tmp_path / "studies", seed=302)
    spool = tmp_path / "node-spool"
    unreachable = make_node(f"{orthanc.ae_title}@127.0.0.1:{free_port()}", destination={"max_attempts": 100}).start()
    assert storescu(unreachable.port, study.folder).returncode == 0
    wait_until(lambda: job_of(spool, study).get("send_attempts", 0) >= 1, 120, "a failed send attempt")
    assert job_of(spool, study)["state"] == "inferred"
    unreachable.kill()

    node = make_node(f"{orthanc.ae_title}@127.0.0.1:{orthanc.dicom_port}").start()  # same spool, PACS reachable now
    wait_until(lambda: job_of(spool, study).get("state") == "sent", 60, "the resumed send")
    job = job_of(spool, study)
    assert job["send_attempts"] >= 2 and "resuming jobs: 1 inferred" in node.log()
    assert orthanc.store_count(job["seg_sop_instance_uid"]) == 1
    assert node.stop() == 0

    # A crash after the PACS stored the SEG but before "sent" was recorded: the restart sends it again, and the
    # deterministic UID makes that the same instance at the PACS (stored twice, still one SEG).
    job_path = spool / "jobs" / f"{study.study_uid}.json"
    job_path.write_text(json.dumps(job | {"state": "inferred", "history": job["history"][:-1]}))
    node.start()
    wait_until(lambda: job_of(spool, study).get("state") == "sent", 60, "the resend")
    assert orthanc.store_count(job["seg_sop_instance_uid"]) == 2
    assert orthanc.seg_instances(study.study_uid) and len(orthanc.seg_instances(study.study_uid)) == 1


def basic_text_sr(path: Path) -> Path:
    """A minimal Basic Text SR document (a non-image SOP class)."""
    dataset = Dataset()
    dataset.SOPClassUID, dataset.SOPInstanceUID = BasicTextSRStorage, generate_uid()
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.Modality = generate_uid(), generate_uid(), "SR"
    dataset.PatientName, dataset.PatientID = "Secretname^Report", "PIDSRSECRET"
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.save_as(path, enforce_file_format=True)
    return path


def test_bad_input_is_rejected_or_skipped_and_the_node_keeps_serving(orthanc: Orthanc, make_node, tmp_path: Path) -> None:
    studies = tmp_path / "studies"
    node = make_node(f"{orthanc.ae_title}@127.0.0.1:{orthanc.dicom_port}").start()
    spool = tmp_path / "node-spool"

    storescu(node.port, basic_text_sr(tmp_path / "report.dcm"))  # answered 0x0122; the log line is checked below

    corrupt_source = write_study(studies, seed=401, shape=(8, 32, 32))
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(sorted(corrupt_source.series_folder.iterdir())[0].read_bytes()[:-300])
    association = associate(node.port, CTImageStorage)
    status = association.send_c_store(truncated).Status
    association.release()
    assert status == 0xC210

    too_short = write_study(studies, seed=402, shape=(4, 32, 32))
    mixed = write_study(studies, seed=403, shape=(6, 32, 32))
    extra = write_study(tmp_path / "extra", seed=404, shape=(6, 40, 40))
    for path in extra.series_folder.iterdir():  # same study and series UIDs, another matrix size
        dataset = dcmread(path)
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = mixed.study_uid, mixed.series_uid
        dataset.save_as(mixed.series_folder / f"extra-{path.name}")
    assert storescu(node.port, too_short.folder, mixed.folder).returncode == 0

    wait_until(lambda: job_of(spool, too_short).get("state") == "skipped" and job_of(spool, mixed).get("state") == "skipped",
               60, "both bad studies to be skipped")
    assert "4 images, fewer than min_slices 8" in job_of(spool, too_short)["reason"]
    assert "mixed series: 2 different orientations or matrix sizes among 12 images" in job_of(spool, mixed)["reason"]

    assert echoscu(node.port).returncode == 0
    good = write_study(studies, seed=405)
    assert storescu(node.port, good.folder).returncode == 0
    wait_until(lambda: job_of(spool, good).get("state") == "sent", 90, "a good study after the bad ones")
    time.sleep(0.5)
    assert node.stop() == 0

    log = node.log()
    assert "rejected a Basic Text SR Storage from MODALITY@127.0.0.1: not an image SOP class this node processes" in log
    assert "rejected a CT Image Storage from MODALITY@127.0.0.1: the data set's PixelData holds" in log
    assert f"study {too_short.study_uid}: skipped, no series passes the selection rules" in log
    assert f"study {mixed.study_uid}: skipped" in log
    for secret in ("Secretname", "SECRET", "19700101"):
        assert secret not in log, f"the node's log shows patient identity ({secret!r})"
