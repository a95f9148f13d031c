"""``medssl-train pretrain unimiss``: the recipe from a config file and flags, on one process or under torchrun.

    medssl-train pretrain unimiss --config run.toml --output runs/unimiss
    medssl-train pretrain unimiss --phantoms 16 --card test-card.toml --steps 200 --output runs/smoke
    torchrun --nproc-per-node 8 -m medssl_train.cli pretrain unimiss --config run.toml --output runs/unimiss

The config file (TOML) holds any of the flags' long names with underscores (``batch_size = 32``,
``volumes = "data/ct"``, ``crop_3d = [16, 96, 96]``); flags given on the command line win over it.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import tomllib
from pathlib import Path

from torch.utils.data import Dataset

from medssl_train.augment import SSLViews
from medssl_train.datasets import ImageFolder2D, PhantomRadiographs, PhantomVolumes, VolumeFolder
from medssl_train.distributed import distributed_session
from medssl_train.unimiss.config import PretrainConfig
from medssl_train.unimiss.pretrain import METRICS_FILE, STATE_FILE, pretrain_unimiss
from medssl_train.unimiss.streams import batches_per_epoch
from medssl_zoo import ModelCard
from medssl_zoo.errors import CardError
from medssl_zoo.registry import get_card
from medssl_zoo.weights import CONFIG_FILE, WEIGHTS_FILE

#: Settings of the run that are not part of the recipe, with their defaults.
RUN_DEFAULTS: dict[str, object] = {
    "card": "unimiss-mit7", "volumes": None, "images": None, "phantoms": 0, "crop_2d": None, "crop_3d": None,
    "cache_dir": None, "device": None, "quiet": False, "resume": False, "output": None, "epochs": None,
    "warmup_epochs": None,
}
RECIPE_FIELDS = {field.name: field for field in dataclasses.fields(PretrainConfig)}


def add_parser(pretrain_commands: argparse._SubParsersAction) -> None:
    """Register ``unimiss`` under ``medssl-train pretrain``."""
    command = pretrain_commands.add_parser(
        "unimiss",
        help="UniMiSS self-distillation on 2D images and 3D volumes",
        description="Pre-train a MiT card with UniMiSS (student + momentum teacher, DINO heads, 2D/3D alternation). "
        f"OUTPUT gets {STATE_FILE} (resume with --resume), {METRICS_FILE}, and at the end the teacher's MiT as a "
        f"checkpoint ({CONFIG_FILE} + {WEIGHTS_FILE}) that medssl_sdk.load reads. Run it under torchrun for several "
        "processes. Defaults are the paper's; a --config TOML file sets any option, flags win over it.",
    )
    command.add_argument("--config", type=Path, help="TOML file with any of the options below (underscored names)")
    command.add_argument("--output", type=Path, help="run directory (or 'output' in the config file)")
    command.add_argument("--resume", action="store_true", default=None, help=f"continue from OUTPUT/{STATE_FILE}")
    command.add_argument("--card", help="zoo name or card TOML of an 'embed' MiT (default unimiss-mit7)")
    command.add_argument("--volumes", type=Path, help="folder of NIfTI files / DICOM series (3D views)")
    command.add_argument("--images", type=Path, help="folder of PNG/JPEG/2D DICOM images (2D views)")
    command.add_argument("--phantoms", type=int, help="N synthetic CT phantoms and N radiographs (smoke runs)")
    command.add_argument("--crop-2d", type=int, nargs=2, metavar=("H", "W"), help="2D view size (default: the card's patch)")
    command.add_argument("--crop-3d", type=int, nargs=3, metavar=("D", "H", "W"), help="3D view size (default: the card's patch)")
    command.add_argument("--cache-dir", type=Path, help="keep pre-processed images here (folders only)")
    command.add_argument("--epochs", type=float, help="instead of --steps: passes over the larger data set (the "
                         "alternation gives each domain the same number of steps)")
    command.add_argument("--warmup-epochs", type=float, help="instead of --warmup-steps, in the unit of --epochs")
    command.add_argument("--device", help="cpu or cuda (default: CUDA when available)")
    command.add_argument("--quiet", action="store_true", default=None, help="no progress bar")
    recipe = command.add_argument_group("recipe (defaults: the paper's)")
    for name, field in RECIPE_FIELDS.items():
        flag = "--" + name.replace("_", "-")
        if field.type in ("bool", bool):
            recipe.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=f"default {field.default}")
        else:
            kind = int if isinstance(field.default, int) else float
            recipe.add_argument(flag, type=kind, default=None, help=f"default {field.default}")
    command.set_defaults(run=run_command)


def _settings(args: argparse.Namespace) -> dict[str, object]:
    """Defaults, then the config file, then the flags given."""
    settings: dict[str, object] = {**RUN_DEFAULTS}
    if args.config is not None:
        try:
            from_file = tomllib.loads(args.config.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise ValueError(f"{args.config}: cannot read the config file ({error})") from None
        unknown = sorted(set(from_file) - set(settings) - set(RECIPE_FIELDS))
        if unknown:
            raise ValueError(f"{args.config}: unknown option(s) {unknown}; known: {sorted({*settings, *RECIPE_FIELDS})}")
        settings.update(from_file)
    given = {k: v for k, v in vars(args).items() if k in settings or k in RECIPE_FIELDS}
    settings.update({k: v for k, v in given.items() if v is not None})
    return settings


def _card(reference: str) -> ModelCard:
    path = Path(reference)
    if path.suffix == ".toml":
        if not path.is_file():
            raise CardError(f"card file {path} does not exist")
        return ModelCard.from_toml(path)
    return get_card(reference)


def _datasets(card: ModelCard, settings: dict[str, object]) -> tuple[Dataset | None, Dataset | None]:
    """The 2D and 3D data sets of view pairs the settings name (None where none)."""
    images, volumes = None, None
    crops = {d: tuple(settings[f"crop_{d}d"] or card.inputs[f"{d}d"].patch_size) for d in (2, 3) if f"{d}d" in card.inputs}
    phantoms = int(settings["phantoms"])  # type: ignore[arg-type]
    if phantoms < 0:
        raise ValueError(f"--phantoms must not be negative; got {phantoms}")
    for d, folder in ((2, settings["images"]), (3, settings["volumes"])):
        if (folder is not None or phantoms) and d not in crops:
            raise CardError(f"card {card.name!r} has no [inputs.{d}d]; it cannot take {d}D data")
    if settings["images"] is not None:
        images = ImageFolder2D(settings["images"], card.inputs["2d"], SSLViews(2, crops[2]), cache_dir=settings["cache_dir"])
    elif phantoms and 2 in crops:
        images = PhantomRadiographs(range(phantoms), card.inputs["2d"], SSLViews(2, crops[2]))
    if settings["volumes"] is not None:
        volumes = VolumeFolder(settings["volumes"], card.inputs["3d"], SSLViews(3, crops[3]), cache_dir=settings["cache_dir"])
    elif phantoms and 3 in crops:
        volumes = PhantomVolumes(range(phantoms), card.inputs["3d"], SSLViews(3, crops[3]))
    if images is None and volumes is None:
        raise ValueError("no data: give --volumes, --images (or both), or --phantoms N for a smoke run")
    return images, volumes


def _steps_from_epochs(settings: dict[str, object], recipe: dict[str, object], datasets: list[Dataset],
                       world_size: int) -> dict[str, int]:
    """``steps`` / ``warmup_steps`` from ``epochs`` / ``warmup_epochs``: an epoch is one pass of every rank over its
    share of the larger data set, and the alternation takes as many steps of the other domain."""
    batch_size = int(recipe.get("batch_size", PretrainConfig.batch_size))  # type: ignore[arg-type]
    longest = max(batches_per_epoch(len(data), batch_size, world_size) for data in datasets)  # type: ignore[arg-type]
    converted = {}
    for epochs_key, steps_key in (("epochs", "steps"), ("warmup_epochs", "warmup_steps")):
        if settings[epochs_key] is None:
            continue
        if steps_key in recipe:
            raise ValueError(f"give {steps_key} or {epochs_key}, not both")
        converted[steps_key] = round(float(settings[epochs_key]) * longest * len(datasets))  # type: ignore[arg-type]
    return converted


def _command_line(args: argparse.Namespace) -> str:
    """The command as given (config file and flags), for ``training.json``."""
    words = ["medssl-train", "pretrain", "unimiss"]
    for name in dict.fromkeys(("config", "output", *RUN_DEFAULTS, *RECIPE_FIELDS)):
        value = getattr(args, name, None)
        if value is None:
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + flag[2:])
        else:
            words += [flag, *(str(v) for v in (value if isinstance(value, (list, tuple)) else [value]))]
    return shlex.join(words)


def run_command(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings["output"] is None:
        raise ValueError("no run directory: give --output DIR (or output = \"DIR\" in the config file)")
    output = Path(str(settings["output"]))
    card = _card(str(settings["card"]))
    with distributed_session(settings["device"]) as context:  # type: ignore[arg-type]
        images, volumes = _datasets(card, settings)
        recipe = {k: v for k, v in settings.items() if k in RECIPE_FIELDS}
        recipe.update(_steps_from_epochs(settings, recipe, [d for d in (images, volumes) if d is not None], context.world_size))
        config = PretrainConfig.from_dict(recipe, str(args.config or "flags"))
        say = print if context.is_main and not settings["quiet"] else (lambda *_: None)
        sizes = ", ".join(f"{len(data)} {what}" for what, data in (("2D images", images), ("3D volumes", volumes))  # type: ignore[arg-type]
                          if data is not None)
        say(f"UniMiSS pre-training of {card.name} on {sizes}; {config.steps} steps; {context.world_size} process(es) "
            f"on {context.device.type}")
        result = pretrain_unimiss(card, images, volumes, output, config, context=context,
                                  resume=bool(settings["resume"]), progress=not settings["quiet"],
                                  command=_command_line(args))
        if context.is_main:
            print(f"{result.steps_run} steps in {result.seconds:.0f} s, last loss {result.final_loss:.4f}; "
                  f"wrote {output / CONFIG_FILE} + {WEIGHTS_FILE} (sha256 {result.card.weights.sha256}), "
                  f"{METRICS_FILE}, {STATE_FILE}")
    return 0
