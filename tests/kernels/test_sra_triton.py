"""The fused Triton SRA kernel against its reference, forward and backward, under the Triton interpreter on CPU.

Shapes follow MiT: queries are a stage's tokens (plus the SSL token), keys/values the reduced map (plus
the SSL token); sizes are deliberately not block multiples.
"""

from __future__ import annotations

import pytest
import torch
from closeness import HALF_PRECISION_CASES, assert_relative_close
from sm90 import compile_for_sm90

from medssl_kernels.sra import sra_attention, sra_attention_reference, sra_attention_triton


def grads(fn, q, k, v, grad_out, scale=None):
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out = fn(q, k, v, scale)
    out.backward(grad_out)
    return out.detach(), q.grad, k.grad, v.grad


@pytest.mark.parametrize("head_dim", [24, 32, 48, 64])
@pytest.mark.parametrize(
    "num_queries, num_keys",
    [(7 * 9, 2 * 3), (7 * 9 + 1, 2 * 3 + 1), (131, 67), (1, 1)],
    ids=["no-ssl-token", "with-ssl-token", "several-blocks", "single"],
)
def test_forward_and_gradients_match_the_reference_in_fp32(num_queries: int, num_keys: int, head_dim: int) -> None:
    q = torch.randn(2, 3, num_queries, head_dim)
    k, v = torch.randn(2, 3, num_keys, head_dim), torch.randn(2, 3, num_keys, head_dim)
    grad_out = torch.randn(2, 3, num_queries, head_dim)
    ours = grads(sra_attention_triton, q, k, v, grad_out)
    expected = grads(sra_attention_reference, q, k, v, grad_out)
    for name, a, e in zip(("out", "dq", "dk", "dv"), ours, expected):
        assert_relative_close(a, e, 1e-4, name)


def test_strided_inputs_and_a_given_scale() -> None:
    """MiT hands over views: q from a (B, N, H, D) reshape transposed to (B, H, N, D)."""
    q = torch.randn(2, 45, 4, 32).transpose(1, 2)
    kv = torch.randn(2, 2, 4, 12, 32).permute(1, 0, 3, 2, 4)  # (2, B, H, Nk, D) as MiT's kv projection
    k, v = kv[0].transpose(1, 2), kv[1].transpose(1, 2)
    assert not q.is_contiguous() and not k.is_contiguous()
    grad_out = torch.randn(2, 4, 45, 32)
    ours = grads(sra_attention_triton, q, k, v, grad_out, 0.3)
    expected = grads(sra_attention_reference, q, k, v, grad_out, 0.3)
    for name, a, e in zip(("out", "dq", "dk", "dv"), ours, expected):
        assert_relative_close(a, e, 1e-4, name)


@pytest.mark.parametrize("dtype, device", HALF_PRECISION_CASES)
def test_half_precision_against_the_fp32_reference(dtype: torch.dtype, device: str) -> None:
    q, k, v = torch.randn(1, 2, 70, 48), torch.randn(1, 2, 19, 48), torch.randn(1, 2, 19, 48)
    grad_out = torch.randn(1, 2, 70, 48)
    ours = grads(sra_attention_triton, *(t.to(device, dtype) for t in (q, k, v)), grad_out.to(device, dtype))
    ours = tuple(t.cpu() for t in ours)
    expected = grads(sra_attention_reference, q, k, v, grad_out)
    assert ours[0].dtype == dtype
    for name, a, e in zip(("out", "dq", "dk", "dv"), ours, expected):
        assert_relative_close(a, e, 2e-2, name)


def test_large_logits_stay_finite() -> None:
    """The online softmax subtracts the running maximum: logits of 1e4 must not overflow."""
    q, k, v = torch.randn(1, 1, 20, 32) * 40, torch.randn(1, 1, 100, 32) * 40, torch.randn(1, 1, 100, 32)
    ours, expected = sra_attention_triton(q, k, v), sra_attention_reference(q, k, v)
    assert torch.isfinite(ours).all()
    assert_relative_close(ours, expected, 1e-4, "out")


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="k and v must be"):
        sra_attention_triton(torch.randn(1, 2, 5, 32), torch.randn(1, 2, 4, 32), torch.randn(1, 2, 3, 32))
    with pytest.raises(ValueError, match="head dim 256"):
        sra_attention_triton(*(torch.randn(1, 1, 4, 256) for _ in range(3)))
    with pytest.raises(ValueError, match="float32/float16/bfloat16"):
        sra_attention_triton(*(torch.randn(1, 1, 4, 32, dtype=torch.float64) for _ in range(3)))


def test_forced_triton_dispatch_runs_the_kernel_on_cpu_under_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    q, k, v = torch.randn(1, 2, 33, 24), torch.randn(1, 2, 5, 24), torch.randn(1, 2, 5, 24)
    monkeypatch.setenv("MEDSSL_KERNELS", "triton")
    torch.testing.assert_close(sra_attention(q, k, v), sra_attention_triton(q, k, v), rtol=0, atol=0)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        sra_attention(q, k, v)


def test_kernels_compile_for_sm90_in_bf16() -> None:
    from medssl_kernels import sra

    constants = dict(HEAD_DIM=48, BLOCK_M=64, BLOCK_N=64, BLOCK_D=64, PRECISION="tf32")
    types = dict.fromkeys(("Q", "K", "V", "Out", "dOut", "dQ"), "*bf16")
    types.update(dict.fromkeys(("Lse", "Delta", "dK", "dV"), "*fp32"), qk_scale_log2="fp32", scale="fp32")
    names = [name for name in dir(sra) if name.startswith("_sra_") and name.endswith("_kernel")]
    compiled = compile_for_sm90(sra.__name__, {name: (constants, types) for name in names})
    assert sorted(compiled) == sorted(names) and len(names) == 3 and all(size > 0 for size in compiled.values())


def test_double_backward_is_refused_not_silently_wrong() -> None:
    q, k, v = (torch.randn(1, 1, 20, 32, requires_grad=True) for _ in range(3))
    (grad_q,) = torch.autograd.grad(sra_attention_triton(q, k, v).sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        grad_q.sum().backward()
