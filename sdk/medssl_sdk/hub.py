"""Publishing a checkpoint directory to the Hugging Face Hub (``medssl push``).

    result = push_checkpoint("runs/liver", "my-org/mit22-liver", revision="v1", private=True)
    print(result.commit_url)

The directory is verified first (``config.json`` holds a card whose sha256 matches ``model.safetensors``).
The upload folder is then built in a temporary directory: ``config.json`` (the card, its weights section
pointing at the repository and revision), ``model.safetensors``, ``metrics.csv`` when training left one,
and ``README.md``, a model card with YAML front matter (licence, tags, data sets, metrics) and the
architecture, inputs, labels, training command and scores, the sha256 and a usage snippet. That folder is
checked again and uploaded with ``huggingface_hub.HfApi``: ``create_repo`` (``exist_ok``), ``create_branch``
for a revision other than ``main``, and ``upload_folder``. The endpoint is ``HF_ENDPOINT`` (or ``endpoint=``),
the token ``HF_TOKEN`` or the one saved by ``hf auth login``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from medssl_zoo import MedsslError, ModelCard
from medssl_zoo.checkpoint import FORMAT, FORMAT_VERSION, read_checkpoint_card
from medssl_zoo.weights import CONFIG_FILE, WEIGHTS_FILE, verify_sha256

MODEL_CARD_FILE = "README.md"
METRICS_FILE = "metrics.csv"
#: What fine-tuning records beside the checkpoint (command, effective config, best scores, data sets).
TRAINING_RECORD = "training.json"
DEFAULT_REVISION = "main"
#: Licences the Hub knows by id (the card's licence text starts with one of them, any case); others are "other".
HUB_LICENCES = ("apache-2.0", "mit", "bsd-3-clause", "bsd-2-clause", "gpl-3.0", "lgpl-3.0", "cc0-1.0", "cc-by-4.0",
                "cc-by-sa-4.0", "cc-by-nc-4.0", "cc-by-nc-sa-4.0", "cc-by-nc-nd-4.0", "openrail", "llama2")
PIPELINE_TAGS = {"segment": "image-segmentation", "classify": "image-classification", "embed": "image-feature-extraction"}
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class PushResult:
    """Where the checkpoint went: repository, revision, the commit's URL and id, and the card as uploaded."""

    repo_id: str
    revision: str
    commit_url: str
    commit_oid: str
    card: ModelCard


def verify_checkpoint(directory: Path | str) -> ModelCard:
    """The card of a checkpoint directory whose weights file matches the card's sha256.

    Raises:
        CheckpointFormatError / ChecksumMismatchError (MedsslError): naming the file and what to do.
    """
    directory = Path(directory)
    card = read_checkpoint_card(directory)
    weights = directory / card.weights.file
    if not weights.is_file():
        raise MedsslError(f"{weights}: the weights file named by {directory / CONFIG_FILE} is missing")
    verify_sha256(weights, card.weights.sha256, str(directory / CONFIG_FILE))
    return card


def training_scores(directory: Path | str) -> dict[str, float]:
    """The best validation scores a training run recorded in ``directory``: ``training.json``'s
    ``best_metrics`` (none if it has none, as after pre-training), else without ``training.json`` the last
    validated row of ``metrics.csv``, else nothing."""
    directory = Path(directory)
    record = _training_record(directory)
    if record:
        metrics = record.get("best_metrics")
        return {str(k): float(v) for k, v in metrics.items()} if isinstance(metrics, dict) else {}
    path = directory / METRICS_FILE
    if not path.is_file():
        return {}
    with open(path, newline="") as stream:
        rows = list(csv.DictReader(stream))
    fixed = {"step", "loss", "learning_rate", "seconds"}
    validated = [row for row in rows if any(value not in ("", None) for key, value in row.items() if key not in fixed)]
    if not validated:
        return {}
    return {key: float(value) for key, value in validated[-1].items() if key not in fixed and value not in ("", None)}


def build_upload_folder(directory: Path | str, target: Path | str, repo_id: str, revision: str = DEFAULT_REVISION) -> ModelCard:
    """Write the files to upload for the checkpoint in ``directory`` into the empty folder ``target``.

    Returns the card as uploaded (weights ``repo_id``/``revision`` set). ``directory`` is only read.
    """
    directory, target = Path(directory), Path(target)
    _check_repo_id(repo_id)
    card = verify_checkpoint(directory)
    if any(target.iterdir()):
        raise MedsslError(f"{target}: the upload folder must start empty")
    card = card.with_weights(dataclasses.replace(card.weights, file=WEIGHTS_FILE, repo_id=repo_id, revision=revision))
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "card": card.to_dict()}
    (target / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    _link_or_copy(directory / card.weights.file, target / WEIGHTS_FILE)
    if (directory / METRICS_FILE).is_file():
        shutil.copyfile(directory / METRICS_FILE, target / METRICS_FILE)
    (target / MODEL_CARD_FILE).write_text(model_card_text(card, directory, repo_id, revision), encoding="utf-8")
    return card


def check_upload_folder(folder: Path | str) -> ModelCard:
    """Check a built upload folder: the card and weights (sha256) and a model card that pins the same sha256."""
    folder = Path(folder)
    card = verify_checkpoint(folder)
    readme = folder / MODEL_CARD_FILE
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    if not text.startswith("---\n") or card.weights.sha256 not in text:
        raise MedsslError(f"{readme}: the model card is missing or does not state the weights' sha256 {card.weights.sha256}")
    return card


def push_checkpoint(
    directory: Path | str,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
) -> PushResult:
    """Verify ``directory``, build and check the upload folder, and upload it to ``repo_id`` at ``revision``.

    Args:
        directory: a checkpoint directory (``config.json`` + ``model.safetensors``, e.g. a fine-tuning output).
        repo_id: ``"org/name"``; the model repository is created if missing (``private`` then applies).
        revision: the branch to commit to (created from ``main`` if missing); default ``main``.
        commit_message: default ``"Upload <card name> (sha256 <first 12>)"``.
        token, endpoint: passed to ``HfApi`` (defaults: ``HF_TOKEN``/saved token, ``HF_ENDPOINT``).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    # huggingface_hub's errors derive from its HTTP library's (whose connection errors are not HfHubHTTPError).
    hub_errors = (HfHubHTTPError, *HfHubHTTPError.__bases__)

    revision = revision or DEFAULT_REVISION
    with tempfile.TemporaryDirectory(prefix="medssl-push-") as temporary:
        folder = Path(temporary)
        card = build_upload_folder(directory, folder, repo_id, revision)
        check_upload_folder(folder)
        api = HfApi(endpoint=endpoint, token=token)
        message = commit_message or f"Upload {card.name} (sha256 {card.weights.sha256[:12]})"
        try:
            api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            if revision != DEFAULT_REVISION:
                api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
            commit = api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision, repo_type="model",
                                       commit_message=message)
        except hub_errors as error:
            raise MedsslError(f"uploading {directory} to {api.endpoint}/{repo_id} (revision {revision}) failed: {error}. "
                              "Check the token (HF_TOKEN or `hf auth login`) can write to that organisation") from error
    return PushResult(repo_id, revision, commit.commit_url, commit.oid, card)


def add_push_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``medssl push``."""
    push = commands.add_parser(
        "push", help="upload a checkpoint directory to the Hugging Face Hub with a model card",
        description="Verify DIR (config.json card, model.safetensors sha256), build the upload folder (config.json, "
        "weights, README.md model card with licence, tags, data sets, metrics, training command and sha256) and upload "
        "it with huggingface_hub (HF_ENDPOINT, HF_TOKEN honoured). Prints the commit URL.",
    )
    push.add_argument("directory", type=Path, metavar="DIR", help="checkpoint directory (e.g. a medssl-train output)")
    push.add_argument("--repo", required=True, metavar="ORG/NAME", help="the model repository (created if missing)")
    push.add_argument("--revision", default=None, help="branch to commit to (created if missing; default main)")
    push.add_argument("--private", action="store_true", help="make a new repository private")
    push.add_argument("--commit-message", default=None, help="default: 'Upload NAME (sha256 ...)'")
    push.set_defaults(run=_push_command)


def _push_command(args: argparse.Namespace) -> None:
    result = push_checkpoint(args.directory, args.repo, revision=args.revision, private=args.private,
                             commit_message=args.commit_message)
    print(f"pushed {result.card.name} (sha256 {result.card.weights.sha256}) to {result.repo_id}@{result.revision}")
    print(result.commit_url)


def model_card_text(card: ModelCard, directory: Path, repo_id: str, revision: str) -> str:
    """README.md for the Hub: YAML front matter then a description of the model, its training and its use."""
    from huggingface_hub import ModelCardData

    task = card.task
    record = _training_record(directory)
    scores = training_scores(directory)
    licence_id = _hub_licence(card.licence)
    metadata = ModelCardData(
        license=licence_id,
        license_name=_slug(card.licence) if licence_id == "other" else None,
        library_name="medssl",
        tags=["medical-imaging", "self-supervised", "medssl", *(f"{d}d" for d in card.spatial_dims), card.architecture],
        datasets=[str(name) for name in record.get("datasets", [])] or None,
        metrics=sorted({_metric_id(name) for name in scores}) or None,
        pipeline_tag=PIPELINE_TAGS.get(task),
    )
    lines = [f"---\n{metadata.to_yaml()}\n---", f"# {card.name}", "", card.summary or "", ""]
    lines += ["## Model", "", f"- Architecture: `{card.architecture}` ({', '.join(f'{k}={v}' for k, v in card.kwargs.items())})",
              f"- Task: {task}"]
    for branch, spec in card.inputs.items():
        spacing = f", spacing {spec.spacing} mm" if spec.spacing else ""
        lines.append(f"- Input {branch}: {spec.channels} channel(s), patch {spec.patch_size}{spacing}, "
                     f"intensity {spec.intensity.kind}")
    if card.labels:
        lines.append(f"- Labels: {', '.join(f'{label.index} {label.name}' for label in card.labels)}")
    lines += ["", "## Training", ""]
    if record.get("command"):
        lines += ["```bash", str(record["command"]), "```", ""]
    if scores:
        lines += ["| metric | value |", "| --- | --- |", *(f"| {name} | {value:.4f} |" for name, value in scores.items()), ""]
        if "best_step" in record:
            lines += [f"Best validation step: {record['best_step']}.", ""]
    if not record.get("command") and not scores:
        lines += ["No training record was found beside the checkpoint.", ""]
    lines += ["## Weights", "", f"`{WEIGHTS_FILE}` sha256 `{card.weights.sha256}` (checked by `medssl_sdk.load`).", ""]
    lines += ["## Usage", "", "```python", "from huggingface_hub import snapshot_download", "from medssl_sdk import load", "",
              f'model = load(snapshot_download("{repo_id}", revision="{revision}"))  # checks the sha256 above',
              _usage_line(task), "```", ""]
    lines += ["## Licence", "", card.licence or "Not stated.", ""]
    if card.citation:
        lines += ["## Citation", "", "```bibtex", card.citation.strip(), "```", ""]
    return "\n".join(lines)


def _usage_line(task: str) -> str:
    return {
        "segment": 'segmentation = model.segment("ct_dir/")  # DICOM folder, NIfTI or Volume\nsegmentation.save("seg.nii.gz")',
        "classify": 'probabilities = model.classify("image.png")  # {label: probability}',
    }.get(task, 'embedding = model.embed("ct.nii.gz")  # (embedding_dim,)')


def _training_record(directory: Path) -> Mapping:
    path = directory / TRAINING_RECORD
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise MedsslError(f"{path}: not valid JSON ({error}); fix or remove it") from None
    return record if isinstance(record, dict) else {}


def _hub_licence(licence: str) -> str:
    first = licence.strip().split(" ")[0].lower() if licence.strip() else ""
    return first if first in HUB_LICENCES else "other"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:64] or "unspecified"


def _metric_id(name: str) -> str:
    """``dice_mean``/``dice_liver`` -> ``dice``; ``accuracy``; ``val_loss`` -> ``loss``."""
    return "dice" if name.startswith("dice") else name.removeprefix("val_")


def _check_repo_id(repo_id: str) -> None:
    if not _REPO_ID.match(repo_id):
        raise MedsslError(f"repository {repo_id!r} must be ORG/NAME (letters, digits, '.', '_', '-'), e.g. my-lab/mit22-liver")


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link where the file system allows (large weights are not copied), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
