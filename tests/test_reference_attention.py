"""The PyTorch reference of the memory attention against a naive, independently written computation.

The naive version works one query head and one query at a time in float64: it lists the keys the query
may see (initial tokens, then each retrieved block's tokens, then the causal part of the local window),
builds one score vector, and applies a softmax. Tolerance: 1e-5 absolute (fp32 reference vs fp64 naive).
"""

from __future__ import annotations

import math

import pytest
import torch

from infllm_kernels.reference import (attention_mass_ref, block_scores_ref, gather_memory, memory_attention_ref,
                                     topk_blocks_ref)

from .conftest import DEVICES


def naive_memory_attention(q_local, q_mem, k_local, v_local, k_init, v_init, k_blocks, v_blocks, block_idx, scale):
    h, l, d = q_local.shape
    n_kv, n_l, _ = k_local.shape
    out = torch.zeros(h, l, d, dtype=torch.float64)
    lse = torch.zeros(h, l, dtype=torch.float64)
    mass = torch.zeros(n_l, dtype=torch.float64)
    for head in range(h):
        kv = head // (h // n_kv)
        mem_k = [k_init[kv, j] for j in range(k_init.shape[1])]
        mem_v = [v_init[kv, j] for j in range(v_init.shape[1])]
        for b in block_idx.tolist():
            mem_k += [k_blocks[b, kv, j] for j in range(k_blocks.shape[2])]
            mem_v += [v_blocks[b, kv, j] for j in range(v_blocks.shape[2])]
        for i in range(l):
            visible = range(0, i + n_l - l + 1)  # bottom-right aligned causal mask
            scores = [float(q_mem[head, i].double() @ k.double()) * scale for k in mem_k]
            scores += [float(q_local[head, i].double() @ k_local[kv, j].double()) * scale for j in visible]
            m = max(scores)
            z = sum(math.exp(s - m) for s in scores)
            p = [math.exp(s - m) / z for s in scores]
            values = [v.double() for v in mem_v] + [v_local[kv, j].double() for j in visible]
            out[head, i] = sum(pi * vi for pi, vi in zip(p, values))
            lse[head, i] = m + math.log(z)
            for j, pj in zip(visible, p[len(mem_k):]):
                mass[j] += pj
    return out, lse, mass


def random_case(h, n_kv, l, n_l, n_i, n_blocks, k, bs, d, device, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g).to(device)

    idx = torch.randperm(n_blocks, generator=g)[:k].sort().values.to(device)
    return (r(h, l, d), r(h, l, d), r(n_kv, n_l, d), r(n_kv, n_l, d), r(n_kv, n_i, d), r(n_kv, n_i, d),
            r(n_blocks, n_kv, bs, d), r(n_blocks, n_kv, bs, d), idx)


CASES = [  # h, n_kv, L, Nl, Ni, blocks, K, bs, D
    (4, 4, 5, 97, 3, 6, 2, 7, 8),  # MHA, ragged
    (4, 2, 1, 257, 0, 4, 4, 16, 16),  # GQA 2, decode step, no initial tokens, every block
    (8, 2, 7, 33, 4, 5, 0, 8, 64),  # GQA 4, no retrieved blocks
    (8, 1, 3, 1025, 2, 3, 1, 5, 8),  # MQA, long window
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "h{}kv{}L{}Nl{}Ni{}K{}D{}".format(*c[:5], c[6], c[8]))
def test_reference_equals_naive(case, device):
    h, n_kv, l, n_l, n_i, n_blocks, k, bs, d = case
    args = random_case(h, n_kv, l, n_l, n_i, n_blocks, k, bs, d, device)
    scale = d ** -0.5
    out, lse = memory_attention_ref(*args, scale)
    mass = attention_mass_ref(args[0], args[2], lse, scale)
    cpu = [a.cpu() for a in args]
    want_out, want_lse, want_mass = naive_memory_attention(*cpu, scale)
    torch.testing.assert_close(out.cpu().double(), want_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse.cpu().double(), want_lse, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mass.cpu().double(), want_mass, atol=1e-5, rtol=1e-5)
    assert out.dtype == args[0].dtype and lse.dtype == torch.float32


def test_block_scores_best_representative_summed_over_heads():
    """score[b] = sum over heads of the best representative's dot product (best query of the chunk), written
    out; per KV head: the same sum over the heads of each group; the paper's score is this with one query
    (the chunk mean) and one representative (the sum of the block's representatives)."""
    g = torch.Generator().manual_seed(1)
    q = torch.randn(6, 8, generator=g)  # 6 query heads over 3 KV heads, one query
    reps = torch.randn(10, 3, 2, 8, generator=g)
    want = torch.zeros(3, 10, dtype=torch.float64)
    for b in range(10):
        for head in range(6):
            want[head // 2, b] += max(float(q[head].double() @ reps[b, head // 2, r].double()) for r in range(2))
    torch.testing.assert_close(block_scores_ref(q, reps, 10, per_kv_head=True).double(), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(block_scores_ref(q, reps, 10).double()[0], want.sum(0), atol=1e-5, rtol=1e-5)
    assert topk_blocks_ref(q, reps, 10, 3).tolist() == [sorted(torch.topk(want.sum(0), 3).indices.tolist())]
    assert topk_blocks_ref(q, reps, 10, 3, per_kv_head=True).tolist() == [
        sorted(torch.topk(want[kv], 3).indices.tolist()) for kv in range(3)]
    assert topk_blocks_ref(q, reps, 2, 5).tolist() == [[0, 1]]  # fewer blocks than k
    assert topk_blocks_ref(q, reps, 0, 5).numel() == 0
    # several queries: each KV head counts its best query
    q2 = torch.randn(6, 4, 8, generator=g)
    per_query = torch.stack([block_scores_ref(q2[:, i], reps, 10, per_kv_head=True) for i in range(4)])
    torch.testing.assert_close(block_scores_ref(q2, reps, 10, per_kv_head=True), per_query.amax(0))
    torch.testing.assert_close(block_scores_ref(q2, reps, 10)[0], per_query.amax(0).sum(0))
    # the paper: the mean query against the summed representatives is the sum over representatives
    paper = block_scores_ref(q2.mean(1), reps.sum(2, keepdim=True), 10)[0].double()
    summed = sum(float(q2.mean(1)[h].double() @ reps[:, h // 2, r].double().T[:, b]) for h in range(6) for r in range(2)
                 for b in [0])
    assert abs(float(paper[0]) - summed) < 1e-4


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("contiguous", [True, False])
def test_gather_memory_reads_each_heads_blocks_and_zeroes_empty_slots(device, contiguous):
    """[initial tokens | blocks of each KV head's own selection], empty slots (-1) as zeros and invalid,
    the same from a contiguous store and from a strided view of one."""
    g = torch.Generator().manual_seed(3)
    n_kv, nb, bs, d = 3, 7, 4, 5
    kb = torch.randn(nb, n_kv, bs, d, generator=g).to(device)
    vb = torch.randn(nb, n_kv, bs, d, generator=g).to(device)
    if not contiguous:  # every other block of a store twice as large
        kb = torch.stack([kb, kb.flip(0)], dim=1).reshape(2 * nb, n_kv, bs, d)[::2]
        vb = torch.stack([vb, vb.flip(0)], dim=1).reshape(2 * nb, n_kv, bs, d)[::2]
    k_init, v_init = torch.randn(n_kv, 2, d, generator=g).to(device), torch.randn(n_kv, 2, d, generator=g).to(device)
    idx = torch.tensor([[6, -1, 0], [2, 3, 4], [-1, -1, 5]], device=device)
    k_mem, v_mem, valid = gather_memory(k_init, v_init, kb, vb, idx)
    assert k_mem.shape == (n_kv, 2 + 3 * bs, d) and valid.shape == (n_kv, 2 + 3 * bs)
    for h in range(n_kv):
        assert torch.equal(k_mem[h, :2], k_init[h]) and torch.equal(v_mem[h, :2], v_init[h])
        for slot, b in enumerate(idx[h].tolist()):
            part = slice(2 + slot * bs, 2 + (slot + 1) * bs)
            want_k = kb[b, h] if b >= 0 else torch.zeros(bs, d, device=device)
            want_v = vb[b, h] if b >= 0 else torch.zeros(bs, d, device=device)
            assert torch.equal(k_mem[h, part], want_k) and torch.equal(v_mem[h, part], want_v)
            assert bool(valid[h, part].all()) == (b >= 0)
    shared = gather_memory(k_init, v_init, kb, vb, torch.tensor([1, 4], device=device))  # one selection for all heads
    assert torch.equal(shared[0][1, 2 : 2 + bs], kb[1, 1])
    empty = gather_memory(k_init, v_init, kb, vb, torch.zeros((n_kv, 0), dtype=torch.long, device=device))
    assert empty[0].shape == (n_kv, 2, d) and bool(empty[2].all())
