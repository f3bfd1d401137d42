"""Prefill throughput and peak memory: dense attention vs InfLLM, at growing input lengths, in one run.

A small random Llama is built in code (nothing is downloaded). Each (attention, length) measurement runs
in a fresh subprocess so that its peak memory (peak RSS on CPU, peak allocated on CUDA) is its own; the
table reports throughput, peak memory above the loaded model, and the ratio of InfLLM's throughput at each
length to its throughput at the shortest length (InfLLM's cost per token should stay flat).

    python benchmarks/bench_prefill.py                      # 4K, 16K, 64K on CPU, preset "small"
    python benchmarks/bench_prefill.py --device cuda --preset paper --hidden 4096 --layers 8 --heads 32 \
        --kv-heads 8 --lengths 32768 131072 1048576 --dense-max-tokens 131072      # GPU, Llama-3-8B layer shapes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


#: Model shapes the decode benchmarks take (``--shape``): hidden, layers, heads, KV heads, intermediate, vocab.
SHAPES = {
    # the small random Llama of the decode tables since session 4: head dim 32, attention-heavy (at 4K tokens
    # the attention does about twice the multiply-adds of the weights)
    "tiny": (256, 4, 8, 4, 640, 4096),
    # TinyLlama-1.1B's layer shapes (head dim 64, 32 heads / 4 KV heads, MLP 5632, vocab 32000), 4 of its
    # 22 layers: the proportions of a real model's weights to its key/value cache
    "tinyllama": (2048, 4, 32, 4, 5632, 32000),
}


def build_model(path: str, hidden: int, layers: int, heads: int, kv_heads: int,
                intermediate: int | None = None, vocab: int = 4096) -> None:
    import torch
    import transformers
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden,
        intermediate_size=intermediate if intermediate is not None else int(hidden * 8 / 3) // 64 * 64,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=8192, bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    vocab = {f"t{i}": i for i in range(config.vocab_size)}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")),
                                  bos_token="t1", eos_token="t2", unk_token="t0")
    tok.save_pretrained(path)


def read_random_document(path: str, tokens: int, reserve: int = 0, shape: str = "tiny"):
    """Build a decode benchmark's random Llama (:data:`SHAPES`, default ``tiny``: hidden 256, 4 layers, 8 heads
    / 4 KV heads) in ``path`` and read ``tokens`` random tokens with preset ``paper`` on the torch backend:
    (runner, preset name)."""
    import torch

    from infllm_cli.cli.options import Options
    from infllm_cli.models import load_model, read_model_config
    from infllm_cli.runner import Runner

    hidden, layers, heads, kv_heads, intermediate, vocab = SHAPES[shape]
    build_model(path, hidden, layers, heads, kv_heads, intermediate, vocab)
    config = read_model_config(path)
    memory, preset = Options(preset="paper").memory_config(config)
    runner = Runner(load_model(path, device="cpu", dtype="float32"), memory, attention="infllm", backend="torch")
    if reserve:
        runner.reserve(reserve)
    runner.feed(torch.randint(3, int(config.vocab_size), (tokens,), generator=torch.Generator().manual_seed(0)).tolist())
    return runner, preset


def measure(args: argparse.Namespace) -> dict:
    """Child process: load, prefill ``args.length`` random tokens, report time and memory."""
    import resource

    import torch

    from infllm_cli.config import preset, with_selection
    from infllm_cli.models import load_model
    from infllm_cli.runner import Runner

    torch.set_num_threads(args.threads or torch.get_num_threads())
    loaded = load_model(args.model_dir, device=args.device, dtype=args.dtype)
    memory = with_selection(preset(args.preset), args.selection)
    runner = Runner(loaded, memory, attention=args.attention, backend=args.backend)
    ids = torch.randint(3, 4096, (args.length,), generator=torch.Generator().manual_seed(0)).tolist()
    cuda = loaded.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    runner.feed(ids)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    label = f"infllm-{args.selection}" if args.attention == "infllm" else args.attention
    return {"attention": label, "tokens": args.length, "seconds": seconds,
            "tokens_per_second": args.length / seconds, "peak_above_model_bytes": max(0, peak - base),
            "blocks": runner.blocks}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384, 65536])
    p.add_argument("--attention", nargs="+", default=["dense", "infllm"], choices=["dense", "streaming", "infllm"])
    p.add_argument("--preset", default="small", help="memory preset for infllm (default: small)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--backend", default="auto")
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--selections", nargs="+", default=["default"], choices=["paper", "default"],
                   help="block selections to measure for infllm (each its own row; 'vs paper' compares them)")
    p.add_argument("--selection", default="default", help=argparse.SUPPRESS)
    p.add_argument("--dense-max-tokens", type=int, default=None,
                   help="skip dense above this length (it would not fit or take hours); reported as skipped")
    p.add_argument("--json", action="store_true", help="print the rows as JSON lines too")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.attention = args.attention[0]
        print(json.dumps(measure(args)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        build_model(tmp, args.hidden, args.layers, args.heads, args.kv_heads)
        rows = []
        runs = [(a, sel) for a in args.attention for sel in (args.selections if a == "infllm" else ["paper"])]
        for attention, selection in runs:
            for length in args.lengths:
                if attention == "dense" and args.dense_max_tokens and length > args.dense_max_tokens:
                    rows.append({"attention": attention, "tokens": length, "skipped": True})
                    continue
                cmd = [sys.executable, __file__, "--child", "--model-dir", tmp, "--length", str(length),
                       "--attention", attention, "--preset", args.preset, "--device", args.device,
                       "--dtype", args.dtype, "--backend", args.backend, "--threads", str(args.threads),
                       "--selection", selection]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    sys.stderr.write(out.stderr)
                    raise SystemExit(f"measurement failed: {attention} at {length} tokens")
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"  measured {attention:>9} {length:>8} tokens", file=sys.stderr)

    base = {r["attention"]: r["tokens_per_second"] for r in rows if r["tokens"] == min(args.lengths) and not r.get("skipped")}
    print(f"model: Llama hidden {args.hidden}, {args.layers} layers, {args.heads} heads / {args.kv_heads} KV heads; "
          f"device {args.device}; infllm preset {args.preset!r}")
    paper = {r["tokens"]: r["seconds"] for r in rows if r["attention"] == "infllm-paper" and not r.get("skipped")}
    print(f"| attention | tokens | seconds | tokens/s | vs own {min(args.lengths)} | time vs infllm-paper | peak memory above model | blocks |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if r.get("skipped"):
            print(f"| {r['attention']} | {r['tokens']:,} | skipped (over --dense-max-tokens) | | | | | |")
            continue
        ratio = r["tokens_per_second"] / base[r["attention"]]
        vs_paper = f"{r['seconds'] / paper[r['tokens']]:.2f}" if r["tokens"] in paper and r["attention"].startswith("infllm") else ""
        print(f"| {r['attention']} | {r['tokens']:,} | {r['seconds']:.1f} | {r['tokens_per_second']:,.0f} | "
              f"{ratio:.2f} | {vs_paper} | {r['peak_above_model_bytes'] / 2**20:,.0f} MiB | {r['blocks']} |")
    if args.json:
        for r in rows:
            print(json.dumps(r))


if __name__ == "__main__":
    main()
