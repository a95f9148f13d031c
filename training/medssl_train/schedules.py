"""Step schedules shared by the training recipes: a half-cosine ramp and linear warm-up then cosine.

    lr = WarmupCosine(base=8e-4, final=1e-6, total_steps=10_000, warmup_steps=500)
    lr(0), lr(500), lr(9_999)       # 0.0, 8e-4, ~1e-6
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def cosine_ramp(progress: float, start: float, end: float) -> float:
    """``start`` at ``progress`` 0 to ``end`` at 1 along a half cosine; ``progress`` is clipped to [0, 1]."""
    progress = min(max(progress, 0.0), 1.0)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class WarmupCosine:
    """Linear from ``warmup_start`` (step 0) to ``base`` (step ``warmup_steps``), then a half cosine to ``final``
    at step ``total_steps``; steps past the end keep ``final``. The DINO/UniMiSS ``cosine_scheduler`` as a
    function of the step, so a resumed run needs no stored schedule."""

    base: float
    final: float
    total_steps: int
    warmup_steps: int = 0
    warmup_start: float = 0.0

    def __post_init__(self) -> None:
        if self.total_steps < 1 or not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(
                f"a schedule needs total_steps >= 1 and 0 <= warmup_steps <= total_steps; "
                f"got total_steps={self.total_steps}, warmup_steps={self.warmup_steps}"
            )

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_start + (self.base - self.warmup_start) * step / self.warmup_steps
        decay_steps = self.total_steps - self.warmup_steps
        return cosine_ramp((step - self.warmup_steps) / max(decay_steps, 1), self.base, self.final)
