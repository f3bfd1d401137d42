"""The Triton kernels (through the interpreter on CPU) give the same perplexity as the torch backend."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from infllm_cli.cli.eval_cmd import eval_app

from .conftest import DEVICES

KNOBS = ["--n-init", "4", "--n-local", "64", "--block-size", "16", "--topk", "2", "--repr-topk", "2",
         "--exc-block-size", "32", "--chunk-size", "64"]


def nll(model_dir, source, backend, device, extra=()):
    result = CliRunner().invoke(eval_app, ["perplexity", str(source), "--model", str(model_dir), "--device", device,
                                           "--backend", backend, "--json", *KNOBS, *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("device", DEVICES)
def test_triton_and_torch_backends_agree(tiny_llama_dir, tmp_path, device):
    text = tmp_path / "text.txt"
    text.write_text("The captain sailed the ship across the sea; the first mate betrayed him. " * 25)
    torch_run = nll(tiny_llama_dir, text, "torch", device)
    triton_run = nll(tiny_llama_dir, text, "triton", device)
    assert torch_run["tokens"] == triton_run["tokens"] > 300  # several blocks evicted and retrieved
    assert abs(torch_run["nll"] - triton_run["nll"]) <= 1e-3
    for a, b in zip(torch_run["buckets"], triton_run["buckets"]):
        assert abs(a["nll"] - b["nll"]) <= 1e-3


@pytest.mark.slow
def test_triton_and_torch_agree_on_stories260k(stories_dir):
    ids = stories_dir / "long_text_ids.json"
    extra = ["--token-ids", "--max-tokens", "768"]
    a = nll(stories_dir, ids, "torch", "cpu", extra)
    b = nll(stories_dir, ids, "triton", "cpu", extra)
    assert abs(a["nll"] - b["nll"]) <= 1e-3


@pytest.mark.parametrize("selection", ["paper", "default"])
@pytest.mark.parametrize("device", DEVICES)
def test_question_reading_agrees_across_backends(tiny_llama_dir, device, selection):
    """The whole answer path (question ranked by its mass, blocks pinned, per-KV-head selections with empty
    slots) gives the same logits with the Triton kernels as with the torch reference."""
    import torch

    from infllm_cli.config import MemoryConfig, with_selection
    from infllm_cli.models import load_model
    from infllm_cli.runner import Runner

    loaded = load_model(str(tiny_llama_dir), device=device)
    config = with_selection(MemoryConfig(n_init=4, n_local=64, block_size=16, topk=2, repr_topk=2, exc_block_size=32,
                                         chunk_size=64), selection)
    gen = torch.Generator().manual_seed(9)
    vocab = loaded.model.config.vocab_size
    doc, question, answer = (torch.randint(3, vocab, (n,), generator=gen).tolist() for n in (300, 17, 4))
    runs = []
    for backend in ("torch", "triton"):
        runner = Runner(loaded, config, backend=backend)
        runner.feed(doc)
        runner.read_question(question)
        runs.append(torch.stack([runner.last_logits] + [runner.decode_one_token(t) for t in answer]).float())
        if selection == "default":
            assert runner.cache.memories[0].pinned is not None
    torch.testing.assert_close(runs[1], runs[0], atol=2e-3, rtol=2e-3)
