"""The recall test models (tests/models/recall-byte256, and recall-keys256 fine-tuned from it to tell facts
of one phrasing apart by their key): they can only answer a question about a planted fact when the fact is
in their attention, and they were trained on 256-byte sequences only.

So, at 2K bytes: dense attention fails (beyond the training length), the sink + window baseline fails (the
fact has left the window), forcing the evidence blocks into the selection succeeds (the ceiling), and the
default block selection must come close to that ceiling, on the training-like filler and on held-out
filler and key formats. The paper's selection is measured too (it is the reference point, not a bar).
"""

from __future__ import annotations

import collections
import re
from pathlib import Path

import pytest
import torch

from infllm_cli.config import preset, with_selection
from infllm_cli.models import load_model
from infllm_cli.recall_eval import Variant, run_recall, summarize

RECALL_MODEL = Path(__file__).resolve().parent / "models" / "recall-byte256"
KEYS_MODEL = Path(__file__).resolve().parent / "models" / "recall-keys256"
MICRO = preset("micro")


def _load(path: Path):
    if not (path / "model.safetensors").exists():
        pytest.skip(f"recall test model absent: {path} (train it with benchmarks/train_recall_model.py)")
    return load_model(str(path), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def recall_model():
    return _load(RECALL_MODEL)


@pytest.fixture(scope="module")
def keys_model():
    return _load(KEYS_MODEL)


def exact(loaded, variants, length, trials, task="passkey", filler="grass", key_format="digits", depths=(0.2, 0.5, 0.8)):
    results = run_recall(loaded, variants, [task], [length], list(depths), trials, seed=11, filler=filler,
                         key_format=key_format, backend="torch")
    pooled = summarize([type(r)(**{**r.__dict__, "depth": -1.0}) for r in results])
    return {row["variant"]: row for row in pooled}


def test_copies_inside_its_training_length(recall_model):
    rows = exact(recall_model, [Variant("dense", "dense", MICRO)], 200, trials=4, filler="prose")
    assert rows["dense"]["exact_match"] >= 0.9


@pytest.mark.slow
@pytest.mark.parametrize("model", ["recall_model", "keys_model"])
def test_needs_the_memory_and_the_default_selection_finds_the_evidence(model, request):
    default = with_selection(MICRO, "default")
    rows = exact(request.getfixturevalue(model), [
        Variant("dense", "dense", default),
        Variant("streaming", "streaming", default),
        Variant("default", "infllm", default),
        Variant("oracle", "infllm", default, oracle=True),
    ], 2048, trials=4, filler="prose")
    assert rows["dense"]["exact_match"] <= 0.2, rows["dense"]
    assert rows["streaming"]["exact_match"] <= 0.2, rows["streaming"]
    assert rows["oracle"]["exact_match"] >= 0.9, rows["oracle"]
    assert rows["oracle"]["evidence_hit"] == 1.0
    assert rows["default"]["exact_match"] >= 0.9 * rows["oracle"]["exact_match"], rows["default"]


@pytest.mark.slow
@pytest.mark.parametrize("task,filler,key_format", [("passkey", "prose", "alnum"), ("multikey", "prose", "alnum"),
                                                    ("multikey", "grass", "digits")])
@pytest.mark.parametrize("model", ["recall_model", "keys_model"])
def test_default_selection_holds_on_held_out_inputs(model, task, filler, key_format, request):
    """Other fillers and key formats than the main test: answer-token accuracy of the default selection within
    90% of its oracle (token accuracy: 12 trials are too few for a stable exact-match ratio on multikey)."""
    default = with_selection(MICRO, "default")
    rows = exact(request.getfixturevalue(model), [Variant("default", "infllm", default),
                                                  Variant("oracle", "infllm", default, oracle=True),
                                Variant("paper", "infllm", with_selection(MICRO, "paper"))],
                 2048, trials=4, task=task, filler=filler, key_format=key_format)
    assert rows["oracle"]["token_accuracy"] >= 0.8, rows["oracle"]
    assert rows["default"]["token_accuracy"] >= 0.9 * rows["oracle"]["token_accuracy"], rows["default"]
    assert rows["default"]["token_accuracy"] > rows["paper"]["token_accuracy"] + 0.3, (rows["default"], rows["paper"])


def test_the_keys_model_tells_facts_of_one_phrasing_apart(recall_model, keys_model):
    """recall-keys256 was fine-tuned on facts that only their keys tell apart. Inside its training length
    (dense attention, 190 tokens, four named `alnum` pass keys with the benchmark's names and fillers, which
    training never used), it answers the asked one more often than recall-byte256 on the same 100 samples
    per filler (measured: 0.90 / 0.87 against 0.68 / 0.63)."""
    variants = [Variant("dense", "dense", MICRO)]
    scores = {name: [exact(loaded, variants, 190, trials=25, task="multikey", filler=filler, key_format="alnum",
                           depths=(0.1, 0.4, 0.6, 0.9))["dense"]["exact_match"] for filler in ("prose", "grass")]
              for name, loaded in (("byte", recall_model), ("keys", keys_model))}
    assert min(scores["keys"]) >= 0.8, scores
    assert all(k >= b + 0.1 for k, b in zip(scores["keys"], scores["byte"])), scores


def test_variants_differing_in_answer_knobs_share_a_read_and_score_as_alone(recall_model):
    """One read answered with two question settings scores each trial exactly as a read per setting."""
    default = with_selection(MICRO, "default")
    other = default.replace(question_topk=1, question_shared=0, question_neighbors=0)
    variants = [Variant("default", "infllm", default), Variant("other", "infllm", other)]
    together = run_recall(recall_model, variants, ["multikey"], [1024], [0.5], 2, seed=3, filler="prose", backend="torch")
    alone = [r for v in variants
             for r in run_recall(recall_model, [v], ["multikey"], [1024], [0.5], 2, seed=3, filler="prose", backend="torch")]
    key = lambda r: (r.variant, r.trial)  # noqa: E731
    assert [(r.variant, r.nll, r.hit) for r in sorted(together, key=key)] == \
        [(r.variant, r.nll, r.hit) for r in sorted(alone, key=key)]
    assert {r.variant: r.nll for r in together}["default"] != {r.variant: r.nll for r in together}["other"]


def test_the_all_facts_oracle_pins_the_distractors_too(recall_model, monkeypatch):
    from infllm_cli.memory.cache import ContextMemory

    pinned = []
    real = ContextMemory.pin_blocks
    monkeypatch.setattr(ContextMemory, "pin_blocks", lambda self, blocks: (pinned.append(list(blocks)), real(self, blocks))[1])
    default = with_selection(MICRO, "default")
    variants = [Variant("oracle", "infllm", default, oracle=True), Variant("facts", "infllm", default, all_facts=True)]
    rows = exact(recall_model, variants, 1024, trials=1, task="multikey", depths=(0.5,))
    only, facts = pinned
    assert set(only) < set(facts) and len(facts) >= len(only) + 3  # three distractor facts, a block or two each
    assert rows["facts"]["evidence_hit"] == 1.0


_FORMS = [re.compile(p) for p in (r"The ([a-z ]+) for \S+ is ([\w-]+)\. ", r"'s ([a-z ]+) is ([\w-]+)\. ",
                                  r"()= ([\w-]+)\. ", r"The ([a-z ]+) of \S+: ([\w-]+)\. ")]


def _one_phrasing(row: str) -> bool:
    """Whether a training row states two or more facts, all in one phrasing, and one of them twice (the fact
    and the answer to its question)."""
    found = [(form, noun, value) for form, pattern in enumerate(_FORMS) for noun, value in pattern.findall(row)]
    values = collections.Counter(value for _, _, value in found)
    return len({(form, noun) for form, noun, _ in found}) == 1 and len(values) >= 2 and max(values.values()) >= 2


def test_training_script_fine_tunes_deterministically(tmp_path, recall_model):
    """benchmarks/train_recall_model.py --init: two identical short fine-tuning runs from the committed model
    give identical weights (the data generator and the optimiser are seeded) and record where they started;
    the lines mix lays text out in lines, the keys mix states several facts in one phrasing."""
    import importlib.util
    import json
    import random

    from safetensors.torch import load_file

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "train_recall_model.py"
    spec = importlib.util.spec_from_file_location("train_recall_model", path)
    train_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_mod)
    rows = [train_mod.lines_row(random.Random(i), 256) for i in range(20)]
    assert sum("\n" in r for r in rows) >= 10  # most rows are laid out in lines
    # the keys mix: several facts of one phrasing, one of them asked and answered, inside the 256 bytes
    assert all(_one_phrasing(train_mod.same_template_row(random.Random(i), 256)[:255]) for i in range(40))
    assert sum(_one_phrasing(train_mod.fact_row(random.Random(i), 256)[:255]) for i in range(40)) <= 4  # plain mix
    assert all(train_mod.same_template_row(random.Random(i), 64) for i in range(100))  # 64-byte steps: no room
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        train_mod.train(out, seed=3, steps64=0, steps256=2, batch_size=4, lr=1e-3, threads=1, mix="keys",
                        init=RECALL_MODEL)
        outs.append(load_file(str(out / "model.safetensors")))
        record = json.loads((out / "training.json").read_text())
        assert record["init"] == RECALL_MODEL.name and record["mix"] == "keys" and record["steps_256"] == 2
        assert 0.0 <= record["dense_passkey_250_lines"] <= 1.0 and 0.0 <= record["dense_multikey4_250"] <= 1.0
    start = load_file(str(RECALL_MODEL / "model.safetensors"))
    for name, tensor in outs[0].items():
        assert torch.equal(tensor, outs[1][name]), name
    assert any(not torch.equal(outs[0][n], start[n]) for n in start if n in outs[0])  # it did train
