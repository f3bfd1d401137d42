"""Block selection: the paper's rule, each improvement, question-aware pins and the oracle."""

from __future__ import annotations

import pytest
import torch

from infllm_cli.config import SELECTIONS, ConfigError, MemoryConfig, with_selection
from infllm_cli.memory.selection import (BlockSelector, best_blocks, exact_mass, exact_scores, favoured_blocks,
                                         pooled_question_mass, widen_and_dedupe)
from infllm_kernels.backend import TORCH
from tests.test_memory import make_layer


def test_widen_and_dedupe():
    idx = torch.tensor([[3, 0, -1, 4], [9, 9, 1, -1]])
    got = widen_and_dedupe(idx, 1, n_blocks=10)
    rows = [sorted(b for b in row if b >= 0) for row in got.tolist()]
    assert rows == [[0, 1, 2, 3, 4, 5], [0, 1, 2, 8, 9]]
    assert all(len(row) == len(set(row)) for row in rows)
    plain = widen_and_dedupe(idx, 0, n_blocks=10)
    assert [sorted(b for b in row if b >= 0) for row in plain.tolist()] == [[0, 3, 4], [1, 9]]


def store_with(reps: torch.Tensor, block_size: int = 8):
    layer = make_layer(MemoryConfig(n_init=0, n_local=16, block_size=block_size, topk=2, repr_topk=reps.shape[2],
                                    exc_block_size=8, chunk_size=8), n_kv=reps.shape[1], d=reps.shape[3])
    n, n_kv, _, d = reps.shape
    layer.store.append(torch.zeros(n, n_kv, block_size, d), torch.zeros(n, n_kv, block_size, d), reps)
    return layer.store


def test_paper_selection_is_the_mean_query_against_summed_representatives():
    g = torch.Generator().manual_seed(0)
    reps = torch.randn(20, 2, 3, 16, generator=g)
    q = torch.randn(4, 5, 16, generator=g)
    store = store_with(reps)
    config = with_selection(MemoryConfig(n_local=16, block_size=8, topk=3, repr_topk=3, exc_block_size=8, chunk_size=8), "paper")
    idx = BlockSelector(config, TORCH, 2).select(q, store)
    # the formula of Xiao et al., written out: sum over heads of q_mean[h] . sum_r repr[b, kv(h), r]
    qm = q.mean(dim=1)
    scores = sum(reps[:, h // 2].sum(dim=1) @ qm[h] for h in range(4))
    want = scores.topk(3).indices.sort().values
    assert idx.shape == (2, 3) and torch.equal(idx[0], want) and torch.equal(idx[1], want)


def test_max_scores_find_a_block_that_one_query_and_one_key_match():
    """A block whose single representative key matches a single query of the chunk: the paper's averaged
    score loses it among blocks with a moderate bias, the max scores find it, per KV head."""
    d = 16
    reps = torch.zeros(30, 2, 4, d)
    reps[:, :, :, 0] = 1.0  # every block leans a little towards channel 0
    reps[17, 1, 2] = 0.0
    reps[17, 1, 2, 5] = 12.0  # one key of block 17, KV head 1, answers channel 5
    q = torch.zeros(4, 32, d)
    q[:, :, 0] = 1.0
    q[2:, 31] = 0.0
    q[2:, 31, 5] = 1.0  # the last query of heads 2-3 (KV head 1) looks for channel 5
    store = store_with(reps)
    base = MemoryConfig(n_local=16, block_size=8, topk=2, repr_topk=4, exc_block_size=8, chunk_size=8)
    paper = BlockSelector(with_selection(base, "paper"), TORCH, 2).select(q, store)
    best = BlockSelector(base.replace(block_score="repr_max", query_score="max"), TORCH, 2).select(q, store)
    assert 17 not in paper.flatten().tolist()
    assert 17 in best[1].tolist() and 17 not in best[0].tolist()


def test_bounds_cannot_miss_a_key_that_was_never_a_representative():
    """Per-channel key bounds bound every key's score from above, so the block holding the one key a query
    matches ranks first even though that key was not chosen as a representative."""
    g = torch.Generator().manual_seed(2)
    n, n_kv, bs, d = 40, 2, 8, 16
    keys = torch.randn(n, n_kv, bs, d, generator=g) * 0.2
    target = torch.randn(d, generator=g)
    keys[23, :, 5] = target * 3  # the matching key
    reps = keys[:, :, :2]  # representatives: the first two keys of each block (not the matching one)
    layer = make_layer(MemoryConfig(n_init=0, n_local=16, block_size=bs, topk=1, repr_topk=2, exc_block_size=8,
                                    chunk_size=8), n_kv=n_kv, d=d)
    layer.store.append(keys, torch.zeros_like(keys), reps)
    q = target.expand(4, 3, d).clone()
    base = MemoryConfig(n_local=16, block_size=bs, topk=1, repr_topk=2, exc_block_size=8, chunk_size=8, neighbors=0)
    bound = BlockSelector(base.replace(block_score="bounds"), TORCH, n_kv)
    assert bound.select(q, layer.store).tolist() == [[23], [23]]
    assert BlockSelector(base.replace(block_score="repr_max"), TORCH, n_kv).select(q, layer.store).tolist() != [[23], [23]]
    # the bound is a true upper bound of every key's score
    s = bound.scores(q[:, :1], layer.store)  # [Hkv, n]
    exact = torch.einsum("hd,nkbd->nkhb", q[:, 0], keys)  # [n, Hkv, H, bs]: every key's score
    per_head = torch.stack([exact[:, kv, 2 * kv : 2 * kv + 2].amax(-1).sum(-1) for kv in range(n_kv)])  # [Hkv, n]
    assert torch.all(s >= per_head - 1e-4)


def keyed_store(keys: torch.Tensor):
    """A store holding ``keys`` [n, Hkv, bs, D] (values zero, representatives the first key)."""
    n, n_kv, bs, d = keys.shape
    layer = make_layer(MemoryConfig(n_init=0, n_local=16, block_size=bs, topk=1, repr_topk=1, exc_block_size=8,
                                    chunk_size=8), n_kv=n_kv, d=d)
    layer.store.append(keys, torch.zeros_like(keys), keys[:, :, :1])
    return layer.store


def test_exact_scores_are_the_representative_score_over_every_key():
    """Re-scoring a candidate with all its keys is the representative-key score with every key a representative."""
    from infllm_kernels.reference import block_scores_ref

    g = torch.Generator().manual_seed(3)
    keys = torch.randn(13, 2, 8, 16, generator=g)
    q = torch.randn(6, 5, 16, generator=g)  # 3 query heads per KV head
    store = keyed_store(keys)
    cand = torch.tensor([[0, 4, 12], [7, 4, 1]])
    got = exact_scores(q, store.keys_of(cand))
    full = block_scores_ref(q, keys, 13, per_kv_head=True)  # [Hkv, n]: every key is a representative
    torch.testing.assert_close(got, torch.gather(full, 1, cand), rtol=1e-5, atol=1e-5)


def test_exact_mass_is_the_dense_attention_probability_summed_per_block():
    g = torch.Generator().manual_seed(4)
    keys = torch.randn(5, 1, 4, 8, generator=g)
    q = torch.randn(1, 2, 3, 8, generator=g)  # [Hkv, G, Lq, D]
    got = exact_mass(q, keys.transpose(0, 1), scale=0.7)  # all 5 blocks are candidates
    p = torch.softmax(torch.einsum("gld,nd->gln", q[0], keys[:, 0].reshape(20, 8)) * 0.7, dim=-1)  # dense
    want = p.view(2, 3, 5, 4).sum(dim=(0, 1, 3))
    torch.testing.assert_close(got[0], want, rtol=1e-5, atol=1e-5)


def test_exact_mass_in_slices_of_the_question_is_the_same():
    """A question read in slices that fit the score budget gets the mass it gets in one piece."""
    g = torch.Generator().manual_seed(6)
    keys = torch.randn(2, 9, 5, 8, generator=g)  # [Hkv, M, bs, D]
    q = torch.randn(2, 3, 7, 8, generator=g)  # [Hkv, G, Lq, D]: 21 rows per KV head
    whole = exact_mass(q, keys, scale=0.5)
    for budget in (1, 2 * 9 * 5, 2 * 9 * 5 * 4 + 1):  # one row at a time, a few rows, a ragged last slice
        torch.testing.assert_close(exact_mass(q, keys, scale=0.5, budget=budget), whole, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(whole.sum(dim=1), torch.full((2,), 21.0), rtol=1e-6, atol=1e-6)  # one unit per row


def test_rescore_finds_the_block_whose_single_key_matches_where_bounds_add_up_two_keys():
    """Bounds take each channel's maximum over different keys, so a block with one key on channel 0 and
    another on channel 1 bounds a (1, 1) query at 2 although no key scores above 1; the block with one
    (0.9, 0.9) key really scores 1.8. Re-scoring the bounds' candidates with every key picks the latter."""
    d = 4
    keys = torch.zeros(6, 1, 2, d)
    keys[2, 0, 0, 0] = 1.0
    keys[2, 0, 1, 1] = 1.0  # bounds (1, 1): scores 2, best key 1
    keys[4, 0, 0, :2] = 0.9  # one key (0.9, 0.9): bounds 1.8, best key 1.8
    store = keyed_store(keys)
    q = torch.zeros(1, 1, d)
    q[0, 0, :2] = 1.0
    base = MemoryConfig(n_local=16, block_size=2, topk=1, repr_topk=1, exc_block_size=8, chunk_size=8, question_topk=1,
                        question_neighbors=0)
    assert BlockSelector(base, TORCH, 1).select(q, store).tolist() == [[2]]
    assert BlockSelector(base.replace(rescore=3), TORCH, 1).select(q, store).tolist() == [[4]]
    shared = BlockSelector(base.replace(rescore=3, per_kv_head=False), TORCH, 1)
    assert shared.select(q, store).tolist() == [[4]]
    # the question: its mass by the bounds prefers block 2, its exactly weighed mass block 4
    sel = BlockSelector(base.replace(question_exact=1, question_rescore=3), TORCH, 1)
    mass = sel.question_mass(q, store, 4.0)
    assert sel.question_blocks(mass).tolist() == [[2]]
    exact = sel.exact_question_mass(q, store, 4.0, mass)
    assert int(exact.argmax()) == 4
    assert int((exact > 0).sum()) == 3  # only the 3 candidates (the bounds' best) carry mass
    torch.testing.assert_close(exact.sum(), torch.tensor(1.0))  # one query row: one unit of attention


def test_question_mass_favours_the_block_many_question_tokens_point_to():
    """One block matches every question token moderately, another matches one token strongly: the summed
    softmax mass prefers the first, the best-single-token score the second."""
    d = 8
    reps = torch.zeros(10, 1, 1, d)
    reps[3, 0, 0, :4] = 2.0  # matches queries 0-3 (channel i each) moderately
    reps[7, 0, 0, 5] = 9.0  # matches query 4 only, strongly
    store = store_with(reps, block_size=8)
    q = torch.zeros(1, 5, d)
    for i in range(4):
        q[0, i, i] = 1.0
    q[0, 4, 5] = 1.0
    sel = BlockSelector(MemoryConfig(n_local=16, block_size=8, topk=1, repr_topk=1, exc_block_size=8, chunk_size=8,
                                     block_score="repr_max", question_topk=1, question_neighbors=0), TORCH, 1)
    mass = sel.question_mass(q, store, scale=1.0)
    assert sel.question_blocks(mass).tolist() == [[3]]
    assert int(sel.scores(q, store).argmax()) == 7


def test_question_blocks_are_widened_by_their_neighbours():
    """A fact cut by a block boundary: the question picks the block holding half of it, and
    ``question_neighbors`` adds the blocks on each side (clipped to the store, repeats emptied)."""
    sel = BlockSelector(MemoryConfig(n_local=16, block_size=8, topk=1, repr_topk=1, exc_block_size=8, chunk_size=8,
                                     question_topk=2, question_neighbors=1), TORCH, 2)
    mass = torch.zeros(2, 10)
    mass[0, 4], mass[0, 5] = 1.0, 0.9  # adjacent picks: their neighbourhoods overlap
    mass[1, 0], mass[1, 9] = 1.0, 0.9  # picks at both ends of the store
    rows = sel.question_blocks(mass).tolist()
    assert sorted(b for b in rows[0] if b >= 0) == [3, 4, 5, 6]
    assert sorted(b for b in rows[1] if b >= 0) == [0, 1, 8, 9]
    assert all(len(r) == 6 for r in rows)  # 2 picks x 3, repeats and out-of-range slots as -1
    plain = BlockSelector(sel.config.replace(question_neighbors=0), TORCH, 2)
    assert plain.question_blocks(mass).tolist() == [[4, 5], [0, 9]]


def test_question_neighbours_are_pinned_only_among_the_blocks_the_question_favours():
    """``near`` (the ``question_neighbor_rank`` gate): a neighbour is added only where the mask allows it (the
    other half of a cut fact); the question's own blocks are kept whatever the mask says."""
    sel = BlockSelector(MemoryConfig(n_local=16, block_size=8, topk=1, repr_topk=1, exc_block_size=8, chunk_size=8,
                                     question_topk=2, question_neighbors=1), TORCH, 2)
    mass = torch.zeros(2, 10)
    mass[0, 4], mass[0, 7] = 1.0, 0.9
    mass[1, 0], mass[1, 9] = 1.0, 0.9
    near = torch.zeros(10, dtype=torch.bool)
    near[[3, 8, 1]] = True  # 3: before block 4; 8: after 7 and before 9; 1: after 0
    rows = sel.question_blocks(mass, near=near).tolist()
    assert sorted(b for b in rows[0] if b >= 0) == [3, 4, 7, 8]
    assert sorted(b for b in rows[1] if b >= 0) == [0, 1, 8, 9]
    nothing = sel.question_blocks(mass, torch.tensor([5]), near=torch.zeros(12, dtype=torch.bool)).tolist()
    assert [sorted(b for b in r if b >= 0) for r in nothing] == [[4, 5, 7], [0, 5, 9]]  # a longer mask is fine
    assert sel.question_blocks(mass, near=torch.ones(10, dtype=torch.bool)).tolist() == sel.question_blocks(mass).tolist()
    assert widen_and_dedupe(torch.zeros((2, 0), dtype=torch.long), 1, 0, torch.zeros(0, dtype=torch.bool)).shape == (2, 0)


def test_favoured_blocks_mark_the_pooled_best():
    sure = torch.tensor([[0.0, 0, 0, 10, 0, 0], [1, 1, 1, 1, 1, 1]])
    slight = torch.tensor([[1.0, 1, 1, 1, 1, 2], [1, 1, 1, 1, 1, 2]])
    pooled = pooled_question_mass([sure, slight])
    assert favoured_blocks(pooled, 2).nonzero().flatten().tolist() == [3, 5]
    assert favoured_blocks(pooled, 99).all() and not favoured_blocks(pooled, 0).any()
    assert len(favoured_blocks(pooled_question_mass([sure, slight[:, :4]]), 1)) == 6


def test_pooled_question_mass_gives_every_layer_and_head_one_vote():
    """Each layer's question mass is normalised per KV head before the layers and heads are summed: a head
    sure of one block outweighs heads with a slight preference, whatever the scale of each layer's mass."""
    def pooled_question_blocks(masses, k):
        return best_blocks(pooled_question_mass(masses), k)

    sure = torch.tensor([[0.0, 0, 0, 10, 0, 0], [1, 1, 1, 1, 1, 1]])  # head 0 of layer 0 points at block 3
    slight = torch.tensor([[1.0, 1, 1, 1, 1, 2], [1, 1, 1, 1, 1, 2]])  # both heads of layer 1 lean to block 5
    assert pooled_question_blocks([sure, slight], 1).tolist() == [3]
    assert pooled_question_blocks([sure, 1000 * slight], 1).tolist() == [3]  # scale-free per layer
    assert sorted(pooled_question_blocks([sure, slight], 2).tolist()) == [3, 5]
    assert pooled_question_blocks([sure, slight], 0).numel() == 0
    assert len(pooled_question_blocks([sure, slight], 99)) == 6
    three = [slight, slight, torch.tensor([[0.0, 1, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0]])]  # two sure heads win
    assert pooled_question_blocks(three, 1).tolist() == [1]
    assert best_blocks(torch.zeros(0), 3).numel() == 0


def test_shared_question_blocks_join_every_heads_own_widened():
    sel = BlockSelector(MemoryConfig(n_local=16, block_size=8, topk=1, repr_topk=1, exc_block_size=8, chunk_size=8,
                                     question_topk=1, question_neighbors=1), TORCH, 2)
    mass = torch.zeros(2, 10)
    mass[0, 2] = mass[1, 9] = 1.0
    rows = sel.question_blocks(mass, torch.tensor([5])).tolist()
    assert sorted(b for b in rows[0] if b >= 0) == [1, 2, 3, 4, 5, 6]
    assert sorted(b for b in rows[1] if b >= 0) == [4, 5, 6, 8, 9]
    assert sel.question_blocks(mass, torch.tensor([2])).tolist()[0].count(2) == 1  # a repeat is read once


def record_pooling(monkeypatch, cache_module):
    """Record, in order, the per-layer masses each pooled list is made of and the blocks picked from a pooled
    list (``question_shared``, ``question_exact``)."""
    masses, picks = [], []
    real_mass, real_best = cache_module.pooled_question_mass, cache_module.best_blocks
    monkeypatch.setattr(cache_module, "pooled_question_mass", lambda m: masses.append(m) or real_mass(m))
    monkeypatch.setattr(cache_module, "best_blocks", lambda pooled, k: picks.append(real_best(pooled, k)) or picks[-1])
    return masses, picks


def test_question_shared_pins_the_pooled_blocks_in_every_layer(tiny_llama_dir, monkeypatch):
    """Through the runner: the blocks pooled over all layers' question masses are pinned in every layer and
    KV head, beside each head's own question blocks; with 0, nothing is pooled."""
    import infllm_cli.memory.cache as cache_module
    from infllm_cli.models import load_model
    from infllm_cli.runner import Runner

    masses, pooled = record_pooling(monkeypatch, cache_module)
    config = MemoryConfig(n_init=4, n_local=64, block_size=16, topk=2, repr_topk=2, exc_block_size=32, chunk_size=32,
                          question_topk=1, question_neighbors=0, question_shared=2)
    loaded = load_model(str(tiny_llama_dir), device="cpu")
    runner = Runner(loaded, config, backend="torch")
    runner.feed([3 + (7 * i) % 250 for i in range(400)])
    runner.read_question([5, 6, 7, 8])
    (shared,) = pooled
    assert len(shared) == 2
    for m in runner.cache.memories:
        for row in m.pinned.tolist():
            assert set(shared.tolist()) <= set(row)
    masses.clear()
    pooled.clear()
    runner = Runner(loaded, config.replace(question_shared=0), backend="torch")
    runner.feed([3 + (7 * i) % 250 for i in range(400)])
    runner.read_question([5, 6, 7, 8])
    assert not masses and not pooled and all(m.pinned.shape[1] == 1 for m in runner.cache.memories)


def test_question_neighbor_rank_keeps_only_the_neighbours_the_question_favours(tiny_llama_dir, monkeypatch):
    """Through the runner: with ``question_neighbor_rank`` N, a pinned neighbour is one of the N blocks pooled
    over all layers' question masses, and every neighbour the ungated pins hold among those N is still
    pinned; 0 pins every neighbour, and without neighbours nothing is pooled for the gate."""
    import infllm_cli.memory.cache as cache_module
    from infllm_cli.models import load_model
    from infllm_cli.runner import Runner

    masks = []
    real = cache_module.favoured_blocks
    monkeypatch.setattr(cache_module, "favoured_blocks", lambda pooled, k: masks.append(real(pooled, k)) or masks[-1])
    config = MemoryConfig(n_init=4, n_local=64, block_size=16, topk=2, repr_topk=2, exc_block_size=32, chunk_size=32,
                          question_topk=2, question_neighbors=1, question_shared=1, question_neighbor_rank=3)
    loaded = load_model(str(tiny_llama_dir), device="cpu")
    doc = [3 + (7 * i) % 250 for i in range(600)]

    def pins(cfg):
        runner = Runner(loaded, cfg, backend="torch")
        runner.feed(doc)
        runner.read_question([5, 6, 7, 8])
        return [[{b for b in row if b >= 0} for row in m.pinned.tolist()] for m in runner.cache.memories]

    gated = pins(config)
    (mask,) = masks
    assert int(mask.sum()) == 3
    favoured = set(mask.nonzero().flatten().tolist())
    centres, every = pins(config.replace(question_neighbors=0)), pins(config.replace(question_neighbor_rank=0))
    assert len(masks) == 1  # neither of those pooled a gate
    for g_layer, c_layer, e_layer in zip(gated, centres, every):
        for g, c, e in zip(g_layer, c_layer, e_layer):
            assert c <= g <= e
            assert g - c <= favoured and (e - c) & favoured <= g
    assert any(g != e for gl, el in zip(gated, every) for g, e in zip(gl, el))  # the gate dropped something


def test_question_exact_pins_the_blocks_the_exact_weight_favours_beside_the_shared_ones(tiny_llama_dir, monkeypatch):
    """Through the runner: ``question_exact`` pools the exactly weighed masses (every layer's, candidates from
    its own bounds mass) and pins their best blocks in every layer and KV head, beside the ``question_shared``
    blocks pooled from the bounds; off, no key is read for the question."""
    import infllm_cli.memory.cache as cache_module
    from infllm_cli.memory.block_store import BlockStore
    from infllm_cli.models import load_model
    from infllm_cli.runner import Runner

    masses, picks = record_pooling(monkeypatch, cache_module)
    reads = []
    real_keys_of = BlockStore.keys_of
    monkeypatch.setattr(BlockStore, "keys_of", lambda self, blocks: reads.append(blocks.shape) or real_keys_of(self, blocks))
    config = MemoryConfig(n_init=4, n_local=64, block_size=16, topk=2, repr_topk=2, exc_block_size=32, chunk_size=32,
                          question_topk=0, question_neighbors=0, question_shared=1, question_exact=2, question_rescore=5)
    loaded = load_model(str(tiny_llama_dir), device="cpu")
    doc = [3 + (7 * i) % 250 for i in range(400)]
    runner = Runner(loaded, config, backend="torch")
    runner.feed(doc)
    runner.read_question([5, 6, 7, 8])
    (bounds_masses, exact_masses), (shared, exact) = masses, picks
    assert len(shared) == 1 and len(exact) == 2
    n_layers = len(runner.cache.memories)
    assert len(exact_masses) == n_layers and all(int((m > 0).sum(dim=1).max()) <= 5 for m in exact_masses)
    assert all(shape[1] == 5 for shape in reads) and len(reads) == n_layers  # 5 candidates per head, one chunk
    for m in runner.cache.memories:
        for row in m.pinned.tolist():
            assert set(shared.tolist()) | set(exact.tolist()) == {b for b in row if b >= 0}
    masses.clear()
    picks.clear()
    reads.clear()
    runner = Runner(loaded, config.replace(question_exact=0), backend="torch")
    runner.feed(doc)
    runner.read_question([5, 6, 7, 8])
    assert len(masses) == 1 and len(picks) == 1 and not reads
    with pytest.raises(ConfigError, match="question_rescore"):
        config.replace(question_rescore=0)


def test_question_blocks_are_pinned_for_the_answer_and_cleared_by_restore():
    config = MemoryConfig(n_init=2, n_local=16, block_size=4, topk=1, repr_topk=2, exc_block_size=4, chunk_size=4,
                          question_topk=2, neighbors=0, question_neighbors=0)
    layer = make_layer(config)
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        layer.attend(torch.randn(4, 4, 16, generator=g), torch.randn(2, 4, 16, generator=g), torch.randn(2, 4, 16, generator=g), 0.25)
    assert layer.store.n_blocks > 3
    state = layer.state_dict()
    n_blocks = layer.store.n_blocks
    layer.begin_question()
    layer.attend(torch.randn(4, 3, 16, generator=g), torch.randn(2, 3, 16, generator=g), torch.randn(2, 3, 16, generator=g), 0.25)
    pins = layer.end_question()
    assert pins.shape == (2, 2) and int(pins.max()) < layer.store.n_blocks
    layer.load_state_dict(state, n_blocks)
    layer.pin(pins)
    seen = []
    layer.probe = lambda _layer, _q, idx: seen.append(idx)
    layer.attend(torch.randn(4, 1, 16, generator=g), torch.randn(2, 1, 16, generator=g), torch.randn(2, 1, 16, generator=g), 0.25)
    assert all(set(pins[h].tolist()) <= set(seen[-1][h].tolist()) for h in range(2))
    layer.load_state_dict(state, n_blocks)
    assert layer.pinned is None and layer.question_scores is None


def test_selection_knobs_are_validated():
    with pytest.raises(ConfigError, match="block_score"):
        MemoryConfig(block_score="mean")
    with pytest.raises(ConfigError, match="query_score"):
        MemoryConfig(query_score="sum")
    with pytest.raises(ConfigError, match="neighbors"):
        MemoryConfig(neighbors=-1)
    with pytest.raises(ConfigError, match="rescore"):
        MemoryConfig(rescore=-2)
    with pytest.raises(ConfigError, match="unknown selection"):
        with_selection(MemoryConfig(), "best")
    assert with_selection(MemoryConfig(), "paper").selection == SELECTIONS["paper"]
    assert MemoryConfig().selection == SELECTIONS["default"]


def test_pins_past_the_store_are_ignored_until_those_blocks_exist():
    """The question may pick (or widen to) blocks it evicted itself while it was ranked; after the restore
    they do not exist yet, so a selection skips them instead of indexing past the store."""
    d = 4
    store = store_with(torch.randn(10, 1, 1, d), block_size=4)
    sel = BlockSelector(MemoryConfig(n_local=16, block_size=4, topk=1, repr_topk=1, exc_block_size=8, chunk_size=8),
                        TORCH, 1)
    idx = sel.select(torch.randn(1, 1, d), store, pinned=torch.tensor([[5, 10, 11]]))
    valid = [b for b in idx[0].tolist() if b >= 0]
    assert 5 in valid and max(valid) < 10
