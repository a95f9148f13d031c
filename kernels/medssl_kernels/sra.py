"""Spatial-reduction attention (SRA) of PVT/MiT: every query token attends to a reduced key/value set.

Shapes: q (B, H, Nq, D); k and v (B, H, Nk, D) with Nk << Nq (the strided-conv-reduced map plus the SSL
token). Three pieces, as in every medssl kernel file:

- :func:`sra_attention_reference`: eager ``softmax(q k^T * scale) v``, the ground truth;
- :func:`sra_attention_triton`: fused Triton kernels, forward and backward, in an autograd Function.
  The forward walks the keys of one (batch, head) in blocks with an online softmax, so the Nq x Nk
  logits never reach memory; it saves the per-row log-sum-exp, from which the backward recomputes the
  probabilities: one kernel for dQ per query block, and one for dK/dV per key block and slice of the
  queries (Nk << Nq leaves too few key blocks to fill a GPU, so slices add their partial sums atomically
  in float32; the order of those additions, hence the last bits of dK/dV, may vary between runs);
- :func:`sra_attention`: what the models call; picks the Triton path for CUDA tensors and the reference
  elsewhere. ``MEDSSL_KERNELS=torch|triton|auto`` (read at each call) overrides; while exporting
  (ONNX, ``torch.export``, TorchScript tracing) or compiling, the reference is used.

Any Nq and Nk work (blocks are masked); head dims up to 128, padded inside the kernel to a power of two
with masked loads (MiT uses 24, 32, 48 and 64); float32, float16 and bfloat16, accumulating in float32.
"""

from __future__ import annotations

import torch

from medssl_kernels import dispatch
from medssl_kernels.triton_support import attention_problem, dot_precision, output_delta, padded_head_dim, strides, tl, triton

LOG2_E = 1.4426950408889634


def sra_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """Eager softmax attention: ``softmax(q @ k^T * scale) @ v``.

    Args:
        q: queries, (B, H, Nq, D).
        k: keys, (B, H, Nk, D).
        v: values, (B, H, Nk, D).
        scale: logit scale; ``D ** -0.5`` when None.

    Returns:
        (B, H, Nq, D), in the dtype of ``q``.
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    attn = (q @ k.transpose(-2, -1)) * scale
    return attn.softmax(dim=-1) @ v


def sra_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """SRA attention as the models call it; shapes as :func:`sra_attention_reference`.

    Runs :func:`sra_attention_triton` when the shared dispatch rule (:mod:`medssl_kernels.dispatch`) says so,
    else the reference.
    """
    if dispatch.use_triton("SRA", _triton_problem(q, k, v), q.device):
        return sra_attention_triton(q, k, v, scale)
    return sra_attention_reference(q, k, v, scale)


def _triton_problem(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str | None:
    """Why the Triton path cannot take these tensors, or None."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        return f"q, k, v must be (B, H, N, D); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        return f"k and v must be (B, H, Nk, D) matching q (B, H, Nq, D); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
    if q.shape[2] == 0 or k.shape[2] == 0:
        return f"it needs at least one query and one key; got Nq={q.shape[2]}, Nk={k.shape[2]}"
    return attention_problem(q, k, v)


def sra_attention_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """The fused Triton SRA (forward and backward); shapes and result as :func:`sra_attention_reference`."""
    problem = _triton_problem(q, k, v)
    if problem is not None:
        raise ValueError(f"sra_attention_triton: {problem}")
    return _SRAAttention.apply(q, k, v, q.shape[-1] ** -0.5 if scale is None else float(scale))


def _blocks(head_dim: int) -> dict[str, int]:
    """Tile sizes: 64 queries x 64 keys, the head dim padded (:func:`padded_head_dim`)."""
    return {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_D": padded_head_dim(head_dim)}


def _target_programs(device: torch.device) -> int:
    """Programs the dK/dV backward aims for: four per streaming multiprocessor on a GPU; a few under the
    interpreter (enough that the tests exercise the split-query path)."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 64


class _SRAAttention(torch.autograd.Function):
    """Autograd wrapper: saves q, k, v, the output and the row log-sum-exp (base 2) for the backward."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        batch, heads, num_queries, head_dim = q.shape
        num_keys = k.shape[2]
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        lse = torch.empty((batch, heads, num_queries), dtype=torch.float32, device=q.device)
        blocks = _blocks(head_dim)
        grid = (triton.cdiv(num_queries, blocks["BLOCK_M"]), batch * heads)
        _sra_forward_kernel[grid](
            q, k, v, out, lse, scale * LOG2_E,
            *strides(q), *strides(k), *strides(v), *strides(out),
            heads, num_queries, num_keys,
            HEAD_DIM=head_dim, PRECISION=dot_precision(q.dtype), **blocks,
        )
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale = scale
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable  # the kernels have no double-backward: fail loudly
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        q, k, v, out, lse = ctx.saved_tensors
        batch, heads, num_queries, head_dim = q.shape
        num_keys = k.shape[2]
        delta = output_delta(grad_out, out)  # (B, H, Nq)
        grad_q = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        # dK/dV are summed over the queries; with Nk << Nq one program per key block would leave most of
        # the GPU idle, so the queries are split over `splits` programs per key block that add their
        # partial sums atomically into float32 buffers.
        grad_k = torch.zeros(k.shape, dtype=torch.float32, device=k.device)
        grad_v = torch.zeros(v.shape, dtype=torch.float32, device=v.device)
        blocks = _blocks(head_dim)
        common = dict(HEAD_DIM=head_dim, PRECISION=dot_precision(q.dtype), **blocks)
        key_blocks, query_blocks = triton.cdiv(num_keys, blocks["BLOCK_N"]), triton.cdiv(num_queries, blocks["BLOCK_M"])
        splits = max(1, min(query_blocks, triton.cdiv(_target_programs(q.device), key_blocks * batch * heads)))
        _sra_backward_kv_kernel[(key_blocks, splits, batch * heads)](
            q, k, v, grad_out, lse, delta, grad_k, grad_v, ctx.scale,
            *strides(q), *strides(k), *strides(v), *strides(grad_out), *strides(grad_k), *strides(grad_v),
            heads, num_queries, num_keys, triton.cdiv(query_blocks, splits) * blocks["BLOCK_M"], **common,
        )
        _sra_backward_q_kernel[(triton.cdiv(num_queries, blocks["BLOCK_M"]), batch * heads)](
            q, k, v, grad_out, lse, delta, grad_q, ctx.scale,
            *strides(q), *strides(k), *strides(v), *strides(grad_out), *strides(grad_q),
            heads, num_queries, num_keys, **common,
        )
        return grad_q, grad_k.to(k.dtype), grad_v.to(v.dtype), None


if triton is not None:

    @triton.jit
    def _tile(base, rows, cols, row_stride, col_stride, row_limit, col_limit):
        """Load a (len(rows), len(cols)) tile, zero outside ``row_limit`` x ``col_limit``."""
        mask = (rows[:, None] < row_limit) & (cols[None, :] < col_limit)
        offsets = rows.to(tl.int64)[:, None] * row_stride + cols[None, :] * col_stride  # int64: can pass 2^31
        return tl.load(base + offsets, mask=mask, other=0.0)

    @triton.jit
    def _sra_forward_kernel(
        Q, K, V, Out, Lse, qk_scale_log2,
        sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, son, sod,
        H, NQ, NK,
        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        """One program: BLOCK_M queries of one (batch, head) against all keys, online softmax in base 2."""
        b = (tl.program_id(1) // H).to(tl.int64)  # int64 offsets: strides x indices can pass 2^31
        h = (tl.program_id(1) % H).to(tl.int64)
        rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        dims = tl.arange(0, BLOCK_D)
        q = _tile(Q + b * sqb + h * sqh, rows, dims, sqn, sqd, NQ, HEAD_DIM)
        k_base = K + b * skb + h * skh
        v_base = V + b * svb + h * svh
        row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
        row_sum = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for start in range(0, NK, BLOCK_N):
            keys = start + tl.arange(0, BLOCK_N)
            k = _tile(k_base, keys, dims, skn, skd, NK, HEAD_DIM)
            logits = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale_log2
            logits = tl.where(keys[None, :] < NK, logits, float("-inf"))
            new_max = tl.maximum(row_max, tl.max(logits, 1))
            correction = tl.exp2(row_max - new_max)
            p = tl.exp2(logits - new_max[:, None])
            row_sum = row_sum * correction + tl.sum(p, 1)
            v = _tile(v_base, keys, dims, svn, svd, NK, HEAD_DIM)
            acc = acc * correction[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            row_max = new_max
        acc = acc / row_sum[:, None]
        out_mask = (rows[:, None] < NQ) & (dims[None, :] < HEAD_DIM)
        tl.store(Out + b * sob + h * soh + rows[:, None] * son + dims[None, :] * sod, acc.to(Out.dtype.element_ty), mask=out_mask)
        tl.store(Lse + tl.program_id(1) * NQ + rows, row_max + tl.log2(row_sum), mask=rows < NQ)

    @triton.jit
    def _tile_gradients(q, k, v, grad_out, lse, delta, rows, keys, scale, NQ, NK, PRECISION: tl.constexpr):
        """The probabilities P, recomputed from the saved base-2 log-sum-exp, and the logit gradient
        dS = P * (dO V^T - rowsum(dO * O)), both (BLOCK_M, BLOCK_N) and 0 off the edges."""
        logits = tl.dot(q, tl.trans(k), input_precision=PRECISION) * (scale * 1.4426950408889634)
        p = tl.where((rows[:, None] < NQ) & (keys[None, :] < NK), tl.exp2(logits - lse[:, None]), 0.0)
        grad_p = tl.dot(grad_out, tl.trans(v), input_precision=PRECISION)
        return p, p * (grad_p - delta[:, None])

    @triton.jit
    def _sra_backward_kv_kernel(
        Q, K, V, dOut, Lse, Delta, dK, dV, scale,
        sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdob, sdoh, sdon, sdod,
        sdkb, sdkh, sdkn, sdkd, sdvb, sdvh, sdvn, sdvd,
        H, NQ, NK, QUERIES_PER_PROGRAM,
        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        """One program: the dK and dV of BLOCK_N keys of one (batch, head) from QUERIES_PER_PROGRAM queries
        (program_id(1) picks which), added atomically to float32 dK/dV."""
        b = (tl.program_id(2) // H).to(tl.int64)
        h = (tl.program_id(2) % H).to(tl.int64)
        keys = (tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
        dims = tl.arange(0, BLOCK_D)
        k = _tile(K + b * skb + h * skh, keys, dims, skn, skd, NK, HEAD_DIM)
        v = _tile(V + b * svb + h * svh, keys, dims, svn, svd, NK, HEAD_DIM)
        grad_k = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        grad_v = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        row_base = tl.program_id(2) * NQ
        first_query = tl.program_id(1) * QUERIES_PER_PROGRAM
        for start in range(first_query, tl.minimum(first_query + QUERIES_PER_PROGRAM, NQ), BLOCK_M):
            rows = start + tl.arange(0, BLOCK_M)
            q = _tile(Q + b * sqb + h * sqh, rows, dims, sqn, sqd, NQ, HEAD_DIM)
            grad_out = _tile(dOut + b * sdob + h * sdoh, rows, dims, sdon, sdod, NQ, HEAD_DIM)
            lse = tl.load(Lse + row_base + rows, mask=rows < NQ, other=0.0)
            delta = tl.load(Delta + row_base + rows, mask=rows < NQ, other=0.0)
            p, grad_logits = _tile_gradients(q, k, v, grad_out, lse, delta, rows, keys, scale, NQ, NK, PRECISION)
            grad_v += tl.dot(tl.trans(p.to(grad_out.dtype)), grad_out, input_precision=PRECISION)
            grad_k += tl.dot(tl.trans(grad_logits.to(q.dtype)), q, input_precision=PRECISION)
        mask = (keys[:, None] < NK) & (dims[None, :] < HEAD_DIM)
        tl.atomic_add(dK + b * sdkb + h * sdkh + keys[:, None] * sdkn + dims[None, :] * sdkd, grad_k * scale, mask=mask)
        tl.atomic_add(dV + b * sdvb + h * sdvh + keys[:, None] * sdvn + dims[None, :] * sdvd, grad_v, mask=mask)

    @triton.jit
    def _sra_backward_q_kernel(
        Q, K, V, dOut, Lse, Delta, dQ, scale,
        sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdob, sdoh, sdon, sdod,
        sdqb, sdqh, sdqn, sdqd,
        H, NQ, NK,
        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        """One program: dQ of BLOCK_M queries of one (batch, head), summed over all key blocks."""
        b = (tl.program_id(1) // H).to(tl.int64)  # int64 offsets: strides x indices can pass 2^31
        h = (tl.program_id(1) % H).to(tl.int64)
        rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        dims = tl.arange(0, BLOCK_D)
        q = _tile(Q + b * sqb + h * sqh, rows, dims, sqn, sqd, NQ, HEAD_DIM)
        grad_out = _tile(dOut + b * sdob + h * sdoh, rows, dims, sdon, sdod, NQ, HEAD_DIM)
        row_base = tl.program_id(1) * NQ
        lse = tl.load(Lse + row_base + rows, mask=rows < NQ, other=0.0)
        delta = tl.load(Delta + row_base + rows, mask=rows < NQ, other=0.0)
        grad_q = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for start in range(0, NK, BLOCK_N):
            keys = start + tl.arange(0, BLOCK_N)
            k = _tile(K + b * skb + h * skh, keys, dims, skn, skd, NK, HEAD_DIM)
            v = _tile(V + b * svb + h * svh, keys, dims, svn, svd, NK, HEAD_DIM)
            _, grad_logits = _tile_gradients(q, k, v, grad_out, lse, delta, rows, keys, scale, NQ, NK, PRECISION)
            grad_q += tl.dot(grad_logits.to(k.dtype), k, input_precision=PRECISION)
        mask = (rows[:, None] < NQ) & (dims[None, :] < HEAD_DIM)
        grad_q = grad_q * scale
        tl.store(dQ + b * sdqb + h * sdqh + rows[:, None] * sdqn + dims[None, :] * sdqd, grad_q.to(dQ.dtype.element_ty), mask=mask)
