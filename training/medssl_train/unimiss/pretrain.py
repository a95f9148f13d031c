"""The UniMiSS pre-training loop (paper Sec. 3.3 and 4.2, official ``main.py``).

    result = pretrain_unimiss(card, images_2d, volumes_3d, "runs/unimiss", PretrainConfig(steps=20_000))

Each step takes one batch of one domain: steps ``[0, v)`` 2D images, ``[v, 2v)`` 3D volumes, and so on (Fig. 3;
with one domain only, every step is of that domain). 2D steps train on Eq. 5 with the parameters of the 3D
branch frozen (as the official code); 3D steps on Eq. 6, the volumes' slices running through the 2D path. After
each step the teacher follows the student (Eq. 2) and the centre moves (Eq. 4). AdamW with a warm-up + cosine
learning rate, a cosine weight decay (biases and norms excluded), per-parameter gradient clipping (as DINO),
bf16 autocast on CUDA.

OUTPUT holds ``training_state.pt`` (written every ``checkpoint_every`` steps and at the end; ``resume=True``
continues from it to the very step an uninterrupted run would take), ``metrics.csv``, and at the end the
teacher's MiT as a medssl checkpoint (``config.json`` + ``model.safetensors``) that ``medssl_sdk.load`` reads,
with ``training.json`` (the command, the recipe, the processes and the last loss), which ``medssl push`` puts
in the model card.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from medssl_sdk.hub import TRAINING_RECORD
from medssl_train.distributed import DistributedContext, barrier, mean_over_ranks
from medssl_train.unimiss.config import PretrainConfig
from medssl_train.unimiss.head import SSLNetwork
from medssl_train.unimiss.streams import ViewStream
from medssl_train.unimiss.trainer import UniMiSSTrainer
from medssl_zoo import MedsslError, ModelCard, save_checkpoint
from medssl_zoo.card import WeightsSpec
from medssl_zoo.files import write_atomically
from medssl_zoo.weights import CONFIG_FILE, WEIGHTS_FILE

STATE_FILE = "training_state.pt"
METRICS_FILE = "metrics.csv"
#: loss_2d / loss_3d: the mean loss of that domain's steps since the previous row (empty if none).
METRICS_COLUMNS = ("step", "loss_2d", "loss_3d", "learning_rate", "weight_decay", "teacher_momentum", "seconds")


@dataclass(frozen=True)
class PretrainResult:
    """What a run left: the exported teacher's card (sha256 pinned; the input card if the run stopped early), the
    output directory, the steps run in this call, the mean loss of the last logged window, the wall-clock
    seconds, and the trained networks (on this rank; identical on every rank)."""

    card: ModelCard
    directory: Path
    steps_run: int
    final_loss: float
    seconds: float
    student: SSLNetwork
    teacher: SSLNetwork


class _MetricsLog:
    """``metrics.csv`` (rank 0): one row per ``log_every`` steps. On resume from step ``resumed_at`` the rows up
    to that step are kept and later ones (logged after the last checkpoint of an interrupted run) dropped."""

    def __init__(self, path: Path, resumed_at: int | None) -> None:
        self.path = path
        rows: list[list[str]] = []
        if resumed_at is not None and path.exists():
            with open(path, newline="") as stream:
                rows = [row for row in list(csv.reader(stream))[1:] if row and int(row[0]) <= resumed_at]
        with open(path, "w", newline="") as stream:
            csv.writer(stream).writerows([METRICS_COLUMNS, *rows])

    def write(self, row: tuple[object, ...]) -> None:
        with open(self.path, "a", newline="") as stream:
            csv.writer(stream).writerow(row)


#: Settings a resumed run may change: they do not alter what is computed.
RESUMABLE_CHANGES = frozenset({"checkpoint_every", "log_every", "num_workers"})


def _check_same_recipe(saved: dict[str, object], config: PretrainConfig, source: Path) -> None:
    """A resumed run must follow the saved recipe, or its next step is not the one the run would have taken."""
    changed = {name: (saved.get(name), value) for name, value in dataclasses.asdict(config).items()
               if name not in RESUMABLE_CHANGES and saved.get(name) != value}
    if changed:
        listed = ", ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in sorted(changed.items()))
        raise MedsslError(f"{source} was written with other settings ({listed}); resume with the saved ones "
                          "or start a new run in another directory")


def _check_same_world_size(saved: int, context: DistributedContext, source: Path) -> None:
    """A resumed run must have as many processes: the data shards and the learning rate (batch x world size) depend
    on it."""
    if saved != context.world_size:
        raise MedsslError(f"{source} was written by {saved} process(es), this run has {context.world_size}; resume with "
                          f"{saved} (torchrun --nnodes x --nproc-per-node), or start a new run in another directory")


def _check_output(output: Path, resume: bool) -> None:
    if resume:
        if not (output / STATE_FILE).is_file():
            raise MedsslError(f"cannot resume: {output / STATE_FILE} does not exist; start without --resume")
        return
    taken = [name for name in (STATE_FILE, METRICS_FILE, CONFIG_FILE, WEIGHTS_FILE) if (output / name).exists()]
    if taken:
        raise MedsslError(f"{output} already holds {', '.join(taken)} of an earlier run; resume it or choose another directory")


def pretrain_unimiss(
    card: ModelCard,
    images_2d: Dataset | None,
    volumes_3d: Dataset | None,
    output: Path | str,
    config: PretrainConfig | None = None,
    *,
    context: DistributedContext | None = None,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    command: str = "",
) -> PretrainResult:
    """Pre-train the MiT of ``card`` with UniMiSS and export its teacher.

    Args:
        card: an ``"embed"`` MiT card; the export is this card with new weights.
        images_2d: items ``(view_1, view_2)`` of shape (C, H, W) each (C 1 or 3), or None for 3D only.
        volumes_3d: items ``(view_1, view_2)`` of shape (1, D, H, W) each, or None for 2D only.
        output: run directory (see the module docstring); refused if it holds an earlier run, unless ``resume``.
        config: the recipe (default :class:`PretrainConfig`).
        context: rank, world size and device (default: one process on CPU); the student is DDP-wrapped when
            distributed, and only rank 0 writes.
        resume: continue from ``output/training_state.pt``.
        progress: a progress bar on rank 0.
        stop_after: end this call after this many steps of the schedule (a checkpoint is written), as if
            interrupted; None runs to ``config.steps``.
        command: the command line recorded in ``training.json`` (the model card's training command).

    Returns:
        :class:`PretrainResult`.

    Raises:
        MedsslError: the output is taken (or has nothing to resume), or the loss stops being finite.
    """
    config = config or PretrainConfig()
    context = context or DistributedContext()
    device = context.device
    domains = tuple(d for d, data in ((2, images_2d), (3, volumes_3d)) if data is not None)
    if not domains:
        raise ValueError("UniMiSS pre-training needs 2D images, 3D volumes or both")
    output = Path(output)
    _check_output(output, resume)

    trainer = UniMiSSTrainer(card, config, context)
    branches = trainer.student.backbone.config.spatial_dims
    needed = set(domains) | ({2} if 3 in domains else set())  # 3D steps run the slices through the 2D path
    if not needed <= set(branches):
        raise ValueError(f"card {card.name!r}: its MiT has the {'/'.join(f'{d}D' for d in branches)} branch(es) but this run "
                         f"needs {'/'.join(f'{d}D' for d in sorted(needed))} (3D steps also run their slices through the 2D "
                         "branch); use a card with spatial_dims (2, 3)")
    streams = {
        d: ViewStream(data, config.batch_size, context, config.seed, d, config.num_workers, f"{d}D data")
        for d, data in ((2, images_2d), (3, volumes_3d))
        if data is not None
    }
    start = 0
    if resume:
        state = torch.load(output / STATE_FILE, map_location=device, weights_only=True)
        _check_same_recipe(state["config"], config, output / STATE_FILE)
        _check_same_world_size(int(state.get("world_size", context.world_size)), context, output / STATE_FILE)
        trainer.load_state_dict(state)
        for d, stream in streams.items():
            stream.load_state_dict(state["streams"][str(d)])
        start = int(state["step"])
    output.mkdir(parents=True, exist_ok=True)
    log = _MetricsLog(output / METRICS_FILE, start if resume else None) if context.is_main else None
    end = config.steps if stop_after is None else min(config.steps, start + stop_after)
    window: dict[int, list[float]] = {2: [], 3: []}
    last_loss = float("nan")
    began = time.perf_counter()
    with tqdm(total=config.steps, initial=start, disable=not (progress and context.is_main),
              desc=f"UniMiSS pre-training {card.name}", unit="step") as bar:
        for step in range(start, end):
            domain = config.domain_of(step, domains)
            views = streams[domain].next_batch().to(device, non_blocking=True)
            loss = trainer.step(step, domain, views)
            window[domain].append(loss.item())
            bar.update()
            done = step + 1
            if done % config.log_every == 0 or done == end:
                means = {d: mean_over_ranks(sum(losses) / len(losses), context) for d, losses in window.items() if losses}
                last_loss = means[domain]
                window = {2: [], 3: []}
                if log is not None:
                    log.write((done, *(f"{means[d]:.6f}" if d in means else "" for d in (2, 3)),
                               f"{trainer.learning_rate(step):.4e}",
                               f"{trainer.weight_decay(step):.4f}", f"{trainer.momentum(step):.6f}",
                               f"{time.perf_counter() - began:.1f}"))
                bar.set_postfix({f"loss_{d}d": f"{value:.3f}" for d, value in means.items()})
            if done % config.checkpoint_every == 0 or done == end:
                _save_state(output, context, done, trainer, streams, config)
    exported = card
    if end == config.steps:
        exported = _export_teacher(card, trainer.teacher, output, context, config, end)
        if context.is_main:
            record = {"command": command, "config": dataclasses.asdict(config), "steps": end,
                      "final_loss": last_loss, "processes": context.world_size}
            write_atomically(output / TRAINING_RECORD, lambda path: path.write_text(json.dumps(record, indent=2) + "\n"))
    barrier(context)
    return PretrainResult(exported, output, end - start, last_loss, time.perf_counter() - began, trainer.student,
                          trainer.teacher)


def _save_state(output: Path, context: DistributedContext, step: int, trainer: UniMiSSTrainer,
                streams: dict[int, ViewStream], config: PretrainConfig) -> None:
    """Rank 0 writes ``training_state.pt`` atomically; every rank waits for it. The streams' positions are the
    same on every rank (equal batches per epoch), so rank 0's describe all."""
    if context.is_main:
        state = {
            "step": step,
            "world_size": context.world_size,
            **trainer.state_dict(),
            "streams": {str(d): stream.state_dict() for d, stream in streams.items()},
            "config": dataclasses.asdict(config),
        }
        write_atomically(output / STATE_FILE, lambda path: torch.save(state, path))
    barrier(context)


def _export_teacher(card: ModelCard, teacher: SSLNetwork, output: Path, context: DistributedContext,
                    config: PretrainConfig, steps: int) -> ModelCard:
    """Rank 0 saves the teacher's MiT as a medssl checkpoint in ``output``; returns its pinned card."""
    note = (f"UniMiSS pre-training with medssl-train: {steps} steps, batch {config.batch_size} x {context.world_size} "
            f"rank(s), seed {config.seed}; the teacher's encoder-decoder")
    exported = card.with_weights(WeightsSpec(note=note))
    if context.is_main:
        exported = save_checkpoint(teacher.backbone, exported, output, overwrite=True)
    return exported
