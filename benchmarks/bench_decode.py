"""Decode time against the size of the block store (torch backend), today's memory path against a baseline.

After reading ``--tokens`` random tokens into a random Llama (``benchmarks/bench_prefill.build_model``,
preset ``paper``, default selection), the block store of every layer is padded with random blocks up to
each size of ``--blocks`` (e.g. 8,159 blocks per layer is what a 1M-token read leaves with this preset):
per-token decode cost depends on how many blocks are stored, not on how they got there, so a million-token
store is measured without reading a million tokens. At each size, ``--decode`` tokens are decoded with the
current code and with the baseline, alternating, the memory restored before every run; medians of
``--repeats``.

The baseline is the memory path as it was before two changes: the attention concatenated ``[initial tokens |
retrieved blocks]`` into one tensor (``gather_memory``) for every query chunk and layer before scoring it in
one product (now the initial tokens are a softmax segment of their own), and block scoring read the
block-major bounds ([n, Hkv, 1, 2D], as they were stored) as one [n, Hkv * 2D] matrix against a
block-diagonal query matrix (now the bounds are stored head-major and scored with one matrix-vector product
per KV head). For the baseline's runs the bounds are copied into the old layout first. Both must give the
same logits (checked).

A last column times decoding after a ``--short`` document (4,096 tokens: inside the window, so no block is
read), alternating with each row, with today's code: the issue's bar is decode at 1M tokens at most 1.3x
that.

    python benchmarks/bench_decode.py                           # CPU, 2 threads
    python benchmarks/bench_decode.py --blocks 256 2048 8159 --threads 1
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
from bench_prefill import SHAPES, read_random_document  # noqa: E402
from infllm_cli.memory.block_store import BlockStore  # noqa: E402

CURRENT = {"_attention_probs": reference._attention_probs, "_one_key_scores": reference._one_key_scores}


def concat_probs(q_local, q_mem, k_local, v_local, k_init, v_init, k_blocks, v_blocks, block_idx, scale):
    """The baseline: one memory segment [initial tokens | blocks] built by ``gather_memory``'s concatenation."""
    h, l, d = q_local.shape
    n_kv, n_l, _ = k_local.shape
    g = h // n_kv
    n_i = k_init.shape[1]
    k_mem, v_mem, valid = reference.gather_memory(k_init, v_init, k_blocks, v_blocks, block_idx)
    s_loc = torch.bmm(reference._grouped(q_local, n_kv), k_local.float().transpose(1, 2)).mul_(scale)
    s_loc = s_loc.view(n_kv, g, l, n_l)
    s_loc[..., n_l - l :].masked_fill_(~reference.local_causal_mask(l, l, q_local.device), float("-inf"))
    s_mem = torch.bmm(reference._grouped(q_mem, n_kv), k_mem.float().transpose(1, 2)).mul_(scale)
    s_mem = s_mem.view(n_kv, g, l, -1).masked_fill_(~valid[:, None, None, :], float("-inf"))
    m = s_loc.amax(dim=-1)
    if s_mem.shape[-1]:
        m = torch.maximum(m, s_mem.amax(dim=-1))
    e_loc = s_loc.sub_(m[..., None]).exp_()
    e_mem = s_mem.sub_(m[..., None]).exp_()
    z = e_loc.sum(dim=-1) + e_mem.sum(dim=-1)
    lse = m + torch.log(z)
    p_loc = e_loc.div_(z[..., None]).view(n_kv, g * l, n_l)
    p_mem = e_mem.div_(z[..., None]).view(n_kv, g * l, -1)
    out = torch.bmm(p_loc, v_local.float()).add_(torch.bmm(p_mem, v_mem.float()))
    return out.view(h, l, d).to(q_local.dtype), lse.reshape(h, l), p_loc, p_mem[..., :n_i], p_mem[..., n_i:]


def blockdiag_scores(qg, reps):
    """The baseline's block scoring: one product of the whole store, seen as [n, Hkv * D], with a
    block-diagonal [Hkv * D, Hkv] query matrix."""
    n_kv, _, lq, d = qg.shape
    n = reps.shape[0]
    qs = qg.sum(dim=1)
    eye = torch.eye(n_kv, dtype=qs.dtype, device=qs.device)
    blockdiag = (qs.transpose(1, 2)[:, :, None, :] * eye[:, None, :, None]).reshape(n_kv * d, n_kv * lq)
    return (reps.reshape(n, n_kv * d) @ blockdiag).view(n, n_kv, lq).amax(dim=2).t()


VARIANTS = {"baseline": {"_attention_probs": concat_probs, "_one_key_scores": blockdiag_scores}, "current": CURRENT}
HEAD_MAJOR = BlockStore.bounds


def block_major(runner) -> None:
    """The baseline's store layout: bounds in one block-major [capacity, Hkv, 1, 2D] tensor (a copy of the
    stored ones; blocks appended while decoding go there and are dropped by the next restore)."""
    for memory in runner.cache.memories:
        store = memory.store
        store._block_major = store._bounds.transpose(0, 1).unsqueeze(2).contiguous()
    BlockStore.bounds = property(lambda store: store._block_major)


def use(variant: dict, runner) -> None:
    for name, fn in variant.items():
        setattr(reference, name, fn)
    BlockStore.bounds = HEAD_MAJOR
    if variant is not CURRENT:
        block_major(runner)


def pad_store(runner, n_blocks: int, seed: int) -> None:
    """Append random blocks to every layer's store until it holds ``n_blocks`` blocks."""
    gen = torch.Generator().manual_seed(seed)
    for memory in runner.cache.memories:
        store = memory.store
        _, n_kv, bs, d = store.keys.shape
        store.reserve(n_blocks)
        while store.n_blocks < n_blocks:
            n = min(512, n_blocks - store.n_blocks)
            k = torch.randn((n, n_kv, bs, d), generator=gen, dtype=store.keys.dtype)
            v = torch.randn((n, n_kv, bs, d), generator=gen, dtype=store.keys.dtype)
            store.append(k, v, k[:, :, : store.repr_keys.shape[2]])


def decode_ms(runner, snap, decode: int) -> tuple[float, torch.Tensor]:
    runner.restore(snap)
    token = int(runner.last_logits.argmax())
    logits = []
    t0 = time.perf_counter()
    for _ in range(decode):
        out = runner.decode_one_token(token)
        logits.append(out)
        token = int(out.argmax())
    return 1000 * (time.perf_counter() - t0) / decode, torch.stack(logits)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=32768, help="tokens read before the store is padded")
    p.add_argument("--blocks", type=int, nargs="+", default=[0, 2015, 8159],
                   help="store sizes per layer (0: as read); 2,015 and 8,159 are what 256K and 1M tokens leave")
    p.add_argument("--decode", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--shape", choices=list(SHAPES), default="tiny",
                   help="tiny: hidden 256, head dim 32 (attention-heavy); tinyllama: TinyLlama-1.1B's layer shapes, "
                        "4 layers (a real model's proportion of weights to key/value cache)")
    p.add_argument("--short", type=int, default=4096,
                   help="also time decoding after a document this short (inside the window: no block is read), "
                        "alternating with the rows, for the ratio the issue's bar is stated in (0: skip)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)

    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as tmp_short:
        runner, preset = read_random_document(tmp, a.tokens, shape=a.shape)
        short = read_random_document(tmp_short, a.short, shape=a.shape)[0] if a.short else None
        short_snap = short.snapshot() if short else None
        hidden, layers, heads, kv_heads, inter, vocab = SHAPES[a.shape]
        print(f"torch {torch.__version__}, {a.threads} thread(s); random Llama {a.shape!r} (hidden {hidden}, {layers} "
              f"layers, {heads} heads / {kv_heads} KV heads, MLP {inter}, vocab {vocab}), preset {preset}, {a.tokens:,} tokens read ({runner.blocks:,} blocks per layer), "
              f"{a.decode} tokens decoded x {a.repeats} per cell, medians\n")
        names = list(VARIANTS)
        extra = f" | {a.short:,}-token document ms/token | current / that |" if short else " |"
        print("| blocks per layer | " + " | ".join(f"{n} ms/token" for n in names) + " | current / baseline" + extra)
        print("|---:|" + "---:|" * (len(names) + 1 + 2 * bool(short)))
        for n_blocks in sorted(a.blocks):
            if n_blocks > runner.blocks:
                pad_store(runner, n_blocks, seed=n_blocks)
            for memory in runner.cache.memories:  # room for the blocks decoding evicts: no resize mid-run
                memory.store.reserve(memory.store.n_blocks + 1 + a.decode // memory.config.block_size)
            snap, stored = runner.snapshot(), runner.blocks
            runs: dict[str, list[float]] = {n: [] for n in [*names, "short"]}
            outs: dict[str, torch.Tensor] = {}
            for _ in range(a.repeats):
                for name in names:
                    use(VARIANTS[name], runner)
                    ms, outs[name] = decode_ms(runner, snap, a.decode)
                    runs[name].append(ms)
                use(CURRENT, runner)
                if short:
                    runs["short"].append(decode_ms(short, short_snap, a.decode)[0])
            diff = (outs[names[0]] - outs[names[1]]).abs().max().item()
            assert diff < 1e-3, f"the variants' logits differ by {diff}"
            med = [statistics.median(runs[n]) for n in names]
            row = f"| {stored:,} | " + " | ".join(f"{m:.2f}" for m in med) + f" | {med[1] / med[0]:.2f} |"
            if short:
                ms_short = statistics.median(runs["short"])
                row += f" {ms_short:.2f} | {med[1] / ms_short:.2f} |"
            print(row, flush=True)


if __name__ == "__main__":
    main()
