"""Block scoring and top-k selection for memory retrieval.

Contract: :func:`infllm_kernels.reference.block_scores_ref` / :func:`~infllm_kernels.reference.topk_blocks_ref`.
``scores[b] = sum_h sum_r q_mean[h] . repr_keys[b, kv(h), r]`` for the first ``n_blocks`` blocks:

* program = tile of BLOCK_B blocks. For each KV head it sums the G query heads of the group once
  (GQA without repeating keys) and the R representative keys of each block, then takes one dot product
  per block; everything in fp32. The representative keys are read in place from the store.
* the selection (``torch.topk`` then an ascending sort of the indices) stays on the device: no ``.item()``
  and no host copy, so a CUDA stream is never synchronised.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import FLOAT_DTYPES, INTERPRETED, block_d, check_device, check_out, check_tensor

_BLOCK_B = 256 if INTERPRETED else 64  # the interpreter pays per program: fewer, larger tiles


@triton.jit
def _block_scores_kernel(
    Qm, Reps, Scores,
    s_q_h, s_r_b, s_r_h, s_r_r,
    NBLK, HKV, G, R, D,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    b_ok = b < NBLK
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    mask = b_ok[:, None] & d_ok[None, :]
    base = Reps + b.to(tl.int64)[:, None] * s_r_b + d[None, :]
    score = tl.zeros([BLOCK_B], tl.float32)
    for kv in range(0, HKV):
        qg = tl.zeros([BLOCK_D], tl.float32)
        for g in range(0, G):
            qg += tl.load(Qm + (kv * G + g) * s_q_h + d, mask=d_ok, other=0.0).to(tl.float32)
        rsum = tl.zeros([BLOCK_B, BLOCK_D], tl.float32)
        for r in range(0, R):
            rsum += tl.load(base + kv * s_r_h + r * s_r_r, mask=mask, other=0.0).to(tl.float32)
        score += tl.sum(rsum * qg[None, :], 1)
    tl.store(Scores + b, score, mask=b_ok)


def block_scores_fwd(
    q_mean: torch.Tensor,
    repr_keys: torch.Tensor,
    n_blocks: int,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Validate, then launch the block-scoring kernel.

    Parameters
    ----------
    q_mean : [H, D] float32 / float16 / bfloat16
    repr_keys : [NB, Hkv, R, D] float32 / float16 / bfloat16 on q_mean's device, H % Hkv == 0
    n_blocks : blocks in use, 0 <= n_blocks <= NB (rows past it are never read)
    out : optional preallocated [n_blocks] contiguous float32 buffer

    Returns
    -------
    scores : [n_blocks] float32
    """
    check_tensor("q_mean", q_mean, (None, None), FLOAT_DTYPES, q_mean.device)
    device = q_mean.device
    check_device(device)
    h, d = q_mean.shape
    check_tensor("repr_keys", repr_keys, (None, None, None, d), FLOAT_DTYPES, device)
    n_b, n_kv, n_r, _ = repr_keys.shape
    if n_kv == 0 or h % n_kv != 0:
        raise ValueError(f"query heads ({h}) must be a positive multiple of key/value heads ({n_kv})")
    if not 0 <= int(n_blocks) <= n_b:
        raise ValueError(f"n_blocks must lie in [0, {n_b}], got {n_blocks}")
    n_blocks = int(n_blocks)
    check_out("out", out, (n_blocks,), torch.float32, device)
    out = torch.empty(n_blocks, dtype=torch.float32, device=device) if out is None else out
    if n_blocks == 0:
        return out
    if n_r == 0 or d == 0:
        return out.zero_()
    grid = (triton.cdiv(n_blocks, _BLOCK_B),)
    _block_scores_kernel[grid](
        q_mean, repr_keys, out,
        q_mean.stride(0), repr_keys.stride(0), repr_keys.stride(1), repr_keys.stride(2),
        n_blocks, n_kv, h // n_kv, n_r, d,
        BLOCK_B=_BLOCK_B, BLOCK_D=block_d(d),
    )  # fmt: skip
    return out


def topk_blocks_fwd(q_mean: torch.Tensor, repr_keys: torch.Tensor, n_blocks: int, k: int) -> torch.Tensor:
    """Indices (ascending) of the ``min(k, n_blocks)`` highest-scoring blocks, int64 [K], on the device.

    Scores come from :func:`block_scores_fwd`; selection is ``torch.topk`` + ``sort``, with no host sync.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    k = min(int(k), int(n_blocks))
    if k == 0:
        return torch.zeros(0, dtype=torch.long, device=repr_keys.device)
    scores = block_scores_fwd(q_mean, repr_keys, n_blocks)
    return torch.topk(scores, k, sorted=False).indices.sort().values
