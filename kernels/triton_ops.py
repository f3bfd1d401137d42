"""The ``triton`` backend: the three memory-path ops with the signatures of :mod:`infllm_kernels.reference`.

Import this module only after deciding on Triton (``TRITON_INTERPRET=1`` must already be set for CPU
tensors): :func:`infllm_kernels.backend.select_backend` does so lazily.

Differences from the reference, all at the boundary:

* tensors whose last dimension is not unit-stride are made contiguous first (the kernels need it); the
  block store is expected contiguous in its last dimension already, or it would be copied;
* every floating input of :func:`memory_attention` must share ``q_local``'s dtype, and those of
  :func:`attention_mass` too (the reference would silently upcast mixed inputs); mismatches raise ValueError;
* ``block_idx`` and ``q_mean`` are moved to the device of the tensors they index / score, as the reference does.
"""

from __future__ import annotations

import torch

from .attention_mass import attention_mass_fwd
from .block_topk import topk_blocks_fwd
from .memory_attention import memory_attention_fwd

__all__ = ["memory_attention", "attention_mass", "topk_blocks"]


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

    Returns
    -------
    out : [H, L, D] in q_local's dtype
    lse : [H, L] float32 (natural log)
    """
    tensors = [_unit_last(t) for t in (q_local, q_mem, k_local, v_local, k_init, v_init, k_blocks, v_blocks)]
    block_idx = block_idx.to(device=q_local.device).contiguous()
    return memory_attention_fwd(*tensors, block_idx, scale)


def attention_mass(q_local: torch.Tensor, k_local: torch.Tensor, lse: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention each local key received from the chunk, summed over queries and heads: [Nl] float32."""
    return attention_mass_fwd(_unit_last(q_local), _unit_last(k_local), _unit_last(lse), scale)


def topk_blocks(q_mean: torch.Tensor, repr_keys: torch.Tensor, n_blocks: int, k: int) -> torch.Tensor:
    """Indices (ascending) of the ``min(k, n_blocks)`` most relevant blocks, int64 [K], on repr_keys' device."""
    q_mean = _unit_last(q_mean).to(device=repr_keys.device)
    return topk_blocks_fwd(q_mean, _unit_last(repr_keys), n_blocks, k)
