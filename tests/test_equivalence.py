"""Equivalence tests, the backbone: InfLLM against dense attention, and against itself across chunk sizes."""

from __future__ import annotations

import pytest
import torch
import transformers

from infllm_cli.config import SELECTIONS, MemoryConfig, with_selection
from infllm_cli.models import load_model
from infllm_cli.runner import Runner
from tests.tiny_models import FAMILIES, make_tokenizer

WIDE = MemoryConfig(n_init=4, n_local=512, block_size=16, topk=2, repr_topk=2, exc_block_size=32, chunk_size=64)
NARROW = MemoryConfig(n_init=4, n_local=64, block_size=16, topk=3, repr_topk=2, exc_block_size=32, chunk_size=32)


def stream_logits(runner: Runner, ids: list[int]) -> torch.Tensor:
    return torch.cat([runner.forward(chunk, logits_to_keep=0) for chunk in runner.chunks(ids)])


def random_ids(n: int, vocab: int, seed: int = 0) -> list[int]:
    return torch.randint(3, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("family", FAMILIES)
def test_wide_window_equals_dense(tiny_model_dirs, family):
    """With n_local >= the input length, logits equal the model's own dense attention (fp32, 1e-4)."""
    loaded = load_model(str(tiny_model_dirs[family]), device="cpu")
    ids = random_ids(300, loaded.model.config.vocab_size)
    with torch.no_grad():
        dense = loaded.model(input_ids=torch.tensor([ids])).logits[0]
    got = stream_logits(Runner(loaded, WIDE, backend="torch"), ids)
    assert (got - dense).abs().max().item() <= 1e-4
    # negative control: a narrow window with eviction is *not* dense, so the comparison can fail
    narrow = stream_logits(Runner(loaded, NARROW, backend="torch"), ids)
    assert (narrow - dense).abs().max().item() > 1e-3


ROPE_VARIANTS = {
    "linear": dict(rope_type="linear", factor=2.0),
    "llama3": dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=128),
    "yarn": dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=128),
    "dynamic": dict(rope_type="dynamic", factor=2.0),
    # the window (WIDE.max_window + 1 = 564 positions) fits the original context: short factors, as dense uses
    "longrope": dict(rope_type="longrope", factor=4.0, short_factor=[1.0 + 0.1 * i for i in range(8)],
                     long_factor=[2.0 + 0.2 * i for i in range(8)], original_max_position_embeddings=1024),
}


@pytest.mark.parametrize("variant", sorted(ROPE_VARIANTS))
def test_rope_variants_equal_dense(tmp_path, variant):
    """Positions come from the model's own rotary module, so scaled RoPE (incl. YaRN's attention scaling) holds."""
    tok = make_tokenizer()
    config = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096 if variant == "longrope" else 1024,
        rope_parameters={**ROPE_VARIANTS[variant], "rope_theta": 10000.0},
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), device="cpu")
    ids = random_ids(200, config.vocab_size, seed=1)
    with torch.no_grad():
        dense = loaded.model(input_ids=torch.tensor([ids])).logits[0]
    got = stream_logits(Runner(loaded, WIDE, backend="torch"), ids)
    assert (got - dense).abs().max().item() <= 1e-4


@pytest.mark.parametrize("selection", list(SELECTIONS))
@pytest.mark.parametrize("family", ["llama", "phi3"])
def test_prefill_chunk_size_does_not_change_result(tiny_model_dirs, family, selection):
    """Eviction, retrieval and representative keys happen per query chunk, whatever the forward size."""
    loaded = load_model(str(tiny_model_dirs[family]), device="cpu")
    ids = random_ids(400, loaded.model.config.vocab_size, seed=2)
    results = []
    for chunk_size in (32, 96, 256):
        runner = Runner(loaded, with_selection(NARROW, selection).replace(chunk_size=chunk_size), backend="torch")
        results.append((stream_logits(runner, ids), runner.cache))
    base_logits, base_cache = results[0]
    assert base_cache.n_blocks > NARROW.topk  # retrieval was really exercised
    for logits, cache in results[1:]:
        torch.testing.assert_close(logits, base_logits, atol=1e-5, rtol=1e-5)
        assert cache.n_blocks == base_cache.n_blocks
        for a, b in zip(cache.memories, base_cache.memories):
            torch.testing.assert_close(a.store.repr_keys[: a.store.n_blocks], b.store.repr_keys[: b.store.n_blocks])


@pytest.mark.parametrize("selection", list(SELECTIONS))
def test_question_reading_does_not_depend_on_chunk_size(tiny_llama_dir, selection):
    """A question starts a query chunk of its own (and with question_topk is read twice, to rank then with its
    blocks pinned): the answer's logits still do not depend on how the document and question were cut."""
    loaded = load_model(str(tiny_llama_dir), device="cpu")
    vocab = loaded.model.config.vocab_size
    doc, question, answer = random_ids(333, vocab, seed=5), random_ids(21, vocab, seed=6), random_ids(5, vocab, seed=7)
    runs = []
    for chunk_size in (32, 64, 160):
        runner = Runner(loaded, with_selection(NARROW, selection).replace(chunk_size=chunk_size), backend="torch")
        runner.feed(doc)
        runner.read_question(question)
        logits = [runner.last_logits] + [runner.decode_one_token(t) for t in answer]
        runs.append(torch.stack(logits))
        assert runner.cache.n_blocks > NARROW.topk
        pinned = runner.cache.memories[0].pinned
        assert (pinned is not None) == (selection == "default")
    for other in runs[1:]:
        torch.testing.assert_close(other, runs[0], atol=1e-5, rtol=1e-5)


def test_streaming_differs_from_infllm_only_by_retrieval(tiny_llama_dir):
    loaded = load_model(str(tiny_llama_dir), device="cpu")
    ids = random_ids(400, loaded.model.config.vocab_size, seed=3)
    infllm = stream_logits(Runner(loaded, NARROW, attention="infllm", backend="torch"), ids)
    streaming = stream_logits(Runner(loaded, NARROW, attention="streaming", backend="torch"), ids)
    no_blocks = stream_logits(Runner(loaded, NARROW.replace(topk=0), attention="infllm", backend="torch"), ids)
    torch.testing.assert_close(streaming, no_blocks)
    first_eviction = NARROW.n_init + NARROW.block_size + NARROW.n_local
    torch.testing.assert_close(infllm[:first_eviction], streaming[:first_eviction])
    assert (infllm - streaming).abs().max().item() > 1e-4


def test_length_dependent_rope_is_taken_at_the_window_length():
    """LongRoPE / dynamic NTK choose frequencies by sequence length; the memory never shows a distance beyond
    its window, so the table uses the frequencies the model would use for a sequence as long as the window."""
    from infllm_cli.memory.rope import RotaryTable

    def rotary(original: int):
        config = transformers.LlamaConfig(
            hidden_size=64, num_attention_heads=4, max_position_embeddings=4 * original,
            rope_parameters={**ROPE_VARIANTS["longrope"], "original_max_position_embeddings": original,
                             "rope_theta": 10000.0},
        )
        return transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(config)

    positions = WIDE.max_window + 1
    short = RotaryTable(rotary(1024), positions, torch.device("cpu"))  # window inside the original context
    long = RotaryTable(rotary(256), positions, torch.device("cpu"))  # window beyond it
    angle_short = torch.atan2(short.sin[1], short.cos[1])[:8]
    angle_long = torch.atan2(long.sin[1], long.cos[1])[:8]
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, 16, 2).float() / 16))
    torch.testing.assert_close(angle_short, inv_freq / torch.tensor(ROPE_VARIANTS["longrope"]["short_factor"]))
    torch.testing.assert_close(angle_long, inv_freq / torch.tensor(ROPE_VARIANTS["longrope"]["long_factor"]))
