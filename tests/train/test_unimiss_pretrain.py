"""The UniMiSS loop: the 2D/3D alternation, 3D-only freezing in 2D steps, resume, export and refusals."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from conftest import nano_card
from torch.utils.data import Dataset

from medssl_sdk import load
from medssl_train.unimiss import PretrainConfig, pretrain_unimiss
from medssl_train.unimiss.pretrain import STATE_FILE
from medssl_train.unimiss.trainer import build_networks, is_3d_parameter
from medssl_zoo import MedsslError

#: Small crops the nano MiT takes: 2D 64 x 64, 3D 16 x 32 x 64.
CROP_2D, CROP_3D = (1, 64, 64), (1, 16, 32, 64)


class NoisyPairs(Dataset):
    """Items (view_1, view_2): one random image per index, two noisy copies drawn from torch's global RNG
    (so only a seeded loop gives the same views twice)."""

    def __init__(self, count: int, shape: tuple[int, ...]) -> None:
        self.count, self.shape = count, shape

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        base = torch.rand(self.shape, generator=torch.Generator().manual_seed(index))
        return base + 0.05 * torch.randn(self.shape), base + 0.05 * torch.randn(self.shape)


def small_config(**overrides: object) -> PretrainConfig:
    settings = dict(steps=5, batch_size=2, out_dim=128, hidden_dim=32, bottleneck_dim=16, warmup_steps=1,
                    learning_rate=0.05, log_every=1, checkpoint_every=100)
    return PretrainConfig(**{**settings, **overrides})


def run(output: Path, config: PretrainConfig, **kwargs: object):
    return pretrain_unimiss(nano_card(), NoisyPairs(5, CROP_2D), NoisyPairs(5, CROP_3D), output, config,
                            progress=False, **kwargs)


def test_alternation_is_v_steps_of_2d_then_v_of_3d() -> None:
    assert [PretrainConfig(interval=2).domain_of(s, (2, 3)) for s in range(8)] == [2, 2, 3, 3, 2, 2, 3, 3]
    assert [PretrainConfig(interval=3).domain_of(s, (2, 3)) for s in range(7)] == [2, 2, 2, 3, 3, 3, 2]
    assert {PretrainConfig().domain_of(s, (3,)) for s in range(5)} == {3}


def test_2d_steps_leave_3d_parameters_unchanged(tmp_path: Path) -> None:
    config = small_config()
    torch.manual_seed(config.seed)
    initial, _ = build_networks(nano_card(), config)
    before = {k: v.clone() for k, v in initial.state_dict().items()}
    after_2d = run(tmp_path / "a", config, stop_after=2).student.state_dict()  # steps 0, 1: 2D
    three_d = [k for k in before if is_3d_parameter(k)]
    shared = [k for k in before if not is_3d_parameter(k) and ".2d." not in k]
    assert three_d and shared
    assert all(torch.equal(before[k], after_2d[k]) for k in three_d)
    assert sum(not torch.equal(before[k], after_2d[k]) for k in shared) > 0.9 * len(shared)
    after_3d = run(tmp_path / "b", config, stop_after=3).student.state_dict()  # step 2: 3D
    assert sum(not torch.equal(before[k], after_3d[k]) for k in three_d) > 0.9 * len(three_d)


def test_resume_takes_the_same_next_steps_as_an_uninterrupted_run(tmp_path: Path) -> None:
    config = small_config()
    straight = run(tmp_path / "straight", config)
    interrupted = run(tmp_path / "resumed", config, stop_after=3)  # stops inside the 3D turn (steps 2, 3)
    assert interrupted.steps_run == 3 and not (tmp_path / "resumed" / "model.safetensors").exists()
    with open(tmp_path / "resumed" / "metrics.csv", "a") as stream:  # logged after the checkpoint, then a crash
        stream.write("4,,9.9,0,0,0,0\n")
    resumed = run(tmp_path / "resumed", config, resume=True)
    assert resumed.steps_run == 2
    for name in ("student", "teacher"):
        a, b = getattr(straight, name).state_dict(), getattr(resumed, name).state_dict()
        worst = max((a[k] - b[k]).abs().max().item() for k in a)
        assert worst <= 1e-6, f"{name} differs by {worst}"
    rows = (tmp_path / "resumed" / "metrics.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["1", "2", "3", "4", "5"]
    assert rows == (tmp_path / "straight" / "metrics.csv").read_text().splitlines()[:1] + rows[1:]
    straight_losses = [row.split(",")[2] for row in (tmp_path / "straight" / "metrics.csv").read_text().splitlines()[1:]]
    assert [row.split(",")[2] for row in rows[1:]] == straight_losses


def test_export_is_a_checkpoint_the_sdk_loads(tmp_path: Path) -> None:
    result = run(tmp_path, small_config(steps=2))
    model = load(tmp_path)
    assert model.card.weights.sha256 == result.card.weights.sha256 and "UniMiSS" in model.card.weights.note
    x = torch.rand(1, 3, 64, 64)
    expected = result.teacher.backbone.embed(x)
    assert torch.allclose(model.network.embed(x), expected, atol=1e-6)
    state = torch.load(tmp_path / STATE_FILE, weights_only=True)
    assert state["step"] == 2 and set(state) >= {"student", "teacher", "optimiser", "loss", "streams"}


def test_an_earlier_run_is_not_overwritten_and_resume_keeps_the_recipe(tmp_path: Path) -> None:
    run(tmp_path, small_config(steps=1))
    with pytest.raises(MedsslError, match="already holds"):
        run(tmp_path, small_config(steps=1))
    with pytest.raises(MedsslError, match="learning_rate"):
        run(tmp_path, small_config(steps=1, learning_rate=0.01), resume=True)
    with pytest.raises(MedsslError, match="cannot resume"):
        run(tmp_path / "empty", small_config(), resume=True)
    # a run saved by 2 processes resumed by 1: other shards and another learning rate, so refused
    state = torch.load(tmp_path / STATE_FILE, weights_only=True)
    torch.save({**state, "world_size": 2}, tmp_path / STATE_FILE)
    with pytest.raises(MedsslError, match="2 process"):
        run(tmp_path, small_config(steps=1), resume=True)
    card = nano_card()
    only_3d = dataclasses.replace(card, kwargs={**card.kwargs, "spatial_dims": [3]}, inputs={"3d": card.inputs["3d"]})
    with pytest.raises(ValueError, match="2D branch"):
        pretrain_unimiss(only_3d, None, NoisyPairs(5, CROP_3D), tmp_path / "3d-only", small_config(), progress=False)


def test_loader_workers_do_not_change_the_run(tmp_path: Path) -> None:
    in_process = run(tmp_path / "a", small_config(steps=3))
    with_workers = run(tmp_path / "b", small_config(steps=3, num_workers=2))
    a, b = in_process.teacher.state_dict(), with_workers.teacher.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
