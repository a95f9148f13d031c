"""bench/train_step.py: its CPU dry run takes one real step per domain; without CUDA the timed run refuses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "train_step.py"


def run_script(*flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *flags], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_dry_run_takes_one_step_of_each_domain() -> None:
    finished = run_script("--dry-run")
    assert finished.returncode == 0, finished.stderr
    assert "one 2D step" in finished.stdout and "one 3D step" in finished.stdout and "dry run ok" in finished.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_timed_run_refuses_without_cuda() -> None:
    finished = run_script("--steps", "1")
    assert finished.returncode == 2
    assert "found none" in finished.stderr and "--dry-run" in finished.stderr
