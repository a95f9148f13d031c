"""The ``medssl-train`` command line.

    medssl-train pretrain unimiss --config run.toml --output runs/unimiss
    medssl-train finetune --config run.toml --output runs/liver --steps 2000
    medssl-train finetune-phantom --card zoo/medssl_zoo/cards/phantom-mit-nano.toml --output runs/phantom --steps 3000
    medssl-train evaluate-phantom runs/phantom --shape 48 160 144 --spacing 2.5 1.2 1.3
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

import torch

from medssl_sdk.loading import load
from medssl_sdk.model import pick_device
from medssl_sdk.samples import PHANTOM_LABELS
from medssl_train.data import (
    EVALUATION_SEED_BASE,
    VALIDATION_SEED_BASE,
    PatchSampler,
    phantom_class_names,
    prepare_phantoms,
    validation_phantoms,
)
from medssl_train.distributed import distributed_session
from medssl_train.evaluate import dice_by_class, mean_dice, phantom_pairs
from medssl_train.finetune import METRICS_FILE, FinetuneConfig, finetune_segmentation
from medssl_train.finetune_run import add_parser as add_finetune_parser
from medssl_train.unimiss import command as unimiss_command
from medssl_zoo import MedsslError, ModelCard
from medssl_zoo.errors import CardError
from medssl_zoo.registry import build_model
from medssl_zoo.weights import CONFIG_FILE


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medssl-train", description="Pre-train and fine-tune medssl models.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('medssl-sdk')}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_pretrain(commands)
    add_finetune_parser(commands)
    _add_finetune_phantom(commands)
    _add_evaluate_phantom(commands)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.run(args)
    except (MedsslError, ValueError) as error:
        print(f"medssl-train: error: {error}", file=sys.stderr)
        return 2


def _add_pretrain(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser("pretrain", help="self-supervised pre-training (recipes: unimiss)",
                                  description="Self-supervised pre-training of an encoder; pick a recipe.")
    recipes = command.add_subparsers(dest="recipe", metavar="RECIPE", required=True)
    unimiss_command.add_parser(recipes)


def _add_finetune_phantom(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser(
        "finetune-phantom",
        help="train a segmentation card on synthetic CT phantoms",
        description=f"Fine-tune the segmentation model of a card on synthetic CT phantoms (labels: {', '.join(PHANTOM_LABELS)}). "
        f"Training phantoms have seeds 0..N-1, validation phantoms {VALIDATION_SEED_BASE}.., each on its own jittered "
        "grid around the card's spacing. OUTPUT becomes a checkpoint directory (best validation step) with metrics.csv. "
        "Under torchrun every process trains the one DDP model on its own patches (seed + rank); rank 0 validates and writes.",
    )
    command.add_argument("--card", type=Path, required=True, help="the card (TOML) of the model to train; task 'segment'")
    command.add_argument("--output", type=Path, required=True, help="checkpoint directory to write")
    command.add_argument("--steps", type=int, default=FinetuneConfig.steps)
    command.add_argument("--seed", type=int, default=0, help="seeds the initialisation and the patch sampling")
    command.add_argument("--batch-size", type=int, default=FinetuneConfig.batch_size)
    command.add_argument("--lr", type=float, default=FinetuneConfig.learning_rate, help="peak AdamW learning rate")
    command.add_argument("--weight-decay", type=float, default=FinetuneConfig.weight_decay)
    command.add_argument("--schedule", choices=("cosine", "constant"), default=FinetuneConfig.schedule)
    command.add_argument("--warmup-steps", type=int, default=FinetuneConfig.warmup_steps)
    command.add_argument("--validate-every", type=int, default=FinetuneConfig.validate_every)
    command.add_argument("--train-phantoms", type=int, default=48, help="number of training phantoms")
    command.add_argument("--val-phantoms", type=int, default=4, help="number of validation phantoms")
    command.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA, then MPS, then CPU)")
    command.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in OUTPUT")
    command.add_argument("--quiet", action="store_true", help="no progress bar")
    command.set_defaults(run=_finetune_phantom)


def _finetune_phantom(args: argparse.Namespace) -> int:
    card = ModelCard.from_toml(args.card)
    spec = card.inputs.get("3d")
    if spec is None or spec.spacing is None:
        raise CardError(f"{args.card}: phantom fine-tuning needs a 3D input ([inputs.3d]) with a spacing")
    names = tuple(label.name for label in card.labels)
    if names != phantom_class_names():
        raise CardError(
            f"{args.card}: labels must be {list(phantom_class_names())} (index order) to train on phantoms; got {list(names)}"
        )
    if args.train_phantoms < 1 or args.val_phantoms < 1:
        raise ValueError("--train-phantoms and --val-phantoms must be at least 1")
    if args.train_phantoms > VALIDATION_SEED_BASE or args.val_phantoms > EVALUATION_SEED_BASE - VALIDATION_SEED_BASE:
        raise ValueError(
            f"at most {VALIDATION_SEED_BASE} training and {EVALUATION_SEED_BASE - VALIDATION_SEED_BASE} validation phantoms: "
            "more would reuse the seeds of the next held-out set"
        )
    config = FinetuneConfig(
        steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr, weight_decay=args.weight_decay,
        schedule=args.schedule, warmup_steps=args.warmup_steps, validate_every=args.validate_every,
    )
    with distributed_session(pick_device(args.device)) as context:
        say = print if context.is_main and not args.quiet else (lambda *_: None)
        say(f"making {args.train_phantoms} training and {args.val_phantoms} validation phantoms ...")
        cases = prepare_phantoms(range(args.train_phantoms), spec)
        sampler = PatchSampler(cases, spec.patch_size, seed=args.seed + context.rank)  # each rank its own patches
        validation = validation_phantoms(args.val_phantoms, spec.spacing)
        torch.manual_seed(args.seed)
        network = build_model(card)
        say(f"{card.name}: {sum(p.numel() for p in network.parameters()):,} parameters, training on {context.device} "
            f"({context.world_size} process(es))")
        result = finetune_segmentation(network, card, sampler, validation, args.output, config,
                                       progress=not args.quiet, overwrite=args.overwrite, context=context)
        if context.is_main:
            print(f"best validation mean Dice {result.best_mean_dice:.4f} at step {result.best_step} "
                  f"({', '.join(f'{k} {v:.3f}' for k, v in result.best_dice.items())}); {result.seconds:.0f} s")
            print(f"wrote {result.directory / CONFIG_FILE}, model.safetensors (sha256 {result.card.weights.sha256}) and "
                  f"{METRICS_FILE}")
    return 0


def _add_evaluate_phantom(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser(
        "evaluate-phantom",
        help="score a segmentation model on unseen phantoms",
        description="Per-organ Dice of MODEL (a checkpoint directory or zoo name) on phantoms drawn on the given grid, "
        "segmented with Model.segment (resampled to the card's grid and back).",
    )
    command.add_argument("model", help="checkpoint directory or zoo name")
    command.add_argument("--first-seed", type=int, default=EVALUATION_SEED_BASE)
    command.add_argument("--count", type=int, default=8, help="number of phantoms (seeds FIRST_SEED, FIRST_SEED+1, ...)")
    command.add_argument("--shape", type=int, nargs=3, default=(48, 160, 144), metavar=("D", "H", "W"))
    command.add_argument("--spacing", type=float, nargs=3, default=(2.5, 1.2, 1.3), metavar=("D", "H", "W"), help="mm")
    command.add_argument("--device", default=None)
    command.set_defaults(run=_evaluate_phantom)


def _evaluate_phantom(args: argparse.Namespace) -> int:
    if args.count < 1:
        raise ValueError("--count must be at least 1")
    model = load(args.model, device=args.device)
    pairs = phantom_pairs(range(args.first_seed, args.first_seed + args.count), args.shape, args.spacing)
    start = time.perf_counter()
    dice = dice_by_class(model, pairs)
    seconds = time.perf_counter() - start
    print(f"{model.name} on {args.count} phantoms (seeds {args.first_seed}..{args.first_seed + args.count - 1}, "
          f"shape {tuple(args.shape)}, spacing {tuple(args.spacing)} mm), {seconds / args.count:.2f} s each:")
    for name, value in dice.items():
        print(f"  {name:<14} Dice {value:.4f}")
    print(f"  {'mean':<14} Dice {mean_dice(dice):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
