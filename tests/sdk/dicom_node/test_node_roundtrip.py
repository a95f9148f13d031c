"""Integration: storescu sends a phantom study to ``medssl serve-dicom``; the SEG arrives in Orthanc and its masks
equal the model's segmentation of the same series; no patient identity in the log."""

from __future__ import annotations

import json
from pathlib import Path

import highdicom
import numpy as np
from peers import Orthanc, echoscu, storescu, wait_until
from studies import write_study

from medssl_sdk import load


def test_study_is_segmented_and_its_seg_arrives_in_orthanc(orthanc: Orthanc, make_node, tmp_path: Path) -> None:
    study = write_study(tmp_path / "studies", seed=101, shape=(24, 96, 96))
    node = make_node(f"{orthanc.ae_title}@127.0.0.1:{orthanc.dicom_port}").start()
    assert echoscu(node.port).returncode == 0

    sent = storescu(node.port, study.folder)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    seg_ids = wait_until(lambda: orthanc.seg_instances(study.study_uid), 90, "the SEG in Orthanc")
    assert len(seg_ids) == 1

    seg = highdicom.seg.Segmentation.from_dataset(orthanc.instance(seg_ids[0]))
    assert seg.StudyInstanceUID == study.study_uid
    expected = load("phantom-mit-nano", device="cpu").segment(study.series_folder, progress=False)
    source_uids = expected.labels.metadata["sop_instance_uids"]
    numbers = [int(item.SegmentNumber) for item in seg.SegmentSequence]
    masks = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=list(source_uids), segment_numbers=numbers, combine_segments=True, relabel=False,
        ignore_spatial_locations=True,
    )
    labels_by_segment = {int(item.SegmentNumber): expected.classes.index(item.SegmentLabel) for item in seg.SegmentSequence}
    relabelled = np.zeros_like(masks, dtype=np.uint8)
    for number, label in labels_by_segment.items():
        relabelled[masks == number] = label
    np.testing.assert_array_equal(relabelled, expected.labels.array)
    assert (expected.labels.array > 0).mean() > 0.05, "the phantom should show organs"

    job = json.loads((tmp_path / "node-spool" / "jobs" / f"{study.study_uid}.json").read_text())
    assert job["state"] == "sent" and job["send_attempts"] == 1
    assert job["seg_sop_instance_uid"] == seg.SOPInstanceUID
    assert orthanc.store_count(seg.SOPInstanceUID) == 1

    assert node.stop() == 0
    log = node.log()
    assert f"study {study.study_uid}: SEG {seg.SOPInstanceUID} sent" in log
    for secret in (study.patient_name, study.patient_id, "Secretname", "SECRET", "19700101"):
        assert secret not in log, f"the node's log shows patient identity ({secret!r})"
