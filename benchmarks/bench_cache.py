"""Benchmark of the memory cache: first `infllm ask` vs a second one with another question, end to end.

A random Llama of realistic proportions (not a tiny test model; random weights: the answers are noise, the
costs are real) is written to a temporary directory; a generated text of about ``--tokens`` tokens is
asked about three times as real ``python -m infllm_cli`` processes on CPU:

1. first question: reads the document, saves its memory;
2. another question: loads the memory;
3. the document with about 1% appended: reuses the saved prefix, reads the rest.

Printed: wall time of each process, the status line's read/load seconds and tokens read, the entry's size
on disk, and the speed-up. Not a test; run it alone on an idle machine:

    python benchmarks/bench_cache.py                 # 100K tokens, hidden 384, 6 layers, GQA 6/2
    python benchmarks/bench_cache.py --tokens 20000  # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORDS = ("the captain sailed ship across sea first mate betrayed him for little gold once upon time there was "
         "robot who loved read long books committee wrote report about harbour storm night morning").split()


def make_model(path: Path, hidden: int, layers: int, heads: int, kv_heads: int) -> Path:
    import torch
    import transformers

    sys.path.insert(0, str(REPO))
    from tests.tiny_models import make_tokenizer

    tok = make_tokenizer()
    config = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=int(hidden * 8 / 3) // 64 * 64,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def make_text(tokenizer_dir: Path, tokens: int, seed: int = 0) -> str:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    rng = random.Random(seed)
    sample = " ".join(rng.choice(WORDS) for _ in range(2000)) + ".\n"
    per_char = len(tok(sample, add_special_tokens=False)["input_ids"]) / len(sample)
    lines = []
    n = 0
    while n < tokens / per_char:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(8, 20))) + ".\n"
        lines.append(line)
        n += len(line)
    return "".join(lines)


def run(args: list[str], env: dict[str, str]) -> tuple[float, str, str]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "infllm_cli", *args], capture_output=True, text=True, env=env, cwd=REPO)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"infllm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return seconds, proc.stdout, proc.stderr


def status(stderr: str) -> str:
    return next((line for line in stderr.splitlines() if line.startswith("memory ")), "?")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=100_000)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--threads", type=int, default=None, help="torch threads in the runs (OMP_NUM_THREADS)")
    a = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        tmp = Path(tmp)
        model = make_model(tmp / "model", a.hidden, a.layers, a.heads, a.kv_heads)
        text = make_text(model, a.tokens)
        doc = tmp / "doc.txt"
        doc.write_text(text)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "INFLLM_CACHE_DIR": str(tmp / "cache"),
               "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        if a.threads:
            env["OMP_NUM_THREADS"] = str(a.threads)
        common = ["-m", str(model), "--device", "cpu", "--preset", a.preset, "--max-new-tokens", "16", "--json"]

        t1, out1, err1 = run(["ask", str(doc), "Who sailed the ship?", *common], env)
        t2, out2, err2 = run(["ask", str(doc), "What did the committee write?", *common], env)
        _, ls, _ = run(["cache", "ls", "--json"], env)
        entry = json.loads(ls.splitlines()[0])
        appended = text + make_text(model, a.tokens // 100, seed=1)
        doc.write_text(appended)
        t3, out3, err3 = run(["ask", str(doc), "Who sailed the ship?", *common], env)

        s1, s2, s3 = (json.loads(o.splitlines()[0])["stats"] for o in (out1, out2, out3))
        c1, c2, c3 = (s["memory_cache"] for s in (s1, s2, s3))
        tokens = s1["document_tokens"]
        print(f"# bench_cache  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end")
        print(f"model: random Llama hidden {a.hidden}, {a.layers} layers, {a.heads} heads / {a.kv_heads} KV heads, "
              f"preset {a.preset}, float32 on CPU; document {tokens:,} tokens")
        print(f"first ask (read + save):     {t1:7.1f} s end to end; read {c1['seconds']:.1f} s for {c1['tokens_read']:,} tokens  | {status(err1)}")
        print(f"second ask (other question): {t2:7.1f} s end to end; memory loaded in {c2['seconds']:.2f} s  | {status(err2)}")
        print(f"speed-up end to end: {t1 / t2:.1f}x; read vs load: {c1['seconds'] / max(c2['seconds'], 1e-9):.0f}x")
        print(f"cache entry on disk: {entry['bytes'] / 2**20:.1f} MiB ({entry['bytes'] / tokens:.0f} bytes/token)")
        print(f"1% appended ({s3['document_tokens'] - tokens:,} tokens): {t3:7.1f} s end to end; reused {c3['tokens_reused']:,}, "
              f"read {c3['tokens_read']:,} tokens ({100 * c3['tokens_read'] / s3['document_tokens']:.1f}%) in {c3['seconds']:.1f} s  | {status(err3)}")


if __name__ == "__main__":
    main()
