"""Train the recall test model: a tiny byte-level Llama that copies from its context.

Why: the retrieval benchmark (``infllm eval recall``) needs a model that *can* answer a pass-key question
when the evidence is in its attention, and that was trained on short sequences only, so that reading a long
document depends on the memory finding the evidence. Random tiny models cannot copy and stories260k does
not copy (see its model card), so this script trains one, deterministically, on 2 CPU cores in ~25 minutes.

Data, generated in code (no download): sequences of at most 256 bytes mixing

* copy rows: a random segment, filler, the same segment again (induction heads form on these);
* fact rows: key/value facts ("The pass key for Mira is 4521.", "the code of the blue box: QXT-91", ...)
  inside filler sentences, then a question that restates the key and the answer;
* story rows: sentences from a small grammar (so filler text is predictable, as in real documents).

Curriculum: 64-byte sequences first (the induction circuit forms much faster on them), then 256-byte ones.
Run::

    python benchmarks/train_recall_model.py --out tests/models/recall-byte256
    python benchmarks/train_recall_model.py --init tests/models/recall-byte256 --mix lines --steps-64 0 \
        --steps-256 1500 --lr 1e-3 --out tests/models/recall-lines256      # multi-line documents
    python benchmarks/train_recall_model.py --init tests/models/recall-byte256 --mix keys --steps-64 0 \
        --steps-256 1500 --lr 1e-3 --out tests/models/recall-keys256       # facts told apart by their key

and commit the folder (safetensors weights, tokenizer, model card).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch

SPECIALS = ["<s>", "</s>", "<unk>"]

# -- a small grammar for filler sentences (training only; the benchmark's fillers are different) -------
_SUBJECTS = ["the farmer", "a small dog", "my sister", "the old man", "the teacher", "a tall girl", "the cat",
             "our neighbour", "the baker", "a young boy", "the captain", "the doctor", "her friend", "the king"]
_VERBS = ["walked to", "looked at", "painted", "found", "cleaned", "carried", "visited", "opened", "closed",
          "watched", "fixed", "sold", "bought", "remembered", "forgot"]
_OBJECTS = ["the red door", "a wooden chair", "the long road", "an apple tree", "the river", "a green boat",
            "the market", "a broken clock", "the yellow house", "a heavy bag", "the garden", "the bridge",
            "an empty box", "the tower", "a silver cup"]
_ENDINGS = [".", " in the morning.", " after lunch.", " again.", " with care.", " before the rain.",
            " at night.", " for a while.", " and smiled.", " without a word."]
_NAMES = ["Mira", "Tom", "Ada", "Kofi", "Lena", "Ravi", "Ines", "Omar", "Yuki", "Sven", "Nora", "Pablo", "Zoe",
          "Ivan", "Lucia", "Hugo", "Anya", "Felix", "Tara", "Diego"]
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def sentence(rng: random.Random) -> str:
    s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}{rng.choice(_ENDINGS)}"
    return s[0].upper() + s[1:] + " "


def filler(rng: random.Random, n: int) -> str:
    out = ""
    while len(out) < n:
        out += sentence(rng)
    return out[:n]


def value(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return str(rng.randrange(10 ** (d := rng.randint(3, 8)) // 10, 10**d))
    if kind == 1:
        return "".join(rng.choice(_ALNUM) for _ in range(rng.randint(3, 8)))
    if kind == 2:
        return f"{''.join(rng.choice(_ALNUM[:26]) for _ in range(3))}-{rng.randrange(10, 1000)}"
    return rng.choice(_OBJECTS).split()[-1] + str(rng.randrange(100))


def fact(rng: random.Random, key: str, val: str) -> tuple[str, str]:
    """(statement, question prefix that the value completes)."""
    noun = rng.choice(["pass key", "secret code", "magic number", "password", "number", "code", "id"])
    forms = [
        (f"The {noun} for {key} is {val}. ", f"What is the {noun} for {key}? The {noun} for {key} is "),
        (f"{key}'s {noun} is {val}. ", f"{key}'s {noun} is "),
        (f"Remember: {key} = {val}. ", f"{key} = "),
        (f"The {noun} of {key}: {val}. ", f"The {noun} of {key}: "),
    ]
    return rng.choice(forms)


def copy_row(rng: random.Random, length: int) -> str:
    m = rng.randint(4, max(4, length // 2 - 2))
    seg = "".join(rng.choice(_ALNUM + " .,") for _ in range(m))
    gap = rng.randint(0, max(0, length - 2 * m))
    lead = rng.randint(0, max(0, length - 2 * m - gap))
    return filler(rng, lead) + seg + filler(rng, gap) + seg + filler(rng, length)


def fact_row(rng: random.Random, length: int) -> str:
    n_facts = rng.randint(1, 4)
    keys = rng.sample(_NAMES, n_facts) if rng.random() < 0.7 else [
        "".join(rng.choice(_ALNUM[:26]) for _ in range(rng.randint(3, 6))) for _ in range(n_facts)]
    facts = [fact(rng, k, value(rng)) + (value,) for k in keys]
    text = ""
    answers = []
    for statement, prefix, _ in facts:
        text += filler(rng, rng.randint(0, length // 4)) + statement
        answers.append((prefix, statement))
    asked = rng.sample(answers, rng.randint(1, len(answers)))
    tail = ""
    for prefix, statement in asked:
        val = statement[statement.rindex(" ", 0, len(statement) - 2) + 1 : -2]
        tail += filler(rng, rng.randint(0, 24)) + prefix + val + ". "
    return text + tail + filler(rng, length)


# -- the "lines" mix: text laid out in lines as files, PDFs and repositories reach the model ----------
_THINGS = ["lamp", "road", "window", "river", "table", "answer", "engine", "letter", "wall", "field", "song"]
_STATES = ["bright", "long", "open", "quiet", "wet", "ready", "broken", "empty", "warm", "late", "new"]
_CODE = ["def {w}({a}, {b}):", "    return {a} + {b}", "    {a} = {w}({b})", "# {w} the {a}", "import {w}",
         "class {W}:", "    if {a} is None:", "        raise ValueError({b!r})", "for {a} in {b}:", "}}", "{{"]
_WORDS = ["load", "parse", "count", "value", "item", "node", "path", "data", "size", "user", "token", "block"]


def decoy(rng: random.Random) -> str:
    """A short "X is Y" sentence: its "... is " competes with a fact's, so copying must match more context."""
    return f"The {rng.choice(_THINGS)} is {rng.choice(_STATES)}. "


def code_line(rng: random.Random) -> str:
    w = rng.sample(_WORDS, 3)
    return rng.choice(_CODE).format(w=w[0], W=w[0].title(), a=w[1], b=w[2]) + "\n"


def layout(rng: random.Random, text: str) -> str:
    """Break ``text`` into lines (random widths, blank lines, indentation, file headers, code)."""
    out, width, col = [], rng.randint(16, 80), 0
    indent = " " * rng.choice([0, 0, 2, 4])
    for word in text.split(" "):
        if col and col + len(word) > width:
            out.append("\n" + ("\n" if rng.random() < 0.1 else "") + indent)
            col = len(indent)
            r = rng.random()
            if r < 0.04:
                out.append(f"==> {rng.choice(_WORDS)}/{rng.choice(_WORDS)}.py <==\n")
            elif r < 0.12:
                out.append(code_line(rng))
            elif r < 0.15:
                out.append(f"- {rng.randrange(1, 400)} -\n\n")
        elif col:
            out.append(" ")
            col += 1
        out.append(word)
        col += len(word)
    return "".join(out)


def lines_row(rng: random.Random, length: int) -> str:
    """A row of the plain mix with decoys inserted and laid out in lines; the question tail stays whole."""
    text = row(rng, length)
    if rng.random() < 0.5:
        words = text.split(". ")
        for _ in range(rng.randint(1, 4)):
            words.insert(rng.randrange(len(words) + 1), decoy(rng).rstrip(". "))
        text = ". ".join(words)
    seen = min(len(text), length)
    cut = rng.randrange(seen // 2, seen) if seen > 1 else 0
    return layout(rng, text[:cut]) + text[cut:]


# -- the "keys" mix: several facts of one phrasing, told apart only by their key ---------------------
def one_phrasing(phrasing: float, keys: list[str], values: list[str]) -> list[tuple[str, str, str]]:
    """(statement, question prefix, value) for each key: every fact drawn with the same seed ``phrasing``,
    so all of them share one noun and one form (see :func:`fact`)."""
    return [(*fact(random.Random(phrasing), key, val), val) for key, val in zip(keys, values)]


def same_template_row(rng: random.Random, length: int) -> str:
    """2-6 facts that share one phrasing (noun and form) and differ only in key and value, with filler and
    "X is Y" decoys between them, then a question about one of them. In :func:`fact_row` each fact draws
    its own phrasing, so the phrasing alone usually tells the asked fact from the others and the model
    rarely has to match the key; here only the key does. Facts that do not fit before the question are
    left out (never the asked one)."""
    n_facts = rng.randint(2, 6)
    keys = rng.sample(_NAMES, n_facts) if rng.random() < 0.6 else [
        "".join(rng.choice(_ALNUM[:26] if rng.random() < 0.5 else _ALNUM) for _ in range(rng.randint(3, 6)))
        for _ in range(n_facts)]
    facts = one_phrasing(rng.random(), keys, [value(rng) for _ in keys])
    asked = rng.randrange(n_facts)
    _, prefix, val = facts[asked]
    tail = filler(rng, rng.randint(0, 16)) + prefix + val + ". "
    room = length - 1 - len(tail)  # BOS comes first
    kept = list(range(n_facts))
    while sum(len(facts[i][0]) for i in kept) > room and len(kept) > 1:  # short rows: the asked fact only
        kept.remove(max((i for i in kept if i != asked), key=lambda i: len(facts[i][0])))
    text, left = "", sum(len(facts[i][0]) for i in kept)
    for i in kept:
        gap = filler(rng, rng.randint(0, length // 10)) + (decoy(rng) if rng.random() < 0.3 else "")
        if len(text) + len(gap) + left > room:
            gap = ""
        text += gap + facts[i][0]
        left -= len(facts[i][0])
    return text + tail + filler(rng, length)


def row(rng: random.Random, length: int) -> str:
    r = rng.random()
    text = copy_row(rng, length) if r < 0.4 else fact_row(rng, length) if r < 0.9 else filler(rng, length)
    return text


def encode(text: str) -> list[int]:
    return [b + len(SPECIALS) for b in text.encode("utf-8")]


def batch(rng: random.Random, size: int, length: int, mix: str = "plain") -> torch.Tensor:
    rows = []
    for _ in range(size):
        if mix == "lines" and rng.random() < 0.75:
            text = lines_row(rng, length)
        elif mix == "keys" and rng.random() < 0.5:
            text = same_template_row(rng, length)
        else:
            text = row(rng, length)
        ids = [0] + encode(text)  # BOS first, as the tokenizer adds it
        rows.append(ids[:length])
    return torch.tensor(rows, dtype=torch.long)


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet(), key=lambda c: _byte_of(c))
    vocab = {s: i for i, s in enumerate(SPECIALS)}
    vocab.update({c: i + len(SPECIALS) for i, c in enumerate(alphabet)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tok.add_special_tokens(SPECIALS)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def _byte_of(char: str) -> int:
    """Inverse of GPT-2's bytes_to_unicode for one character."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(map(chr, cs), bs))[char]


def build_model(seed: int):
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=len(SPECIALS) + 256, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=256,
        rope_theta=10000.0, rms_norm_eps=1e-5, bos_token_id=0, eos_token_id=1, tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config)


def continues(model, text: str, answer: str) -> bool:
    """Whether the model, with full attention over BOS + ``text``, predicts every byte of ``answer``
    (teacher-forced argmax)."""
    ids = torch.tensor([[0] + encode(text + answer)])
    n = len(encode(answer))
    with torch.no_grad():
        logits = model(ids).logits[0, -n - 1 : -1]
    return logits.argmax(-1).tolist() == ids[0, -n:].tolist()


def dense_passkey_accuracy(model, rng: random.Random, trials: int = 50, length: int = 250,
                           lines: bool = False) -> float:
    """Exact-match rate of a 5-digit key at random depth in a sequence of ``length`` bytes (full attention);
    ``lines``: the text before the question laid out in lines as :func:`layout` does."""
    ok = 0
    for _ in range(trials):
        key = str(rng.randrange(10000, 100000))
        q = "What is the pass key? The pass key is "
        body = length - len(q) - 5 - 40 - (40 if lines else 0)  # room for the line breaks layout() adds
        d = rng.randint(0, body)
        text = filler(rng, d) + f"The pass key is {key}. Remember it. " + filler(rng, body - d)
        text = (layout(rng, text) + "\n" if lines else text) + q
        ok += continues(model, text, key)
    return ok / trials


def dense_multikey_accuracy(model, rng: random.Random, trials: int = 50, n_keys: int = 4, length: int = 250) -> float:
    """Exact-match rate of the asked value among ``n_keys`` facts of one phrasing (5-digit values, random
    places, full attention): can the model tell facts apart by their key alone?"""
    ok = 0
    for _ in range(trials):
        phrasing, keys = rng.random(), rng.sample(_NAMES, n_keys)
        facts = one_phrasing(phrasing, keys, [str(rng.randrange(10000, 100000)) for _ in keys])
        _, prefix, val = facts[rng.randrange(n_keys)]
        body = max(0, length - len(prefix) - len(val) - sum(len(f[0]) for f in facts))
        text, at = "", 0
        for cut, (statement, _, _) in zip(sorted(rng.randint(0, body) for _ in facts), facts):
            text += filler(rng, cut - at) + statement
            at = cut
        ok += continues(model, text + filler(rng, body - at) + prefix, val)
    return ok / trials


def train(out: Path, seed: int, steps64: int, steps256: int, batch_size: int, lr: float, threads: int,
          mix: str = "plain", init: Path | None = None) -> None:
    torch.set_num_threads(threads)
    rng = random.Random(seed)
    if init is None:
        model = build_model(seed)
    else:  # continue from a trained model (e.g. recall-byte256, whose induction circuit already formed)
        import transformers

        torch.manual_seed(seed)
        model = transformers.LlamaForCausalLM.from_pretrained(str(init), dtype=torch.float32)
        model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    total = steps64 + steps256
    start = time.time()
    for step in range(total):
        length = 64 if step < steps64 else 256
        bsz = batch_size * 4 if length == 64 else batch_size
        warm = min(1.0, (step + 1) / 100)
        for g in opt.param_groups:
            g["lr"] = lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / total)))
        ids = batch(rng, bsz, length, mix)
        loss = model(ids, labels=ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == total - 1:
            print(f"step {step:5d}  len {length}  loss {loss.item():.3f}  {time.time() - start:6.0f}s", flush=True)
    model.eval()
    acc = dense_passkey_accuracy(model, random.Random(seed + 1))
    acc_lines = dense_passkey_accuracy(model, random.Random(seed + 2), lines=True)
    acc_keys = dense_multikey_accuracy(model, random.Random(seed + 3))
    print(f"dense exact match at 250 bytes: pass key {acc:.2f} (single line), {acc_lines:.2f} (in lines); "
          f"one of 4 keys of one phrasing {acc_keys:.2f}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    make_tokenizer().save_pretrained(out)
    (out / "training.json").write_text(json.dumps({
        "seed": seed, "steps_64": steps64, "steps_256": steps256, "batch_size": batch_size, "lr": lr,
        "threads": threads, "mix": mix, "init": None if init is None else init.name, "seconds": round(time.time() - start), "dense_passkey_250": acc,
        "dense_passkey_250_lines": acc_lines, "dense_multikey4_250": acc_keys,
    }, indent=2) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("tests/models/recall-byte256"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps-64", type=int, default=1500)
    p.add_argument("--steps-256", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mix", choices=["plain", "lines", "keys"], default="plain",
                   help="plain: single-line rows (recall-byte256); lines: 3 of 4 rows laid out in lines with "
                        "file headers, code and 'X is Y' decoys (recall-lines256); keys: half the rows hold "
                        "several facts of one phrasing that only their keys tell apart (recall-keys256)")
    p.add_argument("--init", type=Path, default=None,
                   help="start from this trained model instead of random weights (fine-tuning)")
    a = p.parse_args()
    train(a.out, a.seed, a.steps_64, a.steps_256, a.batch_size, a.lr, a.threads, a.mix, a.init)


if __name__ == "__main__":
    main()
