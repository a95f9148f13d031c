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
teacher's MiT as a medssl checkpoint (``config.json`` + ``model.safetensors``) that ``medssl_sdk.load`` reads.
"""

from __future__ import annotations

import csv
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from medssl_train.distributed import DistributedContext, barrier, mean_over_ranks, unwrap, wrap_ddp
from medssl_train.schedules import WarmupCosine
from medssl_train.unimiss.head import DINOHead, SSLNetwork
from medssl_train.unimiss.loss import UniMiSSLoss
from medssl_train.unimiss.streams import ViewStream
from medssl_train.unimiss.teacher import ema_update, make_teacher
from medssl_zoo import MedsslError, ModelCard, save_checkpoint
from medssl_zoo.card import WeightsSpec
from medssl_zoo.files import write_atomically
from medssl_zoo.layers import branch_key
from medssl_zoo.registry import build_model
from medssl_zoo.weights import CONFIG_FILE, WEIGHTS_FILE

STATE_FILE = "training_state.pt"
METRICS_FILE = "metrics.csv"
METRICS_COLUMNS = ("step", "domain", "loss", "learning_rate", "weight_decay", "teacher_momentum", "seconds")


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


def is_3d_parameter(name: str) -> bool:
    """Whether a parameter belongs to the MiT's 3D branch only (frozen during 2D steps)."""
    return branch_key(3) in name.split(".")


def build_networks(card: ModelCard, config: PretrainConfig) -> tuple[SSLNetwork, SSLNetwork]:
    """Student (MiT of ``card`` + DINO head, initialised from the current torch seed) and its teacher copy."""
    backbone = build_model(card)
    head = DINOHead(backbone.config.decoder_dims[-1], config.out_dim, config.hidden_dim, config.bottleneck_dim)
    student = SSLNetwork(backbone, head)
    return student, make_teacher(student)


def _parameter_groups(network: nn.Module) -> list[dict[str, object]]:
    """Weight decay on weights; none on biases and other 1-D parameters (norms), as the official code."""
    decayed, plain = [], []
    for name, parameter in network.named_parameters():
        (plain if name.endswith(".bias") or parameter.ndim == 1 else decayed).append(parameter)
    return [{"params": decayed}, {"params": plain, "weight_decay": 0.0}]


@torch.no_grad()
def clip_each_gradient(parameters: list[nn.Parameter], max_norm: float) -> None:
    """Scale each parameter's gradient down to norm ``max_norm`` where it is larger (DINO's ``clip_gradients``)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads or max_norm <= 0:
        return
    norms = torch._foreach_norm(grads)
    scales = [torch.clamp(max_norm / (norm + 1e-6), max=1.0) for norm in norms]
    torch._foreach_mul_(grads, scales)


def _set_3d_trainable(network: nn.Module, trainable: bool) -> None:
    for name, parameter in network.named_parameters():
        if is_3d_parameter(name):
            parameter.requires_grad_(trainable)


class _MetricsLog:
    """``metrics.csv`` (rank 0): one row per ``log_every`` steps; kept and appended to on resume."""

    def __init__(self, path: Path, append: bool) -> None:
        self.path = path
        if not (append and path.exists()):
            with open(path, "w", newline="") as stream:
                csv.writer(stream).writerow(METRICS_COLUMNS)

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
    if card.kwargs.get("task", "embed") != "embed" or card.architecture != "mit":
        raise ValueError(f"card {card.name!r}: UniMiSS pre-trains a MiT with task 'embed'; got {card.architecture} "
                         f"task {card.kwargs.get('task')!r}")
    output = Path(output)
    _check_output(output, resume)

    torch.manual_seed(config.seed)
    student, teacher = build_networks(card, config)
    student.to(device).train()
    teacher.to(device).train()
    criterion = UniMiSSLoss(config.out_dim, config.teacher_temp, config.student_temp, config.centre_momentum).to(device)
    optimiser = torch.optim.AdamW(_parameter_groups(student), lr=0.0)
    streams = {
        d: ViewStream(data, config.batch_size, context, config.seed, d, config.num_workers, f"{d}D data")
        for d, data in ((2, images_2d), (3, volumes_3d))
        if data is not None
    }
    start = 0
    if resume:
        state = torch.load(output / STATE_FILE, map_location=device, weights_only=True)
        _check_same_recipe(state["config"], config, output / STATE_FILE)
        student.load_state_dict(state["student"])
        teacher.load_state_dict(state["teacher"])
        criterion.load_state_dict(state["loss"])
        optimiser.load_state_dict(state["optimiser"])
        for d, stream in streams.items():
            stream.load_state_dict(state["streams"][str(d)])
        start = int(state["step"])

    learning_rate = WarmupCosine(config.learning_rate * config.batch_size * context.world_size / 256,
                                 config.min_learning_rate, config.steps, config.warmup_steps)
    weight_decay = WarmupCosine(config.weight_decay, config.weight_decay_end, config.steps)
    momentum = WarmupCosine(config.teacher_momentum, 1.0, config.steps)
    trained = wrap_ddp(student, context)
    parameters = list(student.parameters())
    output.mkdir(parents=True, exist_ok=True)
    log = _MetricsLog(output / METRICS_FILE, append=resume) if context.is_main else None
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda" and config.bf16)
    end = config.steps if stop_after is None else min(config.steps, start + stop_after)
    window: list[float] = []
    last_loss = float("nan")
    began = time.perf_counter()
    with tqdm(total=config.steps, initial=start, disable=not (progress and context.is_main),
              desc=f"UniMiSS pre-training {card.name}", unit="step") as bar:
        for step in range(start, end):
            domain = config.domain_of(step, domains)
            _set_3d_trainable(student, domain == 3)
            views = streams[domain].next_batch().to(device, non_blocking=True)
            for group in optimiser.param_groups:
                group["lr"] = learning_rate(step)
            optimiser.param_groups[0]["weight_decay"] = weight_decay(step)
            with autocast:
                student_out = trained(views, with_slices=domain == 3).float()
                with torch.no_grad():
                    teacher_out = teacher(views, with_slices=domain == 3).float()
            loss = criterion.loss_2d(student_out, teacher_out) if domain == 2 else criterion.loss_3d(student_out, teacher_out)
            if not torch.isfinite(loss):
                raise MedsslError(f"the UniMiSS loss became {loss.item()} at step {step} ({domain}D); lower the learning "
                                  f"rate (now {learning_rate(step):.3g}) or raise warmup_steps")
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            clip_each_gradient(parameters, config.clip_grad)
            if step < config.freeze_last_layer_steps:
                student.head.last_layer.weight.grad = None
            optimiser.step()
            ema_update(teacher, student, momentum(step))
            criterion.update_centre(teacher_out)
            window.append(loss.item())
            bar.update()
            done = step + 1
            if done % config.log_every == 0 or done == end:
                last_loss = mean_over_ranks(sum(window) / len(window), context)
                window.clear()
                if log is not None:
                    log.write((done, f"{domain}d", f"{last_loss:.6f}", f"{learning_rate(step):.4e}",
                               f"{weight_decay(step):.4f}", f"{momentum(step):.6f}", f"{time.perf_counter() - began:.1f}"))
                bar.set_postfix(loss=f"{last_loss:.4f}", domain=f"{domain}D")
            if done % config.checkpoint_every == 0 or done == end:
                _save_state(output, context, done, student, teacher, criterion, optimiser, streams, config)
    _set_3d_trainable(student, True)
    exported = card
    if end == config.steps:
        exported = _export_teacher(card, teacher, output, context, config, end)
    barrier(context)
    return PretrainResult(exported, output, end - start, last_loss, time.perf_counter() - began, student, teacher)


def _save_state(output: Path, context: DistributedContext, step: int, student: nn.Module, teacher: nn.Module,
                criterion: UniMiSSLoss, optimiser: torch.optim.Optimizer, streams: dict[int, ViewStream],
                config: PretrainConfig) -> None:
    """Rank 0 writes ``training_state.pt`` atomically; every rank waits for it. The streams' positions are the
    same on every rank (equal batches per epoch), so rank 0's describe all."""
    if context.is_main:
        state = {
            "step": step,
            "student": unwrap(student).state_dict(),
            "teacher": teacher.state_dict(),
            "loss": criterion.state_dict(),
            "optimiser": optimiser.state_dict(),
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
