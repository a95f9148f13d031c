"""The momentum teacher (Eq. 2), the schedules of the recipe and the DINO head."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from medssl_train.schedules import WarmupCosine, cosine_ramp
from medssl_train.unimiss import DINOHead, ema_update
from medssl_train.unimiss.teacher import make_teacher


def test_ema_update_moves_the_teacher_towards_the_student() -> None:
    student, teacher = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        student.weight.copy_(torch.tensor([[3.0, -1.0]]))
        student.bias.fill_(2.0)
        teacher.weight.copy_(torch.tensor([[1.0, 1.0]]))
        teacher.bias.fill_(0.0)
    ema_update(teacher, student, 0.9)
    assert teacher.weight[0].tolist() == pytest.approx([1.2, 0.8])  # 0.9 * 1 + 0.1 * 3, 0.9 * 1 + 0.1 * -1
    assert teacher.bias.item() == pytest.approx(0.2)
    ema_update(teacher, student, 1.0)
    assert teacher.weight[0].tolist() == pytest.approx([1.2, 0.8])  # momentum 1: frozen


def test_teacher_is_a_gradient_free_copy() -> None:
    student = nn.Linear(3, 2)
    teacher = make_teacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(a, b) for a, b in zip(student.parameters(), teacher.parameters()))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ema_update(teacher, student, 1.5)


def test_teacher_momentum_schedule_is_a_cosine_from_0996_to_1() -> None:
    momentum = WarmupCosine(0.996, 1.0, total_steps=100)
    assert momentum(0) == pytest.approx(0.996)
    assert momentum(50) == pytest.approx(0.998)  # half way along the cosine
    assert momentum(25) == pytest.approx(1.0 - 0.004 * (1 + math.cos(math.pi / 4)) / 2)
    assert momentum(100) == pytest.approx(1.0) and momentum(1000) == pytest.approx(1.0)


def test_learning_rate_warms_up_linearly_then_decays_by_a_cosine() -> None:
    rate = WarmupCosine(base=1.0, final=0.1, total_steps=12, warmup_steps=2)
    assert [rate(s) for s in range(3)] == pytest.approx([0.0, 0.5, 1.0])
    assert rate(7) == pytest.approx(0.55)  # half way from step 2 to 12: (1 + 0.1) / 2
    assert rate(12) == pytest.approx(0.1)
    assert cosine_ramp(0.25, 0.04, 0.4) == pytest.approx(0.4 + 0.5 * (0.04 - 0.4) * (1 + math.cos(math.pi / 4)))
    with pytest.raises(ValueError, match="warmup_steps"):
        WarmupCosine(1.0, 0.0, total_steps=5, warmup_steps=6)


def test_dino_head_has_unit_norm_last_layer_rows() -> None:
    head = DINOHead(16, out_dim=32, hidden_dim=24, bottleneck_dim=8)
    x = torch.randn(5, 16)
    logits = head(x)
    assert logits.shape == (5, 32)
    # inputs to the last layer are unit vectors and its rows unit-norm: every logit is a cosine in [-1, 1]
    assert logits.abs().max() <= 1.0 + 1e-5
    with torch.no_grad():
        head.last_layer.weight.mul_(7.0)  # scaling a row changes nothing (weight norm with gain 1)
    assert torch.allclose(head(x), logits, atol=1e-6)
