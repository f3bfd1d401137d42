"""Recall benchmark: the paper's block selection, each improvement, the default, streaming, dense and the
oracle, on the same generated samples in one process; plus the prefill/decode cost of paper vs default.

Usage (CPU; the recall test model committed in tests/models/recall-keys256, which tells facts of one phrasing
apart by their key; ``--model tests/models/recall-byte256`` for the earlier tables)::

    python benchmarks/bench_recall.py --lengths 16K --trials 30 --threads 2
    python benchmarks/bench_recall.py --lengths 64K --trials 10 --tasks passkey multikey
    python benchmarks/bench_recall.py --lengths 16K --filler prose --key-format words   # held-out inputs

Prints a markdown table (task x length x variant: exact match, answer-token accuracy, NLL, evidence hit
rate and median rank) and a cost table; ``--json PATH`` keeps every trial.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from infllm_cli.config import MEMORY_LIMITS, SELECTIONS, preset, with_selection  # noqa: E402
from infllm_cli.models import load_model  # noqa: E402
from infllm_cli.recall import parse_length  # noqa: E402
from infllm_cli.recall_eval import Variant, run_recall, summarize  # noqa: E402
from infllm_cli.runner import Runner  # noqa: E402

RECALL_MODEL = Path(__file__).resolve().parent.parent / "tests" / "models" / "recall-keys256"


# each selection knob: its paper value and the value the improvement uses
KNOBS = {
    "kv-head": ("per_kv_head", False, True),
    "bounds": ("block_score", "repr_sum", "bounds"),
    "repr-max": ("block_score", "repr_sum", "repr_max"),
    "query-max": ("query_score", "mean", "max"),
    # the question-aware knobs improve on the paper with the default's own values
    "question": ("question_topk", 0, SELECTIONS["default"]["question_topk"]),
    "question-neighbors": ("question_neighbors", 0, SELECTIONS["default"]["question_neighbors"]),
    "question-neighbor-rank": ("question_neighbor_rank", 0, SELECTIONS["default"]["question_neighbor_rank"]),
    "question-shared": ("question_shared", 0, SELECTIONS["default"]["question_shared"]),
    "neighbors": ("neighbors", 0, 1),
    "rescore": ("rescore", 0, 32),
    "question-exact": ("question_exact", 0, 2),
}


def variants(base, names: list[str]) -> list[Variant]:
    """``paper``, ``paper+KNOB`` (one improvement on the paper's rule), ``default``, ``default-KNOB`` (one
    knob of the default back to the paper's value), ``default+neighbors``, ``paper-3xtopk`` (control: more
    blocks), ``streaming``, ``dense``, ``default[KNOB=VALUE,...]`` / ``paper[...]`` (any selection knobs set to
    integers, e.g. ``default[question_topk=4,question_shared=2]``), and ``+oracle`` (the asked fact's blocks
    pinned) or ``+all-facts`` (every planted fact's blocks pinned, distractors included) after any infllm
    variant."""
    paper = with_selection(base, "paper")
    default = with_selection(base, "default")
    out = []
    for name in names:
        all_facts = name.endswith("+all-facts")
        oracle = name.endswith("+oracle")
        stem = name.removesuffix("+oracle").removesuffix("+all-facts")
        if stem in ("streaming", "dense"):
            out.append(Variant(name, stem, paper))
            continue
        if stem == "paper":
            config = paper
        elif stem == "default":
            config = default
        elif stem == "paper-3xtopk":
            config = paper.replace(topk=3 * base.topk)
        elif stem.endswith("]") and stem.split("[")[0] in ("paper", "default"):
            config = (paper if stem.startswith("paper") else default).replace(**knob_values(stem[stem.index("[") + 1 : -1]))
        elif stem.startswith("paper+") and stem[6:] in KNOBS:
            field, _, better = KNOBS[stem[6:]]
            config = paper.replace(**{field: better})
        elif stem.startswith("default-") and stem[8:] in KNOBS:
            field, old, _ = KNOBS[stem[8:]]
            config = default.replace(**{field: old})
        elif stem.startswith("default+") and stem[8:] in KNOBS:
            field, _, better = KNOBS[stem[8:]]
            config = default.replace(**{field: better})
        else:
            sys.exit(f"unknown variant {name!r}; see variants() in {__file__}")
        out.append(Variant(name, "infllm", config, oracle=oracle, all_facts=all_facts))
    return out


def knob_values(spec: str) -> dict[str, int | str]:
    """``"question_topk=4,block_score=repr_sum"`` -> ``{"question_topk": 4, "block_score": "repr_sum"}``
    (selection knobs; integers for the numeric ones)."""
    out: dict[str, int | str] = {}
    for item in filter(None, spec.split(",")):
        name, _, value = item.partition("=")
        if name in MEMORY_LIMITS and value.lstrip("-").isdigit():
            out[name] = int(value)
        elif name in SELECTIONS["default"] and not isinstance(SELECTIONS["default"][name], (int, bool)) and value:
            out[name] = value
        else:
            sys.exit(f"bad knob setting {item!r}: expected NAME=INTEGER with NAME one of {', '.join(MEMORY_LIMITS)}, "
                     "or NAME=VALUE for a named knob (block_score, query_score)")
    return out


ALL = ["streaming", "paper", *[f"paper+{k}" for k in KNOBS], "paper-3xtopk", "default",
       *[f"default-{k}" for k in ("kv-head", "bounds", "question", "question-shared")], "default+query-max", "default+neighbors",
       "paper+oracle", "default+oracle"]


def cost(loaded, base, tokens: int, decode: int, repeats: int) -> list[dict]:
    """Prefill tokens/s and decode ms/token of paper vs default selection, alternating, same inputs."""
    ids = torch.randint(3, loaded.model.config.vocab_size, (tokens + decode,), generator=torch.Generator().manual_seed(0)).tolist()
    rows = {name: {"selection": name, "prefill_s": [], "decode_ms": []} for name in ("paper", "default")}
    for _ in range(repeats):
        for name in rows:
            runner = Runner(loaded, with_selection(base, name), backend="torch")
            t0 = time.perf_counter()
            runner.feed(ids[:tokens])
            t1 = time.perf_counter()
            runner.read_question(ids[tokens : tokens + 8])
            t2 = time.perf_counter()
            for tok in ids[tokens + 8 : tokens + decode]:
                runner.decode_one_token(tok)
            t3 = time.perf_counter()
            rows[name]["prefill_s"].append(t1 - t0)
            rows[name]["decode_ms"].append(1000 * (t3 - t2) / (decode - 8))
    out = []
    for r in rows.values():
        p, d = min(r["prefill_s"]), min(r["decode_ms"])
        out.append({"selection": r["selection"], "tokens": tokens, "prefill_tokens_per_s": tokens / p, "prefill_s": p,
                    "decode_ms_per_token": d})
    paper_p = out[0]["prefill_s"]
    for r in out:
        r["prefill_vs_paper"] = r["prefill_s"] / paper_p
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(RECALL_MODEL))
    ap.add_argument("--preset", default="micro")
    ap.add_argument("--tasks", nargs="+", default=["passkey", "multikey"])
    ap.add_argument("--lengths", nargs="+", default=["16K"])
    ap.add_argument("--depths", nargs="+", type=float, default=[0.1, 0.5, 0.9])
    ap.add_argument("--trials", type=int, default=10, help="per task x length x depth")
    ap.add_argument("--variants", nargs="+", default=ALL)
    ap.add_argument("--filler", default="grass")
    ap.add_argument("--key-format", default="digits")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cost-tokens", type=int, default=0, help="also time paper vs default prefill on this many tokens")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    loaded = load_model(a.model, device="cpu", dtype="float32")
    base = preset(a.preset)
    vs = variants(base, a.variants)
    lengths = [parse_length(x) for x in a.lengths]
    start = time.perf_counter()
    results = run_recall(loaded, vs, a.tasks, lengths, a.depths, a.trials, seed=a.seed, filler=a.filler,
                         key_format=a.key_format, backend="torch")
    elapsed = time.perf_counter() - start
    # pool the depths: one row per task x length x variant
    pooled = summarize([type(r)(**{**r.__dict__, "depth": -1.0}) for r in results])
    print(f"recall: model {Path(a.model).name}, preset {a.preset} {base.to_dict()}, filler {a.filler}, keys {a.key_format}, "
          f"depths {a.depths}, {a.trials} trials each, seed {a.seed}, {elapsed:.0f} s, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    print("| task | length | variant | trials | exact | token acc | NLL | evidence hit | evidence rank |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in pooled:
        hit = "-" if r["evidence_hit"] is None else f"{r['evidence_hit']:.2f}"
        rank = "-" if r["evidence_rank"] is None else f"{r['evidence_rank']:.0f}"
        print(f"| {r['task']} | {r['length']:,} | {r['variant']} | {r['trials']} | {r['exact_match']:.2f} | "
              f"{r['token_accuracy']:.2f} | {r['nll']:.2f} | {hit} | {rank} |")
    costs = cost(loaded, base, a.cost_tokens, 64, 2) if a.cost_tokens else []
    if costs:
        print("\n| selection | tokens | prefill tok/s | prefill vs paper | decode ms/token |")
        print("|---|---|---|---|---|")
        for c in costs:
            print(f"| {c['selection']} | {c['tokens']:,} | {c['prefill_tokens_per_s']:.0f} | {c['prefill_vs_paper']:.2f} | "
                  f"{c['decode_ms_per_token']:.1f} |")
    if a.json:
        a.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()},
                                      "rows": summarize(results), "pooled": pooled, "cost": costs}, indent=1))


if __name__ == "__main__":
    main()
