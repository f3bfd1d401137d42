"""Benchmark the fused memory attention against dense attention over the same attended tokens.

One memory-attention call = a query chunk of L tokens attending [Ni initial | K*bs retrieved | Nl local].
The dense baselines see the same keys laid out contiguously, with the same bottom-right causal mask, so
both attend exactly the same (query, key) pairs:

* torch SDPA with ``causal_lower_right`` (GQA through ``enable_gqa``),
* ``flash_attn_func(causal=True)`` when flash-attn is importable (its causal mask is bottom-right aligned).

Columns: time per call, achieved TFLOP/s (4*D flops per attended pair) and GB/s (minimum traffic: Q in,
K/V of every attended token in, O and lse out), then "vs dense": attended pairs per second of the memory
attention divided by that of each dense baseline (1.0 = as fast per attended token as dense attention).
``max|diff|`` is the largest difference between the memory attention and SDPA outputs (q_mem = q_local here).

CUDA times come from ``triton.testing.do_bench``; CPU times from a ``time.perf_counter`` loop. On CPU use
``--small`` (tiny sizes); the default backend there is the torch reference, and ``--backend triton`` runs the
kernels through the Triton interpreter (correct, but its timings say nothing about GPU speed).

    python benchmarks/bench_memory_attention.py                       # CUDA, Llama-3-8B-like sizes
    python benchmarks/bench_memory_attention.py --device cpu --small  # anywhere
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Size:
    name: str
    h: int  # query heads
    h_kv: int  # key/value heads
    d: int  # head dim
    l: int  # query chunk
    n_init: int  # initial tokens
    k: int  # retrieved blocks
    bs: int  # block size
    n_local: int  # local window (includes the chunk)

    @property
    def n_keys(self) -> int:
        return self.n_init + self.k * self.bs + self.n_local

    @property
    def pairs(self) -> int:
        """(query head, query, key) triples attended under the bottom-right causal mask."""
        return self.h * (self.l * (self.n_keys - self.l) + self.l * (self.l + 1) // 2)


FULL = [
    Size("llama3-8b 128+16x128+4096", 32, 8, 128, 512, 128, 16, 128, 4096),
    Size("llama3-8b 128+32x128+2048", 32, 8, 128, 512, 128, 32, 128, 2048),
    Size("qwen2.5-7b 128+32x64+4096", 28, 4, 128, 512, 128, 32, 64, 4096),
    Size("phi3-mini d96 64+8x128+2048", 32, 32, 96, 256, 64, 8, 128, 2048),
]
SMALL = [
    Size("tiny gqa4 d64", 8, 2, 64, 64, 16, 4, 16, 256),
    Size("tiny mha d128", 4, 4, 128, 32, 8, 2, 32, 128),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--small", action="store_true", help="tiny sizes (for CPU / smoke runs)")
    p.add_argument("--backend", choices=["auto", "torch", "triton"], default="auto",
                   help="memory-attention implementation (auto: triton on cuda, torch on cpu)")  # fmt: skip
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default=None,
                   help="default: bfloat16 on cuda, float32 on cpu")  # fmt: skip
    p.add_argument("--repeats", type=int, default=7, help="timed calls per measurement on CPU (median kept)")
    p.add_argument("--num-blocks", type=int, default=0, help="block-store capacity (default 4*K)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    return p.parse_args(argv)


def make_inputs(s: Size, dtype: torch.dtype, device: str, n_blocks: int) -> dict:
    gen = torch.Generator(device="cpu").manual_seed(0)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(dtype=dtype, device=device)

    nb = max(n_blocks, 4 * s.k, 1)
    q = rnd(s.h, s.l, s.d)
    x = {
        "q_local": q, "q_mem": q,
        "k_local": rnd(s.h_kv, s.n_local, s.d), "v_local": rnd(s.h_kv, s.n_local, s.d),
        "k_init": rnd(s.h_kv, s.n_init, s.d), "v_init": rnd(s.h_kv, s.n_init, s.d),
        "k_blocks": rnd(nb, s.h_kv, s.bs, s.d), "v_blocks": rnd(nb, s.h_kv, s.bs, s.d),
        "block_idx": torch.randperm(nb, generator=gen)[: s.k].sort().values.to(device),
        "scale": s.d**-0.5,
    }  # fmt: skip
    return x


def dense_inputs(x: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[1, H, L, D] queries and [1, Hkv, S, D] keys/values: [init | gathered blocks | local], contiguous."""
    from infllm_kernels.reference import gather_memory

    k_mem, v_mem, _ = gather_memory(x["k_init"], x["v_init"], x["k_blocks"], x["v_blocks"], x["block_idx"])
    k = torch.cat([k_mem, x["k_local"]], dim=1)[None].contiguous()
    v = torch.cat([v_mem, x["v_local"]], dim=1)[None].contiguous()
    return x["q_local"][None].contiguous(), k, v


def timer(device: str, repeats: int):
    if device == "cuda":
        import triton.testing

        return lambda fn: triton.testing.do_bench(fn, warmup=25, rep=100) * 1e-3

    def cpu_time(fn) -> float:
        fn()  # warm-up (and compilation)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2]  # median: robust to other processes on a shared CPU

    return cpu_time


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: use --device cpu --small", file=sys.stderr)
        return 2
    if args.threads > 0:
        torch.set_num_threads(args.threads)  # on a shared, busy CPU one thread avoids time-slice stalls
    backend = args.backend if args.backend != "auto" else ("triton" if args.device == "cuda" else "torch")
    if backend == "triton" and args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are first imported
        print("note: triton on CPU runs through the Triton interpreter; its times are not GPU-representative")
    from infllm_kernels import select_backend

    ops = select_backend(backend, args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device == "cuda" else "float32"))
    sizes = SMALL if args.small else FULL
    measure = timer(args.device, args.repeats)

    import torch.nn.functional as F
    from torch.nn.attention.bias import causal_lower_right

    try:
        from flash_attn import flash_attn_func  # type: ignore[import-not-found]
    except ImportError:
        flash_attn_func = None

    print(f"device={args.device} ({torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'}) "
          f"dtype={str(dtype).removeprefix('torch.')} backend={ops.name} flash_attn={'yes' if flash_attn_func else 'no'}")  # fmt: skip
    cols = ["size", "keys", "ms", "TFLOP/s", "GB/s", "SDPA ms", "SDPA TFLOP/s", "flash ms", "vs SDPA", "vs flash",
            "max abs diff"]  # fmt: skip
    widths = [28] + [max(9, len(c)) for c in cols[1:]]
    print("| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cols, widths))) + " |")
    print("|" + "|".join("-" * (w + 1) + ("-" if i == 0 else ":") for i, w in enumerate(widths)) + "|")
    for s in sizes:
        x = make_inputs(s, dtype, args.device, args.num_blocks)
        q, k, v = dense_inputs(x)
        mask = causal_lower_right(s.l, s.n_keys)
        esz = torch.finfo(dtype).bits // 8

        def ours():
            return ops.memory_attention(**x)

        def sdpa():
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=x["scale"], enable_gqa=True)

        t_ours, t_sdpa = measure(ours), measure(sdpa)
        diff = (ours()[0].float() - sdpa()[0].float()).abs().max().item()
        t_flash = float("nan")
        if flash_attn_func is not None and args.device == "cuda" and dtype != torch.float32:
            qf, kf, vf = (t.transpose(1, 2).contiguous() for t in (q, k, v))
            t_flash = measure(lambda: flash_attn_func(qf, kf, vf, softmax_scale=x["scale"], causal=True))
        flops = 4 * s.d * s.pairs
        traffic = esz * (s.h * s.l * s.d * 2 + 2 * s.h_kv * s.n_keys * s.d + s.h * s.l * s.d) + 4 * s.h * s.l
        row = [s.name, f"{s.n_keys}", f"{t_ours * 1e3:.3f}", f"{flops / t_ours / 1e12:.3g}", f"{traffic / t_ours / 1e9:.3g}",
               f"{t_sdpa * 1e3:.3f}", f"{flops / t_sdpa / 1e12:.3g}", f"{t_flash * 1e3:.3f}", f"{t_sdpa / t_ours:.2f}",
               f"{t_flash / t_ours:.2f}", f"{diff:.2e}"]  # fmt: skip
        print("| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
