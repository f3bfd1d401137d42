"""Scaling with the document's length: prefill throughput, peak memory and decode time, as plots.

For each attention (infllm, streaming, dense) and length, a fresh subprocess loads the model, reads that many
random tokens, then generates ``--decode-tokens`` tokens; it reports prefill tokens/s, its peak resident
memory (peak allocated on CUDA), the peak the pre-flight check predicted (:mod:`infllm_cli.budget`), and
decode milliseconds per token. Dense is measured only while its predicted peak fits the memory available
(and ``--dense-max-tokens``); longer lengths are recorded as skipped. ``infllm-disk`` is infllm with the
disk-backed block store (``--disk-store``): its peak resident memory should not grow with the document.

``--threads auto`` lets each process choose its thread count as the CLI does (:mod:`infllm_cli.threads`);
``--busy N`` keeps N other processes spinning on the CPU for the whole run (a busy machine). After the
measurements, a table of ratios against the shortest length (prefill throughput, decode time) and of
measured against predicted peak memory is printed.

Results go to ``OUT/scaling.json`` and, when matplotlib is installed (``pip install -e ".[plots]"``), to
``OUT/scaling_prefill.png``, ``OUT/scaling_memory.png`` and ``OUT/scaling_decode.png``. Every figure is
stamped with the date, the CPU, the thread count and the load average at the start: on a shared machine
the numbers are only as good as the machine was quiet.

    python benchmarks/plot_scaling.py                                   # random Llama, 4K..256K, into docs/
    python benchmarks/plot_scaling.py --model ../shared/models/stories260k --lengths 4096 32768 262144 1048576
    python benchmarks/plot_scaling.py --attention infllm infllm-disk --lengths 4096 32768 1048576 --threads auto
    python benchmarks/plot_scaling.py --from-json docs/scaling.json     # redraw without measuring
    python benchmarks/plot_scaling.py --attention infllm --out /tmp/a && \
    python benchmarks/plot_scaling.py --attention streaming dense --out /tmp/b && \
    python benchmarks/plot_scaling.py --from-json /tmp/a/scaling.json /tmp/b/scaling.json   # in parts, merged
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
REPO = Path(__file__).resolve().parent.parent


def child(args: argparse.Namespace) -> dict:
    """In a fresh process: prefill ``args.length`` random tokens, then decode; report time and memory."""
    import resource

    import torch

    from infllm_cli.budget import predict
    from infllm_cli.cli.options import Options
    from infllm_cli.estimate import model_shape
    from infllm_cli.models import load_model, read_model_config
    from infllm_cli.runner import Runner

    from infllm_cli.threads import configure_threads

    threads = configure_threads(None if args.threads == "auto" else int(args.threads)).threads
    config = read_model_config(args.model_dir)
    memory, preset = Options(preset=args.preset).memory_config(config)
    attention = "infllm" if args.attention == "infllm-disk" else args.attention
    memory = memory.replace(disk_store=args.attention == "infllm-disk" or None)
    loaded = load_model(args.model_dir, device=args.device, dtype=args.dtype)
    runner = Runner(loaded, memory, attention=attention, backend=args.backend)
    runner.reserve(args.length + args.decode_tokens)
    vocab = int(config.vocab_size)
    ids = torch.randint(3, vocab, (args.length,), generator=torch.Generator().manual_seed(0)).tolist()
    cuda = loaded.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    runner.feed(ids)
    if cuda:
        torch.cuda.synchronize()
    prefill = time.perf_counter() - start
    token = int(runner.last_logits.argmax())
    start = time.perf_counter()
    for _ in range(args.decode_tokens):
        token = int(runner.decode_one_token(token).argmax())
    decode = (time.perf_counter() - start) / max(1, args.decode_tokens)
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    shape = model_shape(config, args.dtype, args.device, Path(args.model_dir))
    predicted = predict(args.length, memory, attention, shape, loaded.device.type)
    return {"attention": args.attention, "preset": preset, "threads": threads, "tokens": args.length, "prefill_seconds": prefill,
            "tokens_per_second": args.length / prefill, "decode_ms_per_token": decode * 1000, "peak_bytes": peak,
            "predicted_peak_bytes": predicted.device_bytes if cuda else predicted.host_bytes, "blocks": runner.blocks}


def dense_fits(model_dir: str, length: int, args: argparse.Namespace) -> tuple[bool, int]:
    from infllm_cli.budget import budget, fits, predict
    from infllm_cli.cli.options import Options
    from infllm_cli.estimate import model_shape
    from infllm_cli.models import read_model_config

    config = read_model_config(model_dir)
    memory, _ = Options(preset=args.preset).memory_config(config)
    device_type = "cuda" if args.device.startswith("cuda") else "cpu"
    p = predict(length, memory, "dense", model_shape(config, args.dtype, args.device, Path(model_dir)), device_type)
    b = budget(None, device_type, args.device)
    return fits(p, b), max(p.host_bytes, p.device_bytes)


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs"


def save(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.json").write_text(json.dumps(result, indent=1) + "\n")


def spinners(n: int) -> list[subprocess.Popen]:
    """``n`` processes that keep one CPU each busy until killed."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def measure(args: argparse.Namespace) -> dict:
    """Every (attention, length) in its own process; ``OUT/scaling.json`` is rewritten after each."""
    busy = spinners(args.busy)
    deadline = time.monotonic() + 90
    while busy and os.getloadavg()[0] < args.busy - 0.5 and time.monotonic() < deadline:
        time.sleep(5)  # let the spinners show in the load average stamped on the figures
    try:
        return _measure(args)
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()


def _measure(args: argparse.Namespace) -> dict:
    load = os.getloadavg()[0]
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
            "threads": args.threads, "load_average_at_start": round(load, 2), "device": args.device,
            "preset": args.preset, "decode_tokens": args.decode_tokens, "busy_processes": args.busy}
    rows: list[dict] = []
    result = {"meta": meta, "rows": rows}
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            model_dir = args.model
            meta["model"] = str(args.model)
        else:
            from bench_prefill import build_model

            build_model(tmp, args.hidden, args.layers, args.heads, args.kv_heads)
            model_dir = tmp
            meta["model"] = f"random Llama: hidden {args.hidden}, {args.layers} layers, {args.heads} heads / {args.kv_heads} KV heads"
        for attention in args.attention:
            for length in args.lengths:
                if attention == "dense":
                    ok, need = dense_fits(model_dir, length, args)
                    if not ok or (args.dense_max_tokens and length > args.dense_max_tokens):
                        reason = "predicted not to fit" if not ok else "over --dense-max-tokens"
                        rows.append({"attention": attention, "tokens": length, "skipped": True, "reason": reason,
                                     "predicted_peak_bytes": need})
                        print(f"  skipped  {attention:>9} {length:>9,} tokens (does not fit or over --dense-max-tokens)", file=sys.stderr)
                        save(result, args.out)
                        continue
                cmd = [sys.executable, __file__, "--child", "--model-dir", model_dir, "--length", str(length),
                       "--attention", attention, "--preset", args.preset, "--device", args.device, "--dtype", args.dtype,
                       "--backend", args.backend, "--threads", str(args.threads), "--decode-tokens", str(args.decode_tokens)]
                env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
                out = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if out.returncode != 0:
                    sys.stderr.write(out.stderr)
                    raise SystemExit(f"measurement failed: {attention} at {length} tokens")
                row = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append(row)
                meta["load_average_at_end"] = round(os.getloadavg()[0], 2)
                save(result, args.out)
                print(f"  measured {attention:>9} {length:>9,} tokens: {row['tokens_per_second']:,.0f} tokens/s, "
                      f"decode {row['decode_ms_per_token']:.1f} ms/token, peak {row['peak_bytes'] / 2**20:,.0f} MiB "
                      f"(predicted {row['predicted_peak_bytes'] / 2**20:,.0f})", file=sys.stderr)
    return result


def ratios(result: dict) -> str:
    """A table per attention: each length against the shortest (throughput, decode) and peak vs predicted."""
    lines = ["| attention | tokens | prefill tokens/s | x shortest | decode ms/token | x shortest | peak MiB | predicted MiB | peak / predicted |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    rows = [r for r in result["rows"] if not r.get("skipped")]
    for attention in dict.fromkeys(r["attention"] for r in rows):
        pts = sorted((r for r in rows if r["attention"] == attention), key=lambda r: r["tokens"])
        first = pts[0]
        for r in pts:
            lines.append(f"| {attention} | {r['tokens']:,} | {r['tokens_per_second']:,.0f} | "
                         f"{r['tokens_per_second'] / first['tokens_per_second']:.2f} | {r['decode_ms_per_token']:.1f} | "
                         f"{r['decode_ms_per_token'] / first['decode_ms_per_token']:.2f} | {r['peak_bytes'] / 2**20:,.0f} | "
                         f"{r['predicted_peak_bytes'] / 2**20:,.0f} | {r['peak_bytes'] / r['predicted_peak_bytes']:.2f} |")
    return "\n".join(lines)


def plot(result: dict, out: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e \".[plots]\"): no plots written", file=sys.stderr)
        return []
    meta, rows = result["meta"], result["rows"]
    stamp = (f"{meta['date']}; {meta['machine']}; {meta['threads']} thread(s); load average {meta['load_average_at_start']}"
             f"-{meta.get('load_average_at_end', '?')}\n{meta['model']}; preset {meta['preset']}")
    figures = [
        ("scaling_prefill.png", "tokens_per_second", "prefill tokens/s", "Prefill throughput vs document length"),
        ("scaling_memory.png", "peak_bytes", "peak memory (MiB)", "Peak memory vs document length"),
        ("scaling_decode.png", "decode_ms_per_token", "decode ms/token", "Decode time per token vs document length"),
    ]
    written = []
    for name, key, ylabel, title in figures:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for attention in dict.fromkeys(r["attention"] for r in rows):
            pts = [r for r in rows if r["attention"] == attention and not r.get("skipped")]
            if not pts:
                continue
            scale = 2**-20 if key == "peak_bytes" else 1
            line, = ax.plot([r["tokens"] for r in pts], [r[key] * scale for r in pts], marker="o", label=attention)
            if key == "peak_bytes":
                ax.plot([r["tokens"] for r in pts], [r["predicted_peak_bytes"] * scale for r in pts], linestyle="--",
                        color=line.get_color(), label=f"{attention} (predicted)")
            skipped = [r for r in rows if r["attention"] == attention and r.get("skipped")]
            if skipped:
                first = min(skipped, key=lambda r: r["tokens"])
                ax.annotate(f"{attention}: not measured from {first['tokens']:,} tokens ({first.get('reason', 'skipped')})",
                            xy=(0.02, 0.02), xycoords="axes fraction", fontsize=8)
        ax.set_xscale("log", base=2)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("document tokens")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=11)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.text(0.01, 0.005, stamp, fontsize=6, va="bottom")
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        path = out / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384, 65536, 262144])
    p.add_argument("--attention", nargs="+", default=["infllm", "streaming", "dense"],
                   choices=["infllm", "infllm-disk", "streaming", "dense"])
    p.add_argument("--model", help="model directory (default: a random Llama built in code, see --hidden ...)")
    p.add_argument("--preset", default="auto")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--backend", default="auto")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--threads", default="1", help="threads per measurement, or auto (the CLI's choice)")
    p.add_argument("--busy", type=int, default=0, help="other processes kept spinning during the run")
    p.add_argument("--decode-tokens", type=int, default=16)
    p.add_argument("--dense-max-tokens", type=int, default=None)
    p.add_argument("--out", type=Path, default=REPO / "docs")
    p.add_argument("--from-json", type=Path, nargs="+",
                   help="redraw the plots from earlier scaling.json files (rows of several runs are merged; "
                        "the first file's machine details head the figures); with --out, the merged result is saved there")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.attention = args.attention[0]
        print(json.dumps(child(args)))
        return
    if args.from_json:
        runs = [json.loads(path.read_text()) for path in args.from_json]
        result = {"meta": runs[0]["meta"], "rows": [r for run in runs for r in run["rows"]]}
        if len(runs) > 1:
            loads = [run["meta"]["load_average_at_start"] for run in runs] + [run["meta"].get("load_average_at_end", 0) for run in runs]
            result["meta"] = {**runs[0]["meta"], "load_average_at_start": min(loads), "load_average_at_end": max(loads),
                              "runs": [run["meta"] for run in runs]}
            save(result, args.out)
    else:
        result = measure(args)
    print(ratios(result))
    for path in plot(result, args.out):
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
