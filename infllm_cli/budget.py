"""Will the read fit in memory? Predicted peak memory, the memory available, and the pre-flight check.

The prediction uses only ``config.json``, the weight files' sizes (or the parameter count in their
safetensors headers), the dtype, the memory knobs and the token count, so it runs before the model is loaded.

Peak memory of an InfLLM read, per place (host = the process's resident memory, device = the GPU):

* the runtime: Python, torch and transformers (host, :data:`RUNTIME_BYTES`, measured);
* the weights: parameters x dtype bytes (on the compute device);
* the block store: every block's keys, values, representative keys, their sum and the key bounds
  (:func:`~infllm_cli.estimate.block_bytes`), on the compute device, or on the host with ``--offload``;
  the CLI reserves it once for the whole document, so it is not over-allocated by growth;
* the window: initial tokens and the local window, three copies (raw keys, rotated keys, values);
* the activations of one prefill chunk (hidden states, MLP, queries) and the scores of one query chunk
  (float32), held once (layers run one after the other).

``dense`` keeps every token's keys and values (plus one layer's copy while the cache grows) and the
attention mask of a chunk against everything before it.

Available memory: ``--memory-budget`` / ``$INFLLM_MEMORY_BUDGET`` when given; otherwise, on the host,
``MemAvailable`` of ``/proc/meminfo`` (lowered to the cgroup's limit when there is one) and, on CUDA,
the free memory reported by the driver. Where neither is known, nothing is refused.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .config import EXACT_SCORE_BUDGET, PRESETS, MemoryConfig
from .errors import InputError, UsageError
from .estimate import ModelShape, block_bytes
from .formatting import human_bytes

log = logging.getLogger("infllm.budget")

ENV_BUDGET = "INFLLM_MEMORY_BUDGET"

#: Resident memory of the process with Python, torch, transformers and the CLI imported (measured on Linux
#: with torch 2.13 CPU: 440 MiB).
RUNTIME_BYTES = 450 * 2**20

#: Extra tokens the store is sized for beyond the document (prompt template, question, answer).
QUESTION_SLACK_TOKENS = 4096


class MemoryBudgetError(InputError):
    """The read is predicted not to fit in the memory available (exit 3)."""


@dataclass
class Prediction:
    """Predicted peak bytes on the host and on the compute device (0 on CPU), and what makes them up."""

    tokens: int
    host_bytes: int
    device_bytes: int
    host_parts: dict[str, int] = field(default_factory=dict)
    device_parts: dict[str, int] = field(default_factory=dict)
    disk_bytes: int = 0  # the disk-backed block store's files (--disk-store)

    def describe(self, where: str, top: int | None = None) -> str:
        """The parts, largest first (the ``top`` largest only)."""
        parts = sorted((self.host_parts if where == "host" else self.device_parts).items(), key=lambda kv: -kv[1])
        return ", ".join(f"{name} {human_bytes(b)}" for name, b in parts[:top] if b)


def store_tokens(tokens: int, memory: MemoryConfig) -> int:
    """Tokens that end up in memory blocks after reading ``tokens``."""
    return max(0, tokens - memory.n_init - memory.n_local)


def activation_bytes(memory: MemoryConfig, shape: ModelShape, attention: str, tokens: int) -> int:
    """One prefill chunk's activations and one query chunk's attention scores (float32 where computed so)."""
    chunk = min(memory.chunk_size, max(tokens, memory.exc_block_size))  # a short document is one short chunk
    h, d, kv = shape.heads or 1, shape.head_dim, shape.kv_heads
    act = shape.dtype_bytes
    hidden = chunk * (4 * shape.hidden_size + 3 * shape.intermediate_size + 3 * (h + 2 * kv) * d) * act
    logits = shape.vocab_size * 4 * 2
    if attention == "dense":
        scores = chunk * tokens * (4 + 1)  # additive float mask and the boolean one it comes from
        return hidden + logits + scores
    exc = min(memory.exc_block_size, chunk)
    keys = min(tokens, memory.max_window)  # the window
    if attention == "infllm" and tokens > memory.n_init + memory.n_local:  # plus initial tokens and retrieved blocks
        # the question's blocks and those every layer and KV head shares, widened
        pinned = memory.question_pins * (1 + 2 * memory.question_neighbors)
        keys += memory.n_init + memory.block_size * (memory.topk + pinned) * (1 + 2 * memory.neighbors)
    # scores and probabilities (in place) in float32, the gathered memory keys/values, the output
    scores = int(1.2 * h * exc * keys * 4) + 2 * kv * keys * d * 4
    if attention == "infllm" and memory.question_exact > 0:  # one layer's candidates weighed exactly (question)
        candidates = min(memory.question_rescore, store_tokens(tokens, memory) // memory.block_size)
        scores += kv * candidates * memory.block_size * d * (act + 4) + 4 * EXACT_SCORE_BUDGET
    return hidden + logits + scores


def predict(tokens: int, memory: MemoryConfig, attention: str, shape: ModelShape, device_type: str) -> Prediction:
    """Peak memory of reading ``tokens`` tokens (and answering), see the module docstring."""
    per_layer_token = shape.layers * shape.kv_heads * shape.head_dim * shape.dtype_bytes
    weights = shape.loaded_weights_bytes or 0
    acts = activation_bytes(memory, shape, attention, tokens)
    if attention == "dense":
        kv = (tokens + QUESTION_SLACK_TOKENS) * 2 * per_layer_token
        kv += kv // max(1, shape.layers)  # one layer's copy while the cache grows by concatenation
        store, window = 0, kv
    else:
        window = 3 * (memory.max_window + 1) * per_layer_token + 2 * memory.n_init * per_layer_token
        blocks = 0
        if attention == "infllm":
            blocks = -(-store_tokens(tokens + QUESTION_SLACK_TOKENS, memory) // memory.block_size)
        store = blocks * block_bytes(memory, shape)
    on_device = device_type == "cuda"
    host = {"runtime": RUNTIME_BYTES}
    device: dict[str, int] = {}
    compute = device if on_device else host
    compute["weights"] = weights
    if on_device:
        host["weights while loading"] = shape.weights_bytes or weights
    kv_part = blocks * shape.layers * shape.kv_heads * shape.head_dim * shape.dtype_bytes * 2 * memory.block_size if attention == "infllm" else 0
    disk = 0
    if memory.disk_store and attention == "infllm":
        # keys and values in files (the page cache is the kernel's, not the process's); what is scored and
        # the block cache stay where the computation is
        disk = kv_part
        compute["block store (representatives)"] = store - kv_part
        compute["block cache"] = 2 * memory.max_cached_block * memory.block_size * per_layer_token
    elif memory.offload and attention == "infllm" and on_device:
        # keys and values on the host; representative keys, sums and bounds and the block cache on the device
        host["block store"] = kv_part
        device["block store (representatives)"] = store - kv_part
        device["block cache"] = 2 * memory.max_cached_block * memory.block_size * per_layer_token
    else:
        compute["block store" if attention != "dense" else "key/value cache"] = store if attention != "dense" else window
    if attention != "dense":
        compute["window"] = window
    compute["activations"] = acts
    return Prediction(tokens, sum(host.values()), sum(device.values()), host, device, disk)


# -- what is available ---------------------------------------------------------------------------------

_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


def parse_size(text: str, origin: str) -> int:
    """``8G``, ``512M``, ``1.5GiB``, ``100000`` (bytes) -> bytes (binary units); UsageError otherwise."""
    m = _SIZE.match(str(text))
    if not m or float(m.group(1)) <= 0:
        raise UsageError(f"{origin} must be a size such as 8G, 512M or 1.5GiB, got {text!r}")
    scale = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def host_available() -> tuple[int | None, str]:
    """Bytes of host memory available now, and where the figure comes from."""
    avail: int | None = None
    source = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail, source = int(line.split()[1]) * 1024, "MemAvailable"
                break
    except (OSError, ValueError, IndexError):
        pass
    limit = _cgroup_memory_left()
    if limit is not None and (avail is None or limit < avail):
        avail, source = limit, "cgroup memory limit"
    return avail, source


def _cgroup_memory_left() -> int | None:
    for max_file, used_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            raw = Path(max_file).read_text().strip()
            if raw == "max" or int(raw) >= 2**60:
                return None
            return max(0, int(raw) - int(Path(used_file).read_text().strip()))
        except (OSError, ValueError):
            continue
    return None


def device_available(device: str) -> tuple[int | None, str]:
    """Free memory of a CUDA device (None elsewhere)."""
    if not device.startswith("cuda"):
        return None, "unknown"
    import torch

    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return int(free), "free CUDA memory"


@dataclass(frozen=True)
class Budget:
    host: int | None
    device: int | None
    source: str


def budget(requested: str | None, device_type: str, device: str) -> Budget:
    """The memory a read may use: ``requested`` (``--memory-budget``), else ``$INFLLM_MEMORY_BUDGET``
    (each caps host and device), else what is available now."""
    if requested is not None:
        size = parse_size(requested, "--memory-budget")
        return Budget(size, size if device_type == "cuda" else None, "--memory-budget")
    env = os.environ.get(ENV_BUDGET, "").strip()
    if env:
        size = parse_size(env, ENV_BUDGET)
        return Budget(size, size if device_type == "cuda" else None, ENV_BUDGET)
    host, source = host_available()
    dev, dev_source = device_available(device) if device_type == "cuda" else (None, "")
    return Budget(host, dev, source + (f", {dev_source}" if dev_source else ""))


# -- the pre-flight check --------------------------------------------------------------------------------


def fits(p: Prediction, b: Budget) -> bool:
    return (b.host is None or p.host_bytes <= b.host) and (b.device is None or p.device_bytes <= b.device)


def largest_fitting(memory: MemoryConfig, attention: str, shape: ModelShape, device_type: str, b: Budget, upper: int) -> int:
    """The most tokens that fit ``b`` (0 if none), by bisection on :func:`predict`."""
    lo, hi = 0, upper
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(predict(mid, memory, attention, shape, device_type), b):
            lo = mid
        else:
            hi = mid - 1
    return lo


def plan(tokens: int, memory: MemoryConfig, attention: str, shape: ModelShape, device_type: str, b: Budget,
         *, offload_given: bool) -> tuple[MemoryConfig, Prediction]:
    """Check that reading ``tokens`` fits ``b``; returns the memory config to use and its prediction.

    On CUDA, when the block store would not fit on the device but fits in host memory and ``--offload``
    was not given either way, the store is moved to the host (logged). Otherwise a read that does not fit
    raises :class:`MemoryBudgetError`, one line naming what to change.
    """
    p = predict(tokens, memory, attention, shape, device_type)
    log.info("predicted peak memory for %s tokens: host %s (%s)%s; available: %s", f"{tokens:,}",
             human_bytes(p.host_bytes), p.describe("host"),
             f", device {human_bytes(p.device_bytes)} ({p.describe('device')})" if device_type == "cuda" else "",
             _describe_budget(b))
    if fits(p, b):
        check_disk(p)
        return memory, p
    if device_type == "cuda" and attention == "infllm" and not memory.offload and not offload_given:
        moved = memory.replace(offload=True)
        q = predict(tokens, moved, attention, shape, device_type)
        if fits(q, b):
            log.warning("the block store (%s) does not fit in GPU memory (%s free): keeping it in host memory "
                        "(--offload; --no-offload to refuse instead)", human_bytes(p.device_parts.get("block store", 0)),
                        human_bytes(b.device or 0))
            return moved, q
    raise MemoryBudgetError(refusal(tokens, memory, attention, shape, device_type, b, p))


def check_disk(p: Prediction) -> None:
    """Refuse a disk-backed read whose block files would not fit the free space where they go."""
    if not p.disk_bytes:
        return
    from .memory.disk_blocks import disk_store_root

    root = disk_store_root()
    existing = next((d for d in (root, *root.parents) if d.exists()), None)
    if existing is None:
        return
    free = shutil.disk_usage(existing).free
    log.info("disk store: %s of block files in %s (%s free)", human_bytes(p.disk_bytes), root, human_bytes(free))
    if p.disk_bytes > free:
        raise MemoryBudgetError(
            f"the disk store needs {human_bytes(p.disk_bytes)} in {root} but {human_bytes(free)} is free there; "
            f"set $INFLLM_DISK_STORE_DIR to a larger disk, or use --max-tokens")


def _describe_budget(b: Budget) -> str:
    parts = []
    if b.host is not None:
        parts.append(f"host {human_bytes(b.host)}")
    if b.device is not None:
        parts.append(f"device {human_bytes(b.device)}")
    return (" and ".join(parts) or "unknown") + f" ({b.source})"


def refusal(tokens: int, memory: MemoryConfig, attention: str, shape: ModelShape, device_type: str, b: Budget, p: Prediction) -> str:
    """The one-line message of a read that does not fit: what it needs, what there is, what to change."""
    if b.device is not None and p.device_bytes > b.device:
        need = f"{human_bytes(p.device_bytes)} of GPU memory ({p.describe('device', 2)}) but {human_bytes(b.device)} is available"
    else:
        need = f"{human_bytes(p.host_bytes)} of memory ({p.describe('host', 2)}) but {human_bytes(b.host or 0)} is available"
    fixes = []

    def works(mem: MemoryConfig = memory, att: str = attention, shp: ModelShape = shape) -> bool:
        return fits(predict(tokens, mem, att, shp, device_type), b)

    if device_type == "cuda" and attention == "infllm" and not memory.offload and works(memory.replace(offload=True)):
        fixes.append("--offload (block store in host memory)")
    if attention == "infllm" and not memory.disk_store and works(memory.replace(disk_store=True)):
        fixes.append("--disk-store (block keys and values in files)")
    if attention == "dense" and works(att="infllm"):
        fixes.append("--attention infllm")
    if shape.dtype_bytes == 4 and works(shp=dataclasses.replace(shape, dtype="bfloat16", dtype_bytes=2)):
        fixes.append("--dtype bfloat16")
    if attention == "infllm":
        smaller = [name for name, cfg in PRESETS.items() if cfg.max_window < memory.max_window
                   and works(cfg.replace(**memory.selection))]
        if smaller:
            fixes.append(f"--preset {smaller[0]}")
    n = largest_fitting(memory, attention, shape, device_type, b, tokens)
    if n > 0:
        fixes.append(f"--max-tokens {n}")
    if not fixes:
        empty = predict(0, memory, attention, shape, device_type)
        return (f"reading {tokens:,} tokens is predicted to need {need} ({b.source}), and even an empty read needs "
                f"{human_bytes(max(empty.host_bytes, empty.device_bytes))}; pass a larger --memory-budget, or "
                f"--skip-memory-check to start anyway")
    return (f"reading {tokens:,} tokens is predicted to need {need} ({b.source}); "
            f"use {' or '.join(fixes)}, or --skip-memory-check to start anyway")
