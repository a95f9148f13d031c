"""The settings of a UniMiSS pre-training run (the paper's and the official ``run.sh``'s defaults)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class PretrainConfig:
    """The recipe's settings; defaults are the paper's and the official ``run.sh``'s.

    ``learning_rate`` is for a total batch of 256 and scales linearly with ``batch_size x world size``
    (official: 8e-4 x batch / 256). Schedules run over ``steps`` optimiser steps: the learning rate warms up
    linearly from 0 over ``warmup_steps`` and decays by a cosine to ``min_learning_rate``; the weight decay goes
    ``weight_decay`` -> ``weight_decay_end`` and the teacher momentum ``teacher_momentum`` -> 1 by cosines.
    ``interval`` is v, the steps per domain turn. ``clip_grad``: the largest gradient norm of each parameter
    (0 turns clipping off). ``freeze_last_layer_steps``: steps during which the head's last layer is not
    updated (official: one epoch). The DINO head: ``out_dim``, ``hidden_dim``, ``bottleneck_dim``.
    """

    steps: int = 10_000
    batch_size: int = 4
    learning_rate: float = 8e-4
    min_learning_rate: float = 1e-6
    warmup_steps: int = 500
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    teacher_momentum: float = 0.996
    teacher_temp: float = 0.04
    student_temp: float = 0.1
    centre_momentum: float = 0.9
    clip_grad: float = 0.3
    freeze_last_layer_steps: int = 0
    interval: int = 2
    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    bf16: bool = True
    seed: int = 0
    num_workers: int = 0
    checkpoint_every: int = 1000
    log_every: int = 10

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "interval", "out_dim", "hidden_dim", "bottleneck_dim", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1; got {getattr(self, name)}")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"warmup_steps must be in [0, steps={self.steps}]; got {self.warmup_steps}")
        if self.learning_rate <= 0 or self.clip_grad < 0 or self.freeze_last_layer_steps < 0 or self.num_workers < 0:
            raise ValueError("learning_rate must be positive; clip_grad, freeze_last_layer_steps and num_workers not negative")

    @classmethod
    def from_dict(cls, values: dict[str, object], source: str) -> PretrainConfig:
        """From a config file's table; an unknown name is an error that lists the known ones."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown pre-training setting(s) {unknown}; known: {sorted(known)}")
        return cls(**values)  # type: ignore[arg-type]

    def domain_of(self, step: int, domains: tuple[int, ...]) -> int:
        """The domain (2 or 3) of optimiser step ``step`` (0-based): 2D for ``interval`` steps, then 3D, ... ."""
        if len(domains) == 1:
            return domains[0]
        return (2, 3)[(step // self.interval) % 2]
