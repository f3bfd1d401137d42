"""Synthetic long-context recall tasks, generated in code for any tokenizer.

A :class:`RecallSample` is a token stream ``context + prompt`` and the ``answer`` tokens that must follow
it; ``evidence`` is the stream range of the answer's tokens inside the context and ``needle`` the range of
the whole planted fact (what an oracle selection forces into the memory reads). Tasks:

==============  ==========================================================================================
``passkey``     a numeric (or other ``key_format``) pass key in filler text, asked at the end
``copy``        a random 32-character segment in filler text; the prompt repeats its first 8 characters and
                the answer is the rest
``multikey``    several named pass keys, one asked (the others are distractors at random depths)
``multivalue``  several values for one name, all asked, in the order they appear
==============  ==========================================================================================

Filler is any text: ``grass`` (the repeated sentences of the pass-key literature), ``prose`` (varied
sentences from a seeded word list), or the text of a file. Each sample is built from pieces tokenized
separately (``add_special_tokens=False``) so that token ranges are exact for any tokenizer.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

TASKS = ("passkey", "copy", "multikey", "multivalue")
KEY_FORMATS = ("digits", "alnum", "words")
BUILTIN_FILLERS = ("grass", "prose")

_GRASS = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
_PROSE_WORDS = {
    "subject": ["A quiet river", "The northern wind", "Every morning", "An old lighthouse", "The village choir",
                "A patient gardener", "The museum guide", "Most travellers", "The evening train", "A stray kite"],
    "verb": ["carries", "remembers", "follows", "hides", "measures", "greets", "crosses", "paints", "answers",
             "collects"],
    "object": ["the silver hills", "a field of barley", "the harbour lights", "forgotten letters",
               "the winter market", "a copper kettle", "the long corridor", "seven paper boats",
               "the eastern gate", "a box of maps"],
    "tail": ["before dawn.", "without hurry.", "as the bells ring.", "under a grey sky.", "every spring.",
             "near the old mill.", "for the children.", "once more.", "while it rains.", "in silence."],
}
_NAMES = ["Amara", "Bastian", "Chiara", "Dmitri", "Elif", "Farid", "Greta", "Hiro", "Isla", "Jonas", "Keiko",
          "Lorenzo", "Maren", "Nikolai", "Odile", "Priya", "Quentin", "Rosa", "Soren", "Talia"]
_KEY_WORDS = ["amber", "basil", "cedar", "delta", "ember", "fjord", "garnet", "harbor", "indigo", "juniper",
              "kelp", "lotus", "maple", "nectar", "onyx", "pepper", "quartz", "raven", "saffron", "tundra"]

Encode = Callable[[str], list[int]]


@dataclass
class RecallSample:
    """One trial: feed ``context`` then ``prompt``; the model should continue with ``answer``."""

    task: str
    length: int
    depth: float
    context: list[int]
    prompt: list[int]
    answer: list[int]
    evidence: list[tuple[int, int]] = field(default_factory=list)  # answer tokens inside the context
    needle: list[tuple[int, int]] = field(default_factory=list)  # the whole planted fact(s) the answer needs
    distractors: list[tuple[int, int]] = field(default_factory=list)  # the other planted facts (multikey)
    answer_text: str = ""


def make_key(rng: random.Random, fmt: str) -> str:
    """A fresh key: ``digits`` (5 digits), ``alnum`` (6 letters/digits) or ``words`` (two words)."""
    if fmt == "digits":
        return str(rng.randrange(10000, 100000))
    if fmt == "alnum":
        return "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(6))
    if fmt == "words":
        return "-".join(rng.sample(_KEY_WORDS, 2))
    raise ValueError(f"unknown key format {fmt!r}; choose one of: {', '.join(KEY_FORMATS)}")


class Filler:
    """An endless supply of filler token ids, tokenized once in large pieces and reused cyclically."""

    def __init__(self, name_or_path: str, encode: Encode, seed: int = 0, pool_tokens: int = 1 << 16) -> None:
        self.name = name_or_path
        if name_or_path == "grass":
            text = _GRASS * 64
        elif name_or_path == "prose":
            rng = random.Random(seed)
            words = _PROSE_WORDS
            text = " ".join(
                f"{rng.choice(words['subject'])} {rng.choice(words['verb'])} {rng.choice(words['object'])} "
                f"{rng.choice(words['tail'])}" for _ in range(2000)
            ) + " "
        else:
            path = Path(name_or_path)
            if not path.is_file():
                raise ValueError(f"filler {name_or_path!r} is neither one of {', '.join(BUILTIN_FILLERS)} nor a file")
            text = path.read_text(encoding="utf-8", errors="replace")
            text = " ".join(text.split()) + " "
            if len(text.strip()) < 200:
                raise ValueError(f"filler file {name_or_path} has too little text (at least 200 characters)")
        ids: list[int] = []
        while len(ids) < pool_tokens:
            ids.extend(encode(text))
        self.ids = ids

    def take(self, n: int, rng: random.Random) -> list[int]:
        """``n`` filler tokens from a random place in the pool (wrapping around)."""
        if n <= 0:
            return []
        start = rng.randrange(len(self.ids))
        out: list[int] = []
        while len(out) < n:
            out.extend(self.ids[start : start + n - len(out)])
            start = 0
        return out


def _facts(task: str, rng: random.Random, key_format: str, n_keys: int) -> tuple[list[tuple[str, str]], str, str]:
    """(planted facts as (statement, value) with the asked one first, prompt text, answer text)."""
    if task == "passkey":
        key = make_key(rng, key_format)
        return [(f" The pass key is {key}. Remember it. {key} is the pass key. ", key)], \
            " What is the pass key? The pass key is", f" {key}"
    if task == "copy":
        seg = "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(32))
        return [(f" {seg} ", seg[8:])], f" {seg[:8]}", seg[8:]
    names = rng.sample(_NAMES, max(2, n_keys))
    if task == "multikey":
        facts = [(f" The pass key for {n} is {(k := make_key(rng, key_format))}. ", k) for n in names]
        asked, key = names[0], facts[0][1]
        return facts, f" What is the pass key for {asked}? The pass key for {asked} is", f" {key}"
    if task == "multivalue":
        name = names[0]
        values = [make_key(rng, key_format) for _ in range(max(2, n_keys))]
        facts = [(f" One of the pass keys for {name} is {v}. ", v) for v in values]
        return facts, f" What are all the pass keys for {name}? The pass keys for {name} are", " " + ", ".join(values)
    raise ValueError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")


def make_sample(
    task: str,
    length: int,
    depth: float,
    encode: Encode,
    filler: Filler,
    rng: random.Random,
    *,
    bos: Sequence[int] = (),
    key_format: str = "digits",
    n_keys: int = 4,
) -> RecallSample:
    """Build one trial of ``task`` with ``length`` context tokens (``bos`` included), the asked fact at
    fraction ``depth`` of the context (0 = start, 1 = end) and any other facts at random depths.

    ``multivalue`` plants its values in order, the first at ``depth`` and the rest spread after it.
    """
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must lie in [0, 1], got {depth}")
    facts, prompt_text, answer_text = _facts(task, rng, key_format, n_keys)
    pieces = [(encode(statement), value) for statement, value in facts]
    body = length - len(bos) - sum(len(p) for p, _ in pieces)
    if body < 0:
        raise ValueError(f"length {length} is too short for task {task!r} (its facts alone take {length - body} tokens)")
    if task == "multivalue":
        cut = [int(depth * body)] + sorted(rng.randint(int(depth * body), body) for _ in pieces[1:])
    else:
        cut = [int(depth * body)] + [rng.randint(0, body) for _ in pieces[1:]]
    order = sorted(range(len(pieces)), key=lambda i: (cut[i], i))
    context = list(bos)
    at = 0
    evidence: list[tuple[int, int]] = []
    needle: list[tuple[int, int]] = []
    distractors: list[tuple[int, int]] = []
    for i in order:
        context += filler.take(cut[i] - at, rng)
        at = cut[i]
        ids, value = pieces[i]
        start = len(context)
        context += ids
        if task == "multivalue" or i == 0:
            needle.append((start, len(context)))
            evidence.append(_value_span(ids, value, encode, start))
        else:
            distractors.append((start, len(context)))
    context += filler.take(body - at, rng)
    if task == "multivalue":
        order_of = sorted(range(len(evidence)), key=lambda j: evidence[j][0])
        evidence = [evidence[j] for j in order_of]
        needle = [needle[j] for j in order_of]
    return RecallSample(task, length, depth, context, encode(prompt_text), encode(answer_text),
                        evidence, needle, distractors, answer_text)


def _value_span(ids: list[int], value: str, encode: Encode, start: int) -> tuple[int, int]:
    """Stream range of the tokens of ``value`` inside a statement's ids (the whole statement if the
    tokenizer merged the value with its neighbours)."""
    for cand in (encode(" " + value), encode(value)):
        n = len(cand)
        for j in range(len(ids) - n + 1):
            if ids[j : j + n] == cand:
                return start + j, start + j + n
    return start, start + len(ids)


def parse_length(text: str) -> int:
    """``4096``, ``4K``, ``1M`` (K = 1024) -> tokens."""
    t = text.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20}.get(t[-1:], 1)
    digits = t[:-1] if mult > 1 else t
    try:
        value = float(digits) * mult
    except ValueError:
        raise ValueError(f"not a length: {text!r} (use e.g. 4096, 16K, 1M)") from None
    if value < 1:
        raise ValueError(f"length must be positive, got {text!r}")
    return int(value)


def tokenizer_encoder(tokenizer: Any) -> Encode:
    """``text -> ids`` without special tokens."""
    return lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]


def bos_ids(tokenizer: Any) -> list[int]:
    """What the tokenizer puts before a text by default (BOS, or nothing)."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    return with_special[: len(with_special) - len(plain)] if with_special[-len(plain):] == plain else []
