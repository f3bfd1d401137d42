"""The ``triton`` backend: the memory-path ops with the signatures of :mod:`infllm_kernels.reference`.

Import this module only after deciding on Triton (``TRITON_INTERPRET=1`` must already be set for CPU
tensors): :func:`infllm_kernels.backend.select_backend` does so lazily.

Differences from the reference, all at the boundary:

* tensors whose last dimension is not unit-stride are made contiguous first (the kernels need it); the
  block store is expected contiguous in its last dimension already, or it would be copied;
* every floating input of :func:`memory_attention` must share ``q_local``'s dtype, and those of
  :func:`attention_mass` too (the reference would silently upcast mixed inputs); mismatches raise ValueError;
* ``block_idx`` ([K] shared by every KV head, or [Hkv, K] per KV head, -1 marking an empty slot) and the
  scoring queries ``q`` are moved to the device of the tensors they index / score, as the reference does;
* ``block_idx`` values are range-checked ([-1, NB)) on CPU only: on CUDA a check would synchronise, and an
  out-of-range index reads out of bounds instead of raising;
* :func:`block_scores` / :func:`topk_blocks` refuse an empty query chunk (Lq = 0) with ValueError, and a
  negative ``k``.
"""

from __future__ import annotations

import torch

from .attention_mass import attention_mass_fwd
from .block_topk import block_scores_fwd, topk_blocks_fwd
from .memory_attention import memory_attention_cite_fwd, memory_attention_fwd

__all__ = ["memory_attention", "memory_attention_cite", "attention_mass", "block_scores", "topk_blocks"]


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.dim() == 0 or t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous()


def memory_attention(
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """One softmax over [initial tokens | retrieved blocks | local window]; see ``memory_attention_ref``.

    ``block_idx`` is [K] (shared by every KV head) or [Hkv, K] (one selection per KV head), int32 or int64;
    an index of -1 is an empty slot whose tokens are skipped.

    Returns
    -------
    out : [H, L, D] in q_local's dtype
    lse : [H, L] float32 (natural log)
    """
    tensors = [_unit_last(t) for t in (q_local, q_mem, k_local, v_local, k_init, v_init, k_blocks, v_blocks)]
    block_idx = block_idx.to(device=q_local.device).contiguous()
    return memory_attention_fwd(*tensors, block_idx, scale)


def memory_attention_cite(
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`memory_attention` plus ``block_mass`` [H, L, K] float32, the attention each selection slot
    received per query row; see ``memory_attention_cite_ref``."""
    tensors = [_unit_last(t) for t in (q_local, q_mem, k_local, v_local, k_init, v_init, k_blocks, v_blocks)]
    block_idx = block_idx.to(device=q_local.device).contiguous()
    return memory_attention_cite_fwd(*tensors, block_idx, scale)


def attention_mass(q_local: torch.Tensor, k_local: torch.Tensor, lse: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention each local key received from the chunk, summed over queries and heads: [Nl] float32."""
    return attention_mass_fwd(_unit_last(q_local), _unit_last(k_local), _unit_last(lse), scale)


def block_scores(q: torch.Tensor, repr_keys: torch.Tensor, n_blocks: int, per_kv_head: bool = False) -> torch.Tensor:
    """Relevance of every stored block to a query chunk; see ``block_scores_ref``.

    ``q`` is [H, Lq, D] (or [H, D] for one query); returns float32 [Hkv, n_blocks] if ``per_kv_head`` else
    [1, n_blocks], on repr_keys' device.
    """
    q = _unit_last(q).to(device=repr_keys.device)
    return block_scores_fwd(q, _unit_last(repr_keys), n_blocks, per_kv_head)


def topk_blocks(
    q: torch.Tensor, repr_keys: torch.Tensor, n_blocks: int, k: int, per_kv_head: bool = False
) -> torch.Tensor:
    """Indices (ascending in each row) of the ``min(k, n_blocks)`` most relevant blocks; see ``topk_blocks_ref``.

    Returns int64 [Hkv, K] if ``per_kv_head`` else [1, K], on repr_keys' device.
    """
    q = _unit_last(q).to(device=repr_keys.device)
    return topk_blocks_fwd(q, _unit_last(repr_keys), n_blocks, k, per_kv_head)
