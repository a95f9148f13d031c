"""Two processes under torchrun on gloo (CPU): the same entry point as one process, identical weights on every
rank after a few UniMiSS steps on phantoms (interrupted after the first 2D turn and resumed), the 3D branch
untouched by the 2D steps under DDP, and a falling loss."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medssl_train.distributed import distributed_session, init_distributed, mean_over_ranks, unwrap, wrap_ddp

RECIPE = dict(steps=8, batch_size=2, out_dim=256, hidden_dim=64, bottleneck_dim=32, warmup_steps=2, learning_rate=0.5,
              log_every=1, checkpoint_every=4)


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 over every tensor of ``module``'s state, in key order."""
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def worker(output: Path) -> None:
    """One rank: pre-train the nano MiT on phantoms and write this rank's weight digests."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import nano_card

    from medssl_train.augment import SSLViews
    from medssl_train.datasets import PhantomRadiographs, PhantomVolumes
    from medssl_train.distributed import distributed_session
    from medssl_train.unimiss import PretrainConfig, pretrain_unimiss
    from medssl_train.unimiss.trainer import build_networks, is_3d_parameter

    card, config = nano_card(), PretrainConfig(**RECIPE)
    torch.manual_seed(config.seed)
    initial_3d = {k: v for k, v in build_networks(card, config)[0].state_dict().items() if is_3d_parameter(k)}
    with distributed_session("cpu") as context:
        images = PhantomRadiographs(range(4), card.inputs["2d"], SSLViews(2, (64, 64)), shape=(128, 128))
        volumes = PhantomVolumes(range(4), card.inputs["3d"], SSLViews(3, (16, 32, 64)))
        first = pretrain_unimiss(card, images, volumes, output, config, context=context, progress=False, stop_after=2)
        after_2d = first.student.state_dict()
        frozen = all(torch.equal(after_2d[k], v) for k, v in initial_3d.items())
        result = pretrain_unimiss(card, images, volumes, output, config, context=context, progress=False, resume=True)
        digests = {"world_size": context.world_size, "student": weights_digest(result.student),
                   "teacher": weights_digest(result.teacher), "3d_frozen_in_2d_steps": frozen}
        (output / f"rank{context.rank}.json").write_text(json.dumps(digests))


def test_two_gloo_processes_keep_identical_weights_and_learn(tmp_path: Path) -> None:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               __file__, str(tmp_path)]
    finished = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    assert ranks[0]["student"] == ranks[1]["student"]
    assert ranks[0]["teacher"] == ranks[1]["teacher"]
    assert ranks[0]["3d_frozen_in_2d_steps"] and ranks[1]["3d_frozen_in_2d_steps"]
    with open(tmp_path / "metrics.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    losses = {int(row["step"]): float(row["loss_2d"] or row["loss_3d"]) for row in rows}
    assert all(bool(row["loss_2d"]) != bool(row["loss_3d"]) for row in rows)
    assert sorted(losses) == list(range(1, 9))
    print("losses by step:", losses)
    # steps 1-2 and 5-6 are 2D, 3-4 and 7-8 3D: each domain's second turn is lower than its first
    assert losses[5] + losses[6] < losses[1] + losses[2]
    assert losses[7] + losses[8] < losses[3] + losses[4]
    assert (tmp_path / "model.safetensors").is_file() and not (tmp_path / "rank1").exists()


def test_without_torchrun_it_is_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with distributed_session("cpu") as context:
        assert (context.rank, context.world_size, context.is_main, context.is_distributed) == (0, 1, True, False)
        module = torch.nn.Linear(2, 2)
        assert wrap_ddp(module, context) is module and unwrap(module) is module
        assert mean_over_ranks(3.5, context) == 3.5
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        init_distributed("cpu")


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
