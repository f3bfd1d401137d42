"""The memory prediction and the pre-flight check (no model is loaded)."""

from __future__ import annotations

import logging

import pytest

from infllm_cli.budget import Budget, MemoryBudgetError, fits, parse_size, plan, predict
from infllm_cli.config import EXACT_SCORE_BUDGET, preset
from infllm_cli.errors import UsageError
from infllm_cli.estimate import ModelShape

GiB = 2**30
SHAPE = ModelShape(layers=32, kv_heads=8, head_dim=128, dtype="bfloat16", dtype_bytes=2, max_position_embeddings=8192,
                   weights_bytes=16 * GiB, heads=32, hidden_size=4096, intermediate_size=14336, vocab_size=128256,
                   parameters=8 * 10**9)
PAPER = preset("paper")


def test_parse_size() -> None:
    assert parse_size("8G", "x") == 8 * GiB and parse_size("512M", "x") == 512 * 2**20
    assert parse_size("1.5GiB", "x") == int(1.5 * GiB) and parse_size("100000", "x") == 100000
    for bad in ("", "lots", "-1G", "0", "5X"):
        with pytest.raises(UsageError, match="--memory-budget"):
            parse_size(bad, "--memory-budget")


def test_block_store_grows_linearly_and_the_rest_is_bounded() -> None:
    p1 = predict(1_000_000, PAPER, "infllm", SHAPE, "cuda")
    p2 = predict(2_000_000, PAPER, "infllm", SHAPE, "cuda")
    store1, store2 = p1.device_parts["block store"], p2.device_parts["block store"]
    # K and V of every token, plus per block 4 representative keys, their sum and the bounds (2 keys)
    per_token = SHAPE.kv_bytes_per_token * (2 * 128 + 4 + 1 + 2) / (2 * 128)
    assert store2 - store1 == pytest.approx(1_000_000 * per_token, rel=0.001)
    assert p1.device_parts["weights"] == 16 * 10**9
    assert p2.device_parts["window"] == p1.device_parts["window"] and p2.device_parts["activations"] == p1.device_parts["activations"]
    streaming = predict(2_000_000, PAPER, "streaming", SHAPE, "cuda")
    assert streaming.device_bytes < p1.device_bytes - store1 + 2**20
    assert predict(100_000, PAPER, "dense", SHAPE, "cuda").device_bytes > predict(100_000, PAPER, "infllm", SHAPE, "cuda").device_bytes
    # every pinned question block (own, shared, widened) is read beside the top-k: the activations grow with them
    acts = [predict(1_000_000, PAPER.replace(question_topk=4, question_neighbors=1, question_shared=s), "infllm", SHAPE, "cuda")
            .device_parts["activations"] for s in (0, 2, 4)]
    assert acts[0] < acts[1] < acts[2] and acts[2] - acts[1] == pytest.approx(acts[1] - acts[0], abs=2)
    exact = predict(1_000_000, PAPER.replace(question_topk=4, question_neighbors=1, question_shared=2, question_exact=2), "infllm",
                    SHAPE, "cuda").device_parts["activations"]
    # two exact blocks are read like two more shared ones; weighing the candidates adds their keys in float32
    # and the sliced scores, once
    weighing = SHAPE.kv_heads * 256 * PAPER.block_size * SHAPE.head_dim * (SHAPE.dtype_bytes + 4) + 4 * EXACT_SCORE_BUDGET
    assert exact - acts[2] == pytest.approx(weighing, abs=2)


def test_offload_moves_keys_and_values_to_the_host() -> None:
    on_gpu = predict(1_000_000, PAPER, "infllm", SHAPE, "cuda")
    off = predict(1_000_000, PAPER.replace(offload=True), "infllm", SHAPE, "cuda")
    assert off.device_bytes < on_gpu.device_bytes - 100 * GiB
    assert off.host_bytes > on_gpu.host_bytes + 100 * GiB
    cpu = predict(1_000_000, PAPER, "infllm", SHAPE, "cpu")
    assert cpu.device_bytes == 0 and cpu.host_bytes >= on_gpu.device_bytes


def test_refusal_is_one_line_with_a_max_tokens_that_fits() -> None:
    b = Budget(host=40 * GiB, device=None, source="--memory-budget")
    with pytest.raises(MemoryBudgetError) as info:
        plan(1_000_000, PAPER, "infllm", SHAPE, "cpu", b, offload_given=False)
    message = str(info.value)
    assert "\n" not in message and len(message) <= 300 and info.value.exit_code == 3
    assert "1,000,000 tokens" in message and "--skip-memory-check" in message
    n = int(message.split("--max-tokens ")[1].split()[0].rstrip(","))
    assert fits(predict(n, PAPER, "infllm", SHAPE, "cpu"), b) and not fits(predict(n + 1, PAPER, "infllm", SHAPE, "cpu"), b)
    config, p = plan(n, PAPER, "infllm", SHAPE, "cpu", b, offload_given=False)
    assert config == PAPER and p.host_bytes <= b.host


def test_block_store_moves_to_host_when_it_does_not_fit_the_gpu(caplog: pytest.LogCaptureFixture) -> None:
    b = Budget(host=512 * GiB, device=80 * GiB, source="test")
    with caplog.at_level(logging.WARNING, logger="infllm.budget"):
        config, p = plan(1_000_000, PAPER, "infllm", SHAPE, "cuda", b, offload_given=False)
    assert config.offload and p.device_bytes <= b.device
    assert "host memory" in caplog.text
    # --no-offload given: refused, and the message says --offload would fit
    with pytest.raises(MemoryBudgetError, match="--offload"):
        plan(1_000_000, PAPER, "infllm", SHAPE, "cuda", b, offload_given=True)


def test_unknown_availability_refuses_nothing() -> None:
    config, _ = plan(10**9, PAPER, "infllm", SHAPE, "cpu", Budget(None, None, "unknown"), offload_given=False)
    assert config == PAPER
