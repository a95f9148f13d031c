"""The SRA kernel inside MiT: the nano MiT gives the same outputs and gradients with the Triton kernel as with
the reference, and the dispatch picks the path ``MEDSSL_KERNELS``, the device and the moment (export) call for.

On CPU the Triton kernel runs under the interpreter (``TRITON_INTERPRET=1``, set by this folder's conftest),
so the network is the nano MiT of tests/conftest.py at the smallest inputs it takes: 2D 32 x 64, 3D 16 x 32 x 64.
"""

from __future__ import annotations

import pytest
import torch
from closeness import relative_error
from conftest import NANO_KWARGS

from medssl_kernels import sra
from medssl_zoo.mit import MiT, SpatialReductionAttention, create_mit

#: (B, C, *S) of the smallest inputs the nano MiT takes, per branch.
SMALLEST_INPUTS = {2: (1, 3, 32, 64), 3: (1, 1, 16, 32, 64)}
NUM_CLASSES = 3


def nano_segmenter() -> MiT:
    """The nano MiT (2D and 3D branches) with a segmentation head; seeded, so every call builds the same weights."""
    torch.manual_seed(0)
    return create_mit(**{**NANO_KWARGS, "task": "segment", "num_classes": NUM_CLASSES}, spatial_dims=(2, 3))


def attention_layers(model: MiT) -> int:
    return sum(isinstance(module, SpatialReductionAttention) for module in model.modules())


def count_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Wrap ``medssl_kernels.sra.<name>`` so each call adds one to the returned one-element counter."""
    counter = [0]
    original = getattr(sra, name)

    def counted(*args: object, **kwargs: object) -> torch.Tensor:
        counter[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(sra, name, counted)
    return counter


def forbid(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make ``medssl_kernels.sra.<name>`` raise, so a test fails if the dispatch takes that path."""

    def forbidden(*args: object, **kwargs: object) -> torch.Tensor:
        raise AssertionError(f"the dispatch called {name}")

    monkeypatch.setattr(sra, name, forbidden)


def outputs_and_gradients(model: MiT, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Embedding (B, E) and segmentation logits (B, K, *S) of ``x``, and every parameter's gradient after one
    backward of a loss that weighs both outputs with fixed random weights (so no gradient is trivially symmetric)."""
    model.zero_grad(set_to_none=True)
    embedding, logits = model.embed(x), model(x)
    generator = torch.Generator().manual_seed(1)
    loss = (embedding * torch.randn(embedding.shape, generator=generator)).sum()
    loss = loss + (logits * torch.randn(logits.shape, generator=generator)).sum()
    loss.backward()
    results = {"embedding": embedding.detach(), "logits": logits.detach()}
    results.update({name: p.grad for name, p in model.named_parameters() if p.grad is not None})
    return results


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_triton_kernel_gives_the_reference_outputs_and_gradients(monkeypatch: pytest.MonkeyPatch, spatial_dims: int) -> None:
    model = nano_segmenter()
    x = torch.randn(SMALLEST_INPUTS[spatial_dims], generator=torch.Generator().manual_seed(2))
    monkeypatch.setenv("MEDSSL_KERNELS", "torch")
    expected = outputs_and_gradients(model, x)
    monkeypatch.setenv("MEDSSL_KERNELS", "triton")
    triton_calls = count_calls(monkeypatch, "sra_attention_triton")
    actual = outputs_and_gradients(model, x)

    # model.embed and model(x) (segment) each run every attention layer once
    assert triton_calls[0] == 2 * attention_layers(model)
    assert actual.keys() == expected.keys()
    assert any(name.endswith(".attn.q.weight") for name in actual)  # the attention's own weights got gradients
    errors = {name: relative_error(actual[name], expected[name]) for name in expected}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-4, f"{spatial_dims}D: {worst} differs by {errors[worst]:.1e} (relative) from the reference"


@pytest.mark.parametrize("setting", [None, "auto", " Auto "])
def test_auto_dispatch_uses_the_reference_for_cpu_tensors(monkeypatch: pytest.MonkeyPatch, setting: str | None) -> None:
    if setting is None:
        monkeypatch.delenv("MEDSSL_KERNELS", raising=False)
    else:
        monkeypatch.setenv("MEDSSL_KERNELS", setting)
    model = nano_segmenter()
    forbid(monkeypatch, "sra_attention_triton")
    reference_calls = count_calls(monkeypatch, "sra_attention_reference")
    logits = model(torch.randn(SMALLEST_INPUTS[2]))
    assert logits.shape == (1, NUM_CLASSES, 32, 64)
    assert reference_calls[0] == attention_layers(model)


def test_unknown_kernel_choice_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDSSL_KERNELS", "bogus")
    with pytest.raises(ValueError) as raised:
        nano_segmenter()(torch.randn(SMALLEST_INPUTS[2]))
    message = str(raised.value)
    assert "MEDSSL_KERNELS" in message and "bogus" in message
    assert all(choice in message for choice in ("auto", "torch", "triton")), message


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_export_traces_the_reference_even_when_triton_is_forced(monkeypatch: pytest.MonkeyPatch, spatial_dims: int) -> None:
    model = nano_segmenter().eval()
    x = torch.randn(SMALLEST_INPUTS[spatial_dims])
    with torch.no_grad():
        eager = model(x)
    monkeypatch.setenv("MEDSSL_KERNELS", "triton")
    forbid(monkeypatch, "sra_attention_triton")
    exported = torch.export.export(model, (x,))

    softmaxes = [node for node in exported.graph.nodes if "softmax" in str(node.target)]
    assert len(softmaxes) == attention_layers(model)  # one eager softmax per attention layer: the reference
    with torch.no_grad():
        assert relative_error(exported.module()(x), eager) <= 1e-5
