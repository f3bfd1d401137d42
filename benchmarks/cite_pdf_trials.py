"""End-to-end citation trials on a generated 40-page PDF with the recall test model (micro preset).

A pass key is planted on page 6, 20 or 33 (3 seeds); prints each answer, its top three sources' pages and
scores, and the counts. The recall model was trained on single-line text only, and the page breaks reach
it as newlines, so it rarely copies here: the run shows what citations say when the answer is wrong
(docs/citations.md records the numbers).

    python benchmarks/cite_pdf_trials.py
"""

from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from infllm_cli.models import load_model  # noqa: E402
from infllm_cli.recall import make_key  # noqa: E402
from tests.sources.factories import reportlab_pdf  # noqa: E402
from tests.test_citations import ask_with_sources, prose  # noqa: E402


def main() -> None:
    loaded = load_model(str(ROOT / "tests" / "models" / "recall-byte256"), device="cpu", dtype="float32")
    hits = right = n = 0
    for seed in range(3):
        for page in (6, 20, 33):
            rng = random.Random(seed)
            pages = [[" ".join(prose(rng, 1))] for _ in range(40)]
            key = make_key(rng, "digits")
            pages[page - 1] = [pages[page - 1][0][:60] + f" The pass key is {key}. Remember it. {key} is the pass key."]
            path = Path(tempfile.mkdtemp()) / "report.pdf"
            path.write_bytes(reportlab_pdf(pages))
            _, text, answer = ask_with_sources(loaded, path)
            top = answer.sources[0]
            n += 1
            right += key in text
            hits += top.page == page
            print(seed, page, repr(text), key in text, [(s.page, round(s.score, 2)) for s in answer.sources[:3]], flush=True)
    print(f"top source on the planted page: {hits} of {n}; right answers: {right} of {n}")


if __name__ == "__main__":
    main()
