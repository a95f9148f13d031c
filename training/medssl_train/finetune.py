"""Supervised fine-tuning for segmentation (Dice + CE) and classification (CE): AdamW for a fixed number of
steps, periodic validation through the SDK's inference path, the best checkpoint kept.

    card = task_card(pretrained.card, "segment", ("background", "liver"), name="mit22-liver")
    network = network_from_pretrained(card, pretrained.network)          # encoder (+ decoder) weights, new head
    result = finetune_segmentation(network, card, sampler, validation_pairs, "runs/liver", FinetuneConfig(steps=2000))

The output directory is a checkpoint directory (``config.json`` + ``model.safetensors``, readable by
``medssl_sdk.load``) holding the weights of the best validation step, plus ``metrics.csv``.

The loop (:func:`train`) takes an iterator of ``(inputs, targets)`` batches, a loss and a validator, and
touches the network only through ``forward``/``backward``/``parameters``/``state_dict``. Under torchrun, give
it the :class:`~medssl_train.distributed.DistributedContext` and this rank's batches: it wraps the network in
DDP (a network already wrapped is used as it is; its ``module`` is saved), and rank 0 alone validates, keeps
the best checkpoint and writes ``metrics.csv`` while the others wait.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal, Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from medssl_sdk.model import ImageInput, Model
from medssl_sdk.volume import Volume
from medssl_train.data import PatchSampler
from medssl_train.distributed import DistributedContext, barrier, mean_over_ranks, wrap_ddp
from medssl_train.evaluate import classification_scores, dice_by_class, mean_dice
from medssl_train.losses import dice_ce_loss
from medssl_train.schedules import cosine_ramp
from medssl_zoo import MedsslError, ModelCard, save_checkpoint
from medssl_zoo.card import Label, WeightsSpec
from medssl_zoo.registry import build_model
from medssl_zoo.weights import CONFIG_FILE, WEIGHTS_FILE

METRICS_FILE = "metrics.csv"
#: Module-name prefixes of task heads: never taken from a pretrained network.
HEAD_PREFIXES = ("seg_head.", "cls_head.", "out.")


@dataclass(frozen=True)
class FinetuneConfig:
    """Optimisation settings.

    ``schedule``: ``"cosine"`` decays the learning rate from ``learning_rate`` to 0 after the warm-up,
    ``"constant"`` keeps it; both warm up linearly over ``warmup_steps``. Validation runs every
    ``validate_every`` steps and at the last step; the training loss is logged every ``log_every`` steps.
    ``batch_dice`` (segmentation): Dice per class over the whole batch rather than per patch
    (:func:`medssl_train.losses.soft_dice_loss`).
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
    batch_dice: bool = False

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
        return cosine_ramp(progress, 1.0, 0.0)


@dataclass(frozen=True)
class FinetuneResult:
    """What a run left behind: the best checkpoint's card (sha256 pinned) and directory, when and how good.

    ``best_metrics``: the validator's scores at ``best_step`` (``dice_mean``, ``dice_<class>`` for
    segmentation; ``accuracy``, ``val_loss`` for classification).
    """

    card: ModelCard
    directory: Path
    best_step: int
    best_metrics: dict[str, float]
    seconds: float

    @property
    def best_dice(self) -> dict[str, float]:
        """Per-class Dice at the best step (segmentation)."""
        return {key.removeprefix("dice_"): value for key, value in self.best_metrics.items() if key != "dice_mean"}

    @property
    def best_mean_dice(self) -> float:
        return self.best_metrics.get("dice_mean", float("nan"))


class Validator(Protocol):
    """Scores a model; ``columns`` names the scores (metrics.csv columns); ``better`` picks the best step."""

    columns: tuple[str, ...]

    def __call__(self, model: Model) -> dict[str, float]: ...

    def better(self, scores: Mapping[str, float], best: Mapping[str, float] | None) -> bool: ...


class SegmentationValidator:
    """Mean and per-class Dice of ``Model.segment`` (sliding windows, original grid) over ``(image, labels)`` pairs."""

    def __init__(self, pairs: Sequence[tuple[Volume, Volume]], class_names: Sequence[str]) -> None:
        if not pairs:
            raise ValueError("segmentation fine-tuning needs at least one validation (image, labels) pair to pick the best step")
        self.pairs = pairs
        self.columns = ("dice_mean", *(f"dice_{name}" for name in class_names[1:]))

    def __call__(self, model: Model) -> dict[str, float]:
        dice = dice_by_class(model, self.pairs)
        return {"dice_mean": mean_dice(dice), **{f"dice_{name}": value for name, value in dice.items()}}

    def better(self, scores: Mapping[str, float], best: Mapping[str, float] | None) -> bool:
        # A NaN best (no organ scored) never blocks a later, scored checkpoint.
        return best is None or math.isnan(best["dice_mean"]) or scores["dice_mean"] > best["dice_mean"]


class ClassificationValidator:
    """Accuracy and mean cross-entropy of ``Model.classify`` over ``(image, class index)`` pairs; best: the
    highest accuracy, ties broken by the lower loss."""

    columns = ("accuracy", "val_loss")

    def __init__(self, pairs: Sequence[tuple[ImageInput, int]]) -> None:
        if not pairs:
            raise ValueError("classification fine-tuning needs at least one validation (image, class) pair to pick the best step")
        self.pairs = pairs

    def __call__(self, model: Model) -> dict[str, float]:
        scores = classification_scores(model, self.pairs)
        return {"accuracy": scores["accuracy"], "val_loss": scores["loss"]}

    def better(self, scores: Mapping[str, float], best: Mapping[str, float] | None) -> bool:
        return best is None or (scores["accuracy"], -scores["val_loss"]) > (best["accuracy"], -best["val_loss"])


def task_card(
    base: ModelCard, task: Literal["segment", "classify"], class_names: Sequence[str], *, name: str | None = None,
    summary: str | None = None,
) -> ModelCard:
    """The card of a ``task`` model over ``class_names`` built on ``base`` (e.g. an embed-task pre-trained MiT):
    same architecture and inputs, the task and class count set, unpublished weights."""
    if task not in ("segment", "classify"):
        raise ValueError(f"task must be 'segment' or 'classify'; got {task!r}")
    if len(class_names) < 2 or len(set(class_names)) != len(class_names):
        raise ValueError(f"a {task} model needs at least two distinct class names; got {list(class_names)}")
    return dataclasses.replace(
        base,
        name=name or f"{base.name}-{task}",
        summary=summary or f"{base.name} fine-tuned to {task} {', '.join(class_names)}.",
        kwargs={**base.kwargs, "task": task, "num_classes": len(class_names)},
        labels=tuple(Label(index, label) for index, label in enumerate(class_names)),
        weights=WeightsSpec(note=f"fine-tuned from {base.name} (weights sha256 {base.weights.sha256})"),
    )


def network_from_pretrained(card: ModelCard, pretrained: nn.Module) -> nn.Module:
    """Build ``card``'s network and copy in every weight of ``pretrained`` it shares (same name and shape),
    task heads excepted; the head (and anything else not shared) keeps its fresh initialisation.

    Raises:
        MedsslError: if a shared name has another shape (the cards' architectures differ), or if no
            encoder weight was shared (not a pre-trained network of this architecture).
    """
    network = build_model(card)
    source = pretrained.state_dict()
    target = network.state_dict()
    shared = {key for key in target if key in source and not key.startswith(HEAD_PREFIXES)}
    mismatched = sorted(key for key in shared if source[key].shape != target[key].shape)
    if mismatched:
        raise MedsslError(f"{card.name}: pretrained weights differ in shape from the new network at {mismatched[:8]}; "
                          "build the task card from the pretrained model's card (task_card) so the architectures match")
    if not any(key.startswith("encoder.") for key in shared):
        raise MedsslError(f"{card.name}: the pretrained network shares no encoder weights with it; "
                          "start from a pre-trained model of the same architecture")
    network.load_state_dict({**target, **{key: source[key] for key in shared}})
    return network


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
    context: DistributedContext | None = None,
) -> FinetuneResult:
    """Train ``network`` (a segmentation model described by ``card``) on ``sampler``'s patches with Dice + CE.

    Args:
        network: maps ``(B, C, *patch)`` to logits ``(B, K, *patch)``; trained in place (left holding the
            last step's weights; the checkpoint holds the best).
        card: the network's card (task ``segment``; its labels name the classes); written into the checkpoint.
        sampler: training patches (with its augmentation, if any).
        validation: ``(image, labels)`` pairs scored with :func:`medssl_train.evaluate.dice_by_class`
            (``Model.segment``: pre-processing, sliding windows, labels on the image's grid); the best
            step has the highest mean Dice over classes.
        output, config, device, progress, overwrite, context: as :func:`train`.
    """
    config = config or FinetuneConfig()
    validator = SegmentationValidator(validation, [label.name for label in card.labels])
    loss = partial(dice_ce_loss, batch_dice=config.batch_dice)
    return train(network, card, sampler.batches(config.batch_size), loss, validator, output, config,
                 device=device, progress=progress, overwrite=overwrite, context=context)


def finetune_classification(
    network: nn.Module,
    card: ModelCard,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    validation: Sequence[tuple[ImageInput, int]],
    output: Path | str,
    config: FinetuneConfig | None = None,
    *,
    device: str | torch.device = "cpu",
    progress: bool = True,
    overwrite: bool = False,
    context: DistributedContext | None = None,
) -> FinetuneResult:
    """Train ``network`` (a classification model described by ``card``) with cross-entropy.

    Args:
        batches: ``(images (B, C, *patch), classes (B,))`` batches without end, e.g.
            :func:`medssl_train.datasets.endless` over a loader of a ``ClassificationFolder``.
        validation: ``(image, class index)`` pairs scored through ``Model.classify``; the best step has
            the highest accuracy (then the lowest validation loss).
        others: as :func:`finetune_segmentation`.
    """
    return train(network, card, batches, F.cross_entropy, ClassificationValidator(validation), output, config,
                 device=device, progress=progress, overwrite=overwrite, context=context)


def train(
    network: nn.Module,
    card: ModelCard,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    validator: Validator,
    output: Path | str,
    config: FinetuneConfig | None = None,
    *,
    device: str | torch.device = "cpu",
    progress: bool = True,
    overwrite: bool = False,
    context: DistributedContext | None = None,
) -> FinetuneResult:
    """The fine-tuning loop: ``config.steps`` AdamW steps on ``batches``, validation, best checkpoint.

    Args:
        network: the model ``card`` describes (or a wrapper such as DDP whose ``module`` it is); trained in place.
        card: written into the checkpoint with the new weights' sha256.
        batches: ``(inputs, targets)`` without end; moved to ``device``. When distributed, this rank's own
            batches (each rank should draw different ones, e.g. seeded with the rank).
        loss_function: ``(network(inputs), targets) -> scalar``.
        validator: scores the model every ``config.validate_every`` steps and at the last step.
        output: the checkpoint directory to write; refused if it already holds a checkpoint or metrics,
            unless ``overwrite``.
        config: optimisation settings (default :class:`FinetuneConfig`).
        device: where to train (when ``context`` is given, its device instead).
        progress: show a progress bar (rank 0 only).
        overwrite: replace a checkpoint or metrics already in ``output``.
        context: this process's rank under torchrun (default: one process). When distributed, the network is
            wrapped in DDP (unless it already is), rank 0 alone validates and writes ``output``, and every
            rank waits for it at each validation step.

    Returns:
        the :class:`FinetuneResult` of the best validation step (rank 0's, on every rank).

    Raises:
        MedsslError: if the loss stops being finite (lower the learning rate) or ``output`` is taken.
    """
    config = config or FinetuneConfig()
    context = context or DistributedContext(device=torch.device(device))
    device = context.device
    output = Path(output)
    taken = [name for name in (CONFIG_FILE, WEIGHTS_FILE, METRICS_FILE) if (output / name).exists()]
    if taken and not overwrite:
        raise MedsslError(f"{output} already holds {', '.join(taken)}; choose another output directory or overwrite")
    barrier(context)  # every rank has looked before rank 0 writes
    module = getattr(network, "module", network)  # what a DDP wrapper wraps
    model = Model(module, card, device)  # validation's view of the same module
    module.to(device).train()
    trained = wrap_ddp(module, context) if network is module else network
    optimiser = torch.optim.AdamW(module.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, config.learning_rate_factor)
    if context.is_main:
        output.mkdir(parents=True, exist_ok=True)
    log = _MetricsLog(output / METRICS_FILE, validator.columns) if context.is_main else None
    best: FinetuneResult | None = None
    losses: list[float] = []
    start = time.perf_counter()
    with tqdm(total=config.steps, disable=not (progress and context.is_main), desc=f"fine-tuning {card.name}",
              unit="step") as bar:
        for step in range(1, config.steps + 1):
            inputs, targets = next(batches)
            loss = loss_function(trained(inputs.to(device)), targets.to(device))
            if not torch.isfinite(loss):
                raise MedsslError(f"the training loss became {loss.item()} at step {step}; lower the learning rate "
                                  f"(now {scheduler.get_last_lr()[0]:.3g}) or raise warmup_steps")
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(module.parameters(), config.max_grad_norm)
            learning_rate = scheduler.get_last_lr()[0]
            optimiser.step()
            scheduler.step()
            losses.append(loss.item())
            bar.update()
            validate = step % config.validate_every == 0 or step == config.steps
            if not (validate or step % config.log_every == 0):
                continue
            mean_loss = mean_over_ranks(sum(losses) / len(losses), context)
            losses.clear()
            if log is None:  # not rank 0: wait while rank 0 validates and saves
                if validate:
                    barrier(context)
                continue
            scores = validator(model) if validate else None
            seconds = time.perf_counter() - start
            if scores is not None and validator.better(scores, best.best_metrics if best else None):
                pinned = save_checkpoint(module, card, output, overwrite=True)
                best = FinetuneResult(pinned, output, step, scores, seconds)
            log.write(step, mean_loss, learning_rate, seconds, scores)
            headline = validator.columns[0]
            best_value = f"{best.best_metrics[headline]:.3f}" if best else "-"
            bar.set_postfix({"loss": f"{mean_loss:.3f}", f"best_{headline}": best_value})
            if validate:
                barrier(context)
    if context.is_distributed:  # rank 0's result, on every rank
        shared = [best]
        dist.broadcast_object_list(shared, src=0, device=device if device.type == "cuda" else None)
        best = shared[0]
    assert best is not None  # the last step always validates
    return dataclasses.replace(best, seconds=time.perf_counter() - start)


class _MetricsLog:
    """``metrics.csv``: step, mean training loss since the last row, learning rate, elapsed seconds, and at
    validation steps the validator's scores (empty otherwise). Appended row by row."""

    def __init__(self, path: Path, columns: tuple[str, ...]) -> None:
        self.path, self.columns = path, columns
        with open(path, "w", newline="") as stream:
            csv.writer(stream).writerow(["step", "loss", "learning_rate", "seconds", *columns])

    def write(self, step: int, loss: float, learning_rate: float, seconds: float, scores: Mapping[str, float] | None) -> None:
        values = [f"{scores.get(name, float('nan')):.4f}" if scores is not None else "" for name in self.columns]
        with open(self.path, "a", newline="") as stream:
            csv.writer(stream).writerow([step, f"{loss:.5f}", f"{learning_rate:.3e}", f"{seconds:.1f}", *values])
