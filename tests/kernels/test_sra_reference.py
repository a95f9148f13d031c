"""The SRA reference against PyTorch's own attention."""

import pytest
import torch
import torch.nn.functional as F

from medssl_kernels import sra_attention, sra_attention_reference


@pytest.mark.parametrize("nq, nk, head_dim", [(1, 1, 24), (97, 10, 32), (3137, 82, 48)])
def test_reference_matches_sdpa(nq: int, nk: int, head_dim: int) -> None:
    q, k, v = (torch.randn(2, 3, n, head_dim, dtype=torch.float64) for n in (nq, nk, nk))
    expected = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(sra_attention_reference(q, k, v), expected)
    torch.testing.assert_close(sra_attention(q, k, v, scale=0.5), F.scaled_dot_product_attention(q, k, v, scale=0.5))
