"""Integration, load: 20 studies over 5 concurrent storescu associations; every study processed, none lost, each SEG
stored in Orthanc exactly once."""

from __future__ import annotations

import json
from pathlib import Path

from peers import Orthanc, storescu, wait_until
from studies import SMALL_SHAPE, write_study

from medssl_sdk.dicom_node.spool import finished_files

STUDIES, ASSOCIATIONS = 20, 5


def test_twenty_studies_over_five_concurrent_associations(orthanc: Orthanc, make_node, tmp_path: Path) -> None:
    studies = [write_study(tmp_path / "studies", seed=200 + index) for index in range(STUDIES)]
    node = make_node(f"{orthanc.ae_title}@127.0.0.1:{orthanc.dicom_port}").start()
    senders = [
        storescu(node.port, *(study.folder for study in studies[start::ASSOCIATIONS]), background=True)
        for start in range(ASSOCIATIONS)
    ]
    for sender in senders:
        output = sender.communicate(timeout=300)[0]
        assert sender.returncode == 0, output
    jobs = tmp_path / "node-spool" / "jobs"

    def states() -> list[str]:
        return [json.loads(path.read_text())["state"] for path in finished_files(jobs, "*.json")]

    wait_until(lambda: len(states()) == STUDIES and set(states()) == {"sent"}, 300, f"{STUDIES} studies sent")
    for study in studies:
        received = finished_files(tmp_path / "node-spool" / "incoming" / study.study_uid / study.series_uid, "*.dcm")
        assert len(received) == SMALL_SHAPE[0], f"study {study.study_uid}: {len(received)} of {SMALL_SHAPE[0]} instances"
        job = json.loads((jobs / f"{study.study_uid}.json").read_text())
        assert job["send_attempts"] == 1
        assert len(orthanc.seg_instances(study.study_uid)) == 1
        assert orthanc.store_count(job["seg_sop_instance_uid"]) == 1, "a SEG was sent twice"
    assert node.stop() == 0
    assert node.log().count(": SEG ") == STUDIES
