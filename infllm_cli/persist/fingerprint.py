"""Fingerprints that decide whether a saved memory may be reused.

Model: the SHA-256 of

* the model's configuration (``config.to_dict()``, canonical JSON, without transformers' own version
  fields and the load-time ``_name_or_path``);
* every weight file of its directory (``*.safetensors``, ``*.bin``): name, size, and the SHA-256 of up to
  :data:`FILE_SAMPLES` samples of :data:`SAMPLE_BYTES` bytes spread evenly over the file (first and last
  included). A full hash of several GB of weights on every call would cost seconds; a sampled digest
  catches any re-download, conversion or fine-tune (which rewrite the whole file) but could miss an edit
  of a few bytes between two samples;
* the loaded parameters themselves: name, shape, dtype and up to :data:`PARAM_SAMPLES` evenly strided
  values of each (so a model built in memory, or loaded from a hub id whose files are not found, is
  fingerprinted too, and a changed dtype changes the fingerprint).

Document: the stream of token ids actually read (prompt prefix + document), as little-endian int32:
:func:`prefix_hashes` gives the SHA-256 of the first ``p`` ids for any set of positions ``p``, so a
checkpoint of a saved memory is reused only when every token before it is the same.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from array import array
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

log = logging.getLogger("infllm.persist")

SAMPLE_BYTES = 1 << 16
FILE_SAMPLES = 16
PARAM_SAMPLES = 4096
WEIGHT_GLOBS = ("*.safetensors", "*.bin")
_CONFIG_SKIP = {"transformers_version", "_name_or_path", "_commit_hash", "_attn_implementation_internal", "_attn_implementation", "torch_dtype", "dtype"}


def sampled_file_digest(path: Path) -> str:
    """SHA-256 of size and evenly spaced samples of the file (see module docstring)."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= SAMPLE_BYTES * FILE_SAMPLES:
            h.update(f.read())
        else:
            step = (size - SAMPLE_BYTES) // (FILE_SAMPLES - 1)
            for i in range(FILE_SAMPLES):
                f.seek(i * step)
                h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()


def model_directory(model: Any) -> Path | None:
    """The directory the model's weights were loaded from, if it can be found locally."""
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    if not name:
        return None
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # not a hub id in the local cache: fingerprint the parameters only
        return None


def _param_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.state_dict().items():
            flat = p.detach().reshape(-1)
            step = max(1, flat.numel() // PARAM_SAMPLES)
            sample = flat[::step][:PARAM_SAMPLES].to("cpu").contiguous()
            h.update(f"{name}|{tuple(p.shape)}|{p.dtype}|".encode())
            h.update(sample.view(torch.uint8).numpy().tobytes() if sample.numel() else b"")
    return h.hexdigest()


def model_fingerprint(model: Any) -> dict[str, Any]:
    """``{"sha256": ..., "config": ..., "weights": ..., "parameters": ...}`` for a transformers model."""
    config = model.config.to_dict() if hasattr(model.config, "to_dict") else dict(vars(model.config))
    config = {k: v for k, v in config.items() if k not in _CONFIG_SKIP}
    config_sha = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
    files: dict[str, str] = {}
    folder = model_directory(model)
    if folder is not None:
        for pattern in WEIGHT_GLOBS:
            for f in sorted(folder.glob(pattern)):
                files[f.name] = sampled_file_digest(f.resolve())
    weights_sha = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    params_sha = _param_digest(model)
    total = hashlib.sha256(f"{config_sha}|{weights_sha}|{params_sha}".encode()).hexdigest()
    return {"sha256": total, "config": config_sha, "weights": weights_sha, "weight_files": len(files), "parameters": params_sha}


def ids_bytes(ids: Sequence[int] | array) -> bytes:
    """Little-endian int32 bytes of ``ids``."""
    arr = ids if isinstance(ids, array) and ids.typecode == "i" and ids.itemsize == 4 else array("i", ids)
    if sys.byteorder != "little":  # pragma: no cover
        arr = array("i", arr)
        arr.byteswap()
    return arr.tobytes()


def prefix_hashes(stream: Sequence[int] | array, positions: Iterable[int]) -> dict[int, str]:
    """SHA-256 of ``stream[:p]`` for each ``p`` in ``positions`` that is within the stream (one pass)."""
    data = ids_bytes(stream)
    n = len(data) // 4
    wanted = sorted({p for p in positions if 0 <= p <= n})
    h = hashlib.sha256()
    out: dict[int, str] = {}
    done = 0
    for p in wanted:
        h.update(data[done * 4 : p * 4])
        done = p
        out[p] = h.hexdigest()
    return out
