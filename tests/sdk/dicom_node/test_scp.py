"""The storage SCP in-process, against real clients (dcmtk's echoscu, pynetdicom): C-ECHO, C-STORE into the spool,
refused non-image SOP classes, undecodable data sets, and associations refused below the disk watermark."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from peers import associate, echoscu, free_port
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom.sop_class import BasicTextSRStorage, CTImageStorage
from studies import write_dicom_series

from medssl_sdk.dicom_node.scp import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_OUT_OF_RESOURCES,
    STATUS_SOP_CLASS_NOT_SUPPORTED,
    StorageSCP,
)
from medssl_sdk.dicom_node.spool import Spool
from medssl_sdk.volume import Volume


@pytest.fixture
def ct_files(tmp_path: Path) -> list[Path]:
    volume = Volume(np.zeros((3, 8, 8), np.float32), np.diag([1.0, 1.0, 1.0, 1.0]))
    return write_dicom_series(volume, tmp_path / "ct", shuffle=False)


def start_scp(tmp_path: Path, min_free_mb: float) -> tuple[StorageSCP, int, list[tuple[str, str]]]:
    received: list[tuple[str, str]] = []
    scp = StorageSCP(Spool(tmp_path / "spool"), "MEDSSL", min_free_mb, 4, lambda study, series: received.append((study, series)))
    port = free_port()
    scp.start("127.0.0.1", port)
    return scp, port, received


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[StorageSCP, int, list[tuple[str, str]]]]:
    scp, port, received = start_scp(tmp_path, min_free_mb=1.0)
    yield scp, port, received
    scp.stop()


def test_echo_and_store_land_in_the_spool(running, ct_files: list[Path]) -> None:
    scp, port, received = running
    assert echoscu(port).returncode == 0
    association = associate(port, CTImageStorage)
    statuses = [association.send_c_store(dcmread(path)).Status for path in ct_files]
    association.release()
    assert statuses == [0, 0, 0]
    first = dcmread(ct_files[0])
    stored = sorted((scp.spool.incoming / first.StudyInstanceUID / first.SeriesInstanceUID).iterdir())
    assert len(stored) == 3 and received == [(first.StudyInstanceUID, first.SeriesInstanceUID)] * 3
    by_uid = {dcmread(path).SOPInstanceUID: path for path in ct_files}
    for path in stored:
        assert dcmread(path) == dcmread(by_uid[path.stem])  # the data set as sent (file meta aside)


def test_non_image_sop_classes_are_refused_and_logged(running, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    scp, port, received = running
    report = Dataset()
    report.SOPClassUID, report.SOPInstanceUID = BasicTextSRStorage, generate_uid()
    report.StudyInstanceUID, report.SeriesInstanceUID, report.Modality = generate_uid(), generate_uid(), "SR"
    report.file_meta = FileMetaDataset()
    report.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    with caplog.at_level(logging.WARNING, logger="medssl.dicom_node.scp"):
        association = associate(port, CTImageStorage, BasicTextSRStorage)
        status = association.send_c_store(report).Status
        association.release()
    assert status == STATUS_SOP_CLASS_NOT_SUPPORTED and received == [] and scp.spool.studies() == []
    assert "rejected a Basic Text SR Storage from MODALITY@127.0.0.1: not an image SOP class this node processes" in caplog.text


def test_undecodable_or_incomplete_data_sets_are_answered_cannot_understand(
    running, ct_files: list[Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    scp, port, received = running
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(ct_files[0].read_bytes()[:-100])  # cut inside the pixel data
    no_uids = dcmread(ct_files[2])
    del no_uids.StudyInstanceUID
    with caplog.at_level(logging.WARNING, logger="medssl.dicom_node.scp"):
        association = associate(port, CTImageStorage)
        statuses = [association.send_c_store(truncated).Status, association.send_c_store(no_uids).Status]
        still_serving = association.send_c_store(dcmread(ct_files[1])).Status
        association.release()
    assert statuses == [STATUS_CANNOT_UNDERSTAND] * 2 and still_serving == 0
    assert "rejected a CT Image Storage from MODALITY@127.0.0.1" in caplog.text
    assert "StudyInstanceUID is missing or not a valid UID" in caplog.text
    assert len(received) == 1


def test_associations_are_refused_below_the_disk_watermark(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    scp, port, _ = start_scp(tmp_path, min_free_mb=1e12)  # a petabyte: never free here
    try:
        with caplog.at_level(logging.WARNING, logger="medssl.dicom_node.scp"):
            association = associate(port, CTImageStorage)
            assert association.is_rejected
            assert echoscu(port).returncode != 0
    finally:
        scp.stop()
    assert "refused association from MODALITY@127.0.0.1" in caplog.text and "below the watermark min_free_mb" in caplog.text


def test_a_store_on_an_open_association_is_refused_once_the_disk_runs_low(running, ct_files: list[Path]) -> None:
    scp, port, received = running
    association = associate(port, CTImageStorage)
    assert association.send_c_store(dcmread(ct_files[0])).Status == 0
    scp.min_free_mb = 1e12  # the spool's file system fills up while the association stays open
    status = association.send_c_store(dcmread(ct_files[1])).Status
    association.release()
    assert status == STATUS_OUT_OF_RESOURCES and len(received) == 1
    assert len(list(scp.spool.incoming.rglob("*.dcm"))) == 1
