"""A fine-tuning run from a TOML file (``medssl-train finetune --config run.toml``): the model to start from,
the data, the optimisation; flags override single keys; the effective config is kept with the checkpoint.

    config = read_run_config("run.toml", {"optim.steps": 500, "output": "runs/try"})
    result = run_finetune(config, command="medssl-train finetune --config run.toml --steps 500")

See docs/training.md for every key. The output directory gets the checkpoint (``config.json`` +
``model.safetensors``), ``metrics.csv`` and ``training.json`` (the command, the effective config and the
best step's scores), which ``medssl push`` turns into the model card.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medssl_sdk.hub import TRAINING_RECORD
from medssl_sdk.loading import load
from medssl_sdk.model import pick_device
from medssl_train.augment import RandomView, SegmentationAugment
from medssl_train.data import PatchSampler, phantom_class_names, prepare_phantoms, validation_phantoms
from medssl_train.datasets import ClassificationFolder, SegmentationFolder, endless, make_loader
from medssl_train.distributed import DistributedContext, distributed_session
from medssl_train.finetune import (
    FinetuneConfig,
    FinetuneResult,
    finetune_classification,
    finetune_segmentation,
    network_from_pretrained,
    task_card,
)
from medssl_zoo import ModelCard
from medssl_zoo.card import WeightsSpec
from medssl_zoo.errors import CardError
from medssl_zoo.files import write_atomically
from medssl_zoo.registry import build_model

TASKS = ("segment", "classify")


@dataclass(frozen=True)
class DataConfig:
    """``[data]``: ``kind`` ``"folder"`` (``train``/``validation`` folders in the layouts of
    :mod:`medssl_train.datasets`) or ``"phantom"`` (synthetic CT, segmentation only: ``train_phantoms``
    training and ``val_phantoms`` validation phantoms); ``augment`` turns the fine-tuning augmentations on;
    ``num_workers`` loader processes (classification); ``cache_dir`` keeps pre-processed images."""

    kind: str = "folder"
    train: Path | None = None
    validation: Path | None = None
    cache_dir: Path | None = None
    num_workers: int = 0
    augment: bool = True
    train_phantoms: int = 48
    val_phantoms: int = 4


@dataclass(frozen=True)
class RunConfig:
    """A whole run; see docs/training.md. ``init`` (a zoo name or checkpoint directory of a pre-trained model:
    its encoder weights, a new head) or ``card`` (a card TOML: random initialisation) says where to start."""

    task: str
    output: Path
    init: str | None = None
    card: Path | None = None
    name: str | None = None
    classes: tuple[str, ...] | None = None
    branch: str | None = None
    seed: int = 0
    device: str | None = None
    datasets: tuple[str, ...] = ()
    data: DataConfig = field(default_factory=DataConfig)
    optim: FinetuneConfig = field(default_factory=FinetuneConfig)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)


def read_run_config(path: Path | str | None, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Read a run TOML (or none: flags only) and apply ``overrides`` (dotted keys such as ``"optim.steps"``;
    None values are skipped). Unknown or mistyped keys are errors naming the file and key."""
    source = str(path) if path is not None else "the command line"
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise CardError(f"{path}: cannot read the run config ({error})") from None
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        *tables, key = dotted.split(".")
        target = raw
        for table in tables:
            target = target.setdefault(table, {})
        target[key] = value
    return _parse(raw, source)


def _parse(raw: Mapping[str, Any], source: str) -> RunConfig:
    def fail(key: str, problem: str) -> CardError:
        return CardError(f"{source}: run config key '{key}' {problem}")

    def table(key: str, known: Sequence[str]) -> dict[str, Any]:
        value = raw.get(key, {})
        if not isinstance(value, dict):
            raise fail(key, f"must be a table; got {value!r}")
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise fail(f"{key}.{unknown[0]}", f"is not known; known keys: {', '.join(known)}")
        return dict(value)

    top = [f.name for f in dataclasses.fields(RunConfig) if f.name != "raw"]
    unknown = sorted(set(raw) - set(top))
    if unknown:
        raise fail(unknown[0], f"is not known; known keys: {', '.join(top)}")
    for key in ("task", "output"):
        if key not in raw:
            raise fail(key, "is missing (set it in the file or with its flag)")
    if raw["task"] not in TASKS:
        raise fail("task", f"must be one of {TASKS}; got {raw['task']!r}")
    if ("init" in raw) == ("card" in raw):
        raise fail("init", "or 'card' must be given, not both: init = a pre-trained zoo name or checkpoint directory, "
                           "card = a card TOML to train from scratch")
    data_fields = [f.name for f in dataclasses.fields(DataConfig)]
    data = table("data", data_fields)
    for key in ("train", "validation", "cache_dir"):
        if key in data:
            data[key] = Path(data[key])
    optim = table("optim", [f.name for f in dataclasses.fields(FinetuneConfig)])
    try:
        data_config, optim_config = DataConfig(**data), FinetuneConfig(**optim)
    except (TypeError, ValueError) as error:
        raise CardError(f"{source}: {error}") from None
    if data_config.kind not in ("folder", "phantom"):
        raise fail("data.kind", f"must be 'folder' or 'phantom'; got {data_config.kind!r}")
    if data_config.kind == "folder" and (data_config.train is None or data_config.validation is None):
        raise fail("data.train", "and data.validation (folders) are needed with data.kind = 'folder'")
    if data_config.kind == "phantom" and raw["task"] != "segment":
        raise fail("data.kind", "'phantom' data are for segmentation; classification needs class folders")
    return RunConfig(
        task=raw["task"],
        output=Path(raw["output"]),
        init=str(raw["init"]) if "init" in raw else None,
        card=Path(raw["card"]) if "card" in raw else None,
        name=raw.get("name"),
        classes=tuple(raw["classes"]) if "classes" in raw else None,
        branch=raw.get("branch"),
        seed=int(raw.get("seed", 0)),
        device=raw.get("device"),
        datasets=tuple(raw.get("datasets", ())),
        data=data_config,
        optim=optim_config,
        raw=json.loads(json.dumps(raw, default=str)),
    )


def run_finetune(config: RunConfig, *, command: str = "", progress: bool = True, overwrite: bool = False,
                 context: DistributedContext | None = None) -> FinetuneResult:
    """Build the model, the data and the validation of ``config``, fine-tune, and write ``training.json``.

    ``context``: this process's rank under torchrun (default: one process on ``config.device``). Every rank
    starts from the same weights and draws its own training batches (seed ``config.seed + rank``); rank 0
    alone validates and writes the output.
    """
    context = context or DistributedContext(device=pick_device(config.device))
    torch.manual_seed(config.seed)
    card, network = _starting_point(config, _class_names(config))
    classes = tuple(label.name for label in card.labels)
    branch = _branch(config, card)
    spec = card.inputs[branch]
    dims = int(branch[0])
    data_seed = config.seed + context.rank
    if config.task == "segment":
        sampler, validation = _segmentation_data(config, spec, dims, data_seed)
        result = finetune_segmentation(network, card, sampler, validation, config.output, config.optim,
                                       progress=progress, overwrite=overwrite, context=context)
    else:
        train = ClassificationFolder(config.data.train, spec, RandomView(dims, spec.patch_size) if config.data.augment else None,
                                     classes=classes, seed=data_seed, cache_dir=config.data.cache_dir)
        validation = ClassificationFolder(config.data.validation, spec, classes=classes)
        loader = make_loader(train, config.optim.batch_size, num_workers=config.data.num_workers, seed=data_seed)
        pairs = [(source.path, target) for source, target in validation.samples]
        result = finetune_classification(network, card, endless(loader), pairs, config.output, config.optim,
                                         progress=progress, overwrite=overwrite, context=context)
    if context.is_main:
        record = {"command": command, "config": config.raw, "best_step": result.best_step,
                  "best_metrics": result.best_metrics, "seconds": round(result.seconds, 1),
                  "datasets": list(config.datasets), "processes": context.world_size}
        write_atomically(config.output / TRAINING_RECORD, lambda path: path.write_text(json.dumps(record, indent=2) + "\n"))
    return result


def _class_names(config: RunConfig) -> tuple[str, ...] | None:
    """The classes asked for: the config's, the phantom organs, or (classification) None for the folder names."""
    if config.classes is not None:
        return config.classes
    if config.data.kind == "phantom":
        return phantom_class_names()
    if config.task == "classify":
        return None
    if config.card is None:
        raise CardError("segmentation fine-tuning from a pre-trained model needs 'classes' (background first)")
    return None


def _starting_point(config: RunConfig, classes: tuple[str, ...] | None) -> tuple[ModelCard, torch.nn.Module]:
    """The task card and its network: from a pre-trained model (``init``) or a card file (``card``)."""
    if config.card is not None:
        card = ModelCard.from_toml(config.card)
        names = tuple(label.name for label in card.labels)
        if card.kwargs.get("task") != config.task or (classes is not None and names != classes):
            raise CardError(f"{config.card}: the card is a {card.kwargs.get('task')!r} model over {list(names)}; "
                            f"the run asks for {config.task!r} over {list(classes or names)}")
        # new weights: the card's published ones (repository, sha256, note) do not describe them
        card = dataclasses.replace(card, name=config.name or card.name,
                                   weights=WeightsSpec(note=f"trained by medssl-train finetune from the card {config.card.name}"))
        return card, build_model(card)
    pretrained = load(config.init, device="cpu")
    if classes is None:  # classification: the class folders, sorted
        classes = ClassificationFolder(config.data.train, pretrained.card.inputs[_branch(config, pretrained.card)]).classes
    card = task_card(pretrained.card, config.task, classes, name=config.name)
    return card, network_from_pretrained(card, pretrained.network)


def _branch(config: RunConfig, card: ModelCard) -> str:
    """The input branch trained: ``branch`` if set, else the card's only one, else 3D for phantoms."""
    if config.branch is not None:
        if config.branch not in card.inputs:
            raise CardError(f"{card.name}: has no input branch {config.branch!r} (it has {sorted(card.inputs)})")
        return config.branch
    if len(card.inputs) == 1:
        return next(iter(card.inputs))
    if config.data.kind == "phantom":
        return "3d"
    raise CardError(f"{card.name} takes {' and '.join(sorted(card.inputs))} input: set branch = '2d' or '3d' for this run")


def _segmentation_data(config: RunConfig, spec: Any, dims: int, seed: int) -> tuple[PatchSampler, Sequence[Any]]:
    """The patch sampler (patches and augmentation drawn from ``seed``) and validation (image, labels) pairs of
    a segmentation run."""
    augment = SegmentationAugment(dims, seed=seed) if config.data.augment else None
    if config.data.kind == "phantom":
        cases = prepare_phantoms(range(config.data.train_phantoms), spec)
        validation = validation_phantoms(config.data.val_phantoms, spec.spacing)
    else:
        train = SegmentationFolder(config.data.train, spec, cache_dir=config.data.cache_dir)
        cases = [train.case(index) for index in range(len(train))]
        validation = SegmentationFolder(config.data.validation, spec).volume_pairs()
    return PatchSampler(cases, spec.patch_size, seed=seed, augment=augment), validation


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``medssl-train finetune``."""
    command = commands.add_parser(
        "finetune",
        help="fine-tune for segmentation or classification from a run config",
        description="Fine-tune a segmentation (Dice + CE) or classification (CE) model from a pre-trained encoder "
        "(init = zoo name or checkpoint directory) or a card (random init), on folders or phantoms, as set in a TOML "
        f"run config (docs/training.md); flags override its keys. OUTPUT becomes a checkpoint directory (best "
        f"validation step) with metrics.csv and {TRAINING_RECORD} (the command and the effective config).",
    )
    command.add_argument("--config", type=Path, help="the run config (TOML)")
    command.add_argument("--task", choices=TASKS, help="overrides task")
    command.add_argument("--init", help="overrides init: zoo name or checkpoint directory of a pre-trained model")
    command.add_argument("--output", help="overrides output: the checkpoint directory to write")
    command.add_argument("--train", help="overrides data.train")
    command.add_argument("--validation", help="overrides data.validation")
    command.add_argument("--steps", type=int, help="overrides optim.steps")
    command.add_argument("--batch-size", type=int, help="overrides optim.batch_size")
    command.add_argument("--lr", type=float, help="overrides optim.learning_rate")
    command.add_argument("--validate-every", type=int, help="overrides optim.validate_every")
    command.add_argument("--num-workers", type=int, help="overrides data.num_workers")
    command.add_argument("--seed", type=int, help="overrides seed")
    command.add_argument("--device", help="overrides device: cpu, cuda, ... (default: CUDA, then MPS, then CPU)")
    command.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in OUTPUT")
    command.add_argument("--quiet", action="store_true", help="no progress bar")
    command.set_defaults(run=_run_command)


#: Flag (argparse dest) -> the run-config key it overrides.
_FLAG_KEYS = {
    "task": "task", "init": "init", "output": "output", "train": "data.train", "validation": "data.validation",
    "steps": "optim.steps", "batch_size": "optim.batch_size", "lr": "optim.learning_rate",
    "validate_every": "optim.validate_every", "num_workers": "data.num_workers", "seed": "seed", "device": "device",
}


def _run_command(args: argparse.Namespace) -> int:
    config = read_run_config(args.config, {key: getattr(args, flag) for flag, key in _FLAG_KEYS.items()})
    given = [(flag, getattr(args, flag)) for flag in _FLAG_KEYS if getattr(args, flag) is not None]
    words = ["medssl-train", "finetune", *(["--config", str(args.config)] if args.config else [])]
    words += [word for flag, value in given for word in ("--" + flag.replace("_", "-"), str(value))]
    command = shlex.join(words)
    with distributed_session(pick_device(config.device)) as context:
        say = print if context.is_main and not args.quiet else (lambda *_: None)
        say(f"fine-tuning ({config.task}) into {config.output}: {json.dumps(config.raw)}")
        result = run_finetune(config, command=command, progress=not args.quiet, overwrite=args.overwrite, context=context)
        if context.is_main:
            scores = ", ".join(f"{key} {value:.4f}" for key, value in result.best_metrics.items())
            print(f"best validation at step {result.best_step}: {scores}; {result.seconds:.0f} s; "
                  f"{context.world_size} process(es) on {context.device.type}")
            print(f"wrote {result.directory} (model.safetensors sha256 {result.card.weights.sha256}), metrics.csv, "
                  f"{TRAINING_RECORD}")
    return 0
