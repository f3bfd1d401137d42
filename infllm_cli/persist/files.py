"""On-disk format of a saved memory: a directory holding ``tensors.safetensors`` and ``manifest.json``.

* ``tensors.safetensors``: every tensor (safetensors: a JSON header and raw little-endian data, no code is
  ever executed on load, unlike pickle);
* ``manifest.json``: ``format`` (:data:`FORMAT_VERSION`), whatever the writer describes (model and
  document fingerprints, memory configuration, checkpoints, provenance), the size and SHA-256 of the
  tensor file under ``files``, and ``manifest_sha256``: the SHA-256 of the manifest's own canonical JSON
  without that field.

Writes never leave a half-written entry under the final name: both files are written into a temporary
directory next to it, flushed to disk, and the directory is renamed into place (an existing entry is moved
aside first and deleted after). Reads check the manifest's own checksum, the format version, the tensor
file's size and SHA-256, then memory-map the tensors (``safetensors.torch.load_file``): a large entry is
paged in from the file as it is read, not copied into process memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TENSORS = "tensors.safetensors"
HASH_BLOCK = 1 << 22


class EntryError(Exception):
    """A saved memory that cannot be used: missing, truncated, corrupted or from another format."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def _canonical(manifest: dict[str, Any]) -> bytes:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_entry(path: Path, manifest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> int:
    """Write an entry at directory ``path`` atomically; returns its size in bytes."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        data: dict[str, torch.Tensor] = {}
        storages: set[int] = set()
        for k, v in tensors.items():
            v = v.detach().contiguous()
            ptr = v.untyped_storage().data_ptr()
            if v.numel() and ptr in storages:  # safetensors refuses tensors that share memory
                v = v.clone()
            storages.add(v.untyped_storage().data_ptr())
            data[k] = v
        save_file(data, str(tmp / TENSORS))
        _fsync_file(tmp / TENSORS)
        size = (tmp / TENSORS).stat().st_size
        manifest = dict(manifest, format=FORMAT_VERSION, files={TENSORS: {"bytes": size, "sha256": sha256_file(tmp / TENSORS)}})
        manifest["manifest_sha256"] = hashlib.sha256(_canonical(manifest)).hexdigest()
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")
        _fsync_file(tmp / MANIFEST)
        old = None
        if path.exists():
            old = path.parent / f".old-{path.name}-{uuid.uuid4().hex[:8]}"
            os.rename(path, old)
        os.rename(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return size + (path / MANIFEST).stat().st_size
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def read_manifest(path: Path) -> dict[str, Any]:
    """The entry's manifest after its own checksum and format version are checked (no tensor is read)."""
    try:
        manifest = json.loads((Path(path) / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EntryError("no manifest") from None
    except (OSError, ValueError) as exc:
        raise EntryError(f"unreadable manifest ({type(exc).__name__})") from None
    if not isinstance(manifest, dict) or "manifest_sha256" not in manifest:
        raise EntryError("manifest without checksum")
    if hashlib.sha256(_canonical(manifest)).hexdigest() != manifest["manifest_sha256"]:
        raise EntryError("manifest checksum mismatch (corrupted)")
    if manifest.get("format") != FORMAT_VERSION:
        raise EntryError(f"format {manifest.get('format')!r}, this version reads format {FORMAT_VERSION}")
    return manifest


def check_files(path: Path, manifest: dict[str, Any], *, full: bool = True) -> None:
    """Raise :class:`EntryError` unless every file has the size (and, with ``full``, the SHA-256) the
    manifest records."""
    files = manifest.get("files")
    if not isinstance(files, dict) or TENSORS not in files:
        raise EntryError("manifest lists no tensor file")
    for name, want in files.items():
        f = Path(path) / name
        try:
            size = f.stat().st_size
        except OSError:
            raise EntryError(f"{name} is missing") from None
        if size != want.get("bytes"):
            raise EntryError(f"{name} has {size:,} bytes, expected {want.get('bytes'):,} (truncated or changed)")
        if full and sha256_file(f) != want.get("sha256"):
            raise EntryError(f"{name} checksum mismatch (corrupted)")


def read_entry(path: Path, *, verify: bool = True) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Manifest and memory-mapped tensors of the entry at ``path``; :class:`EntryError` if unusable."""
    from safetensors.torch import load_file

    manifest = read_manifest(path)
    check_files(path, manifest, full=verify)
    try:
        tensors = load_file(str(Path(path) / TENSORS))
    except Exception as exc:  # safetensors raises its own error types for malformed headers
        raise EntryError(f"unreadable tensor file ({type(exc).__name__})") from None
    return manifest, tensors


def entry_bytes(path: Path) -> int:
    """Bytes the entry takes on disk (0 if it is gone)."""
    total = 0
    try:
        for f in Path(path).iterdir():
            try:
                total += f.stat().st_size
            except OSError:
                pass
    except OSError:
        return 0
    return total
