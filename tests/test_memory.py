"""The per-layer memory on its own: retrieval from a million-token memory, eviction, snapshots, persistence."""

from __future__ import annotations

import pytest
import torch

from infllm_cli.config import SELECTIONS, MemoryConfig, with_selection
from infllm_cli.memory.block_store import BlockStore
from infllm_cli.memory.cache import ContextMemory
from infllm_cli.memory.layer_memory import LayerMemory
from infllm_cli.memory.rope import RotaryTable
from infllm_kernels.backend import TORCH


class IdentityRotary(torch.nn.Module):
    """A rotary module of head dim 16 with base 10000 (stands in for a model's)."""

    def forward(self, x, position_ids):
        inv = 1.0 / (10000 ** (torch.arange(0, 16, 2, dtype=torch.float32) / 16))
        freqs = position_ids[..., None].float() * inv
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos(), emb.sin()


def make_layer(config: MemoryConfig, n_kv: int = 2, d: int = 16) -> LayerMemory:
    rope = RotaryTable(IdentityRotary(), config.max_window + 1, torch.device("cpu"))
    return LayerMemory(config, n_kv, d, rope, TORCH, torch.device("cpu"), torch.float32)


@pytest.mark.parametrize("selection", list(SELECTIONS))
def test_needle_block_retrieved_from_a_million_tokens(selection):
    """A block whose keys align with the query is found among 8,192 blocks (1,048,576 tokens)."""
    base = MemoryConfig(n_init=128, n_local=4096, block_size=128, topk=16, repr_topk=4, exc_block_size=512)
    config = with_selection(base, selection)
    layer = make_layer(config)
    g = torch.Generator().manual_seed(0)
    n_blocks, n_kv, d = 8192, 2, 16
    store = layer.store
    keys = torch.randn(n_blocks, n_kv, 128, d, generator=g) * 0.3
    values = torch.randn(n_blocks, n_kv, 128, d, generator=g)
    needle_dir = torch.randn(d, generator=g)
    needle = 5321
    keys[needle, :, 40:44] = needle_dir * 3.0  # four tokens carry the needle
    reps = torch.gather(keys, 2, keys.norm(dim=-1).topk(4, dim=-1).indices[..., None].expand(-1, -1, -1, d))
    store.append(keys, values, reps)
    assert store.n_blocks * config.block_size >= 1_000_000
    q_mem = needle_dir.expand(4, 8, d).clone()  # 4 query heads, 8 queries, all looking for the needle
    _, _, idx = layer._retrieve(q_mem)
    rows = [[b for b in row if b >= 0] for row in idx.tolist()]
    assert len(rows) == 2 and all(needle in row for row in rows)  # every KV head reads it
    assert all(len(row) == len(set(row)) <= config.topk * (1 + 2 * config.neighbors) for row in rows)
    assert store.span(needle) == (128 + needle * 128, 128 + (needle + 1) * 128)


def feed_random(layer: LayerMemory, n: int, seed: int, step: int = 7) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    outs = []
    for start in range(0, n, step):
        m = min(step, n - start)
        q, k, v = torch.randn(4, m, 16, generator=g), torch.randn(2, m, 16, generator=g), torch.randn(2, m, 16, generator=g)
        outs.append(layer.attend(q, k, v, 0.25))
    return torch.cat(outs, dim=1)


def test_eviction_keeps_window_bounded_and_blocks_contiguous():
    config = MemoryConfig(n_init=3, n_local=20, block_size=8, topk=2, repr_topk=2, exc_block_size=5, chunk_size=5)
    layer = make_layer(config)
    feed_random(layer, 300, seed=1)
    assert layer.n_seen == 300
    assert config.n_local <= layer.n_local <= config.max_window
    assert layer.k_init.shape[1] == 3
    # every token is either initial, in a block or in the window, exactly once
    assert config.n_init + layer.store.n_blocks * config.block_size == layer.local_start
    assert layer.k_raw.shape[1] == config.max_window + 1


def test_snapshot_restore_and_fork_by_persistence():
    config = MemoryConfig(n_init=3, n_local=20, block_size=8, topk=2, repr_topk=2, exc_block_size=5, chunk_size=5)
    rope = RotaryTable(IdentityRotary(), config.max_window + 1, torch.device("cpu"))
    memory = ContextMemory(config, 2, 2, 16, rope, TORCH, torch.device("cpu"), torch.float32)
    for layer in memory.memories:
        feed_random(layer, 120, seed=2)
    snap = memory.snapshot()
    saved = memory.state_dict()
    first = [feed_random(layer, 60, seed=3) for layer in memory.memories]
    assert memory.n_blocks > snap["blocks"][0]
    memory.restore(snap)
    again = [feed_random(layer, 60, seed=3) for layer in memory.memories]
    for a, b in zip(first, again):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    fresh = ContextMemory(config, 2, 2, 16, rope, TORCH, torch.device("cpu"), torch.float32)
    fresh.load_state_dict(saved)
    assert fresh.block_spans() == [(3 + 8 * b, 11 + 8 * b) for b in range(fresh.n_blocks)]
    third = [feed_random(layer, 60, seed=3) for layer in fresh.memories]
    for a, b in zip(first, third):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    # fork: two independent continuations of one state
    memory.restore(snap)
    twin = memory.fork()
    assert twin.memories[0].rope is memory.memories[0].rope
    other = [feed_random(layer, 60, seed=5) for layer in memory.memories]
    fourth = [feed_random(layer, 60, seed=3) for layer in twin.memories]
    for a, b in zip(first, fourth):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.equal(other[0], first[0])


@pytest.mark.parametrize("selection", list(SELECTIONS))
def test_offloaded_store_matches_device_store(selection):
    base = MemoryConfig(n_init=3, n_local=20, block_size=8, topk=2, repr_topk=2, exc_block_size=5,
                        chunk_size=5, offload=True, max_cached_block=3)
    config = with_selection(base, selection)
    on_device = make_layer(config.replace(offload=False))
    offloaded = make_layer(config)
    a = feed_random(on_device, 200, seed=4)
    b = feed_random(offloaded, 200, seed=4)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    # the device cache grows only when one chunk's selection (all KV heads together) needs more slots
    pins = config.question_pins * (1 + 2 * config.question_neighbors)
    per_head = (config.topk + pins) * (1 + 2 * config.neighbors)  # top-k, pins, neighbours
    assert len(offloaded.store._slot_of) <= max(3, 2 * per_head)
    if selection == "paper":
        assert len(offloaded.store._slot_of) <= 3


def test_block_store_grows_and_truncates():
    store = BlockStore(2, 4, 8, 2, first_token=0, device=torch.device("cpu"), dtype=torch.float32)
    for i in range(40):
        store.append(torch.full((1, 2, 8, 4), float(i)), torch.zeros(1, 2, 8, 4), torch.zeros(1, 2, 2, 4))
    assert store.n_blocks == 40 and store.capacity >= 40
    assert float(store.keys[17, 0, 0, 0]) == 17.0  # growth kept the data
    store.truncate(10)
    assert store.n_blocks == 10


def test_bounds_are_head_major_and_survive_growth_and_a_shared_load():
    """The per-channel key bounds live in a head-major [Hkv, capacity, 2D] buffer (each head's bounds one
    contiguous run, what block scoring reads), seen as [capacity, Hkv, 1, 2D]; growing the store and loading a
    saved state keep them equal to the max / min of every block's keys."""
    gen = torch.Generator().manual_seed(0)
    keys = torch.randn((37, 3, 8, 4), generator=gen)
    store = BlockStore(3, 4, 8, 2, first_token=0, device=torch.device("cpu"), dtype=torch.float32)
    for b in range(37):  # one block at a time: the buffers grow several times
        store.append(keys[b : b + 1], -keys[b : b + 1], keys[b : b + 1, :, :2])
    want = torch.cat([keys.amax(dim=2, keepdim=True), keys.amin(dim=2, keepdim=True)], dim=-1)  # [37, 3, 1, 8]
    assert store.bounds.shape[1:] == (3, 1, 8)
    assert store.bounds[0, 1].data_ptr() - store.bounds[0, 0].data_ptr() == store.capacity * 8 * 4  # head-major
    assert torch.equal(store.bounds[:37], want)
    for share in (False, True):
        loaded = BlockStore(3, 4, 8, 2, first_token=0, device=torch.device("cpu"), dtype=torch.float32)
        loaded.load_state_dict(store.state_dict(), share=share)
        assert torch.equal(loaded.bounds[:37], want)
        loaded.append(keys[:1], keys[:1], keys[:1, :, :2])  # grows past a loaded (exactly sized) buffer
        assert torch.equal(loaded.bounds[37], want[0]) and torch.equal(loaded.bounds[:37], want)


@pytest.mark.parametrize("kind", ["device", "offload", "disk", "loaded base + tail"])
def test_keys_of_reads_each_heads_blocks_wherever_they_are_stored(kind: str) -> None:
    """``keys_of`` (the question's exact re-weighing reads candidates' keys with it) gives every KV head the
    keys of its own blocks, in order, repeats included, from the device store, host memory, the disk files,
    or a loaded memory's read-only base with blocks appended after it."""
    gen = torch.Generator().manual_seed(5)
    keys = torch.randn((23, 3, 8, 4), generator=gen)

    def fresh() -> BlockStore:
        return BlockStore(3, 4, 8, 2, first_token=0, device=torch.device("cpu"), dtype=torch.float32,
                          offload=kind == "offload", disk=kind == "disk", name="keys_of")

    store = fresh()
    if kind == "loaded base + tail":
        base = fresh()
        base.append(keys[:15], -keys[:15], keys[:15, :, :2])
        store.load_state_dict(base.state_dict(), share=True)
        store.append(keys[15:], -keys[15:], keys[15:, :, :2])
        assert store.n_base == 15
    else:
        store.append(keys, -keys, keys[:, :, :2])
    blocks = torch.tensor([[0, 22, 3, 3], [16, 14, 15, 1], [7, 8, 21, 0]])
    got = store.keys_of(blocks)
    want = keys[blocks, torch.arange(3)[:, None]]
    assert got.shape == (3, 4, 8, 4) and torch.equal(got, want)


def test_blocks_of_matches_the_block_spans():
    config = MemoryConfig(n_init=3, n_local=20, block_size=8, topk=2, repr_topk=2, exc_block_size=5, chunk_size=5)
    rope = RotaryTable(IdentityRotary(), config.max_window + 1, torch.device("cpu"))
    memory = ContextMemory(config, 1, 2, 16, rope, TORCH, torch.device("cpu"), torch.float32)
    feed_random(memory.memories[0], 120, seed=1)
    spans = memory.block_spans()
    assert len(spans) > 5
    for start, end in [(0, 1), (0, 3), (2, 4), (3, 11), (10, 12), (11, 12), (17, 40), (0, 1000), (90, 95), (500, 600)]:
        assert memory.blocks_of(start, end) == [b for b, (s, e) in enumerate(spans) if s < end and start < e], (start, end)


def test_reserved_store_allocates_once_and_gives_the_same_result():
    config = MemoryConfig(n_init=3, n_local=20, block_size=8, topk=2, repr_topk=2, exc_block_size=5, chunk_size=5)
    grown, reserved = make_layer(config), make_layer(config)
    reserved.store.reserve(30)
    keys = reserved.store.keys
    a = feed_random(grown, 250, seed=6)
    b = feed_random(reserved, 250, seed=6)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert reserved.store.n_blocks == grown.store.n_blocks > 16
    assert reserved.store.keys is keys  # no growth, no copy
    assert grown.store.capacity < 2 * grown.store.n_blocks  # growth over-allocates by half at most


def test_answer_config_changes_only_the_answer_knobs_and_is_undone():
    config = MemoryConfig(n_init=3, n_local=20, block_size=8, topk=2, repr_topk=2, exc_block_size=5, chunk_size=5)
    rope = RotaryTable(IdentityRotary(), config.max_window + 1, torch.device("cpu"))
    memory = ContextMemory(config, 2, 2, 16, rope, TORCH, torch.device("cpu"), torch.float32)
    other = config.replace(question_topk=9, question_shared=0, question_neighbors=2, question_exact=3, question_rescore=64)
    with memory.answer_config(other):
        assert memory.config is other
        assert all(m.config is other and m.selector.config is other for m in memory.memories)
    assert memory.config is config and all(m.config is config and m.selector.config is config for m in memory.memories)
    with pytest.raises(ValueError, match="not topk"):
        with memory.answer_config(config.replace(topk=3)):
            pass
    assert memory.config is config
