"""End-to-end citation trials: is the answer's top source the page / file / line that holds the fact?

A pass key is planted in a generated 40-page PDF (on page 6, 20 or 33), a 12-file repository (in file 1, 5
or 10) and a 150-line text (at line 20, 75 or 130), for each of ``--seeds`` seeds; the recall test model
(micro preset, default selection) is asked for it with citations. Prints every trial (answer, right or
not, top three sources) and, per kind, how often the answer was right and how often the top source was
the planted page / file / line. About 35 s for the 27 trials of three seeds on a 2-core CPU.

    python benchmarks/cite_trials.py                                   # tests/models/recall-lines256
    python benchmarks/cite_trials.py --model tests/models/recall-byte256 --kinds pdf
    python benchmarks/cite_trials.py --oracle            # the fact's blocks pinned: the selection's ceiling
    python benchmarks/cite_trials.py --knobs question_topk=0,question_shared=2   # the default with other knobs
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tests.test_citations as citations  # noqa: E402
from benchmarks.bench_recall import knob_values  # noqa: E402
from infllm_cli.models import load_model  # noqa: E402
from tests.test_citations import PLANTS, ask_with_sources, is_planted_place  # noqa: E402


def trial(loaded, kind: str, seed: int, position: int, tmp: Path, oracle: bool = False) -> tuple[bool, bool, str]:
    path, key, where = PLANTS[kind][0](tmp, seed, position)
    _, text, answer = ask_with_sources(loaded, path, oracle_key=key if oracle else None)
    shown = [(s.page if kind == "pdf" else s.path if kind == "repo" else (s.line_start, s.line_end), round(s.score, 2))
             for s in answer.sources[:3]]
    return key in text, bool(answer.sources) and is_planted_place(kind, answer.sources[0], where), f"{text!r} {shown}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "tests" / "models" / "recall-lines256"))
    p.add_argument("--kinds", nargs="+", default=list(PLANTS), choices=list(PLANTS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--oracle", action="store_true",
                   help="pin the blocks holding the fact instead of ranking the question's (the selection's ceiling)")
    p.add_argument("--knobs", default="", metavar="NAME=VALUE,...",
                   help="selection knobs changed from the default's, e.g. question_topk=0,question_shared=2")
    a = p.parse_args()
    citations.MICRO = citations.MICRO.replace(**knob_values(a.knobs))
    loaded = load_model(a.model, device="cpu", dtype="float32")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in a.kinds:
            right = hits = n = 0
            for seed in range(a.seeds):
                for position in PLANTS[kind][1]:
                    ok, hit, shown = trial(loaded, kind, seed, position, Path(tmp), a.oracle)
                    n, right, hits = n + 1, right + ok, hits + hit
                    print(f"{kind:5} seed {seed} at {position:3}: right={ok!s:5} top={hit!s:5} {shown}", flush=True)
            rows.append((kind, n, right, hits))
    print(f"\nmodel {a.model}{', oracle selection (the fact pinned)' if a.oracle else ''}, knobs {citations.MICRO.selection}")
    print("| document | trials | answer right | top source = planted place |")
    print("|---|---:|---:|---:|")
    for kind, n, right, hits in rows:
        print(f"| {kind} | {n} | {right} ({right / n:.0%}) | {hits} ({hits / n:.0%}) |")


if __name__ == "__main__":
    main()
