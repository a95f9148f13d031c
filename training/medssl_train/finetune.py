"""Supervised fine-tuning of a segmentation network: AdamW for a fixed number of steps, periodic validation
through the SDK's inference path, the best checkpoint kept.

    result = finetune_segmentation(network, card, sampler, validation_pairs, "runs/phantom", FinetuneConfig(steps=2000))

The output directory is a checkpoint directory (``config.json`` + ``model.safetensors``, readable by
``medssl_sdk.load``) holding the weights of the best validation step, plus ``metrics.csv``.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from medssl_sdk.model import Model
from medssl_sdk.volume import Volume
from medssl_train.data import PatchSampler
from medssl_train.evaluate import dice_by_class, mean_dice
from medssl_train.losses import dice_ce_loss
from medssl_zoo import MedsslError, ModelCard, save_checkpoint
from medssl_zoo.weights import CONFIG_FILE, WEIGHTS_FILE

METRICS_FILE = "metrics.csv"


@dataclass(frozen=True)
class FinetuneConfig:
    """Optimisation settings.

    ``schedule``: ``"cosine"`` decays the learning rate from ``learning_rate`` to 0 after the warm-up,
    ``"constant"`` keeps it; both warm up linearly over ``warmup_steps``. Validation runs every
    ``validate_every`` steps and at the last step; the training loss is logged every ``log_every`` steps.
    """

    steps: int = 2000
    batch_size: int = 2
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = 50
    max_grad_norm: float = 1.0
    validate_every: int = 250
    log_every: int = 10

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "validate_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1; got {getattr(self, name)}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant'; got {self.schedule!r}")
        if not self.learning_rate > 0 or self.warmup_steps < 0 or self.weight_decay < 0 or not self.max_grad_norm > 0:
            raise ValueError("learning_rate and max_grad_norm must be positive, warmup_steps and weight_decay not negative")

    def learning_rate_factor(self, step: int) -> float:
        """Multiplier of ``learning_rate`` for optimiser step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        if self.schedule == "constant":
            return 1.0
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


@dataclass(frozen=True)
class FinetuneResult:
    """What a run left behind: the best checkpoint's card (sha256 pinned) and directory, when and how good."""

    card: ModelCard
    directory: Path
    best_step: int
    best_dice: dict[str, float]
    seconds: float

    @property
    def best_mean_dice(self) -> float:
        return mean_dice(self.best_dice)


def finetune_segmentation(
    network: nn.Module,
    card: ModelCard,
    sampler: PatchSampler,
    validation: Sequence[tuple[Volume, Volume]],
    output: Path | str,
    config: FinetuneConfig | None = None,
    *,
    device: str | torch.device = "cpu",
    progress: bool = True,
    overwrite: bool = False,
) -> FinetuneResult:
    """Train ``network`` (a segmentation model described by ``card``) on ``sampler``'s patches.

    Args:
        network: maps ``(B, C, *patch)`` to logits ``(B, K, *patch)``; trained in place (left holding the
            last step's weights; the checkpoint holds the best).
        card: the network's card (task ``segment``; its labels name the classes); written into the checkpoint.
        sampler: training patches.
        validation: ``(image, labels)`` pairs scored with :func:`medssl_train.evaluate.dice_by_class`
            (``Model.segment``: pre-processing, sliding windows, labels on the image's grid).
        output: the checkpoint directory to write; refused if it already holds a checkpoint or metrics,
            unless ``overwrite``.
        config: optimisation settings (default :class:`FinetuneConfig`).
        device: where to train.
        progress: show a progress bar.

    Returns:
        the :class:`FinetuneResult` of the best validation step (highest mean Dice over classes).

    Raises:
        MedsslError: if the loss stops being finite (lower the learning rate) or ``output`` is taken.
    """
    config = config or FinetuneConfig()
    if not validation:
        raise ValueError("finetune_segmentation needs at least one validation (image, labels) pair to pick the best step")
    output = Path(output)
    taken = [name for name in (CONFIG_FILE, WEIGHTS_FILE, METRICS_FILE) if (output / name).exists()]
    if taken and not overwrite:
        raise MedsslError(f"{output} already holds {', '.join(taken)}; choose another output directory or overwrite")
    output.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    network.to(device).train()
    model = Model(network, card, device)
    optimiser = torch.optim.AdamW(network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, config.learning_rate_factor)
    log = _MetricsLog(output / METRICS_FILE, tuple(label.name for label in card.labels[1:]))
    best: FinetuneResult | None = None
    losses: list[float] = []
    start = time.perf_counter()
    with tqdm(total=config.steps, disable=not progress, desc=f"fine-tuning {card.name}", unit="step") as bar:
        for step in range(1, config.steps + 1):
            images, labels = sampler.sample(config.batch_size)
            loss = dice_ce_loss(network(images.to(device)), labels.to(device))
            if not torch.isfinite(loss):
                raise MedsslError(f"the training loss became {loss.item()} at step {step}; lower the learning rate "
                                  f"(now {scheduler.get_last_lr()[0]:.3g}) or raise warmup_steps")
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(network.parameters(), config.max_grad_norm)
            learning_rate = scheduler.get_last_lr()[0]
            optimiser.step()
            scheduler.step()
            losses.append(loss.item())
            bar.update()
            validate = step % config.validate_every == 0 or step == config.steps
            if not (validate or step % config.log_every == 0):
                continue
            dice = dice_by_class(model, validation) if validate else None
            seconds = time.perf_counter() - start
            # A NaN best (no organ scored) never blocks a later, scored checkpoint.
            if dice is not None and (best is None or math.isnan(best.best_mean_dice) or mean_dice(dice) > best.best_mean_dice):
                pinned = save_checkpoint(network, card, output, overwrite=True)
                best = FinetuneResult(pinned, output, step, dice, seconds)
            log.write(step, sum(losses) / len(losses), learning_rate, seconds, dice)
            bar.set_postfix(loss=f"{sum(losses) / len(losses):.3f}",
                            best_dice=f"{best.best_mean_dice:.3f}" if best else "-")
            losses.clear()
    assert best is not None  # the last step always validates
    return FinetuneResult(best.card, output, best.best_step, best.best_dice, time.perf_counter() - start)


class _MetricsLog:
    """``metrics.csv``: step, mean training loss since the last row, learning rate, elapsed seconds, and at
    validation steps the mean Dice and the Dice of each class (empty otherwise). Appended row by row."""

    def __init__(self, path: Path, class_names: tuple[str, ...]) -> None:
        self.path, self.class_names = path, class_names
        columns = ["step", "loss", "learning_rate", "seconds", "dice_mean", *(f"dice_{name}" for name in class_names)]
        with open(path, "w", newline="") as stream:
            csv.writer(stream).writerow(columns)

    def write(self, step: int, loss: float, learning_rate: float, seconds: float, dice: dict[str, float] | None) -> None:
        scores = [""] * (1 + len(self.class_names))
        if dice is not None:
            scores = [f"{mean_dice(dice):.4f}", *(f"{dice.get(name, float('nan')):.4f}" for name in self.class_names)]
        with open(self.path, "a", newline="") as stream:
            csv.writer(stream).writerow([step, f"{loss:.5f}", f"{learning_rate:.3e}", f"{seconds:.1f}", *scores])
