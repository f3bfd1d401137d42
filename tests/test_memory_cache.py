"""The persistent memory cache: exact reuse, prefix reuse, stale and damaged entries, eviction, save/load."""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path

import pytest
import torch

from infllm_cli.config import GenerationConfig, MemoryConfig
from infllm_cli.memory.block_store import BlockStore
from infllm_cli.memory.cache import ContextMemory
from infllm_cli.models import load_model
from infllm_cli.persist import CachedRead, EntryError, MemoryCache
from infllm_cli.persist.files import TENSORS, read_manifest
from infllm_cli.persist.memory_state import load_memory
from infllm_cli.runner import Runner
from tests.tiny_models import make_tiny_model

CFG = MemoryConfig(n_init=4, n_local=64, block_size=16, topk=2, repr_topk=2, exc_block_size=16, chunk_size=64)
PREFIX = [1, 5, 9]


@pytest.fixture(scope="module")
def loaded(tiny_llama_dir):
    return load_model(str(tiny_llama_dir), device="cpu", dtype="float32")


def body(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(4, 300) for _ in range(n)]


def cached(loaded, cache, ids, cfg=CFG, **kw):
    runner = Runner(loaded, cfg, backend="torch")
    outcome = CachedRead(runner, cache, PREFIX, ids, **kw).run()
    return runner, outcome


def full_read(loaded, ids, cfg=CFG) -> Runner:
    runner = Runner(loaded, cfg, backend="torch")
    runner.feed(PREFIX)
    runner.feed(ids)
    return runner


def same_state(a: Runner, b: Runner) -> None:
    """Same last logits, and the same logits for a few more tokens (that retrieve from the memory)."""
    assert torch.equal(a.last_logits, b.last_logits)
    more = [7, 8, 9, 10, 11, 12, 13, 14] * 3
    assert torch.equal(a.forward(more, logits_to_keep=0), b.forward(more, logits_to_keep=0))


# -- reuse ---------------------------------------------------------------------------------------------


def test_second_read_loads_the_identical_memory(loaded, tmp_path):
    cache = MemoryCache(tmp_path)
    ids = body(700)
    first, out1 = cached(loaded, cache, ids)
    assert out1.how == "built" and out1.entry_id and out1.tokens_read == len(ids) + len(PREFIX)
    second, out2 = cached(loaded, cache, ids)
    assert out2.how == "loaded" and out2.tokens_read == 0 and out2.entry_id == out1.entry_id
    assert second.cache.n_blocks == first.cache.n_blocks > 0
    assert second.cache.memories[0].store.n_base == second.cache.n_blocks  # blocks mapped from the file
    same_state(second, full_read(loaded, ids))


def test_answers_from_a_loaded_memory_equal_answers_after_reading(loaded, tmp_path):
    from infllm_cli.cli.session import DocumentSession, read_document
    from infllm_cli.sources import open_source

    text = tmp_path / "doc.txt"
    text.write_text(" ".join(f"The captain sailed the ship on day {i}; the mate read the report." for i in range(60)))
    doc = read_document(open_source(str(text)), loaded.tokenizer)
    gen = GenerationConfig(max_new_tokens=12)
    questions = ["Who sailed the ship?", "What did the mate read?"]

    def answers(cache):
        session = DocumentSession(Runner(loaded, CFG, backend="torch"), cache=cache)
        session.read(doc)
        return session, ["".join(session.ask(q, gen)) for q in questions]

    _, plain = answers(None)
    cache = MemoryCache(tmp_path / "cache")
    s1, built = answers(cache)
    s2, again = answers(cache)
    assert s1.outcome.how == "built" and s2.outcome.how == "loaded"
    assert built == plain and again == plain
    # the document's provenance is kept in the entry and can be restored
    manifest = read_manifest(cache.path(s2.outcome.entry_id))
    assert manifest["document"]["segments"][0]["path"] == doc.segments[0].path
    assert manifest["document_name"] == doc.name


def test_a_loaded_memory_cites_the_same_passages(loaded, tmp_path):
    """Citations survive the cache: the same question over a loaded memory, and over a document whose
    provenance (span map) was restored from the entry, cites the same passages with the same scores."""
    from infllm_cli.cli.session import DocumentSession, read_document
    from infllm_cli.sources import open_source

    text = tmp_path / "doc.txt"
    text.write_text("\n".join(f"Line {i}: the captain logged {i * 7} barrels in the hold." for i in range(80)) + "\n")
    doc = read_document(open_source(str(text)), loaded.tokenizer)
    gen = GenerationConfig(max_new_tokens=8)
    cache = MemoryCache(tmp_path / "cache")

    def cited(document):
        session = DocumentSession(Runner(loaded, CFG, backend="torch"), cache=cache)
        session.read(document)
        answer = session.ask("How many barrels?", gen, cite=True, max_sources=3)
        text_out = "".join(answer)
        return session, text_out, [(s.path, s.line_start, s.line_end, s.tokens, round(s.score, 5)) for s in answer.sources]

    s1, a1, sources1 = cited(doc)
    s2, a2, sources2 = cited(doc)
    assert s1.outcome.how == "built" and s2.outcome.how == "loaded"
    assert a1 == a2 and sources1 == sources2 and sources1
    # the provenance saved in the entry maps token ranges to the same lines
    from infllm_cli.persist.files import read_entry
    from infllm_cli.persist.memory_state import restore_document

    manifest, tensors = read_entry(cache.path(s2.outcome.entry_id))
    saved_doc = restore_document(manifest["document"], tensors)
    assert saved_doc.span_map is not None
    for _, start, end, tokens, _ in sources1:
        assert saved_doc.locate(*tokens) == doc.locate(*tokens)


def test_prefix_reuse_is_exact_for_appended_tokens(loaded, tmp_path):
    cache = MemoryCache(tmp_path)
    ids = body(1000)
    cached(loaded, cache, ids)
    grown = ids + body(37, seed=1)
    runner, out = cached(loaded, cache, grown)
    n_old = len(PREFIX) + len(ids)
    assert out.how == "extended"
    assert out.tokens_reused == n_old // CFG.chunk_size * CFG.chunk_size  # the last chunk boundary
    assert out.tokens_read == len(PREFIX) + len(grown) - out.tokens_reused
    same_state(runner, full_read(loaded, grown))


def test_a_change_forces_a_re_read_from_before_it(loaded, tmp_path):
    cache = MemoryCache(tmp_path)
    ids = body(1000)
    cached(loaded, cache, ids, checkpoints=8)
    late = list(ids)
    late[900] = (late[900] + 1) % 300 + 4
    runner, out = cached(loaded, cache, late)
    assert out.how == "extended" and 0 < out.tokens_reused <= 900 + len(PREFIX)
    same_state(runner, full_read(loaded, late))
    early = list(ids)
    early[10] = (early[10] + 1) % 300 + 4
    runner, out = cached(loaded, cache, early)
    assert out.how == "built" and out.tokens_reused == 0
    same_state(runner, full_read(loaded, early))


@pytest.mark.parametrize("change", ["document", "config", "dtype", "model", "attention"])
def test_a_changed_input_never_reuses_a_stale_entry(loaded, tmp_path, change):
    cache = MemoryCache(tmp_path)
    ids = body(400)
    cached(loaded, cache, ids)
    model, cfg, attention, new_ids = loaded, CFG, "infllm", ids
    if change == "document":
        new_ids = [(t + 1) % 300 + 4 for t in ids]
    elif change == "config":
        cfg = CFG.replace(topk=3)
    elif change == "dtype":
        model = load_model(str(loaded.model.config._name_or_path), device="cpu", dtype="bfloat16")
    elif change == "model":
        other = make_tiny_model(tmp_path / "other-model", seed=1)
        model = load_model(str(other), device="cpu", dtype="float32")
    runner = Runner(model, cfg, attention=attention if change != "attention" else "streaming", backend="torch")
    out = CachedRead(runner, cache, PREFIX, new_ids).run()
    assert out.how == "built" and out.tokens_reused == 0
    assert len(cache.ids()) == 2


def test_answer_time_knobs_do_not_invalidate(loaded, tmp_path):
    cache = MemoryCache(tmp_path)
    ids = body(300)
    cached(loaded, cache, ids)
    _, out = cached(loaded, cache, ids, cfg=CFG.replace(question_topk=7))
    assert out.how == "loaded"


def test_refresh_rebuilds(loaded, tmp_path):
    cache = MemoryCache(tmp_path)
    ids = body(300)
    cached(loaded, cache, ids)
    _, out = cached(loaded, cache, ids, refresh=True)
    assert out.how == "built" and cache.ids() == [out.entry_id] and cache.verify(out.entry_id) is None


# -- damaged entries -------------------------------------------------------------------------------------


def _damage(path: Path, how: str, other: Path) -> None:
    tensors = path / TENSORS
    if how == "corrupted":
        data = bytearray(tensors.read_bytes())
        data[len(data) // 2] ^= 0xFF
        tensors.write_bytes(bytes(data))
    elif how == "truncated":
        with open(tensors, "r+b") as f:
            f.truncate(tensors.stat().st_size // 3)
    elif how == "manifest":
        (path / "manifest.json").write_text('{"format": 1, "checkpoints": [')
    elif how == "foreign":  # a valid entry of another document under this name
        shutil.rmtree(path)
        shutil.copytree(other, path)
    elif how == "future":
        manifest = json.loads((path / "manifest.json").read_text())
        manifest["format"] = 99
        (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("how", ["corrupted", "truncated", "manifest", "foreign", "future"])
def test_damaged_entries_are_rebuilt_with_a_warning(loaded, tmp_path, caplog, how):
    cache = MemoryCache(tmp_path)
    ids = body(500)
    _, out = cached(loaded, cache, ids)
    _, other = cached(loaded, cache, body(200, seed=5))
    _damage(cache.path(out.entry_id), how, cache.path(other.entry_id))
    with caplog.at_level(logging.WARNING, logger="infllm"):
        runner, again = cached(loaded, cache, ids)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert again.how == "built", warnings
    assert len(warnings) == 1 and "unusable" in warnings[0] and "\n" not in warnings[0]
    assert cache.verify(out.entry_id) is None  # rebuilt, intact
    same_state(runner, full_read(loaded, ids))


def test_load_memory_rejects_a_corrupted_file(loaded, tmp_path):
    runner = full_read(loaded, body(300))
    runner.cache.save(tmp_path / "m")
    _damage(tmp_path / "m", "corrupted", tmp_path)
    with pytest.raises(EntryError, match="checksum"):
        ContextMemory.load(tmp_path / "m", loaded, backend="torch")


# -- library save / load -----------------------------------------------------------------------------------


def test_save_and_load_a_memory(loaded, tmp_path):
    from infllm_cli.cli.session import read_document
    from infllm_cli.sources import open_source

    text = tmp_path / "doc.md"
    text.write_text("# One\n\n" + "the ship sailed. " * 80 + "\n\n# Two\n\n" + "the robot read. " * 80)
    doc = read_document(open_source(str(text)), loaded.tokenizer)
    runner = Runner(loaded, CFG, backend="torch")
    runner.feed(doc.ids)
    runner.cache.save(tmp_path / "mem", logits=runner.last_logits, document=doc)
    memory, logits, restored = load_memory(tmp_path / "mem", loaded, backend="torch")
    assert torch.equal(logits, runner.last_logits)
    assert restored.segments == doc.segments and restored.ids == doc.ids and restored.report == doc.report
    assert memory.memories[0].store.n_base == memory.n_blocks > 0
    other = Runner(loaded, CFG, backend="torch")
    other.cache, other.tokens_seen, other.last_logits = memory, memory.n_seen, logits
    same_state(other, runner)


def test_block_store_state_dict_is_a_copy():
    store = BlockStore(2, 4, 8, 2, 0, torch.device("cpu"), torch.float32)
    store.append(torch.ones(3, 2, 8, 4), torch.ones(3, 2, 8, 4), torch.ones(3, 2, 2, 4))
    state = store.state_dict()
    store.truncate(0)
    store.append(torch.zeros(3, 2, 8, 4), torch.zeros(3, 2, 8, 4), torch.zeros(3, 2, 2, 4))
    assert float(state["keys"].sum()) == 3 * 2 * 8 * 4 and float(state["values"].min()) == 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_offloaded_append_stores_the_data_of_the_device_tensors():
    dev = torch.device("cuda")
    store = BlockStore(8, 128, 128, 4, 0, dev, torch.float16, offload=True)
    for i in range(20):
        keys = torch.randn(64, 8, 128, 128, device=dev, dtype=torch.float16) @ torch.eye(128, device=dev, dtype=torch.float16)
        store.append(keys, keys + 1, keys[:, :, :4])
        del keys  # the memory can be reused at once by the next kernel
        torch.randn(64, 8, 128, 128, device=dev, dtype=torch.float16).mul_(0)
    torch.cuda.synchronize()
    assert torch.equal(store.keys[: store.n_blocks] + 1, store.values[: store.n_blocks])


def test_a_loaded_store_grows_without_copying_its_base(loaded, tmp_path):
    cache = MemoryCache(tmp_path)
    ids = body(600)
    cached(loaded, cache, ids)
    runner, out = cached(loaded, cache, ids)
    store = runner.cache.memories[0].store
    n = store.n_blocks
    runner.feed(body(200, seed=3))  # evicts more blocks into the tail
    assert store.n_base == n and store.n_blocks > n
    reference = full_read(loaded, ids)
    reference.feed(body(200, seed=3))
    same_state(runner, reference)


# -- the cache directory -----------------------------------------------------------------------------------


def test_least_recently_used_entries_are_evicted(loaded, tmp_path):
    cache = MemoryCache(tmp_path)
    _, a = cached(loaded, cache, body(300, seed=1))
    _, b = cached(loaded, cache, body(300, seed=2))
    cached(loaded, cache, body(300, seed=1))  # a is used again: b is now the least recently used
    small = MemoryCache(tmp_path, max_bytes=int(a.entry_bytes * 2.5))
    _, c = cached(loaded, small, body(300, seed=3))
    assert set(small.ids()) == {a.entry_id, c.entry_id}


def test_an_entry_over_the_budget_is_not_saved(loaded, tmp_path, caplog):
    cache = MemoryCache(tmp_path, max_bytes=1000)
    with caplog.at_level(logging.WARNING, logger="infllm"):
        _, out = cached(loaded, cache, body(300))
    assert out.how == "built" and out.entry_id is None and cache.ids() == []
    assert any("budget" in r.getMessage() for r in caplog.records)


def test_no_pickle_in_the_code_base():
    """Nothing loads pickles: no pickle module, no torch.save, no torch.load without weights_only=True."""
    import re

    root = Path(__file__).resolve().parents[1]
    pattern = re.compile(r"\bimport pickle\b|\bpickle\.loads?\(|\btorch\.save\(|\bcPickle\b|\bjoblib\.load\(")
    torch_load = re.compile(r"torch\.load\(([^)]*)\)")
    offenders = []
    # the shipped code and docs; tests may write pickles on purpose (the hostile-model tests check they are refused)
    files = [p for d in ("infllm_cli", "kernels", "benchmarks", "docs") for p in (root / d).rglob("*") if p.suffix in (".py", ".md")]
    for path in files + [root / "README.md"]:
        if path.resolve() == Path(__file__).resolve():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if pattern.search(text):
            offenders.append(str(path.relative_to(root)))
        offenders += [f"{path.relative_to(root)}: torch.load({m.group(1)})" for m in torch_load.finditer(text) if "weights_only=True" not in m.group(1)]
    assert offenders == []


def test_summaries_reuse_the_memory_of_the_whole_document_and_of_each_part(loaded, tmp_path):
    from infllm_cli.cli.session import Summarizer, read_document
    from infllm_cli.sources import open_source

    text = tmp_path / "doc.md"
    text.write_text("".join(f"# Part {i}\n\n" + "the ship sailed to the harbour. " * 40 + "\n\n" for i in range(3)))
    doc = read_document(open_source(str(text)), loaded.tokenizer)
    gen = GenerationConfig(max_new_tokens=8)
    cache = MemoryCache(tmp_path / "cache")
    results = []
    for _ in range(2):
        summ = Summarizer(Runner(loaded, CFG, backend="torch"), cache=cache)
        whole = "".join(summ.whole(doc, "brief", gen))
        parts = ["".join(summ.part(doc, p, gen)) for p in summ.plan(doc)]
        results.append((whole, parts, [o.how for o in summ.outcomes]))
    assert results[0][:2] == results[1][:2]
    assert set(results[0][2]) == {"built"} and set(results[1][2]) == {"loaded"}


def test_an_unusable_cache_directory_reads_without_it(loaded, tmp_path, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    with caplog.at_level(logging.WARNING, logger="infllm"):
        runner, out = cached(loaded, MemoryCache(blocker), body(200))
    assert out.how == "built" and out.entry_id is None and "not usable" in out.describe()
    assert [r for r in caplog.records if "not usable" in r.getMessage()]
    same_state(runner, full_read(loaded, body(200)))
