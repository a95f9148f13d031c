"""Fine-tuning from a pre-trained (embed) checkpoint: segmentation on a labelled folder, classification on class
folders through `medssl-train finetune`; the checkpoints load with medssl_sdk.load and match the trained network."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import nano_card
from PIL import Image

from medssl_sdk import load
from medssl_sdk.io import write_nifti
from medssl_sdk.samples import PHANTOM_LABELS, make_phantom, make_radiograph
from medssl_train.augment import SegmentationAugment
from medssl_train.cli import main
from medssl_train.data import PatchSampler
from medssl_train.datasets import SegmentationFolder
from medssl_train.finetune import FinetuneConfig, finetune_segmentation, network_from_pretrained, task_card
from medssl_train.finetune_run import read_run_config
from medssl_zoo import MedsslError, save_checkpoint
from medssl_zoo.card import InputSpec, Intensity
from medssl_zoo.registry import build_model

SPEC_3D = InputSpec(channels=1, patch_size=(16, 32, 64), spacing=(6.0, 4.0, 4.0),
                    intensity=Intensity("affine", clip=(-1000.0, 1000.0), scale=1000.0))
#: A nano segmentation card over the phantom organs, trained from random weights.
PHANTOM_CARD = """name = "phantom-nano"
[architecture]
name = "mit"
[architecture.kwargs]
variant = "mit7"
task = "segment"
num_classes = 7
encoder_dims = [16, 32, 64, 128]
encoder_heads = [1, 1, 2, 4]
decoder_dims = [64, 32, 16]
decoder_heads = [4, 2, 1]
stem_channels = 8
[inputs.3d]
channels = 1
patch_size = [16, 32, 64]
spacing = [6.0, 4.0, 4.0]
intensity = { kind = "affine", clip = [-1000.0, 1000.0], scale = 1000.0 }
""" + "".join(f'[[labels]]\nindex = {i}\nname = "{name}"\n' for i, name in enumerate(("background", *PHANTOM_LABELS)))
SPEC_2D = InputSpec(channels=3, patch_size=(64, 64), intensity=Intensity("unit-range"))


@pytest.fixture
def pretrained(tmp_path: Path) -> Path:
    """An embed-task nano MiT checkpoint (as pre-training leaves it), taking 2D and 3D input."""
    card = dataclasses.replace(nano_card("nano-pretrained"), inputs={"2d": SPEC_2D, "3d": SPEC_3D})
    save_checkpoint(build_model(card), card, tmp_path / "pretrained")
    return tmp_path / "pretrained"


def write_segmentation_folder(root: Path, seeds: range) -> Path:
    for folder in ("images", "labels"):
        (root / folder).mkdir(parents=True)
    for seed in seeds:
        image, labels = make_phantom(seed, (20, 40, 40), (6.0, 5.0, 5.0))
        write_nifti(image, root / "images" / f"case{seed}.nii.gz")
        write_nifti(labels.with_array(np.isin(labels.array, (1, 2)).astype(np.uint8)), root / "labels" / f"case{seed}.nii.gz")
    return root


def test_segmentation_from_a_pretrained_encoder_gives_a_checkpoint_that_matches_the_network(
    tmp_path: Path, pretrained: Path
) -> None:
    source = load(pretrained, device="cpu")
    card = task_card(source.card, "segment", ("background", "organ"), name="nano-organ")
    network = network_from_pretrained(card, source.network)
    encoder = {k: v for k, v in network.state_dict().items() if k.startswith("encoder.")}
    assert encoder and all(torch.equal(v, source.network.state_dict()[k]) for k, v in encoder.items())

    folder = SegmentationFolder(write_segmentation_folder(tmp_path / "data", range(3)), SPEC_3D)
    cases = [folder.case(i) for i in range(2)]
    sampler = PatchSampler(cases, SPEC_3D.patch_size, seed=0, augment=SegmentationAugment(3))
    config = FinetuneConfig(steps=6, batch_size=2, validate_every=6, log_every=3, warmup_steps=0, batch_dice=True)
    result = finetune_segmentation(network, card, sampler, folder.volume_pairs()[2:], tmp_path / "run", config, progress=False)
    assert result.best_step == 6 and set(result.best_dice) == {"organ"}

    model = load(tmp_path / "run", device="cpu")
    assert model.card.name == "nano-organ" and model.task == "segment"
    x = torch.randn(1, 1, 16, 32, 64)
    network.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), network(x), atol=1e-6)
    with open(tmp_path / "run" / "metrics.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["step"] for row in rows] == ["3", "6"] and rows[1]["dice_organ"] and not rows[0]["dice_mean"]


def test_classification_from_an_embed_checkpoint_through_the_cli(tmp_path: Path, pretrained: Path) -> None:
    for split, seeds in (("train", range(4)), ("val", range(10, 12))):
        for name, transpose in (("upright", False), ("sideways", True)):
            (tmp_path / split / name).mkdir(parents=True)
            for seed in seeds:
                image = make_radiograph(seed, (48, 48))[0].array
                image = image.T if transpose else image
                Image.fromarray((image * 255).astype(np.uint8)).save(tmp_path / split / name / f"{seed}.png")
    run = tmp_path / "run.toml"
    run.write_text(f'''task = "classify"
init = "{pretrained}"
name = "nano-orientation"
branch = "2d"
datasets = ["synthetic/radiographs"]

[data]
train = "{tmp_path / 'train'}"
validation = "{tmp_path / 'val'}"
num_workers = 0

[optim]
batch_size = 4
warmup_steps = 0
log_every = 2
''')
    output = tmp_path / "out"
    assert main(["finetune", "--config", str(run), "--output", str(output), "--steps", "4", "--validate-every", "2",
                 "--quiet"]) == 0
    model = load(output, device="cpu")
    assert model.task == "classify" and [label.name for label in model.card.labels] == ["sideways", "upright"]
    probabilities = model.classify(tmp_path / "val" / "upright" / "10.png")
    assert set(probabilities) == {"sideways", "upright"} and sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    record = json.loads((output / "training.json").read_text())
    assert record["config"]["optim"]["steps"] == 4 and record["config"]["output"] == str(output)
    assert record["command"] == f"medssl-train finetune --config {run} --output {output} --steps 4 --validate-every 2"
    assert record["datasets"] == ["synthetic/radiographs"] and 0.0 <= record["best_metrics"]["accuracy"] <= 1.0
    with open(output / "metrics.csv", newline="") as stream:
        assert [row["accuracy"] != "" for row in csv.DictReader(stream)] == [True, True]
    assert main(["finetune", "--config", str(run), "--output", str(output), "--steps", "4", "--quiet"]) == 2  # no overwrite


def test_heads_are_new_and_mismatched_architectures_are_refused(pretrained: Path) -> None:
    source = load(pretrained, device="cpu")
    other = dataclasses.replace(source.card, kwargs={**source.card.kwargs, "encoder_dims": [8, 16, 32, 64],
                                                     "decoder_dims": [32, 16, 8]})
    with pytest.raises(MedsslError, match="differ in shape"):
        network_from_pretrained(task_card(other, "classify", ("a", "b")), source.network)
    with pytest.raises(ValueError, match="two distinct class names"):
        task_card(source.card, "classify", ("a",))


def test_run_config_errors_name_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('task = "segment"\ninit = "unimiss-mit7"\noutput = "x"\n[optim]\nstep = 3\n')
    with pytest.raises(MedsslError, match=r"run.toml: run config key 'optim.step' is not known"):
        read_run_config(path)
    path.write_text('task = "segment"\noutput = "x"\n[data]\nkind = "phantom"\n')
    with pytest.raises(MedsslError, match="'init' or 'card' must be given"):
        read_run_config(path)
    config = read_run_config(path, {"init": "unimiss-mit7", "optim.steps": 7, "seed": None})
    assert config.optim.steps == 7 and config.init == "unimiss-mit7" and config.seed == 0


def test_segmentation_runs_through_the_cli_on_folders_and_on_phantoms(tmp_path: Path, pretrained: Path) -> None:
    data = write_segmentation_folder(tmp_path / "train", range(2))
    write_segmentation_folder(tmp_path / "val", range(5, 6))
    run = tmp_path / "run.toml"
    run.write_text(f'task = "segment"\ninit = "{pretrained}"\nclasses = ["background", "organ"]\nbranch = "3d"\n'
                   f'[data]\ntrain = "{data}"\nvalidation = "{tmp_path / "val"}"\ncache_dir = "{tmp_path / "cache"}"\n'
                   '[optim]\nbatch_size = 1\nwarmup_steps = 0\n')
    assert main(["finetune", "--config", str(run), "--output", str(tmp_path / "out"), "--steps", "2", "--quiet"]) == 0
    model = load(tmp_path / "out", device="cpu")
    assert model.task == "segment" and [label.name for label in model.card.labels] == ["background", "organ"]
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2  # the training cases, pre-processed once

    # phantoms and a card trained from scratch: the phantom organs are the classes
    card_path = tmp_path / "card.toml"
    card_path.write_text(PHANTOM_CARD)
    phantom_run = tmp_path / "phantom.toml"
    phantom_run.write_text(f'task = "segment"\ncard = "{card_path}"\noutput = "{tmp_path / "phantom"}"\n'
                           '[data]\nkind = "phantom"\ntrain_phantoms = 1\nval_phantoms = 1\naugment = false\n'
                           '[optim]\nsteps = 2\nbatch_size = 1\nwarmup_steps = 0\n')
    assert main(["finetune", "--config", str(phantom_run), "--quiet"]) == 0
    card = load(tmp_path / "phantom", device="cpu").card
    assert card.name == "phantom-nano" and card.weights.repo_id is None and "from the card card.toml" in card.weights.note
