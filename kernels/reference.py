"""Pure-PyTorch fp32 reference for the memory-attention path.

These functions define the contract the Triton kernels implement, and they are the ``torch`` backend.
Everything is computed in float32; outputs are cast back to the query dtype where noted.

Notation
--------
H      query heads;  Hkv  key/value heads (H % Hkv == 0, GQA group G = H // Hkv)
L      queries in the chunk;  D  head dimension
Nl     local-window keys; the chunk's queries are the last L of them (bottom-right causal alignment:
       query i sees local key j iff j <= i + Nl - L)
Ni     initial tokens attended from memory (0 while they are still inside the local window)
NB     block-store capacity in blocks;  bs  block size;  K  retrieved blocks;  R  representative keys per block

Memory tokens (initial tokens and retrieved blocks) are seen by every query of the chunk without a mask,
through ``q_mem`` (queries rotated at the fixed memory distance); local keys through ``q_local``.
"""

from __future__ import annotations

import torch


def _grouped(q: torch.Tensor, n_kv: int) -> torch.Tensor:
    """[H, L, D] -> [Hkv, G*L, D] fp32, grouping the query heads that share a KV head (no K/V repeat)."""
    h, l, d = q.shape
    return q.float().reshape(n_kv, (h // n_kv) * l, d)


def local_causal_mask(n_queries: int, n_keys: int, device: torch.device) -> torch.Tensor:
    """[L, Nl] bool, True where query i may see local key j (bottom-right aligned causal mask)."""
    i = torch.arange(n_queries, device=device)[:, None]
    j = torch.arange(n_keys, device=device)[None, :]
    return j <= i + (n_keys - n_queries)


def per_head_index(block_idx: torch.Tensor, n_kv: int) -> torch.Tensor:
    """Block indices as [Hkv, K]: a shared [K] selection is repeated for every KV head."""
    idx = block_idx.long()
    return idx[None].expand(n_kv, -1) if idx.dim() == 1 else idx


def gather_memory(
    k_init: torch.Tensor,
    v_init: torch.Tensor,
    k_blocks: torch.Tensor,
    v_blocks: torch.Tensor,
    block_idx: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Concatenate [initial tokens | retrieved blocks] into contiguous memory keys/values, per KV head.

    Parameters
    ----------
    k_init, v_init : [Hkv, Ni, D]
    k_blocks, v_blocks : [NB, Hkv, bs, D]
    block_idx : [K] indices shared by every KV head, or [Hkv, K] one selection per KV head; an index of
        -1 is an empty slot (selections of different sizes are padded with it)

    Returns
    -------
    k_mem, v_mem : [Hkv, Ni + K*bs, D] (empty slots hold zeros)
    valid : [Hkv, Ni + K*bs] bool, False on the tokens of empty slots
    """
    n_kv, n_i, d = k_init.shape
    kb, vb, ok = gather_blocks(k_blocks, v_blocks, block_idx, k_init.device)
    valid = torch.cat([torch.ones(n_kv, n_i, dtype=torch.bool, device=k_init.device),
                       ok.repeat_interleave(k_blocks.shape[2], dim=1)], dim=1)
    return torch.cat([k_init, kb], dim=1), torch.cat([v_init, vb], dim=1), valid


def gather_blocks(
    k_blocks: torch.Tensor, v_blocks: torch.Tensor, block_idx: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The retrieved blocks alone (no initial tokens), as :func:`gather_memory` lays them out.

    Returns ``k``, ``v`` [Hkv, K*bs, D] on ``device`` (empty slots hold zeros) and ``ok`` [Hkv, K] bool,
    False on empty slots.
    """
    n_kv, d = k_blocks.shape[1], k_blocks.shape[3]
    idx = per_head_index(block_idx, n_kv).to(k_blocks.device)  # [Hkv, K]
    ok = idx >= 0
    kb, vb = _gather_blocks(k_blocks, idx, ok), _gather_blocks(v_blocks, idx, ok)
    return kb.view(n_kv, -1, d).to(device), vb.view(n_kv, -1, d).to(device), ok.to(device)


def _gather_blocks(blocks: torch.Tensor, idx: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """Blocks ``idx`` [Hkv, K] (``ok`` False: empty) of ``blocks`` [NB, Hkv, bs, D], each row from its own KV head:
    [Hkv * K, bs, D], zeros in empty slots.

    One ``index_select`` over the store seen as [NB * Hkv, bs, D] rows (advanced indexing costs several
    times more on CPU). Empty slots are zeroed only when there are any: on the CPU that check is free and a
    broadcast select over the whole result is the slowest step; on other devices a select keeps the host
    out of the loop."""
    n_kv = idx.shape[0]
    nb, _, bs, d = blocks.shape
    if idx.numel() == 0:
        return blocks.new_zeros((0, bs, d))
    ok = ok.reshape(-1)
    heads = torch.arange(n_kv, device=idx.device)[:, None]
    rows = (idx.clamp(min=0) * n_kv + heads).reshape(-1)
    if blocks.is_contiguous():
        out = blocks.view(nb * n_kv, bs, d).index_select(0, rows)
    else:
        out = blocks[idx.clamp(min=0), heads].reshape(-1, bs, d)
    if out.device.type != "cpu":
        return torch.where(ok[:, None, None], out, 0)
    if not bool(ok.all()):
        out.index_fill_(0, (~ok).nonzero().squeeze(1), 0)
    return out


def memory_attention_ref(
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
    """One softmax over [initial tokens | retrieved blocks | local window].

    Parameters
    ----------
    q_local, q_mem : [H, L, D]
    k_local, v_local : [Hkv, Nl, D], Nl >= L
    k_init, v_init : [Hkv, Ni, D]
    k_blocks, v_blocks : [NB, Hkv, bs, D]
    block_idx : [K] or [Hkv, K], -1 for an empty slot (see :func:`gather_memory`)
    scale : softmax scale (usually D ** -0.5)

    Returns
    -------
    out : [H, L, D] in q_local's dtype
    lse : [H, L] float32, natural-log log-sum-exp of the scaled scores over every attended key
    """
    out, lse, _ = memory_attention_and_mass_ref(
        q_local, q_mem, k_local, v_local, k_init, v_init, k_blocks, v_blocks, block_idx, scale, with_mass=False
    )
    return out, lse


def memory_attention_and_mass_ref(
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
    with_mass: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """:func:`memory_attention_ref` and, from the same probabilities, :func:`attention_mass_ref`.

    Returns ``out`` [H, L, D], ``lse`` [H, L] and ``mass`` [Nl] (``None`` unless ``with_mass``).
    """
    out, lse, p_loc, _, _ = _attention_probs(
        q_local, q_mem, k_local, v_local, k_init, v_init, k_blocks, v_blocks, block_idx, scale
    )
    mass = p_loc.sum(dim=(0, 1)) if with_mass else None
    return out, lse, mass


def memory_attention_cite_ref(
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`memory_attention_and_mass_ref` plus the attention each retrieved block slot received.

    Returns ``out`` [H, L, D], ``lse`` [H, L], ``mass`` [Nl] (as :func:`attention_mass_ref`) and
    ``block_mass`` [H, L, K] float32: ``block_mass[h, i, k] = sum_{t in slot k} p[h, i, t]``, the softmax
    probability query ``i`` of head ``h`` gave the ``bs`` tokens of selection slot ``k`` (0 for an empty
    slot; a repeated block is counted once per slot it occupies). Over a row, ``block_mass`` plus the
    window's and the initial tokens' shares sum to 1.
    """
    h, l, _ = q_local.shape
    n_kv = k_local.shape[0]
    bs = k_blocks.shape[2]
    out, lse, p_loc, _, p_blk = _attention_probs(
        q_local, q_mem, k_local, v_local, k_init, v_init, k_blocks, v_blocks, block_idx, scale
    )
    n_sel = p_blk.shape[-1] // bs
    blocks = p_blk.reshape(n_kv, p_blk.shape[1], n_sel, bs).sum(dim=-1)  # [Hkv, G*L, K]
    return out, lse, p_loc.sum(dim=(0, 1)), blocks.reshape(h, l, n_sel)


def _attention_probs(
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """out [H, L, D], lse [H, L], and the probabilities p_loc [Hkv, G*L, Nl], p_init [Hkv, G*L, Ni] and
    p_blk [Hkv, G*L, K*bs].

    The three key segments are scored separately and share one softmax: the initial tokens are never
    copied next to the gathered blocks (a copy of every retrieved key and value per chunk and layer)."""
    h, l, d = q_local.shape
    n_kv, n_l, _ = k_local.shape
    g = h // n_kv
    kb, vb, ok = gather_blocks(k_blocks, v_blocks, block_idx, k_init.device)
    s_loc = torch.bmm(_grouped(q_local, n_kv), k_local.float().transpose(1, 2)).mul_(scale)  # [Hkv, G*L, Nl]
    s_loc = s_loc.view(n_kv, g, l, n_l)
    # keys before the last L are visible to every query: only the bottom-right L x L corner is masked
    tail = s_loc[..., n_l - l :]
    tail.masked_fill_(~local_causal_mask(l, l, q_local.device), float("-inf"))
    qm = _grouped(q_mem, n_kv)
    s_init = torch.bmm(qm, k_init.float().transpose(1, 2)).mul_(scale)  # [Hkv, G*L, Ni]
    s_blk = torch.bmm(qm, kb.float().transpose(1, 2)).mul_(scale)  # [Hkv, G*L, K*bs]
    n_sel = ok.shape[1]
    if n_sel and (s_blk.device.type != "cpu" or not bool(ok.all())):  # on the CPU the check is free
        s_blk.view(n_kv, g * l, n_sel, -1).masked_fill_(~ok[:, None, :, None], float("-inf"))
    m = s_loc.amax(dim=-1)  # [Hkv, G, L], finite: every query sees at least itself
    for s in (s_init, s_blk):
        if s.shape[-1]:
            m = torch.maximum(m, s.view(n_kv, g, l, -1).amax(dim=-1))
    e_loc = s_loc.sub_(m[..., None]).exp_()
    m = m.view(n_kv, g * l, 1)
    e_init, e_blk = s_init.sub_(m).exp_(), s_blk.sub_(m).exp_()
    z = e_loc.sum(dim=-1).view(n_kv, g * l) + e_init.sum(dim=-1) + e_blk.sum(dim=-1)  # [Hkv, G*L]
    lse = m.view(n_kv, g * l) + torch.log(z)
    z = z[..., None]
    p_loc = e_loc.view(n_kv, g * l, n_l).div_(z)
    p_init, p_blk = e_init.div_(z), e_blk.div_(z)
    out = torch.bmm(p_loc, v_local.float())
    if p_init.shape[-1]:
        out.add_(torch.bmm(p_init, v_init.float()))
    if p_blk.shape[-1]:
        out.add_(torch.bmm(p_blk, vb.float()))
    return out.view(h, l, d).to(q_local.dtype), lse.reshape(h, l), p_loc, p_init, p_blk


def attention_mass_ref(q_local: torch.Tensor, k_local: torch.Tensor, lse: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention each local key received from the chunk, summed over queries and heads.

    Parameters
    ----------
    q_local : [H, L, D];  k_local : [Hkv, Nl, D];  lse : [H, L] from :func:`memory_attention_ref`

    Returns
    -------
    mass : [Nl] float32, sum over h, i of softmax probability p[h, i, j] (causally masked)
    """
    h, l, _ = q_local.shape
    n_kv, n_l, _ = k_local.shape
    s = torch.bmm(_grouped(q_local, n_kv), k_local.float().transpose(1, 2)) * scale
    s = s.view(n_kv, h // n_kv, l, n_l) - lse.float().view(n_kv, h // n_kv, l, 1)
    p = torch.exp(s).masked_fill(~local_causal_mask(l, n_l, q_local.device), 0.0)
    return p.sum(dim=(0, 1, 2))


def block_scores_ref(q: torch.Tensor, repr_keys: torch.Tensor, n_blocks: int, per_kv_head: bool = False) -> torch.Tensor:
    """Relevance of every stored block to a query chunk.

    ``score[kv, b] = max_i sum_{h in group kv} max_r q[h, i] . repr_keys[b, kv, r]``: a block is as relevant
    as its best representative key is to the chunk's query that likes it most. With one query row (the
    chunk's mean query) and one representative row per block (the sum of its representative keys) this is
    the paper's score, ``q_mean . sum_r repr`` summed over heads.

    Parameters
    ----------
    q : [H, Lq, D] memory queries (Lq = 1 for a chunk's mean query); a [H, D] tensor means Lq = 1
    repr_keys : [NB, Hkv, R, D] representative keys (rows >= n_blocks are ignored)
    n_blocks : blocks in use
    per_kv_head : one ranking per KV head (True) or one ranking summed over all heads (False)

    Returns
    -------
    scores : [Hkv, n_blocks] if per_kv_head else [1, n_blocks], float32
    """
    if q.dim() == 2:
        q = q[:, None]
    h, lq, d = q.shape
    n_kv = repr_keys.shape[1]
    reps = repr_keys[:n_blocks].float()  # [n, Hkv, R, D]
    qg = q.float().to(reps.device).view(n_kv, h // n_kv, lq, d)
    if reps.shape[2] == 1 and lq == 1:  # one row per block (repr_sum, bounds), one query: one pass over the store
        s = _one_key_scores(qg, reps)
        return s if per_kv_head else s.sum(dim=0, keepdim=True)
    h_g = h // n_kv
    step = max(1, (1 << 24) // max(1, h * lq))  # bound the [Hkv, G, Lq, n] intermediate to ~64 MB
    parts = []
    for lo in range(0, reps.shape[0], step):
        r = reps[lo : lo + step]
        s = None
        for j in range(r.shape[2]):  # best representative key
            sj = torch.einsum("kgid,nkd->kgin", qg, r[:, :, j])
            s = sj if s is None else torch.maximum(s, sj)
        if s is None:
            s = qg.new_zeros((n_kv, h_g, lq, r.shape[0]))
        parts.append(s.sum(dim=1).amax(dim=1))  # heads of a group share the selection; best query of the chunk
    s = torch.cat(parts, dim=1) if parts else qg.new_zeros((n_kv, 0))  # [Hkv, n]
    return s if per_kv_head else s.sum(dim=0, keepdim=True)


def _one_key_scores(qg: torch.Tensor, reps: torch.Tensor) -> torch.Tensor:
    """:func:`block_scores_ref` for one representative row per block (``repr_sum``, ``bounds``) and one query
    row (a chunk's mean query, decoding): ``[Hkv, n]``.

    With one key per block the group's score is the score of the group's summed query, and each KV head's
    rows are read in place by one matrix-vector product (contiguous for the head-major bounds of
    :class:`~infllm_cli.memory.block_store.BlockStore`, strided for ``repr_sum``): the store is never copied
    and is read once in all. The cost is then one pass over the representatives: the part of a chunk's cost
    that grows with the document.
    """
    qs = qg.sum(dim=1)[:, 0]  # [Hkv, D]
    return torch.stack([torch.mv(reps[:, h, 0], qs[h]) for h in range(qs.shape[0])])


def topk_blocks_ref(q: torch.Tensor, repr_keys: torch.Tensor, n_blocks: int, k: int, per_kv_head: bool = False) -> torch.Tensor:
    """Indices (ascending in each row) of the ``min(k, n_blocks)`` most relevant blocks, int64 [Hkv or 1, K]."""
    k = min(k, n_blocks)
    rows = repr_keys.shape[1] if per_kv_head else 1
    if k == 0:
        return torch.zeros((rows, 0), dtype=torch.long, device=repr_keys.device)
    scores = block_scores_ref(q, repr_keys, n_blocks, per_kv_head)
    return torch.topk(scores, k, dim=1).indices.sort(dim=1).values
