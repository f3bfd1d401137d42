"""Recall task generation: exact lengths, evidence ranges that hold the answer, depths, fillers, lengths."""

from __future__ import annotations

import random

import pytest

from infllm_cli.recall import TASKS, Filler, bos_ids, make_sample, parse_length, tokenizer_encoder
from tests.tiny_models import make_tokenizer


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.mark.parametrize("key_format", ["digits", "alnum", "words"])
@pytest.mark.parametrize("task", TASKS)
def test_samples_plant_the_answer_where_the_evidence_says(tok, task, key_format):
    encode = tokenizer_encoder(tok)
    filler = Filler("prose", encode, seed=1)
    for depth in (0.0, 0.5, 1.0):
        s = make_sample(task, 3000, depth, encode, filler, random.Random(3), bos=[tok.bos_token_id], key_format=key_format)
        assert len(s.context) == 3000
        assert s.context[0] == tok.bos_token_id
        assert s.answer == encode(s.answer_text)
        values = [tok.decode(s.context[a:b]).strip() for a, b in s.evidence]
        # the answer's own tokens, or (where the tokenizer merged them with a neighbour) the planted statement
        assert all(v and (v in s.answer_text or s.answer_text.strip() in v) for v in values)
        if task == "multivalue":
            assert ", ".join(values) == s.answer_text.strip()  # in the order they appear
        for (na, nb), (ea, eb) in zip(s.needle, s.evidence):
            assert na <= ea < eb <= nb
        spans = sorted(s.needle + s.distractors)
        assert all(b1 <= a2 for (_, b1), (a2, _) in zip(spans, spans[1:]))  # facts do not overlap
        if task == "multikey":  # the other named facts are the distractors: same template, another name
            asked = tok.decode(s.context[slice(*s.needle[0])])
            others = [tok.decode(s.context[a:b]) for a, b in s.distractors]
            assert len(others) == 3 and all("pass key for" in o and o != asked for o in others)
        else:
            assert s.distractors == []
        if task != "multikey":  # every planted fact is a needle: the first sits exactly at the depth
            body = 3000 - 1 - sum(b - a for a, b in s.needle)
            assert s.needle[0][0] == 1 + int(depth * body)


def test_asked_fact_sits_at_the_depth(tok):
    encode = tokenizer_encoder(tok)
    filler = Filler("grass", encode)
    for depth in (0.1, 0.5, 0.9):
        s = make_sample("multikey", 4000, depth, encode, filler, random.Random(0))
        start = s.needle[0][0]
        assert abs(start - depth * 4000) < 150


def test_filler_from_a_file_and_errors(tok, tmp_path):
    encode = tokenizer_encoder(tok)
    text = tmp_path / "story.txt"
    text.write_text("Once upon a time a robot read a very long book about the sea. " * 10)
    f = Filler(str(text), encode)
    assert len(f.take(5000, random.Random(0))) == 5000
    short = tmp_path / "short.txt"
    short.write_text("too short")
    with pytest.raises(ValueError, match="too little text"):
        Filler(str(short), encode)
    with pytest.raises(ValueError, match="neither"):
        Filler(str(tmp_path / "missing.txt"), encode)
    with pytest.raises(ValueError, match="too short"):
        make_sample("multivalue", 20, 0.5, encode, f, random.Random(0))


def test_bos_ids_is_what_the_tokenizer_prepends(tok):
    assert bos_ids(tok) == []  # this tokenizer adds nothing
    from transformers import AutoTokenizer

    from tests.conftest import STORIES

    if (STORIES / "tokenizer.json").exists():
        assert bos_ids(AutoTokenizer.from_pretrained(str(STORIES))) == [1]


def test_parse_length():
    assert parse_length("4096") == 4096
    assert parse_length("16K") == 16384
    assert parse_length("1m") == 1 << 20
    for bad in ("x", "0", "-3K"):
        with pytest.raises(ValueError):
            parse_length(bad)
