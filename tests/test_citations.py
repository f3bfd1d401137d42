"""Citations: the token-to-span map, the attention ledger, and answers whose top source is the planted fact.

* the span map: any token range of a text file (cut into several tokenized pieces), a 40-page PDF and a
  repository directory maps to the right lines / page / file, and survives ``to_dict`` -> JSON -> ``from_dict``;
* the ledger: the torch and Triton backends (interpreter on CPU) record the same attention per passage;
* end to end with the recall test model (tests/models/recall-byte256, a byte-level Llama that copies a
  pass key from its context): the top source of the answer is the passage holding the planted fact in at
  least 90% of trials over seeds and depths, the fact being far outside the local window (micro preset).
  That model was trained on single-line text only (a newline anywhere in the context breaks its copying),
  so its documents are single-line texts;
* end to end on laid-out documents with tests/models/recall-lines256 (the same model fine-tuned on text in
  lines, file headers and code): a pass key on a chosen page of a generated 40-page PDF, in a chosen file
  of a generated repository and at a chosen line of a long text is cited as that page / file / line.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch

from infllm_cli.config import GenerationConfig, preset, with_selection
from infllm_cli.recall import _PROSE_WORDS, make_key
from infllm_cli.sources import open_source
from infllm_cli.spanmap import SpanMap
from infllm_cli.tokens import HFEncoder, read_tokens

from .sources.factories import reportlab_pdf, write_tree

RECALL_MODEL = Path(__file__).resolve().parent / "models" / "recall-byte256"
MICRO = with_selection(preset("micro"), "default")


@pytest.fixture(scope="module")
def byte_tokenizer():
    if not (RECALL_MODEL / "tokenizer.json").exists():
        pytest.skip("recall test model absent")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(RECALL_MODEL))


@pytest.fixture(scope="module")
def recall_model():
    if not (RECALL_MODEL / "model.safetensors").exists():
        pytest.skip("recall test model absent")
    from infllm_cli.models import load_model

    return load_model(str(RECALL_MODEL), device="cpu", dtype="float32")


def prose(rng: random.Random, n: int) -> list[str]:
    w = _PROSE_WORDS
    return [f"{rng.choice(w['subject'])} {rng.choice(w['verb'])} {rng.choice(w['object'])} {rng.choice(w['tail'])}"
            for _ in range(n)]


# -- span map ---------------------------------------------------------------------------------------


def test_text_lines_map_back_across_pieces(tmp_path, byte_tokenizer):
    text = "".join(f"line {i} " + "x" * (i % 37) + "\n" for i in range(1, 401))
    path = tmp_path / "long.txt"
    path.write_text(text)
    doc = read_tokens(open_source(str(path)), HFEncoder(byte_tokenizer), piece_chars=997)  # many pieces
    assert doc.count == len(text)  # one token per byte
    rng = random.Random(0)
    for _ in range(200):
        a = rng.randrange(doc.count)
        b = min(doc.count, a + rng.randint(1, 300))
        locs = doc.locate(a, b)
        assert len(locs) == 1, locs
        loc = locs[0]
        assert loc.tokens == (a, b) and loc.path == str(path) and loc.page is None
        assert loc.line_start == text.count("\n", 0, a) + 1
        assert loc.line_end == text.count("\n", 0, b - 1) + 1


def test_pdf_pages_and_directory_files_map_back(tmp_path, byte_tokenizer):
    pages = [[f"Page {p} says {w}." for w in prose(random.Random(p), 3)] for p in range(1, 41)]
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(reportlab_pdf(pages))
    doc = read_tokens(open_source(str(pdf)), HFEncoder(byte_tokenizer))
    text = byte_tokenizer.decode(list(doc.ids))
    for p in (1, 7, 23, 40):
        at = text.index(f"Page {p} says")
        locs = doc.locate(at, at + 20)
        assert [(loc.path, loc.page) for loc in locs] == [(str(pdf), p)]
    # a range across a page break is split at it
    at = text.index("Page 12 says")
    assert [loc.page for loc in doc.locate(at - 5, at + 5)] == [11, 12]

    files = {f"src/mod_{i}.py": "".join(f"value_{i}_{j} = {j}\n" for j in range(30)) for i in range(8)}
    root = write_tree(tmp_path / "repo", files)
    doc = read_tokens(open_source(str(root)), HFEncoder(byte_tokenizer))
    text = byte_tokenizer.decode(list(doc.ids))
    for i in (0, 3, 7):
        at = text.index(f"value_{i}_17 = 17")
        (loc,) = doc.locate(at, at + 5)
        assert loc.path == f"src/mod_{i}.py" and loc.line_start == loc.line_end == 18


def test_span_map_round_trips_through_json(tmp_path, byte_tokenizer):
    path = tmp_path / "a.md"
    path.write_text("# One\n" + "alpha\n" * 50 + "# Two\n" + "beta\n" * 50)
    doc = read_tokens(open_source(str(path)), HFEncoder(byte_tokenizer), piece_chars=128)
    again = SpanMap.from_dict(json.loads(json.dumps(doc.span_map.to_dict())))
    for a in range(0, doc.count, 37):
        assert again.locate(a, a + 50) == doc.span_map.locate(a, a + 50)
    assert {loc.section for loc in doc.locate(0, doc.count)} == {"One", "Two"}


# -- ledger and end to end ---------------------------------------------------------------------------


FACT = "The pass key is {key}. Remember it. {key} is the pass key."


def planted_document(tmp_path: Path, seed: int, depth: float, n_sentences: int = 80) -> tuple[Path, str, str]:
    """A single-line text (~4.5K bytes) with a pass key planted at ``depth``; (path, key, the fact)."""
    rng = random.Random(seed)
    sentences = prose(rng, n_sentences)
    key = make_key(rng, "digits")
    fact = FACT.format(key=key)
    sentences.insert(int(depth * n_sentences), fact)
    path = tmp_path / f"doc_{seed}_{depth}.txt"
    path.write_text(" ".join(sentences) + "\n")
    return path, key, fact


def planted_pdf(tmp_path: Path, seed: int, page: int, n_pages: int = 40) -> tuple[Path, str, int]:
    """A ``n_pages``-page PDF of prose (3 lines a page) with a pass key on ``page``; (path, key, page)."""
    rng = random.Random(seed)
    pages = [prose(rng, 3) for _ in range(n_pages)]
    key = make_key(rng, "digits")
    pages[page - 1].insert(rng.randrange(4), FACT.format(key=key))
    path = tmp_path / f"report_{seed}_{page}.pdf"
    path.write_bytes(reportlab_pdf(pages))
    return path, key, page


def planted_repo(tmp_path: Path, seed: int, index: int, n_files: int = 12) -> tuple[Path, str, str]:
    """A repository of ``n_files`` small files (code and notes) with a pass key in file ``index``;
    (root, key, that file's relative path)."""
    rng = random.Random(seed)
    files = {}
    for i in range(n_files):
        if i % 3 == 2:
            rel, lines = f"docs/note_{i}.md", [f"# Note {i}", *prose(rng, 5)]
        else:
            rel = f"src/mod_{i}.py"
            lines = [f"def step_{i}(x):", *(f"    # {line}" for line in prose(rng, 3)), f"    return x + {i}"]
        if i == index:
            lines.insert(1 + rng.randrange(len(lines) - 1), ("    # " if rel.endswith(".py") else "") + FACT.format(key=(key := make_key(rng, "digits"))))
            target = rel
        files[rel] = "\n".join(lines) + "\n"
    root = write_tree(tmp_path / f"repo_{seed}_{index}", files)
    return root, key, target


def planted_lines(tmp_path: Path, seed: int, line: int, n_lines: int = 150) -> tuple[Path, str, int]:
    """A text of ``n_lines`` prose lines with a pass key as line ``line`` (1-based); (path, key, line)."""
    rng = random.Random(seed)
    lines = prose(rng, n_lines - 1)
    key = make_key(rng, "digits")
    lines.insert(line - 1, FACT.format(key=key))
    path = tmp_path / f"notes_{seed}_{line}.txt"
    path.write_text("\n".join(lines) + "\n")
    return path, key, line


def ask_with_sources(loaded, path: Path, backend: str = "torch", max_new_tokens: int = 6, oracle_key: str | None = None):
    """Read ``path``, ask for the pass key with citations: (document tokens, answer text, the answer).

    With ``oracle_key``, the blocks holding the planted fact (from the key's first occurrence to its last,
    with a margin) are pinned instead of ranking the question's blocks: the selection's ceiling."""
    from infllm_cli.cli.session import Answer, Citing, DocumentSession, read_document
    from infllm_cli.runner import Runner

    tok = loaded.tokenizer
    doc = read_document(open_source(str(path)), tok)
    session = DocumentSession(Runner(loaded, MICRO, backend=backend))
    session.read(doc)
    prompt = tok(" What is the pass key? The pass key is", add_special_tokens=False)["input_ids"]
    if oracle_key is not None:
        ids, key = list(doc.ids), tok(oracle_key, add_special_tokens=False)["input_ids"]
        at = [i for i in range(len(ids) - len(key) + 1) if ids[i : i + len(key)] == key]
        first, last = session.doc_offset + at[0] - 16, session.doc_offset + at[-1] + len(key) + 16
        session.runner.read_question(prompt, session.runner.cache.blocks_of(first, last))
        prompt = []
    answer = Answer(session.runner, prompt, GenerationConfig(max_new_tokens=max_new_tokens), (),
                    Citing(doc, session.doc_offset))
    return doc, "".join(answer), answer


def test_top_source_is_the_planted_fact(tmp_path, recall_model):
    """Whenever the answer is right, its top source is the passage holding the fact (>= 90% of those
    trials; measured 7 of 7). When the model fails to copy (2 of 9 here: the selection missed, or the model
    did), the top source is elsewhere -- that is what a reader should see then, and it is not counted."""
    torch.set_num_threads(1)
    right = hits = trials = 0
    for seed in range(3):
        for depth in (0.15, 0.5, 0.8):
            path, key, fact = planted_document(tmp_path, seed, depth)
            doc, text, answer = ask_with_sources(recall_model, path)
            start = path.read_text().index(fact)  # one token per byte
            top = answer.sources[0]
            trials += 1
            assert 0 < top.score <= 1 and sum(s.score for s in answer.sources) <= 1 + 1e-6
            assert len(answer.sources) <= 5
            if key in text:
                right += 1
                hits += top.tokens[0] < start + len(fact) and start < top.tokens[1]  # the passage holds the fact
    assert right >= 0.6 * trials, (right, trials)  # the model copies (else this test measures nothing)
    assert hits >= 0.9 * right, (hits, right, trials)


LINES_MODEL = Path(__file__).resolve().parent / "models" / "recall-lines256"
PLANTS = {"pdf": (planted_pdf, (6, 20, 33)), "repo": (planted_repo, (1, 5, 10)), "lines": (planted_lines, (20, 75, 130))}


@pytest.fixture(scope="module")
def lines_model():
    if not (LINES_MODEL / "model.safetensors").exists():
        pytest.skip("recall test model for multi-line documents (tests/models/recall-lines256) absent")
    from infllm_cli.models import load_model

    return load_model(str(LINES_MODEL), device="cpu", dtype="float32")


def is_planted_place(kind: str, source, where) -> bool:
    """Whether a source is the planted page (PDF), file (repository) or line (text)."""
    if kind == "pdf":
        return source.page == where
    if kind == "repo":
        return source.path == where
    return source.line_start <= where <= source.line_end


def test_top_source_is_the_planted_page_file_or_line(tmp_path, lines_model):
    """A pass key on page 6 / 20 / 33 of a 40-page PDF, in file 1 / 5 / 10 of a 12-file repository, at line
    20 / 75 / 130 of a 150-line text, three seeds each (27 trials, every one counted, right answer or not):
    the answer's top source is that page / file / line. Measured 2026-12-01 with the default selection
    (``question_topk`` 4, ``question_shared`` 4): PDF 9/9, repository 8/9, text 9/9 (26 of 27; over six
    seeds 51 of 54, see docs/citations.md). The bar is the issue's: at least 90% of all trials."""
    torch.set_num_threads(1)
    hits, misses = {}, []
    for kind, (plant, positions) in PLANTS.items():
        hits[kind] = 0
        for seed in range(3):
            for position in positions:
                path, key, where = plant(tmp_path, seed, position)
                _, text, answer = ask_with_sources(lines_model, path)
                top = answer.sources[0]
                if top.line_start is not None:  # a passage, not the whole file
                    assert top.line_end - top.line_start <= 12, top
                if is_planted_place(kind, top, where):
                    hits[kind] += 1
                else:
                    misses.append((kind, seed, position, text, [(s.path, s.page, s.line_start) for s in answer.sources]))
    assert sum(hits.values()) >= 0.9 * 27 and hits["pdf"] >= 8 and min(hits.values()) >= 6, (hits, misses)


def test_oracle_selection_reads_and_cites_the_fact(tmp_path, lines_model):
    """The ceiling ``benchmarks/cite_trials.py --oracle`` measures: with the fact's blocks pinned, the model
    copies the key and cites the planted file (a repository, where the default selection missed most before
    ``question_shared``)."""
    torch.set_num_threads(1)
    path, key, where = planted_repo(tmp_path, 1, 10)
    _, text, answer = ask_with_sources(lines_model, path, oracle_key=key)
    assert key in text and is_planted_place("repo", answer.sources[0], where), (text, answer.sources[:2])


def test_backends_record_the_same_attention(tmp_path, recall_model):
    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0") and not torch.cuda.is_available():
        pytest.skip("triton needs the interpreter on CPU")
    path, _, _ = planted_document(tmp_path, 5, 0.3, n_sentences=8)  # ~600 bytes, 14 blocks: the interpreter is slow
    _, text_t, ans_t = ask_with_sources(recall_model, path, "torch", max_new_tokens=2)
    _, text_k, ans_k = ask_with_sources(recall_model, path, "triton", max_new_tokens=2)
    assert ans_t._ledger.units.sum() > 0
    assert text_t == text_k
    lt, lk = ans_t._ledger, ans_k._ledger
    n = min(lt.units.shape[0], lk.units.shape[0])
    assert lt.rows == lk.rows
    torch.testing.assert_close(lk.units[:n], lt.units[:n], rtol=1e-3, atol=1e-3)
    assert [s.tokens for s in ans_t.sources] == [s.tokens for s in ans_k.sources]


def test_no_citing_no_ledger(tmp_path, recall_model):
    """Without citations the plain kernels run and nothing is recorded."""
    from infllm_cli.cli.session import DocumentSession, read_document
    from infllm_cli.runner import Runner

    path, _, _ = planted_document(tmp_path, 1, 0.5, n_sentences=10)
    session = DocumentSession(Runner(recall_model, MICRO, backend="torch"))
    session.read(read_document(open_source(str(path)), recall_model.tokenizer))
    answer = session.ask("What is the pass key?", GenerationConfig(max_new_tokens=2))
    "".join(answer)
    assert answer.sources == [] and answer._ledger is None
    assert all(m.ledger is None for m in session.runner.cache.memories)
