"""``medssl-train finetune`` under torchrun: two gloo processes on phantoms train one DDP model; rank 0 alone
validates and writes the checkpoint, metrics.csv and training.json; the others wait for it."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

from medssl_sdk.loading import load

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_finetune_tasks import PHANTOM_CARD  # noqa: E402


def test_two_gloo_processes_fine_tune_one_model_and_rank_0_writes(tmp_path: Path) -> None:
    card = tmp_path / "card.toml"
    card.write_text(PHANTOM_CARD)
    output = tmp_path / "run"
    config = tmp_path / "run.toml"
    config.write_text(f'task = "segment"\ncard = "{card}"\noutput = "{output}"\ndevice = "cpu"\n'
                      '[data]\nkind = "phantom"\ntrain_phantoms = 2\nval_phantoms = 1\naugment = false\n'
                      '[optim]\nsteps = 4\nbatch_size = 1\nwarmup_steps = 0\nvalidate_every = 2\nlog_every = 1\n')
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "medssl_train.cli", "finetune", "--config", str(config), "--quiet"]
    finished = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-4000:]
    # one report (rank 0), naming the two processes
    assert finished.stdout.count("best validation at step") == 1, finished.stdout
    assert "2 process(es)" in finished.stdout
    with open(output / "metrics.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [int(row["step"]) for row in rows] == [1, 2, 3, 4]  # one writer: each step once
    assert [bool(row["dice_mean"]) for row in rows] == [False, True, False, True]
    record = json.loads((output / "training.json").read_text())
    assert record["best_step"] in (2, 4)
    assert load(output, device="cpu").card.name == "phantom-nano"


def test_finetune_phantom_under_torchrun_has_one_writer(tmp_path: Path) -> None:
    card = tmp_path / "card.toml"
    card.write_text(PHANTOM_CARD)
    output = tmp_path / "run"
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "medssl_train.cli", "finetune-phantom", "--card", str(card), "--output", str(output),
               "--steps", "2", "--batch-size", "1", "--warmup-steps", "0", "--validate-every", "1",
               "--train-phantoms", "2", "--val-phantoms", "1", "--device", "cpu", "--quiet"]
    finished = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-4000:]
    assert finished.stdout.count("best validation mean Dice") == 1, finished.stdout
    with open(output / "metrics.csv", newline="") as stream:
        assert [int(row["step"]) for row in csv.DictReader(stream)] == [1, 2]
