"""Block selection: which memory blocks a query chunk reads.

For a chunk of memory queries ``q_mem`` [H, L, D] and a store of ``n`` blocks, the selection is, per KV head:

1. rank: score every block (:func:`infllm_kernels.reference.block_scores_ref`, the backend's
   ``topk_blocks``) with the chunk's mean query (``query_score="mean"``, the paper) or with every query of
   the chunk, best query counting (``"max"``), against the sum of each block's representative keys
   (``repr_score="sum"``, the paper) or its best one (``"max"``); one ranking summed over all heads (the
   paper) or one per KV head (``per_kv_head``); keep the ``topk`` best;
2. pin: add the blocks pinned for the current answer (question-aware retrieval, or an oracle);
3. widen: add the ``neighbors`` blocks on each side of every block so far (facts cut by a block boundary);
4. deduplicate: a block read twice would count twice in the softmax; repeats become empty slots (-1).

The result is ``[Hkv, K]`` int64 with -1 in empty slots, the form the attention ops take. Everything stays
on the device: no host synchronisation.
"""

from __future__ import annotations

import torch

from infllm_kernels.backend import Backend

from ..config import MemoryConfig
from .block_store import BlockStore


class BlockSelector:
    """Selection rule of one configuration.

    Parameters
    ----------
    config : memory knobs (``topk`` and the selection knobs)
    backend : ops (``topk_blocks``)
    n_kv_heads : KV heads of the layer
    """

    def __init__(self, config: MemoryConfig, backend: Backend, n_kv_heads: int) -> None:
        self.config = config
        self.backend = backend
        self.n_kv = n_kv_heads

    def queries(self, q_mem: torch.Tensor) -> torch.Tensor:
        """[H, Lq, D]: the chunk's mean query (``query_score="mean"``) or all its queries."""
        return q_mem.mean(dim=1, keepdim=True) if self.config.query_score == "mean" else q_mem

    def representatives(self, store: BlockStore) -> torch.Tensor:
        """[NB, Hkv, R, D]: each block's representative keys, or their sum as one row (``repr_score="sum"``)."""
        return store.repr_sum if self.config.repr_score == "sum" else store.repr_keys

    def scores(self, q_mem: torch.Tensor, store: BlockStore) -> torch.Tensor:
        """The ranking scores :meth:`select` uses, [Hkv or 1, n] (diagnostics: where a block ranks)."""
        return self.backend.block_scores(self.queries(q_mem), self.representatives(store), store.n_blocks,
                                         self.config.per_kv_head)

    def rank(self, q: torch.Tensor, store: BlockStore, k: int, per_kv_head: bool) -> torch.Tensor:
        """Top ``k`` blocks per KV head, [Hkv, min(k, n)], for the queries ``q`` [H, Lq, D]."""
        n = store.n_blocks
        if k <= 0 or n == 0:
            return torch.zeros((self.n_kv, 0), dtype=torch.long, device=q.device)
        if n <= k:
            return torch.arange(n, device=q.device).expand(self.n_kv, n)
        idx = self.backend.topk_blocks(q, self.representatives(store), n, k, per_kv_head)
        return idx.to(q.device).expand(self.n_kv, -1)

    def select(self, q_mem: torch.Tensor, store: BlockStore, pinned: torch.Tensor | None = None) -> torch.Tensor:
        """Blocks the chunk reads, [Hkv, K] int64 with -1 for empty slots (see module docstring)."""
        cfg = self.config
        idx = self.rank(self.queries(q_mem), store, cfg.topk, cfg.per_kv_head)
        if pinned is not None and pinned.numel():
            idx = torch.cat([idx, pinned.to(idx.device)], dim=1)
        return widen_and_dedupe(idx, cfg.neighbors, store.n_blocks)

    def question_blocks(self, scores: torch.Tensor) -> torch.Tensor:
        """The ``question_topk`` best blocks per KV head from accumulated question scores [Hkv, n]."""
        k = min(self.config.question_topk, scores.shape[1])
        return torch.topk(scores, k, dim=1).indices.sort(dim=1).values

    def question_scores(self, q_mem: torch.Tensor, store: BlockStore) -> torch.Tensor:
        """[Hkv, n] scores of every block for the question queries ``q_mem`` (best query, per KV head)."""
        return self.backend.block_scores(q_mem, self.representatives(store), store.n_blocks, True)


def widen_and_dedupe(idx: torch.Tensor, neighbors: int, n_blocks: int) -> torch.Tensor:
    """Add ``neighbors`` blocks on each side of every index of ``idx`` [Hkv, K] (-1 = empty, ignored),
    drop out-of-range and repeated indices (-1 in their place), ascending valid indices per row."""
    if idx.shape[1] == 0:
        return idx
    if neighbors > 0:
        offsets = torch.arange(-neighbors, neighbors + 1, device=idx.device)
        wide = (idx[:, :, None] + offsets).reshape(idx.shape[0], -1)
        valid = (idx[:, :, None] >= 0).expand(-1, -1, len(offsets)).reshape(idx.shape[0], -1)
        idx = torch.where(valid & (wide >= 0) & (wide < n_blocks), wide, -1)
    idx = idx.sort(dim=1).values
    repeat = torch.zeros_like(idx, dtype=torch.bool)
    repeat[:, 1:] = idx[:, 1:] == idx[:, :-1]
    return idx.masked_fill(repeat, -1)
