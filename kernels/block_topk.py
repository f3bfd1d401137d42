"""Block scoring and top-k selection for memory retrieval.

Contract: :func:`infllm_kernels.reference.block_scores_ref` / :func:`~infllm_kernels.reference.topk_blocks_ref`.
For the first ``n_blocks`` blocks of the store,

    score[kv, b] = max_i sum_{h in group kv} max_r q[h, i] . repr_keys[b, kv, r]

(``i`` over the Lq queries of the chunk, ``r`` over the R representative keys of a block), returned per KV
head ([Hkv, n_blocks]) or summed over KV heads ([1, n_blocks]). Everything is computed in fp32.

* program = (tile of BLOCK_B blocks, KV head). The queries of the group are stacked as rows
  ``(g, i)`` -> ``g * BLOCK_I + i`` of a [GP * BLOCK_I, D] query tile (GP = G rounded up to a power of two;
  the padded rows hold zeros, which add nothing to the sum over the group). For each query tile and each
  representative key r, ``tl.dot`` scores the BLOCK_B representative rows against every (g, i) row at once,
  accumulating over D in BLOCK_D slices (the representative keys are read in place from the store, each
  slice once per query tile: once per KV head whenever G * Lq fits one tile, as for a chunk's mean query);
  a running max over r, then a sum over g (a reshape to [BLOCK_B, GP, BLOCK_I]) and a running max over i
  leave one fp32 score per block. Nothing of size [n, R, Lq] is ever materialised.
* each program writes its slice of a [Hkv, n_blocks] fp32 partial; ``per_kv_head=False`` sums it over KV
  heads with ``torch.sum`` afterwards: no atomics, so the result is deterministic run to run.
* the selection (``torch.topk`` then an ascending sort of the indices along each row) stays on the device:
  no ``.item()`` and no host copy, so a CUDA stream is never synchronised.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import FLOAT_DTYPES, INTERPRETED, block_d, check_device, check_out, check_tensor

_BLOCK_B = 256 if INTERPRETED else 64  # the interpreter pays per program: fewer, larger tiles
_MAX_ROWS = 128 if INTERPRETED else 64  # (group head, query) rows of one query tile
_MAX_BLOCK_D = 64  # head-dim slice; a larger D is accumulated over several slices


@triton.jit
def _block_scores_kernel(
    Q, Reps, Partial,
    s_q_h, s_q_l, s_r_b, s_r_h, s_r_r, s_p_h,
    NBLK, LQ, G, R, D,
    BLOCK_B: tl.constexpr, BLOCK_I: tl.constexpr, GP: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    kv = tl.program_id(1)
    b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    b_ok = b < NBLK
    rows = tl.arange(0, GP * BLOCK_I)  # row -> (g, i) = (row // BLOCK_I, i0 + row % BLOCK_I)
    g = rows // BLOCK_I
    g_ok = g < G
    head = kv * G + g
    dd = tl.arange(0, BLOCK_D)
    r_base = Reps + b.to(tl.int64)[:, None] * s_r_b + kv * s_r_h  # [BLOCK_B, 1]

    best = tl.full([BLOCK_B], float("-inf"), tl.float32)
    for i0 in range(0, LQ, BLOCK_I):
        i = i0 + rows % BLOCK_I
        q_ok = g_ok & (i < LQ)
        q_base = Q + head[:, None] * s_q_h + i[:, None] * s_q_l  # [ROWS, 1]
        smax = tl.full([BLOCK_B, GP * BLOCK_I], float("-inf"), tl.float32)
        for r in range(0, R):  # best representative key of each block, for every (g, i) row
            s = tl.zeros([BLOCK_B, GP * BLOCK_I], tl.float32)
            for d0 in range(0, D, BLOCK_D):
                d = d0 + dd
                d_ok = d < D
                # loaded then widened: the interpreter gets bf16 arithmetic wrong, and the contract is fp32
                rep = tl.load(r_base + r * s_r_r + d[None, :], mask=b_ok[:, None] & d_ok[None, :], other=0.0)
                qt = tl.load(q_base + d[None, :], mask=q_ok[:, None] & d_ok[None, :], other=0.0)
                s = tl.dot(rep.to(tl.float32), tl.trans(qt.to(tl.float32)), acc=s, input_precision="ieee")
            smax = tl.maximum(smax, s)
        # sum over the heads of the group (padded heads scored 0 against every key), then best query
        tot = tl.sum(tl.reshape(smax, [BLOCK_B, GP, BLOCK_I]), 1)  # [BLOCK_B, BLOCK_I]
        i_ok = (i0 + tl.arange(0, BLOCK_I)) < LQ
        tot = tl.where(i_ok[None, :], tot, float("-inf"))
        best = tl.maximum(best, tl.max(tot, 1))
    tl.store(Partial + kv * s_p_h + b, best, mask=b_ok)


def _check_inputs(q: torch.Tensor, repr_keys: torch.Tensor, n_blocks: int) -> tuple[torch.Tensor, int, int]:
    """Validate; returns q as [H, Lq, D] (a view), the KV heads and n_blocks as an int."""
    if isinstance(q, torch.Tensor) and q.dim() == 2:
        check_tensor("q", q, (None, None), FLOAT_DTYPES, q.device)
        q = q[:, None]  # [H, D] means one query
    check_tensor("q", q, (None, None, None), FLOAT_DTYPES, q.device)
    device = q.device
    check_device(device)
    h, n_q, d = q.shape
    check_tensor("repr_keys", repr_keys, (None, None, None, d), FLOAT_DTYPES, device)
    n_b, n_kv, _, _ = repr_keys.shape
    if n_kv == 0 or h == 0 or h % n_kv != 0:
        raise ValueError(f"query heads ({h}) must be a positive multiple of key/value heads ({n_kv})")
    if n_q == 0:
        raise ValueError("q must hold at least one query (Lq >= 1)")
    if not 0 <= int(n_blocks) <= n_b:
        raise ValueError(f"n_blocks must lie in [0, {n_b}], got {n_blocks}")
    return q, n_kv, int(n_blocks)


def block_scores_fwd(
    q: torch.Tensor,
    repr_keys: torch.Tensor,
    n_blocks: int,
    per_kv_head: bool = False,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Validate, then launch the block-scoring kernel.

    Parameters
    ----------
    q : [H, Lq, D] (Lq >= 1), or [H, D] meaning Lq = 1; float32 / float16 / bfloat16
    repr_keys : [NB, Hkv, R, D] float32 / float16 / bfloat16 on q's device, H % Hkv == 0 (R may be 0)
    n_blocks : blocks in use, 0 <= n_blocks <= NB (rows past it are never read)
    per_kv_head : one row of scores per KV head, or one row summed over the KV heads
    out : optional preallocated contiguous float32 buffer of the result's shape

    Both inputs need a unit last-dim stride; they may differ in dtype (everything is computed in fp32).

    Returns
    -------
    scores : [Hkv, n_blocks] if per_kv_head else [1, n_blocks], float32
    """
    q, n_kv, n_blocks = _check_inputs(q, repr_keys, n_blocks)
    device = q.device
    h, n_q, d = q.shape
    n_r = repr_keys.shape[2]
    rows = n_kv if per_kv_head else 1
    check_out("out", out, (rows, n_blocks), torch.float32, device)
    out = torch.empty((rows, n_blocks), dtype=torch.float32, device=device) if out is None else out
    if n_blocks == 0:
        return out
    if n_r == 0 or d == 0:
        return out.zero_()

    # one output row per KV head (or a single KV head) is written directly; else partial rows summed below
    direct = per_kv_head or n_kv == 1
    partial = out if direct else torch.empty((n_kv, n_blocks), dtype=torch.float32, device=device)
    g = h // n_kv
    gp = triton.next_power_of_2(g)
    block_i = min(triton.next_power_of_2(n_q), max(1, _MAX_ROWS // gp))
    block_i = max(block_i, 16 // gp, 1)  # tl.dot needs at least 16 rows
    grid = (triton.cdiv(n_blocks, _BLOCK_B), n_kv)
    _block_scores_kernel[grid](
        q, repr_keys, partial,
        q.stride(0), q.stride(1), repr_keys.stride(0), repr_keys.stride(1), repr_keys.stride(2), partial.stride(0),
        n_blocks, n_q, g, n_r, d,
        BLOCK_B=_BLOCK_B, BLOCK_I=block_i, GP=gp, BLOCK_D=min(block_d(d), _MAX_BLOCK_D),
    )  # fmt: skip
    if not direct:
        torch.sum(partial, dim=0, keepdim=True, out=out)
    return out


def topk_blocks_fwd(
    q: torch.Tensor, repr_keys: torch.Tensor, n_blocks: int, k: int, per_kv_head: bool = False
) -> torch.Tensor:
    """Indices (ascending in each row) of the ``min(k, n_blocks)`` highest-scoring blocks, on the device.

    Returns int64 [Hkv, K] if ``per_kv_head`` else [1, K]. Scores come from :func:`block_scores_fwd`;
    selection is ``torch.topk`` + ``sort`` along each row, with no host sync.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    _, n_kv, n_blocks = _check_inputs(q, repr_keys, n_blocks)
    k = min(int(k), n_blocks)
    rows = n_kv if per_kv_head else 1
    if k == 0:
        return torch.zeros((rows, 0), dtype=torch.long, device=repr_keys.device)
    scores = block_scores_fwd(q, repr_keys, n_blocks, per_kv_head)
    return torch.topk(scores, k, dim=1, sorted=False).indices.sort(dim=1).values
