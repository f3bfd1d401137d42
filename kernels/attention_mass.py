"""Attention mass per local key: the second, cheap pass of the memory path.

Contract: :func:`infllm_kernels.reference.attention_mass_ref`. Using the ``lse`` returned by the attention
pass, ``mass[j] = sum_{h, i} exp(q_local[h, i] . k_local[kv(h), j] * scale - lse[h, i])`` over the causally
visible pairs (query i sees key j iff j <= i + Nl - L). The score matrix is never materialised:

* program = (tile of BLOCK_N local keys, KV head); it loops over the G query heads of its group and over
  the query tiles that can see its keys (queries before ``j - (Nl - L)`` are skipped), recomputing the
  scores tile by tile and summing probabilities over queries into a [BLOCK_N] fp32 register.
* each program owns its slice of a [Hkv, Nl] partial buffer, summed over KV heads afterwards with
  ``torch.sum``: no atomics, so the result is deterministic run to run.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import FLOAT_DTYPES, block_d, check_out, check_query_window, check_tensor, on_gpu, resolve_upcast

LOG2E = 1.4426950408889634


def _configs() -> list[triton.Config]:
    if not on_gpu():
        return [triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=1)]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn, w, s in [(64, 64, 4, 2), (64, 128, 4, 3), (128, 64, 8, 3), (32, 64, 4, 3)]
    ]


@triton.jit
def _attention_mass_kernel(
    Q, K, Lse, Partial,
    s_q_h, s_q_l, s_k_h, s_k_n, s_lse_h, s_p_h,
    L, NL, G, D,
    qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
):  # fmt: skip
    start_n = tl.program_id(0) * BLOCK_N
    kv = tl.program_id(1)

    n = start_n + tl.arange(0, BLOCK_N)
    n_ok = n < NL
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    k = tl.load(K + kv * s_k_h + n[:, None] * s_k_n + d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:  # the interpreter gets bf16 arithmetic wrong: widen straight after the load
        k = k.to(tl.float32)

    off = NL - L  # query i sees key j iff j <= i + off
    first_m = (tl.maximum(start_n - off, 0) // BLOCK_M) * BLOCK_M  # earlier queries see none of these keys
    mass = tl.zeros([BLOCK_N], tl.float32)
    for g in range(0, G):
        head = kv * G + g
        for start_m in range(first_m, L, BLOCK_M):
            i = start_m + tl.arange(0, BLOCK_M)
            i_ok = i < L
            q_ptrs = Q + head * s_q_h + i[:, None] * s_q_l + d[None, :]
            q = tl.load(q_ptrs, mask=i_ok[:, None] & d_ok[None, :], other=0.0)
            if UPCAST:
                q = q.to(tl.float32)
            lse = tl.load(Lse + head * s_lse_h + i, mask=i_ok, other=0.0).to(tl.float32) * 1.4426950408889634
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
            p = tl.exp2(s - lse[:, None])
            visible = (n[None, :] <= i[:, None] + off) & i_ok[:, None] & n_ok[None, :]
            mass += tl.sum(tl.where(visible, p, 0.0), 0)
    tl.store(Partial + kv * s_p_h + n, mass, mask=n_ok)


_attention_mass_tuned = triton.autotune(configs=_configs(), key=["G", "D", "UPCAST", "DOT_PREC"])(
    _attention_mass_kernel
)


def attention_mass_fwd(
    q_local: torch.Tensor,
    k_local: torch.Tensor,
    lse: torch.Tensor,
    scale: float,
    out: torch.Tensor | None = None,
    upcast: bool | None = None,
) -> torch.Tensor:
    """Validate, then launch the attention-mass kernel.

    Parameters
    ----------
    q_local : [H, L, D] float32 / float16 / bfloat16
    k_local : [Hkv, Nl, D] in q's dtype, Nl >= L, H % Hkv == 0
    lse : [H, L] float32 / float16 / bfloat16, from the attention pass (natural log)
    scale : the softmax scale used by the attention pass
    out : optional preallocated [Nl] contiguous float32 buffer
    upcast : compute on fp32 copies of the tiles (default: under the interpreter, or for fp32 inputs)

    Returns
    -------
    mass : [Nl] float32
    """
    w = check_query_window(q_local, k_local, scale)
    device, dtype, h, n_q, d, n_kv, n_l = w.device, w.dtype, w.h, w.n_q, w.d, w.n_kv, w.n_l
    check_tensor("lse", lse, (h, n_q), FLOAT_DTYPES, device)
    check_out("out", out, (n_l,), torch.float32, device)
    out = torch.empty(n_l, dtype=torch.float32, device=device) if out is None else out
    if n_l == 0:
        return out
    if n_q == 0 or d == 0:
        return out.zero_()

    upcast = resolve_upcast(upcast, dtype)
    # one KV head writes the result directly; several write partial rows summed deterministically below
    partial = out.view(1, n_l) if n_kv == 1 else torch.empty((n_kv, n_l), dtype=torch.float32, device=device)

    def grid(meta: dict) -> tuple[int, int]:
        return (triton.cdiv(n_l, meta["BLOCK_N"]), n_kv)

    _attention_mass_tuned[grid](
        q_local, k_local, lse, partial,
        q_local.stride(0), q_local.stride(1), k_local.stride(0), k_local.stride(1), lse.stride(0), partial.stride(0),
        n_q, n_l, h // n_kv, d,
        float(scale) * LOG2E,
        BLOCK_D=block_d(d), UPCAST=upcast, DOT_PREC="ieee" if upcast else "tf32",
    )  # fmt: skip
    if n_kv > 1:
        torch.sum(partial, dim=0, out=out)
    return out
