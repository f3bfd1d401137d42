"""Block selection: which memory blocks a query chunk reads.

For a chunk of memory queries ``q_mem`` [H, L, D] and a store of ``n`` blocks, the selection is, per KV head:

1. rank: score every block (:func:`infllm_kernels.reference.block_scores_ref`, the backend's
   ``topk_blocks``) with the chunk's mean query (``query_score="mean"``, the paper) or with every query of
   the chunk, best query counting (``"max"``), against the sum of each block's representative keys
   (``block_score="repr_sum"``, the paper), its best one (``"repr_max"``), or the per-channel bounds of
   all its keys (``"bounds"``: ``relu(q) . kmax + min(q, 0) . kmin``, the largest score any key of the
   block can reach, computed as one dot product of ``[relu(q) | min(q, 0)]`` with ``[kmax | kmin]``); one
   ranking summed over all heads (the paper) or one per KV head (``per_kv_head``); keep the ``topk`` best;
2. pin: add the blocks pinned for the current answer (question-aware retrieval: each KV head's own
   ``question_topk``, the ``question_shared`` pooled over all layers, and the ``question_exact`` pooled from
   the question's attention weighed with every key of its ``question_rescore`` best blocks, each with its
   ``question_neighbors`` (a neighbour only among the ``question_neighbor_rank`` blocks the question favours);
   or an oracle);
3. widen: add the ``neighbors`` blocks on each side of every block so far (facts cut by a block boundary);
4. deduplicate: a block read twice would count twice in the softmax; repeats become empty slots (-1).

The result is ``[Hkv, K]`` int64 with -1 in empty slots, the form the attention ops take. Everything stays
on the device: no host synchronisation.
"""

from __future__ import annotations

import torch

from infllm_kernels.backend import Backend

from ..config import EXACT_SCORE_BUDGET, MemoryConfig
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
        """[H, Lq, D'] scoring queries: the chunk's mean query (``query_score="mean"``) or all its queries,
        as ``[relu(q) | min(q, 0)]`` (D' = 2D) against bounds."""
        q = self.query_rows(q_mem)
        return bound_queries(q) if self.config.block_score == "bounds" else q

    def query_rows(self, q_mem: torch.Tensor) -> torch.Tensor:
        """[H, Lq', D] the query rows that score blocks: the chunk's mean (``query_score="mean"``) or all of them."""
        return q_mem.mean(dim=1, keepdim=True) if self.config.query_score == "mean" else q_mem

    def representatives(self, store: BlockStore) -> torch.Tensor:
        """[NB, Hkv, R, D'] what blocks are scored against (see ``block_score``)."""
        score = self.config.block_score
        return store.bounds if score == "bounds" else store.repr_sum if score == "repr_sum" else store.repr_keys

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

    def rerank(self, q_mem: torch.Tensor, store: BlockStore, candidates: torch.Tensor, k: int) -> torch.Tensor:
        """The ``k`` best of ``candidates`` [Hkv, M] by :func:`exact_scores`, [Hkv, k] ascending."""
        scores = exact_scores(self.query_rows(q_mem), store.keys_of(candidates))
        if not self.config.per_kv_head:  # one ranking for all heads: the candidates are the same in every row
            scores = scores.sum(dim=0, keepdim=True).expand_as(scores)
        best = torch.topk(scores, min(k, scores.shape[1]), dim=1).indices
        return torch.gather(candidates, 1, best).sort(dim=1).values

    def select(self, q_mem: torch.Tensor, store: BlockStore, pinned: torch.Tensor | None = None) -> torch.Tensor:
        """Blocks the chunk reads, [Hkv, K] int64 with -1 for empty slots (see module docstring)."""
        cfg = self.config
        if cfg.rescore > cfg.topk and store.n_blocks > cfg.topk:
            candidates = self.rank(self.queries(q_mem), store, cfg.rescore, cfg.per_kv_head)
            idx = self.rerank(q_mem, store, candidates, cfg.topk)
        else:
            idx = self.rank(self.queries(q_mem), store, cfg.topk, cfg.per_kv_head)
        if pinned is not None and pinned.numel():
            # pins past the store (blocks the question evicted while it was ranked) are skipped until they exist
            pinned = pinned.to(idx.device)
            idx = torch.cat([idx, pinned.masked_fill(pinned >= store.n_blocks, -1)], dim=1)
        return widen_and_dedupe(idx, cfg.neighbors, store.n_blocks)

    def question_blocks(self, mass: torch.Tensor, shared: torch.Tensor | None = None,
                        near: torch.Tensor | None = None) -> torch.Tensor:
        """The ``question_topk`` blocks per KV head with the most question mass [Hkv, n] (see
        :meth:`question_mass`) and the ``shared`` blocks [S] (read by every head), widened by
        ``question_neighbors`` blocks on each side, a neighbour only where ``near`` [>= n] bool allows it
        (None: everywhere): [Hkv, P] with -1 in empty slots (repeats)."""
        best = torch.topk(mass, min(self.config.question_topk, mass.shape[1]), dim=1).indices
        if shared is not None and shared.numel():
            best = torch.cat([best, shared.to(best.device)[None].expand(best.shape[0], -1)], dim=1)
        return widen_and_dedupe(best, self.config.question_neighbors, mass.shape[1], near)

    def question_mass(self, q_mem: torch.Tensor, store: BlockStore, scale: float) -> torch.Tensor:
        """[Hkv, n] how much of the question's attention each block would draw: for every question token and
        query head, a softmax (at the attention's ``scale``) over the blocks' scores, summed over the tokens
        and the heads of each KV group. Blocks that many question tokens point to win, not the block one
        token happens to match best."""
        h, n_q, _ = q_mem.shape
        g = h // self.n_kv
        q = (bound_queries(q_mem) if self.config.block_score == "bounds" else q_mem).view(self.n_kv, g, n_q, -1)
        reps = self.representatives(store)
        mass = torch.zeros((self.n_kv, store.n_blocks), dtype=torch.float32, device=q_mem.device)
        for j in range(g):  # one query row per KV head at a time: scores per token and head, no reduction
            for i in range(n_q):
                s = self.backend.block_scores(q[:, j, i : i + 1].contiguous(), reps, store.n_blocks, True)
                mass += torch.softmax(s.to(mass.device).float() * scale, dim=1)
        return mass

    def exact_question_mass(self, q_mem: torch.Tensor, store: BlockStore, scale: float, mass: torch.Tensor) -> torch.Tensor:
        """[Hkv, n] the question's attention weighed exactly (``question_exact``): the ``question_rescore`` blocks
        per KV head with the most ``mass`` (:meth:`question_mass`) get the share of the question's attention
        each really draws among them (:func:`exact_mass`: the log-sum-exp of every key's scaled score), the
        others none. The bounds over-rate a block whose channel maxima come from different keys, so facts of
        one phrasing score alike; every key's real score tells the one with the asked name apart."""
        h, n_q, _ = q_mem.shape
        candidates = torch.topk(mass, min(self.config.question_rescore, store.n_blocks), dim=1).indices
        exact = exact_mass(q_mem.view(self.n_kv, h // self.n_kv, n_q, -1), store.keys_of(candidates), scale)
        return torch.zeros_like(mass).scatter_(1, candidates, exact.to(mass.device))


def pooled_question_mass(masses: list[torch.Tensor]) -> torch.Tensor:
    """[n] float32: how much the question's attention favours each block over all layers and KV heads.

    Each layer's question mass [Hkv, n] (:meth:`BlockSelector.question_mass`; layers that saw fewer blocks
    are padded with zeros) is normalised per KV head to a distribution over the blocks, and the
    distributions are summed, so every layer and head has one vote of the same weight: a block that several
    heads favour, or that one head is sure of, wins.
    """
    n = max(mass.shape[1] for mass in masses)
    pooled = torch.zeros(n, dtype=torch.float32, device=masses[0].device)
    for mass in masses:
        share = mass.float() / mass.float().sum(dim=1, keepdim=True).clamp(min=1e-30)
        pooled[: mass.shape[1]] += share.sum(dim=0).to(pooled.device)
    return pooled


def best_blocks(pooled: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` blocks with the most :func:`pooled_question_mass` ``pooled`` [n]: [min(k, n)] int64. Pinned
    in every layer and head (``question_shared``, ``question_exact``), such a block is read by the heads that
    would not have found it themselves (the heads that copy are not always the heads that match the
    question)."""
    if k <= 0 or pooled.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=pooled.device)
    return torch.topk(pooled, min(k, pooled.numel())).indices


def favoured_blocks(pooled: torch.Tensor, k: int) -> torch.Tensor:
    """[n] bool: the :func:`best_blocks` ``k`` of ``pooled`` [n] (``question_neighbor_rank``: the only blocks a
    question block's neighbour may be)."""
    mask = torch.zeros(pooled.numel(), dtype=torch.bool, device=pooled.device)
    mask[best_blocks(pooled, k)] = True
    return mask


def exact_scores(q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Block scores from all the keys of candidate blocks.

    Parameters
    ----------
    q : [H, Lq, D] memory queries
    keys : [Hkv, M, bs, D] the keys of ``M`` candidate blocks per KV head

    Returns
    -------
    [Hkv, M] float32: ``max_i sum_{h in group} max_t q[h, i] . keys[., m, t]``, the same reduction as the
    representative-key score, over every key of the block.
    """
    n_kv, m, bs, d = keys.shape
    qg = q.float().reshape(n_kv, -1, q.shape[1], d)  # [Hkv, G, Lq, D]
    s = torch.einsum("kgld,kmtd->kglmt", qg, keys.float()).amax(dim=-1)  # [Hkv, G, Lq, M]
    return s.sum(dim=1).amax(dim=1)


def exact_mass(q: torch.Tensor, keys: torch.Tensor, scale: float, budget: int = EXACT_SCORE_BUDGET) -> torch.Tensor:
    """Attention mass the candidate blocks draw from the question.

    Parameters
    ----------
    q : [Hkv, G, Lq, D] question queries, grouped by KV head
    keys : [Hkv, M, bs, D] every key of ``M`` candidate blocks per KV head
    scale : the attention's softmax scale
    budget : most scores held at once; the question's rows are taken in slices that fit it

    Returns
    -------
    [Hkv, M] float32: for every question token and head, a softmax over the candidates of
    ``logsumexp_t(scale * q . k_t)`` (each block's share of that row's attention among the candidates),
    summed over the tokens and the heads of each group.
    """
    n_kv, g, n_q, d = q.shape
    m, bs = keys.shape[1], keys.shape[2]
    rows = q.float().reshape(n_kv, g * n_q, d)
    k = keys.float()
    step = max(1, budget // max(1, n_kv * m * bs))
    mass = torch.zeros((n_kv, m), dtype=torch.float32, device=keys.device)
    for i in range(0, g * n_q, step):
        s = torch.einsum("krd,kmtd->krmt", rows[:, i : i + step].to(k.device), k) * scale
        mass += torch.softmax(torch.logsumexp(s, dim=-1), dim=-1).sum(dim=1)
    return mass


def bound_queries(q: torch.Tensor) -> torch.Tensor:
    """``[relu(q) | min(q, 0)]`` along the channel axis: its dot product with a block's ``[kmax | kmin]``
    is the largest ``q . k`` over the block's keys."""
    return torch.cat([q.clamp(min=0), q.clamp(max=0)], dim=-1)


def widen_and_dedupe(idx: torch.Tensor, neighbors: int, n_blocks: int,
                     near: torch.Tensor | None = None) -> torch.Tensor:
    """Add ``neighbors`` blocks on each side of every index of ``idx`` [Hkv, K] (-1 = empty, ignored), only
    those that ``near`` [>= n_blocks] bool allows when given; drop out-of-range and repeated indices (-1 in
    their place), ascending valid indices per row."""
    if idx.shape[1] == 0:
        return idx
    if neighbors > 0:
        offsets = torch.arange(-neighbors, neighbors + 1, device=idx.device)
        wide = (idx[:, :, None] + offsets).reshape(idx.shape[0], -1)
        valid = (idx[:, :, None] >= 0).expand(-1, -1, len(offsets)).reshape(idx.shape[0], -1)
        keep = valid & (wide >= 0) & (wide < n_blocks)
        if near is not None and n_blocks > 0:  # the centres stay; a neighbour only where ``near`` allows it
            centre = (offsets == 0).repeat(idx.shape[1])[None]
            keep &= centre | near.to(idx.device)[wide.clamp(0, n_blocks - 1)]
        idx = torch.where(keep, wide, -1)
    idx = idx.sort(dim=1).values
    repeat = torch.zeros_like(idx, dtype=torch.bool)
    repeat[:, 1:] = idx[:, 1:] == idx[:, :-1]
    return idx.masked_fill(repeat, -1)
