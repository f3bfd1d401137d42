"""Perplexity by position bucket on a real checkpoint: dense, sink + window, and InfLLM with each selection.

Prints the markdown table docs/benchmarks.md shows (mean next-token NLL in nats per target-position
bucket), every row measured in this one run on the same token ids, so the table is regenerated, never
copied by hand::

    python benchmarks/bench_perplexity.py                 # ../shared/models/stories260k, preset tiny
    python benchmarks/bench_perplexity.py --ids FILE.json --model DIR --preset small

By default it reads the checkpoint's ``long_text_ids.json`` (the exact ids of its model card) when present,
else tokenizes ``long_text.txt`` as ``infllm eval perplexity`` does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from infllm_cli.config import preset, with_selection  # noqa: E402
from infllm_cli.evaluate import bucket_edges, perplexity  # noqa: E402
from infllm_cli.models import load_model  # noqa: E402

STORIES = Path(__file__).resolve().parent.parent.parent / "shared" / "models" / "stories260k"
ROWS = ("dense", "streaming", "infllm/paper", "infllm/default")


def token_ids(model_dir: Path, ids_file: Path | None, tokenizer) -> tuple[list[int], str]:
    path = ids_file or model_dir / "long_text_ids.json"
    if path.is_file():
        return json.loads(path.read_text()), str(path)
    text = (model_dir / "long_text.txt").read_text()
    return tokenizer(text)["input_ids"], str(model_dir / "long_text.txt")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=STORIES)
    ap.add_argument("--ids", type=Path, default=None, help="JSON array of token ids (default: the model's long_text_ids.json)")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--rows", nargs="+", default=list(ROWS), help=f"any of {', '.join(ROWS)}")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    if not (a.model / "config.json").is_file():
        sys.exit(f"no checkpoint at {a.model} (stories260k lives in ../shared/models beside the checkout)")
    torch.set_num_threads(a.threads)
    loaded = load_model(str(a.model), device="cpu", dtype="float32")
    ids, origin = token_ids(a.model, a.ids, loaded.tokenizer)
    base = preset(a.preset)
    results = {}
    start = time.perf_counter()
    for row in a.rows:
        attention, _, selection = row.partition("/")
        memory = with_selection(base, selection) if selection else base
        results[row] = perplexity(loaded, ids, memory, attention=attention, backend="torch")
    edges = bucket_edges(len(ids))
    names = [f"{lo}-{hi}" for lo, hi in zip(edges, edges[1:])]
    print(f"perplexity: {a.model.name}, {len(ids):,} tokens from {origin}, preset {a.preset}, torch backend, "
          f"{time.perf_counter() - start:.0f} s, torch {torch.__version__}, {a.threads} threads\n")
    print("| reading | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for row, result in results.items():
        by_start = {b["start"]: b["nll"] for b in result.buckets()}
        print(f"| {row} | " + " | ".join(f"{by_start.get(lo, float('nan')):.4f}" for lo in edges[:-1]) + " |")


if __name__ == "__main__":
    main()
