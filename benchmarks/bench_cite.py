"""Cost of citations: answer generation with and without the attention ledger, same process, same model.

Reads one document into the memory once, then answers the same prompt ``--repeats`` times alternating
plain / citing (restoring the memory before each), and reports the median decode speed of each and the
slowdown. Decode only: prefill never cites. The default model is the recall test model
(tests/models/recall-byte256, 4 layers) on the ``micro`` preset: the smallest model shows the largest
relative cost, because the ledger's work per layer does not shrink with the model.

    python benchmarks/bench_cite.py [--model DIR] [--bytes 8000] [--tokens 64] [--repeats 7] [--backend auto]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import random
import statistics
import time
from pathlib import Path

import torch

from infllm_cli.config import preset, with_selection
from infllm_cli.models import load_model
from infllm_cli.recall import _PROSE_WORDS
from infllm_cli.runner import Runner

ROOT = Path(__file__).resolve().parent.parent


def document(n_bytes: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    w = _PROSE_WORDS
    out: list[str] = []
    while sum(len(s) + 1 for s in out) < n_bytes:
        out.append(f"{rng.choice(w['subject'])} {rng.choice(w['verb'])} {rng.choice(w['object'])} {rng.choice(w['tail'])}")
    return " ".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "tests" / "models" / "recall-byte256"))
    ap.add_argument("--preset", default="micro")
    ap.add_argument("--bytes", type=int, default=8000)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    loaded = load_model(args.model, device=args.device, dtype="auto")
    tok = loaded.tokenizer
    runner = Runner(loaded, with_selection(preset(args.preset), "default"), backend=args.backend)
    doc = tok(document(args.bytes), add_special_tokens=False)["input_ids"]
    runner.feed(doc)
    after = runner.snapshot()
    prompt = tok(" What is the pass key? The pass key is", add_special_tokens=False)["input_ids"]

    def one(cite: bool) -> float:
        """Decode --tokens tokens greedily (no stop token: every run decodes as many); tokens/s."""
        runner.restore(after)
        runner.read_question(prompt)  # outside the timing: the same for both
        ledger = runner.cache.new_ledger() if cite else None
        if loaded.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with runner.cache.citing(ledger) if ledger is not None else contextlib.nullcontext():
            logits = runner.last_logits
            for _ in range(args.tokens):
                logits = runner.decode_one_token(int(logits.argmax()))
        if ledger is not None:
            ledger.passages()  # reading the result synchronises
        if loaded.device.type == "cuda":
            torch.cuda.synchronize()
        return args.tokens / (time.perf_counter() - start)

    one(False), one(True)  # warm-up (kernels compiled, caches filled)
    plain, citing = [], []
    for _ in range(args.repeats):
        plain.append(one(False))
        citing.append(one(True))
    p, c = statistics.median(plain), statistics.median(citing)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s)"
                    + (f", {torch.cuda.get_device_name()}" if loaded.device.type == "cuda" else ""),
        "model": args.model, "preset": args.preset, "backend": runner.cache.memories[0].backend.name,
        "document_tokens": len(doc), "blocks": runner.blocks, "generated_tokens": args.tokens, "repeats": args.repeats,
        "plain_tokens_per_s": round(p, 2), "cite_tokens_per_s": round(c, 2),
        "slowdown": round(p / c - 1, 4),
        "plain_all": [round(x, 1) for x in plain], "cite_all": [round(x, 1) for x in citing],
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
