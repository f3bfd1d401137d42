"""benchmarks/plot_scaling.py redraws its plots from saved results (matplotlib is an optional extra)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "plot_scaling.py"


def result(attention: str, lengths: list[int], skipped_from: int | None = None) -> dict:
    rows = []
    for n in lengths:
        if skipped_from and n >= skipped_from:
            rows.append({"attention": attention, "tokens": n, "skipped": True, "predicted_peak_bytes": n * 10**6})
            continue
        rows.append({"attention": attention, "tokens": n, "tokens_per_second": 1000.0, "decode_ms_per_token": 5.0,
                     "peak_bytes": 400 * 2**20 + n * 1000, "predicted_peak_bytes": 420 * 2**20 + n * 1000})
    meta = {"date": "2026-12-01 00:00 UTC", "machine": "test CPU", "threads": 1, "load_average_at_start": 0.1,
            "load_average_at_end": 0.2, "model": "test", "preset": "tiny"}
    return {"meta": meta, "rows": rows}


def test_plots_from_merged_results(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(result("infllm", [4096, 16384])))
    b.write_text(json.dumps(result("dense", [4096, 16384], skipped_from=16384)))
    out = subprocess.run([sys.executable, str(SCRIPT), "--from-json", str(a), str(b), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    merged = json.loads((tmp_path / "scaling.json").read_text())
    assert len(merged["rows"]) == 4 and len(merged["meta"]["runs"]) == 2
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in out.stderr
        pytest.skip("matplotlib not installed: the script skipped the plots, as documented")
    for name in ("scaling_prefill.png", "scaling_memory.png", "scaling_decode.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
