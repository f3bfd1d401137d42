"""Gathering the retrieved blocks (torch backend): ``gather_memory`` against the plain advanced-indexing form.

Every query chunk (and every decoded token) copies its selected blocks out of the block store into
contiguous memory keys/values. ``infllm_kernels.reference.gather_blocks`` (behind ``gather_memory``,
and called by the attention itself) does it with one ``index_select`` per tensor and zeroes empty slots only when there are any; the baseline here is the form
it replaced: ``store[idx, heads]`` then a broadcast ``masked_fill`` of the empty slots. Both run in this
process on the same inputs, alternating, and must return equal tensors.

Two tables: the gather alone at decode-like sizes (one selection of K blocks per KV head, with and
without empty slots), and decode ms/token of a random Llama (``benchmarks/bench_prefill.build_model``)
after reading ``--tokens`` tokens, each token decoded with either gather (the memory restored before
every run; medians of ``--repeats``).

    python benchmarks/bench_gather.py                       # CPU, 2 threads, 32K-token document
    python benchmarks/bench_gather.py --tokens 262144 --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import infllm_kernels.reference as reference  # noqa: E402

FAST = reference.gather_memory
FAST_BLOCKS = reference.gather_blocks


def baseline_blocks(k_blocks, v_blocks, block_idx, device):
    """Advanced indexing and a broadcast masked_fill: what ``gather_blocks`` does with one ``index_select``."""
    n_kv, d = k_blocks.shape[1], k_blocks.shape[3]
    idx = reference.per_head_index(block_idx, n_kv).to(k_blocks.device)
    ok = idx >= 0
    heads = torch.arange(n_kv, device=k_blocks.device)[:, None]
    kb = k_blocks[idx.clamp(min=0), heads].masked_fill(~ok[..., None, None], 0).reshape(n_kv, -1, d)
    vb = v_blocks[idx.clamp(min=0), heads].masked_fill(~ok[..., None, None], 0).reshape(n_kv, -1, d)
    return kb.to(device), vb.to(device), ok.to(device)


def baseline_gather(k_init, v_init, k_blocks, v_blocks, block_idx):
    """:func:`baseline_blocks` behind the initial tokens, as ``gather_memory`` lays them out."""
    n_kv, n_i, _ = k_init.shape
    kb, vb, ok = baseline_blocks(k_blocks, v_blocks, block_idx, k_init.device)
    valid = torch.cat([torch.ones(n_kv, n_i, dtype=torch.bool, device=k_init.device),
                       ok.repeat_interleave(k_blocks.shape[2], dim=1)], dim=1)
    return torch.cat([k_init, kb], dim=1), torch.cat([v_init, vb], dim=1), valid


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def gather_table(repeats: int) -> list[str]:
    g = torch.Generator().manual_seed(0)
    n_kv, nb, bs, d, n_i = 4, 2048, 128, 64, 128
    kb, vb = torch.randn(nb, n_kv, bs, d, generator=g), torch.randn(nb, n_kv, bs, d, generator=g)
    ki, vi = torch.randn(n_kv, n_i, d, generator=g), torch.randn(n_kv, n_i, d, generator=g)
    lines = ["| blocks per KV head | empty slots | baseline ms | gather_memory ms | speed-up |", "|---:|---:|---:|---:|---:|"]
    for k in (16, 34, 64):
        for empty in (0, k // 4):
            idx = torch.stack([torch.randperm(nb, generator=g)[:k].sort().values for _ in range(n_kv)])
            idx[:, :empty] = -1
            a, b = baseline_gather(ki, vi, kb, vb, idx), FAST(ki, vi, kb, vb, idx)
            assert all(torch.equal(x, y) for x, y in zip(a, b)), "gather_memory differs from the baseline"
            slow = median_ms(lambda: baseline_gather(ki, vi, kb, vb, idx), repeats)
            fast = median_ms(lambda: FAST(ki, vi, kb, vb, idx), repeats)
            lines.append(f"| {k} | {empty} per head | {slow:.3f} | {fast:.3f} | {slow / fast:.2f}x |")
    return lines


def decode_table(tokens: int, decode: int, repeats: int) -> list[str]:
    from bench_prefill import read_random_document

    with tempfile.TemporaryDirectory() as tmp:
        runner, preset = read_random_document(tmp, tokens, reserve=tokens + decode + 1)
        snap = runner.snapshot()
        runs: dict[str, list[float]] = {"baseline": [], "gather_blocks": []}
        for _ in range(repeats):
            for name, fn in (("baseline", baseline_blocks), ("gather_blocks", FAST_BLOCKS)):
                reference.gather_blocks = fn
                runner.restore(snap)
                token = int(runner.last_logits.argmax())
                t0 = time.perf_counter()
                for _ in range(decode):
                    token = int(runner.decode_one_token(token).argmax())
                runs[name].append(1000 * (time.perf_counter() - t0) / decode)
        reference.gather_blocks = FAST_BLOCKS
    base, fast = statistics.median(runs["baseline"]), statistics.median(runs["gather_blocks"])
    return [f"random Llama (hidden 256, 4 layers, 8 heads / 4 KV heads), preset {preset}, {tokens:,} tokens read "
            f"({runner.blocks:,} blocks), {decode} tokens decoded x {repeats}",
            "| gather | decode ms/token (median) | all runs |", "|---|---:|---|",
            f"| baseline | {base:.2f} | {', '.join(f'{x:.1f}' for x in runs['baseline'])} |",
            f"| gather_blocks | {fast:.2f} | {', '.join(f'{x:.1f}' for x in runs['gather_blocks'])} |",
            f"decode time with gather_blocks: {fast / base:.2f}x the baseline's"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=32768, help="document length for the decode table (0: skip it)")
    p.add_argument("--decode", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {a.threads} thread(s)")
    print("\n".join(gather_table(max(20, 10 * a.repeats))))
    if a.tokens:
        print()
        print("\n".join(decode_table(a.tokens, a.decode, a.repeats)))


if __name__ == "__main__":
    main()
