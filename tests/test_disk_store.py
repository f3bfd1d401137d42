"""The disk-backed block store (--disk-store): same results as the in-memory store, files cleaned up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from infllm_cli.budget import Budget, MemoryBudgetError, plan, predict
from infllm_cli.config import SELECTIONS, MemoryConfig, preset, with_selection
from infllm_cli.memory.block_store import BlockStore
from infllm_cli.memory.disk_blocks import DiskBlocks, disk_store_root, sweep_stale
from infllm_cli.models import load_model
from infllm_cli.runner import Runner
from tests.test_budget import SHAPE
from tests.test_equivalence import NARROW, random_ids
from tests.test_memory import feed_random, make_layer

GiB = 2**30


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_disk_blocks_round_trip_ragged_reads(tmp_path: Path, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    shape = (3, 7, 5)  # odd sizes: no alignment is assumed
    disk = DiskBlocks(shape, dtype, tmp_path)
    keys = torch.randn(97, *shape, generator=g).to(dtype)
    values = torch.randn(97, *shape, generator=g).to(dtype)
    for start in range(0, 97, 13):  # appended in ragged pieces
        disk.append(keys[start : start + 13], values[start : start + 13])
    assert disk.n_blocks == 97 and disk.nbytes == 2 * keys.nbytes
    order = [5, 6, 7, 96, 0, 1, 50, 50, 3]  # runs, repeats, out of order
    k, v = disk.read(order)
    assert torch.equal(k, keys[order]) and torch.equal(v, values[order])
    k, none = disk.read(order, values=False)  # keys only
    assert torch.equal(k, keys[order]) and none is None
    disk.truncate(40)
    with pytest.raises(IndexError):
        disk.read([40])
    disk.append(keys[:2] * 2, values[:2] * 2)
    k, v = disk.read([39, 40, 41])
    assert torch.equal(k[0], keys[39]) and torch.equal(k[1:], keys[:2] * 2) and torch.equal(v[1:], values[:2] * 2)
    with pytest.raises(ValueError, match="do not fit"):
        disk.append(keys[:1, :2], values[:1, :2])
    folder = disk.path
    assert sorted(p.name for p in folder.iterdir()) == ["blocks.keys", "blocks.values"]
    disk.close()
    assert not folder.exists()


def test_files_are_removed_with_the_store_and_stale_ones_swept(tmp_path: Path) -> None:
    store = BlockStore(2, 4, 8, 2, 0, torch.device("cpu"), torch.float32, disk=True, name="layer000")
    store.append(torch.randn(3, 2, 8, 4), torch.randn(3, 2, 8, 4), torch.randn(3, 2, 2, 4))
    folder = store._disk.path
    assert folder.parent == disk_store_root() and (folder / "layer000.keys").stat().st_size == 3 * 2 * 8 * 4 * 4
    del store
    assert not folder.exists()
    # a directory left by a process that was killed: swept; one of a live process: kept
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"{int(dead.stdout)}-abc"
    live = tmp_path / f"{os.getppid()}-def"
    for d in (stale, live):
        d.mkdir()
        (d / "layer000.keys").write_bytes(b"x" * 10)
    (tmp_path / "not-a-store").mkdir()
    assert sweep_stale(tmp_path) == 1
    assert not stale.exists() and live.exists() and (tmp_path / "not-a-store").exists()


@pytest.mark.parametrize("selection", list(SELECTIONS))
def test_disk_store_matches_device_store(selection: str) -> None:
    """Same outputs, bit for bit, as the in-memory and the offloaded store, through eviction, retrieval from
    the block cache (3 slots, smaller than one selection) and a restored snapshot."""
    base = MemoryConfig(n_init=3, n_local=20, block_size=8, topk=2, repr_topk=2, exc_block_size=5, chunk_size=5,
                        max_cached_block=3)
    config = with_selection(base, selection)
    layers = [make_layer(config), make_layer(config.replace(offload=True)), make_layer(config.replace(disk_store=True))]
    outs = [feed_random(layer, 200, seed=4) for layer in layers]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], atol=0, rtol=0)
    disk = layers[2].store
    assert disk._disk.n_blocks == disk.n_blocks > 10 and disk.keys.numel() == 0  # nothing kept in memory
    for name, t in layers[0].store.tensors().items():
        assert torch.equal(disk.tensors()[name], t), name
    n = disk.n_blocks
    for layer in layers:  # restore a snapshot (truncate) and continue
        layer.store.truncate(n - 4)
    outs = [feed_random(layer, 60, seed=9) for layer in layers]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], atol=0, rtol=0)


def test_runner_with_disk_store_gives_the_same_logits(tiny_llama_dir: Path) -> None:
    """A whole model reading a document and answering a question: disk store == in-memory store."""
    loaded = load_model(str(tiny_llama_dir), device="cpu")
    vocab = loaded.model.config.vocab_size
    doc, question, answer = random_ids(400, vocab, seed=5), random_ids(21, vocab, seed=6), random_ids(5, vocab, seed=7)
    runs = []
    for config in (NARROW, NARROW.replace(disk_store=True)):
        runner = Runner(loaded, config, backend="torch")
        runner.feed(doc)
        runner.read_question(question)
        runs.append(torch.stack([runner.last_logits] + [runner.decode_one_token(t) for t in answer]))
        assert runner.cache.n_blocks > NARROW.topk
    torch.testing.assert_close(runs[1], runs[0], atol=1e-6, rtol=1e-6)


def test_prediction_and_refusal_offer_the_disk_store(monkeypatch: pytest.MonkeyPatch) -> None:
    paper = preset("paper")
    in_ram = predict(1_000_000, paper, "infllm", SHAPE, "cpu")
    on_disk = predict(1_000_000, paper.replace(disk_store=True), "infllm", SHAPE, "cpu")
    kv = in_ram.host_parts["block store"] - on_disk.host_parts["block store (representatives)"]
    assert on_disk.disk_bytes == kv > 100 * GiB and on_disk.host_bytes < in_ram.host_bytes - 100 * GiB
    b = Budget(host=40 * GiB, device=None, source="--memory-budget")
    with pytest.raises(MemoryBudgetError, match="--disk-store"):
        plan(1_000_000, paper, "infllm", SHAPE, "cpu", b, offload_given=False)

    class Usage:
        free = 1000 * GiB

    monkeypatch.setattr("infllm_cli.budget.shutil.disk_usage", lambda path: Usage)
    config, p = plan(1_000_000, paper.replace(disk_store=True), "infllm", SHAPE, "cpu", b, offload_given=False)
    assert config.disk_store and p.host_bytes <= b.host
    Usage.free = 10 * GiB
    with pytest.raises(MemoryBudgetError, match="the disk store needs .* but 10.0 GiB is free") as info:
        plan(1_000_000, paper.replace(disk_store=True), "infllm", SHAPE, "cpu", b, offload_given=False)
    assert "\n" not in str(info.value) and info.value.exit_code == 3


def test_cli_reads_with_the_disk_store_and_leaves_no_files(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from tests.hostile.harness import run_cli

    doc = tmp_path / "doc.txt"
    doc.write_text("The quick brown fox jumps over the lazy dog. " * 60)
    blocks = tmp_path / "blocks"
    common = ["ask", str(doc), "What?", "--model", str(tiny_llama_dir), "--preset", "micro", "--max-new-tokens", "4",
              "--no-cache", "--temperature", "0"]
    plain = run_cli(*common)
    disk = run_cli(*common, "--disk-store", "-v", env={"INFLLM_DISK_STORE_DIR": str(blocks)})
    assert plain.returncode == disk.returncode == 0, disk.err
    assert disk.stdout == plain.stdout
    assert "disk store" in disk.err and blocks.is_dir() and list(blocks.iterdir()) == []


def test_disk_backed_read_is_not_saved_but_a_cached_one_loads_into_it(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from tests.hostile.harness import run_cli

    doc = tmp_path / "doc.txt"
    doc.write_text("The quick brown fox jumps over the lazy dog. " * 60)
    common = ["ask", str(doc), "What?", "--model", str(tiny_llama_dir), "--preset", "micro", "--max-new-tokens", "4",
              "--temperature", "0"]
    first = run_cli(*common, "--disk-store")
    assert first.returncode == 0 and "not saved to the cache" in first.err
    built = run_cli(*common)  # an in-memory read is saved ...
    loaded = run_cli(*common, "--disk-store")  # ... and a disk-backed one loads it (same key: storage is not state)
    assert built.returncode == loaded.returncode == 0, loaded.err
    assert loaded.stdout == built.stdout == first.stdout
    assert "loaded" in loaded.err.lower(), loaded.err
