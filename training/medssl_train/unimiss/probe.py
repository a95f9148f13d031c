"""A linear probe of frozen features: organ presence on the axial slices of CT phantoms.

    images, presence = phantom_slice_presence(range(10), card.inputs["3d"], size=64)   # (N, 1, 64, 64), (N, 6)
    aucs = linear_probe(features(train), presence_train, features(test), presence_test)

Each slice of a pre-processed phantom is resized to ``size x size``; its target is, per organ of
``PHANTOM_LABELS``, whether any voxel of the slice belongs to it. The probe is one logistic regression per
organ on standardised features (L-BFGS, L2 penalty), scored by the area under the ROC curve on held-out
phantoms. Organs present on every slice (or none) of the test set have no AUC (NaN).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from medssl_sdk.samples import PHANTOM_LABELS
from medssl_train.datasets import PhantomVolumes
from medssl_zoo.card import InputSpec


def phantom_slice_presence(seeds: Sequence[int], spec: InputSpec, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Every axial slice of the phantoms ``seeds`` pre-processed for the 3D ``spec``: images (N, 1, size, size)
    and organ presence (N, len(PHANTOM_LABELS)) as 0/1 floats."""
    images, presence = [], []
    for case in PhantomVolumes(seeds, spec, labelled=True):
        images.append(F.interpolate(case.image[0][:, None], size=(size, size), mode="bilinear", align_corners=False))
        organs = torch.arange(1, len(PHANTOM_LABELS) + 1, dtype=case.labels.dtype)
        presence.append((case.labels.flatten(1)[:, :, None] == organs).any(dim=1).float())
    return torch.cat(images), torch.cat(presence)


def roc_auc(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` (N,) for 0/1 ``targets`` (N,): the chance that a positive scores
    above a negative (ties count half). NaN without positives or negatives."""
    positive, negative = scores[targets > 0.5], scores[targets <= 0.5]
    if positive.numel() == 0 or negative.numel() == 0:
        return math.nan
    difference = positive[:, None] - negative[None, :]
    return ((difference > 0).float() + 0.5 * (difference == 0).float()).mean().item()


def linear_probe(train_features: torch.Tensor, train_targets: torch.Tensor, test_features: torch.Tensor,
                 test_targets: torch.Tensor, l2: float = 1e-2, iterations: int = 300) -> list[float]:
    """Fit one logistic regression per target column on ``train_features`` (N, F) / ``train_targets`` (N, T) and
    return the test ROC AUC of each column (T,). Features are standardised with the training statistics."""
    mean, std = train_features.mean(dim=0), train_features.std(dim=0) + 1e-6
    train_x, test_x = (train_features - mean) / std, (test_features - mean) / std
    weight = torch.zeros(train_x.shape[1], train_targets.shape[1], requires_grad=True)
    bias = torch.zeros(train_targets.shape[1], requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], max_iter=iterations, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        optimiser.zero_grad()
        loss = F.binary_cross_entropy_with_logits(train_x @ weight + bias, train_targets) + l2 * weight.square().sum()
        loss.backward()
        return loss

    optimiser.step(objective)
    with torch.no_grad():
        scores = test_x @ weight + bias
    return [roc_auc(scores[:, t], test_targets[:, t]) for t in range(test_targets.shape[1])]


def mean_auc(aucs: Sequence[float]) -> float:
    """Mean over the organs that have an AUC."""
    scored = [a for a in aucs if not math.isnan(a)]
    return sum(scored) / len(scored) if scored else math.nan
