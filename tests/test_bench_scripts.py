"""The A/B benchmark scripts run end to end on tiny settings (their figures are for docs/, not for tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def test_bench_decode_prints_a_row_per_store_size_and_checks_the_variants_agree(tmp_path: Path) -> None:
    """The baseline runs on block-major bounds and the concatenated attention, the current code on the
    head-major store; the script asserts their logits agree, so a broken baseline or layout fails here."""
    out = subprocess.run([sys.executable, str(BENCH / "bench_decode.py"), "--tokens", "600", "--blocks", "0", "40",
                          "--decode", "3", "--repeats", "1", "--threads", "1", "--short", "300"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split("|")[1].strip() for row in rows] == ["0", "40"]
    assert all(len(row.split("|")) == 8 for row in rows)  # blocks, 2 variants, ratio, short doc, ratio


def test_bench_recall_takes_knob_settings_as_variants() -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import bench_recall
    finally:
        sys.path.remove(str(BENCH))
    from infllm_cli.config import preset

    got = bench_recall.variants(preset("micro"), ["default[question_topk=1,question_shared=5]+oracle", "paper[topk=2]"])
    assert got[0].oracle and (got[0].memory.question_topk, got[0].memory.question_shared) == (1, 5)
    assert got[0].memory.per_kv_head  # the rest of the default selection is kept
    assert got[1].memory.topk == 2 and not got[1].memory.per_kv_head and not got[1].oracle
    facts = bench_recall.variants(preset("micro"), ["default+all-facts"])[0]
    assert facts.all_facts and not facts.oracle and facts.memory == got[0].memory.replace(question_topk=4, question_shared=4)
    named = bench_recall.variants(preset("micro"), ["paper[block_score=bounds,question_shared=8]"])[0].memory
    assert (named.block_score, named.question_shared) == ("bounds", 8)
    exact = bench_recall.variants(preset("micro"), ["paper+question-exact"])[0].memory
    assert (exact.question_exact, exact.question_rescore, exact.question_shared) == (2, 256, 0)
    with pytest.raises(SystemExit):
        bench_recall.knob_values("per_kv_head=yes")
    with pytest.raises(SystemExit, match="bad knob setting"):
        bench_recall.variants(preset("micro"), ["default[question_topk=x]"])
    with pytest.raises(SystemExit, match="bad knob setting"):
        bench_recall.variants(preset("micro"), ["default[no_such_knob=1]"])


def test_cite_trials_runs_the_default_with_the_knobs_it_is_given(tmp_path: Path) -> None:
    """``--knobs`` changes the selection the trials ask with (and says so); a bad setting is refused."""
    model = Path(__file__).resolve().parent / "models" / "recall-lines256"
    cmd = [sys.executable, str(BENCH / "cite_trials.py"), "--model", str(model), "--kinds", "lines", "--seeds", "1"]
    out = subprocess.run(cmd + ["--knobs", "question_exact=1,question_rescore=8"], capture_output=True, text=True,
                         timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "'question_exact': 1" in out.stdout and "'question_rescore': 8" in out.stdout
    assert [line.split("|")[2].strip() for line in out.stdout.splitlines() if line.startswith("| lines")] == ["3"]
    bad = subprocess.run(cmd + ["--knobs", "question_exact=x"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert bad.returncode != 0 and "bad knob setting" in bad.stderr


def test_benchmark_models_take_the_shape_they_are_given(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCH))
    try:
        from bench_prefill import SHAPES, build_model
    finally:
        sys.path.remove(str(BENCH))
    import json

    build_model(str(tmp_path), 64, 1, 4, 2, intermediate=96, vocab=300)
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["hidden_size"], config["intermediate_size"], config["vocab_size"]) == (64, 96, 300)
    assert json.loads((tmp_path / "tokenizer.json").read_text())["model"]["vocab"]["t299"] == 299
    assert SHAPES["tiny"] == (256, 4, 8, 4, 640, 4096)  # the decode tables' model before shapes were named
