"""Fused memory attention: one online softmax over [initial tokens | retrieved blocks | local window].

Contract: :func:`infllm_kernels.reference.memory_attention_ref`. Structure follows the Triton fused-attention
tutorial (jit kernel, validating launcher, public function):

* program = (tile of BLOCK_M query rows, KV head). The G query heads sharing a KV head are stacked along
  the row axis (row r -> head kv*G + r // L, query r % L, as in ``reference._grouped``), so each K/V tile is
  loaded once per group: GQA without repeating K/V.
* segment 1, initial tokens: contiguous ``k_init``/``v_init``, scored with ``q_mem``, no mask.
* segment 2, retrieved blocks: the K selected blocks are read in place from the block store
  ``k_blocks``/``v_blocks`` [NB, Hkv, bs, D] by pointer arithmetic (token t of KV head kv's gathered
  sequence lives in block ``block_idx[kv, t // bs]`` at row ``t % bs``; a shared [K] selection is read
  with a zero head stride); nothing is copied. Scored with ``q_mem``; the tokens of an empty slot
  (index -1) are masked out, exactly as if absent, and never read. A repeated index is attended twice.
* segment 3, local window: ``q_local`` against ``k_local``, bottom-right aligned causal mask; tiles wholly
  below the diagonal of every row in the program skip the mask.
* fp32 running max / sum / accumulator; exp2 with log2(e) folded into the scale; ``lse`` in natural log.
* citations (``CITE``, compiled only when asked for): segment 2 runs slot by slot instead of as one flat
  token range, keeping beside the running sum the part of it that came from the current slot (rescaled
  with the running max like the sum itself); at the end of a slot, ``m + log2(slot sum)`` -- the slot's
  log-sum-exp -- is stored once per query row ([H, L, K], no read-modify-write). The launcher turns it
  into probability mass with the final ``lse``: ``exp(slot_lse - lse)``. No score matrix is stored.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import INDEX_DTYPES, block_d, check_out, check_query_window, check_tensor, nonempty, on_gpu, resolve_upcast

LOG2E = 1.4426950408889634


def _configs() -> list[triton.Config]:
    if not on_gpu():  # the interpreter cannot time anything: exactly one config
        return [triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=1)]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn, w, s in [
            (64, 64, 4, 2),
            (64, 64, 4, 3),
            (128, 64, 8, 2),
            (128, 64, 8, 3),
            (128, 32, 4, 3),
            (64, 32, 4, 3),
        ]
    ]


@triton.jit
def _softmax_step(acc, m_i, l_i, q, k, v, valid, qk_scale, MASKED: tl.constexpr, DOT_PREC: tl.constexpr):
    """Fold one K/V tile into the running (acc, m, l); scores in log2 units."""
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
    if MASKED:
        s = tl.where(valid, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
    return acc, m_new, l_i


@triton.jit
def _softmax_step_sum(acc, m_i, l_i, l_part, q, k, v, valid, qk_scale, DOT_PREC: tl.constexpr):
    """:func:`_softmax_step` (masked) that also keeps ``l_part``, a partial sum rescaled alongside ``l_i``."""
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
    s = tl.where(valid, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    p_sum = tl.sum(p, 1)
    l_i = l_i * alpha + p_sum
    l_part = l_part * alpha + p_sum
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
    return acc, m_new, l_i, l_part


@triton.jit
def _load(ptrs, mask, UPCAST: tl.constexpr):
    x = tl.load(ptrs, mask=mask, other=0.0)
    if UPCAST:  # the interpreter gets bf16 arithmetic wrong: widen straight after the load
        x = x.to(tl.float32)
    return x


@triton.jit
def _memory_attention_kernel(
    Q_loc, Q_mem, K_loc, V_loc, K_ini, V_ini, K_blk, V_blk, Idx, Out, Lse, BLse,
    s_ql_h, s_ql_l, s_qm_h, s_qm_l,
    s_kl_h, s_kl_n, s_vl_h, s_vl_n,
    s_ki_h, s_ki_n, s_vi_h, s_vi_n,
    s_kb_b, s_kb_h, s_kb_n, s_vb_b, s_vb_h, s_vb_n,
    s_idx_h,
    s_o_h, s_o_l, s_lse_h, s_bl_h, s_bl_l,
    L, NL, NI, NMEM, BS, G, D,
    qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PREC: tl.constexpr, CITE: tl.constexpr,
):  # fmt: skip
    start_m = tl.program_id(0) * BLOCK_M
    kv = tl.program_id(1)

    rows = start_m + tl.arange(0, BLOCK_M)
    row_ok = rows < G * L
    head = kv * G + rows // L
    qi = rows % L
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    n_idx = tl.arange(0, BLOCK_N)

    q_mask = row_ok[:, None] & d_ok[None, :]
    q_mem = _load(Q_mem + head[:, None] * s_qm_h + qi[:, None] * s_qm_l + d[None, :], q_mask, UPCAST)

    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)  # finite: a fully masked tile never yields inf - inf
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    # -- segment 1: initial tokens (q_mem, no mask) --------------------------------------------------------
    for start_n in range(0, NI, BLOCK_N):
        n = start_n + n_idx
        n_ok = n < NI
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = _load(K_ini + kv * s_ki_h + n[:, None] * s_ki_n + d[None, :], kv_mask, UPCAST)
        v = _load(V_ini + kv * s_vi_h + n[:, None] * s_vi_n + d[None, :], kv_mask, UPCAST)
        acc, m_i, l_i = _softmax_step(acc, m_i, l_i, q_mem, k, v, n_ok[None, :], qk_scale, True, DOT_PREC)

    # -- segment 2: retrieved blocks, gathered in place from the block store (q_mem, empty slots masked) --
    if CITE:  # slot by slot, storing each slot's log-sum-exp (log2 units) per query row
        for slot in range(0, NMEM // BS):
            blk = tl.load(Idx + kv * s_idx_h + slot).to(tl.int64)
            l_slot = tl.zeros([BLOCK_M], tl.float32)
            for start_n in range(0, BS, BLOCK_N):
                row = start_n + n_idx
                t_ok = (row < BS) & (tl.zeros([BLOCK_N], tl.int64) + blk >= 0)  # index -1: an empty slot, skipped
                kv_mask = t_ok[:, None] & d_ok[None, :]
                k = _load(K_blk + blk * s_kb_b + kv * s_kb_h + row[:, None] * s_kb_n + d[None, :], kv_mask, UPCAST)
                v = _load(V_blk + blk * s_vb_b + kv * s_vb_h + row[:, None] * s_vb_n + d[None, :], kv_mask, UPCAST)
                acc, m_i, l_i, l_slot = _softmax_step_sum(acc, m_i, l_i, l_slot, q_mem, k, v, t_ok[None, :], qk_scale, DOT_PREC)
            slot_lse = tl.where(l_slot > 0, m_i + tl.log2(tl.maximum(l_slot, 1.0e-30)), float("-inf"))
            tl.store(BLse + head * s_bl_h + qi * s_bl_l + slot, slot_lse, mask=row_ok)
    else:
        for start_n in range(0, NMEM, BLOCK_N):
            t = start_n + n_idx
            t_in = t < NMEM
            blk = tl.load(Idx + kv * s_idx_h + t // BS, mask=t_in, other=-1).to(tl.int64)
            t_ok = t_in & (blk >= 0)  # index -1: an empty slot, skipped as if absent
            row = t % BS
            kv_mask = t_ok[:, None] & d_ok[None, :]
            k = _load(K_blk + blk[:, None] * s_kb_b + kv * s_kb_h + row[:, None] * s_kb_n + d[None, :], kv_mask, UPCAST)
            v = _load(V_blk + blk[:, None] * s_vb_b + kv * s_vb_h + row[:, None] * s_vb_n + d[None, :], kv_mask, UPCAST)
            acc, m_i, l_i = _softmax_step(acc, m_i, l_i, q_mem, k, v, t_ok[None, :], qk_scale, True, DOT_PREC)

    # -- segment 3: local window (q_local, bottom-right aligned causal) -----------------------------------
    q_loc = _load(Q_loc + head[:, None] * s_ql_h + qi[:, None] * s_ql_l + d[None, :], q_mask, UPCAST)
    off = NL - L  # query i sees local key j iff j <= i + off
    last = tl.minimum(start_m + BLOCK_M, G * L) - 1
    one_head = (start_m // L) == (last // L)
    i_lo = tl.where(one_head, start_m % L, 0)
    i_hi = tl.where(one_head, last % L, L - 1)
    n_full = ((i_lo + off + 1) // BLOCK_N) * BLOCK_N  # keys every row of this program sees
    n_end = tl.minimum(NL, i_hi + off + 1)  # no row sees a key at or past this
    for start_n in range(0, n_full, BLOCK_N):
        n = start_n + n_idx
        k = _load(K_loc + kv * s_kl_h + n[:, None] * s_kl_n + d[None, :], d_ok[None, :], UPCAST)
        v = _load(V_loc + kv * s_vl_h + n[:, None] * s_vl_n + d[None, :], d_ok[None, :], UPCAST)
        acc, m_i, l_i = _softmax_step(acc, m_i, l_i, q_loc, k, v, d_ok[None, :], qk_scale, False, DOT_PREC)
    for start_n in range(n_full, n_end, BLOCK_N):
        n = start_n + n_idx
        n_ok = n < NL
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = _load(K_loc + kv * s_kl_h + n[:, None] * s_kl_n + d[None, :], kv_mask, UPCAST)
        v = _load(V_loc + kv * s_vl_h + n[:, None] * s_vl_n + d[None, :], kv_mask, UPCAST)
        causal = (n[None, :] <= qi[:, None] + off) & n_ok[None, :]
        acc, m_i, l_i = _softmax_step(acc, m_i, l_i, q_loc, k, v, causal, qk_scale, True, DOT_PREC)

    # -- epilogue: every real query saw local key 0, so l_i > 0 ------------------------------------------
    out = acc / l_i[:, None]
    tl.store(Out + head[:, None] * s_o_h + qi[:, None] * s_o_l + d[None, :], out.to(Out.dtype.element_ty), mask=q_mask)
    lse = (m_i + tl.log2(l_i)) * 0.6931471805599453
    tl.store(Lse + head * s_lse_h + qi, lse, mask=row_ok)


_memory_attention_tuned = triton.autotune(configs=_configs(), key=["G", "D", "UPCAST", "DOT_PREC", "CITE"])(
    _memory_attention_kernel
)


def memory_attention_fwd(
    q_local: torch.Tensor,
    q_mem: torch.Tensor,
    k_local: torch.Tensor,
    v_local: torch.Tensor,
    k_init: torch.Tensor,
    v_init: torch.Tensor,
    k_blocks: torch.Tensor,
    v_blocks: torch.Tensor,
    block_idx: torch.Tensor,
    scale: float,
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
    upcast: bool | None = None,
    block_lse: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate, then launch the fused memory-attention kernel.

    Parameters
    ----------
    q_local, q_mem : [H, L, D] float32 / float16 / bfloat16
    k_local, v_local : [Hkv, Nl, D], Nl >= L, H % Hkv == 0
    k_init, v_init : [Hkv, Ni, D] (Ni may be 0)
    k_blocks, v_blocks : [NB, Hkv, bs, D] the block store, read in place
    block_idx : int32 / int64 indices into the block store, [K] (one selection shared by every KV head) or
        [Hkv, K] (one selection per KV head), each in [0, NB) or -1 for an empty slot whose bs tokens are
        skipped; repeated indices are attended once per occurrence (K may be 0; the range is checked on
        CPU, not on CUDA, where checking would synchronise). Unit stride along K.
    scale : softmax scale
    out : optional preallocated [H, L, D] contiguous buffer in q's dtype
    lse : optional preallocated [H, L] contiguous float32 buffer
    upcast : compute on fp32 copies of every tile (default: under the interpreter, or for fp32 inputs);
        otherwise fp16/bf16 tiles feed ``tl.dot`` directly with fp32 accumulation
    block_lse : optional [H, L, K] contiguous float32 buffer; when given, the kernel (compiled with
        citations) writes into it each selection slot's log-sum-exp in log2 units of the scaled scores
        (-inf for an empty slot), so that ``exp2(block_lse - lse * log2(e))`` is the probability mass the
        slot received (:func:`memory_attention_cite_fwd` does that)

    All floating inputs must share q's dtype and device and have a unit last-dim stride.

    Returns
    -------
    out : [H, L, D] in q's dtype
    lse : [H, L] float32, natural log
    """
    w = check_query_window(q_local, k_local, scale)
    device, dtype, h, n_q, d, n_kv, n_l = w.device, w.dtype, w.h, w.n_q, w.d, w.n_kv, w.n_l
    check_tensor("q_mem", q_mem, (h, n_q, d), (dtype,), device)
    check_tensor("v_local", v_local, (n_kv, n_l, d), (dtype,), device)
    check_tensor("k_init", k_init, (n_kv, None, d), (dtype,), device)
    n_i = k_init.shape[1]
    check_tensor("v_init", v_init, (n_kv, n_i, d), (dtype,), device)
    check_tensor("k_blocks", k_blocks, (None, n_kv, None, d), (dtype,), device)
    n_b, _, bs, _ = k_blocks.shape
    check_tensor("v_blocks", v_blocks, (n_b, n_kv, bs, d), (dtype,), device)
    if isinstance(block_idx, torch.Tensor) and block_idx.dim() == 2:  # one selection per KV head
        check_tensor("block_idx", block_idx, (n_kv, None), INDEX_DTYPES, device)
    elif isinstance(block_idx, torch.Tensor) and block_idx.dim() != 1:
        raise ValueError(f"block_idx has shape {list(block_idx.shape)}, expected [K] or [{n_kv}, K]")
    else:  # one selection shared by every KV head
        check_tensor("block_idx", block_idx, (None,), INDEX_DTYPES, device)
    n_sel = block_idx.shape[-1]
    if n_sel > 0 and (n_b == 0 or bs == 0):
        raise ValueError(f"block_idx selects {n_sel} blocks from an empty block store {list(k_blocks.shape)}")
    if block_idx.numel() > 0 and device.type == "cpu" and (int(block_idx.min()) < -1 or int(block_idx.max()) >= n_b):
        raise ValueError(f"block_idx must lie in [-1, {n_b}), got [{int(block_idx.min())}, {int(block_idx.max())}]")
    check_out("out", out, (h, n_q, d), dtype, device)
    check_out("lse", lse, (h, n_q), torch.float32, device)
    cite = block_lse is not None
    if cite:
        check_tensor("block_lse", block_lse, (h, n_q, n_sel), (torch.float32,), device)
        if not block_lse.is_contiguous():
            raise ValueError("block_lse must be contiguous")
    out = torch.empty((h, n_q, d), dtype=dtype, device=device) if out is None else out
    lse = torch.empty((h, n_q), dtype=torch.float32, device=device) if lse is None else lse
    if h == 0 or n_q == 0 or d == 0:
        return out, lse

    upcast = resolve_upcast(upcast, dtype)
    g = h // n_kv
    # strides first: an empty segment is then swapped for a valid pointer the kernel never reads
    stride_args = [
        *q_local.stride()[:2], *q_mem.stride()[:2], *k_local.stride()[:2], *v_local.stride()[:2],
        *k_init.stride()[:2], *v_init.stride()[:2], *k_blocks.stride()[:3], *v_blocks.stride()[:3],
        block_idx.stride(0) if block_idx.dim() == 2 else 0,
        out.stride(0), out.stride(1), lse.stride(0),
        block_lse.stride(0) if cite else 0, block_lse.stride(1) if cite else 0,
    ]  # fmt: skip
    k_init, v_init = nonempty(k_init, k_local), nonempty(v_init, v_local)
    k_blocks, v_blocks = nonempty(k_blocks, k_local), nonempty(v_blocks, v_local)
    block_idx = nonempty(block_idx, torch.zeros(1, dtype=torch.int32, device=device))
    blse_arg = nonempty(block_lse, lse) if cite else lse  # never written without CITE

    def grid(meta: dict) -> tuple[int, int]:
        return (triton.cdiv(g * n_q, meta["BLOCK_M"]), n_kv)

    _memory_attention_tuned[grid](
        q_local, q_mem, k_local, v_local, k_init, v_init, k_blocks, v_blocks, block_idx, out, lse, blse_arg,
        *stride_args,
        n_q, n_l, n_i, n_sel * bs, max(bs, 1), g, d,
        float(scale) * LOG2E,
        BLOCK_D=block_d(d), UPCAST=upcast, DOT_PREC="ieee" if upcast else "tf32", CITE=cite,
    )  # fmt: skip
    return out, lse


def memory_attention_cite_fwd(
    q_local: torch.Tensor,
    q_mem: torch.Tensor,
    k_local: torch.Tensor,
    v_local: torch.Tensor,
    k_init: torch.Tensor,
    v_init: torch.Tensor,
    k_blocks: torch.Tensor,
    v_blocks: torch.Tensor,
    block_idx: torch.Tensor,
    scale: float,
    upcast: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`memory_attention_fwd` plus ``block_mass`` [H, L, K] float32: the softmax probability each
    query row gave each selection slot's tokens (0 for an empty slot), as
    :func:`infllm_kernels.reference.memory_attention_cite_ref`."""
    h, n_q = q_local.shape[0], q_local.shape[1]
    n_sel = block_idx.shape[-1] if isinstance(block_idx, torch.Tensor) else 0
    block_lse = torch.full((h, n_q, n_sel), float("-inf"), dtype=torch.float32, device=q_local.device)
    out, lse = memory_attention_fwd(q_local, q_mem, k_local, v_local, k_init, v_init, k_blocks, v_blocks,
                                    block_idx, scale, upcast=upcast, block_lse=block_lse)
    return out, lse, torch.exp2(block_lse - lse[..., None] * LOG2E)
