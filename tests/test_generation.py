"""Generation through the engine: equal to transformers' greedy generate, stops, sampling, snapshots."""

from __future__ import annotations

import pytest
import torch

from infllm_cli.config import ConfigError, GenerationConfig, MemoryConfig, preset
from infllm_cli.errors import ModelError, UsageError
from infllm_cli.models import load_model
from infllm_cli.runner import Runner
from infllm_cli.sampling import sample_next

WIDE = MemoryConfig(n_init=4, n_local=512, block_size=16, topk=2, repr_topk=2, exc_block_size=32, chunk_size=64)
NARROW = MemoryConfig(n_init=4, n_local=64, block_size=16, topk=3, repr_topk=2, exc_block_size=32, chunk_size=32)


def generated_ids(runner: Runner, prompt: list[int], gen: GenerationConfig) -> list[int]:
    tok = runner.loaded.tokenizer
    text = "".join(runner.generate(prompt, gen))
    return tok(text, add_special_tokens=False)["input_ids"], text


@pytest.mark.parametrize("family", ["llama", "qwen3", "phi3"])
def test_greedy_equals_transformers_generate(tiny_model_dirs, family):
    loaded = load_model(str(tiny_model_dirs[family]), device="cpu")
    prompt = torch.randint(3, loaded.model.config.vocab_size, (150,), generator=torch.Generator().manual_seed(0)).tolist()
    with torch.no_grad():
        want = loaded.model.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False,
                                     eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    runner = Runner(loaded, WIDE, backend="torch")
    runner.feed(prompt)
    logits = runner.last_logits
    got = []
    for _ in range(40):
        token = sample_next(logits, GenerationConfig())
        got.append(token)
        logits = runner.decode_one_token(token)
    assert got == want
    # and through generate(): the text decodes from the same ids
    runner.reset()
    runner.feed(prompt)
    text = "".join(runner.generate([], GenerationConfig(max_new_tokens=40, stop_token_ids=())))
    stop = loaded.eos_token_ids
    expected = want[: next((i for i, t in enumerate(want) if t in stop), len(want))]
    assert text == loaded.tokenizer.decode(expected, skip_special_tokens=True)


def test_stops_at_eos_and_token_limit(tiny_llama_dir):
    loaded = load_model(str(tiny_llama_dir), device="cpu")
    runner = Runner(loaded, NARROW, backend="torch")
    runner.feed(list(range(3, 200)))
    snap = runner.snapshot()
    first = "".join(runner.generate([5, 6], GenerationConfig(max_new_tokens=7)))
    assert runner.stats.generated_tokens <= 7
    runner.restore(snap)
    # make the greedy choice an end-of-sequence token: generation yields nothing
    runner.read_question([5, 6])  # the prompt is read as generate() reads it
    greedy = sample_next(runner.last_logits, GenerationConfig())
    runner.restore(snap)
    assert "".join(runner.generate([5, 6], GenerationConfig(max_new_tokens=7, stop_token_ids=(greedy,)))) == ""
    runner.restore(snap)
    assert "".join(runner.generate([5, 6], GenerationConfig(max_new_tokens=7))) == first


def test_sampling_is_reproducible_with_seed(tiny_llama_dir):
    loaded = load_model(str(tiny_llama_dir), device="cpu")
    runner = Runner(loaded, NARROW, backend="torch")
    runner.feed(list(range(3, 150)))
    snap = runner.snapshot()
    gen = GenerationConfig(max_new_tokens=20, temperature=1.0, top_p=0.9, seed=123)
    a = "".join(runner.generate([7], gen))
    runner.restore(snap)
    b = "".join(runner.generate([7], gen))
    runner.restore(snap)
    c = "".join(runner.generate([7], GenerationConfig(max_new_tokens=20, temperature=1.0, top_p=0.9, seed=124)))
    assert a == b and a != c


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([0.6, 0.3, 0.05, 0.05]))
    gen = GenerationConfig(temperature=1.0, top_p=0.8, seed=0)
    g = torch.Generator().manual_seed(0)
    picks = {sample_next(logits, gen, g) for _ in range(200)}
    assert picks == {0, 1}


def test_config_validation_names_the_fix():
    with pytest.raises(ConfigError, match="exc_block_size .* must not exceed n_local"):
        MemoryConfig(n_local=256, exc_block_size=512)
    with pytest.raises(ConfigError, match="multiple of exc_block_size"):
        MemoryConfig(chunk_size=1000, exc_block_size=512)
    with pytest.raises(ConfigError, match="repr_topk"):
        MemoryConfig(block_size=4, repr_topk=8, n_local=64, exc_block_size=32, chunk_size=64)
    with pytest.raises(ConfigError, match="unknown memory preset"):
        preset("huge")
    assert preset("paper") == MemoryConfig()
    assert preset("paper").to_dict()["n_local"] == 4096
    with pytest.raises(ConfigError):
        GenerationConfig(top_p=0.0)


def test_model_errors(tmp_path, tiny_llama_dir):
    with pytest.raises(ModelError, match="no model weights"):
        (tmp_path / "config.json").write_text((tiny_llama_dir / "config.json").read_text())
        load_model(str(tmp_path), device="cpu")
    with pytest.raises(ModelError, match="neither a local model directory nor in the local Hugging Face cache"):
        load_model("nobody/no-such-model-xyz", device="cpu")
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text('{"model_type": "gpt2"}')
    (gpt2 / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="unsupported architecture 'gpt2'.*llama, mistral, qwen2, qwen3, phi3"):
        load_model(str(gpt2), device="cpu")
    loaded = load_model(str(tiny_llama_dir), device="cpu")
    with pytest.raises(UsageError, match="unknown attention"):
        Runner(loaded, WIDE, attention="sparse")


@pytest.mark.parametrize("attention", ["dense", "streaming", "infllm"])
def test_restore_answers_every_question_from_the_same_read(tiny_llama_dir, attention):
    loaded = load_model(str(tiny_llama_dir), device="cpu")
    runner = Runner(loaded, NARROW, attention=attention, backend="torch")
    runner.feed(list(range(3, 250)))
    after_doc = runner.snapshot()
    gen = GenerationConfig(max_new_tokens=12)
    first = "".join(runner.generate([9, 10, 11], gen))
    runner.restore(after_doc)
    "".join(runner.generate([12, 13], gen))  # another question in between
    runner.restore(after_doc)
    assert runner.tokens_seen == 247
    assert "".join(runner.generate([9, 10, 11], gen)) == first


def test_load_model_reuses_a_given_tokenizer(tiny_llama_dir):
    first = load_model(str(tiny_llama_dir), device="cpu")
    again = load_model(str(tiny_llama_dir), device="cpu", tokenizer=first.tokenizer)
    assert again.tokenizer is first.tokenizer
