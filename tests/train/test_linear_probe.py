"""Evidence that the recipe learns: a linear probe of organ presence on phantom CT slices, on frozen features of
the nano MiT after a short UniMiSS pre-training on phantoms, beats the same probe on the random initialisation
the pre-training started from."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from conftest import nano_card

from medssl_sdk.samples import PHANTOM_LABELS
from medssl_train.augment import SSLViews
from medssl_train.datasets import PhantomRadiographs, PhantomVolumes
from medssl_train.unimiss import PretrainConfig, pretrain_unimiss
from medssl_train.unimiss.probe import linear_probe, mean_auc, phantom_slice_presence
from medssl_train.unimiss.trainer import build_networks
from medssl_zoo import ModelCard

#: A short run: 60 steps (30 of 2D radiographs, 30 of 3D volumes), batch 4, a small head, a fast teacher.
RECIPE = PretrainConfig(steps=60, batch_size=4, out_dim=256, hidden_dim=256, bottleneck_dim=64, warmup_steps=6,
                        learning_rate=0.128, teacher_momentum=0.9, log_every=10, checkpoint_every=1000)
MARGIN = 0.05


def coarse_nano_card() -> ModelCard:
    """The nano card with 3D input at 4 x 3 x 3 mm, so a 16 x 64 x 64 view holds most of a phantom's cross-section."""
    card = nano_card()
    return dataclasses.replace(card, inputs={**card.inputs, "3d": dataclasses.replace(card.inputs["3d"], spacing=(4.0, 3.0, 3.0))})


Slices = tuple[torch.Tensor, torch.Tensor]


def probe_auc(backbone: torch.nn.Module, train: Slices, test: Slices) -> list[float]:
    """Per-organ test AUC of the probe on ``backbone.embed`` features (frozen)."""
    backbone.eval()
    with torch.no_grad():
        train_features, test_features = backbone.embed(train[0]), backbone.embed(test[0])
    return linear_probe(train_features, train[1], test_features, test[1])


def test_pretrained_features_beat_random_ones(tmp_path: Path) -> None:
    card = coarse_nano_card()
    images = PhantomRadiographs(range(16), card.inputs["2d"], SSLViews(2, (64, 64)), shape=(64, 64))
    volumes = PhantomVolumes(range(16), card.inputs["3d"], SSLViews(3, (16, 64, 64)))
    result = pretrain_unimiss(card, images, volumes, tmp_path, RECIPE, progress=False)
    torch.manual_seed(RECIPE.seed)  # the initialisation the run started from
    initial = build_networks(card, RECIPE)[1].backbone
    train = phantom_slice_presence(range(100, 110), card.inputs["3d"])
    test = phantom_slice_presence(range(200, 206), card.inputs["3d"])
    random_aucs, pretrained_aucs = probe_auc(initial, train, test), probe_auc(result.teacher.backbone, train, test)
    print(f"organ-presence probe, mean ROC AUC over organs: random init {mean_auc(random_aucs):.3f}, "
          f"UniMiSS teacher after {RECIPE.steps} steps {mean_auc(pretrained_aucs):.3f}")
    for name, before, after in zip(PHANTOM_LABELS, random_aucs, pretrained_aucs):
        print(f"  {name:<13} {before:.3f} -> {after:.3f}")
    assert mean_auc(pretrained_aucs) >= mean_auc(random_aucs) + MARGIN
