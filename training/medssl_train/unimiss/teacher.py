"""The momentum teacher: an exponential moving average of the student (paper Eq. 2)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_teacher(student: nn.Module) -> nn.Module:
    """A copy of ``student`` with gradients off (the stop-gradient of the teacher path)."""
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``mu <- momentum * mu + (1 - momentum) * theta`` for every parameter (Eq. 2; ``momentum`` is the paper's
    lambda, 0.996 -> 1 by a cosine schedule). Every parameter moves, frozen ones included, as in the official
    code. The two modules must have the same parameters in the same order."""
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"the teacher momentum must be in [0, 1]; got {momentum}")
    teacher_params, student_params = list(teacher.parameters()), list(student.parameters())
    if len(teacher_params) != len(student_params):
        raise ValueError(f"teacher has {len(teacher_params)} parameters, student {len(student_params)}; build them alike")
    torch._foreach_mul_(teacher_params, momentum)
    torch._foreach_add_(teacher_params, [p.detach() for p in student_params], alpha=1.0 - momentum)
