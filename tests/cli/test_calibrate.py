"""`count --calibrate`: a measured time estimate, never a nominal one."""

from __future__ import annotations

from pathlib import Path

from infllm_cli.calibrate import calibrate
from infllm_cli.config import MemoryConfig
from infllm_cli.models import load_model

SMALL = MemoryConfig(n_init=4, n_local=64, block_size=16, topk=2, repr_topk=2, exc_block_size=16, chunk_size=128)


def test_calibration_measures_model_and_scoring(tiny_llama_dir: Path) -> None:
    loaded = load_model(str(tiny_llama_dir), device="cpu")
    cal = calibrate(loaded, SMALL, "infllm", "torch", tokens=200_000, measure=64)
    assert cal.tokens_per_second > 0 and cal.measured_tokens == 64
    assert cal.scoring_seconds > 0  # 12,000 blocks scored by every query chunk of every layer
    assert cal.seconds is not None and cal.seconds > 200_000 / cal.tokens_per_second
    assert "calibrated on this machine" in cal.basis
    streaming = calibrate(loaded, SMALL, "streaming", "torch", tokens=200_000, measure=64)
    assert streaming.scoring_seconds == 0.0
    dense = calibrate(loaded, SMALL, "dense", "torch", tokens=200_000, measure=64)
    assert dense.seconds is None and "not estimated" in dense.basis


def test_count_says_unknown_without_a_measurement(cli, story_txt: Path, tiny_llama_dir: Path) -> None:
    from infllm_cli.cli.app import app

    result = cli.invoke(app, ["count", str(story_txt), "-m", str(tiny_llama_dir), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "prefill time: unknown" in result.output and "--calibrate" in result.output
    assert "peak memory: about" in result.output
    result = cli.invoke(app, ["count", str(story_txt), "-m", str(tiny_llama_dir), "--device", "cpu", "--calibrate",
                              "--n-local", "64", "--n-init", "4", "--block-size", "16", "--exc-block-size", "16", "--chunk-size", "128"])
    assert result.exit_code == 0, result.output
    assert "prefill time: about" in result.output and "calibrated on this machine" in result.output
