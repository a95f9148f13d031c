"""Phantom studies written as DICOM for the node's tests, each with its own UIDs and a recognisable patient identity
(so a test can grep the node's log for it)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/sdk: the DICOM series writer shared with the SDK tests
from dicom_series import write_dicom_series  # noqa: E402

from medssl_sdk.samples import make_phantom  # noqa: E402

#: Small enough for 2 shared cores: about 0.3 s of CPU inference per study with phantom-mit-nano.
SMALL_SHAPE = (16, 64, 64)


@dataclass(frozen=True)
class Study:
    """A study on disk: one folder per series, patient identity the log must never show."""

    folder: Path
    study_uid: str
    series_uid: str
    patient_name: str
    patient_id: str

    @property
    def series_folder(self) -> Path:
        return self.folder / self.series_uid


def write_study(
    root: Path,
    seed: int,
    shape: tuple[int, int, int] = SMALL_SHAPE,
    *,
    spacing: tuple[float, float, float] = (3.0, 1.5, 1.5),
    modality: str = "CT",
) -> Study:
    """A phantom CT (or MR) study of one series under ``root/study-<seed>/<series uid>/``."""
    study_uid, series_uid = generate_uid(), generate_uid()
    name, patient_id = f"Secretname^Patient{seed}", f"PID{seed:04d}SECRET"
    image, _ = make_phantom(seed, shape, spacing)

    def identify(dataset: Dataset, index: int) -> None:
        dataset.PatientName, dataset.PatientID, dataset.PatientBirthDate = name, patient_id, "19700101"

    folder = root / f"study-{seed}"
    write_dicom_series(
        image, folder / series_uid, modality=modality, study_uid=study_uid, series_uid=series_uid, seed=seed, edit=identify
    )
    return Study(folder, study_uid, series_uid, name, patient_id)
