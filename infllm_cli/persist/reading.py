"""Read a token stream into a runner's memory through the cache: load it, extend a saved prefix, or build it.

The stream is what :func:`infllm_cli.cli.session.read_into` feeds: a prompt prefix, then the document.
An entry is reused only when it was built with the same :func:`compat_key` (model fingerprint, dtype,
device type, attention backend, attention mode, every memory knob that changes what is stored, format and
package version) and the same token ids:

* **loaded**: an entry for exactly this stream exists: its memory is mapped from disk, nothing is read;
* **extended**: an entry of the same compat key has a checkpoint at position ``p`` whose hash equals the
  hash of this stream's first ``p`` tokens (so every token before ``p`` is the same): the memory is
  restored to that checkpoint and only tokens ``p..n`` are read. Checkpoints sit on prefill-chunk
  boundaries (multiples of ``chunk_size`` past the prefix), where the read of a longer stream is in exactly
  the same state, so the result is identical to a full re-read;
* **built**: the whole stream is read.

A new entry is saved after "extended" and "built", with checkpoints every ``every`` tokens (at most
:data:`CHECKPOINTS` evenly spaced), at the last chunk boundary and at the end; checkpoints before the
reused position are carried over from the entry it extends.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from array import array
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .. import __version__
from ..config import ANSWER_KNOBS
from ..formatting import human_bytes, one_line
from ..memory.cache import ContextMemory
from .files import FORMAT_VERSION, EntryError, read_entry, read_manifest, write_entry
from .fingerprint import model_fingerprint, prefix_hashes
from .memory_state import LAYER_FIELDS, Checkpoint, document_state, memory_tensors, restore_checkpoint
from .store import LockBusy, MemoryCache

log = logging.getLogger("infllm.cache")

CHECKPOINTS = 4
# knobs that do not change what is stored: used only when a question is read, or where the blocks are kept
NOT_STATE = ANSWER_KNOBS + ("offload", "disk_store", "max_cached_block")


@dataclass
class ReadOutcome:
    """What a cached read did (``how``: loaded, extended, built or uncached)."""

    how: str
    tokens: int
    tokens_read: int
    seconds: float
    tokens_reused: int = 0
    saved_seconds: float | None = None
    entry_id: str | None = None
    entry_bytes: int | None = None
    note: str | None = None

    def describe(self) -> str:
        size = f", {human_bytes(self.entry_bytes)}" if self.entry_bytes else ""
        if self.how == "loaded":
            text = f"memory loaded from the cache ({self.tokens:,} tokens{size}) in {self.seconds:.1f} s"
        elif self.how == "extended":
            text = (f"memory of the first {self.tokens_reused:,} tokens loaded from the cache; read {self.tokens_read:,} "
                    f"new tokens in {self.seconds:.1f} s")
        elif self.how == "built":
            text = f"memory built: read {self.tokens_read:,} tokens in {self.seconds:.1f} s"
        else:
            text = f"read {self.tokens_read:,} tokens in {self.seconds:.1f} s (memory cache not used)"
        if self.saved_seconds is not None and self.saved_seconds > 0:
            text += f", about {self.saved_seconds:.1f} s saved"
        if self.how in ("built", "extended") and self.entry_id and not self.note:
            text += f"; saved to the cache ({human_bytes(self.entry_bytes)})"
        return text + (f"; {self.note}" if self.note else "")


def compat_key(runner: Any) -> dict[str, Any]:
    """Everything besides the tokens that the saved state depends on."""
    loaded = runner.loaded
    fp = getattr(loaded, "_infllm_fingerprint", None)
    if fp is None:
        fp = model_fingerprint(loaded.model)
        loaded._infllm_fingerprint = fp
    memory = {k: v for k, v in runner.config.to_dict().items() if k not in NOT_STATE}
    return {
        "format": FORMAT_VERSION,
        "infllm": __version__,
        "model": fp["sha256"],
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "device": loaded.device.type,
        "backend": runner.cache.memories[0].backend.name,
        "attention": runner.attention,
        "memory": memory,
    }


def key_sha(compat: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(compat, sort_keys=True).encode()).hexdigest()


def checkpoint_positions(n: int, prefix_len: int, chunk_size: int, checkpoints: int = CHECKPOINTS) -> list[int]:
    """Prefill-chunk boundaries past the prefix to checkpoint a stream of ``n`` tokens at, and ``n``."""
    aligned = [p for p in range(chunk_size, n + 1, chunk_size) if p > prefix_len]
    every = max(chunk_size, math.ceil(n / max(1, checkpoints) / chunk_size) * chunk_size)
    out = {p for p in aligned if p % every == 0}
    if aligned:
        out.add(aligned[-1])
    out.add(n)
    return sorted(out)


class CachedRead:
    """One read of ``prefix`` + ``body`` into ``runner`` through ``cache`` (see module docstring)."""

    def __init__(self, runner: Any, cache: MemoryCache, prefix: Sequence[int], body: Sequence[int], *,
                 document: Any = None, refresh: bool = False, checkpoints: int = CHECKPOINTS) -> None:
        self.runner, self.cache, self.document, self.refresh = runner, cache, document, refresh
        self.prefix = list(prefix)
        self.body = body
        self.stream = array("i", self.prefix)
        self.stream.extend(body if isinstance(body, array) else array("i", body))
        self.n = len(self.stream)
        self.checkpoints = checkpoints
        self.compat: dict[str, Any] = {}
        self.compat_sha = ""
        self.full_sha = prefix_hashes(self.stream, [self.n])[self.n]

    def run(self, on_progress: Callable[[int], None] | None = None) -> ReadOutcome:
        runner = self.runner
        runner.reset()
        self.start = time.perf_counter()
        self.compat = compat_key(runner)
        self.compat_sha = key_sha(self.compat)
        self.entry_id = hashlib.sha256(f"{self.compat_sha}|{self.n}|{self.full_sha}".encode()).hexdigest()[:32]
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(self.cache.lock(self.entry_id, exclusive=True, wait=self.refresh))
            except OSError as exc:  # e.g. the cache directory cannot be created or written
                log.warning("memory cache %s is not usable (%s); reading without it", self.cache.root, one_line(exc, 160))
                return self._build(None, on_progress, save=False, note="memory cache not usable")
            except LockBusy:
                log.warning("another infllm process is reading this document into the cache; waiting for it")
                with self.cache.lock(self.entry_id, exclusive=False):
                    out = self._load_exact(owner=False)
                if out is not None:
                    return out
                return self._build(None, on_progress, save=False,
                                   note="not saved: another process holds this cache entry")
            if not self.refresh:
                out = self._load_exact(owner=True)
                if out is not None:
                    return out
            return self._build(None if self.refresh else self._best_prefix(), on_progress, save=True)

    # -- loading -----------------------------------------------------------------------------------------

    def _load(self, entry_id: str, position: int) -> tuple[dict[str, Any], dict[str, Any], int]:
        """Restore ``entry_id``'s checkpoint at ``position`` into the runner: (manifest, tensors, index)."""
        manifest, tensors = read_entry(self.cache.path(entry_id))
        if manifest.get("compat_sha") != self.compat_sha:
            raise EntryError("built with another model, dtype or memory configuration")
        metas = manifest.get("checkpoints") or []
        index = next((i for i, c in enumerate(metas) if c.get("position") == position), None)
        if index is None:
            raise EntryError(f"no checkpoint at token {position}")
        if prefix_hashes(self.stream, [position]).get(position) != metas[index].get("sha256"):
            raise EntryError("built from other tokens")
        try:
            logits = restore_checkpoint(self.runner.cache, tensors, metas[index], index)
        except (KeyError, ValueError, RuntimeError, TypeError) as exc:
            raise EntryError(f"inconsistent tensors ({one_line(exc, 120)})") from None
        self.runner.tokens_seen = position
        self.runner.last_logits = logits
        return manifest, tensors, index

    def _unusable(self, entry_id: str, problem: str, *, owner: bool) -> None:
        log.warning("cached memory %s is unusable (%s); reading the document again", entry_id[:12], problem)
        self.runner.reset()
        if owner:  # we hold its lock: delete it now (it is rebuilt under the same name)
            import shutil

            shutil.rmtree(self.cache.path(entry_id), ignore_errors=True)
        else:
            self.cache.remove(entry_id)

    def _load_exact(self, *, owner: bool) -> ReadOutcome | None:
        if not self.cache.path(self.entry_id).exists():
            return None
        try:
            manifest, _, index = self._load(self.entry_id, self.n)
        except (EntryError, OSError) as exc:
            self._unusable(self.entry_id, str(exc), owner=owner)
            return None
        self.cache.touch(self.entry_id)
        seconds = time.perf_counter() - self.start
        built = manifest["checkpoints"][index].get("seconds")
        return ReadOutcome("loaded", self.n, 0, seconds, self.n, (built - seconds) if built else None,
                           self.entry_id, manifest.get("bytes"))

    def _best_prefix(self) -> tuple[str, int] | None:
        """(entry, position) of the longest checkpoint of a compatible entry that this stream starts with."""
        cands: list[tuple[int, str, str]] = []
        for entry_id in self.cache.ids():
            if entry_id == self.entry_id:
                continue
            try:
                manifest = read_manifest(self.cache.path(entry_id))
            except EntryError:
                continue
            if manifest.get("compat_sha") != self.compat_sha:
                continue
            for c in manifest.get("checkpoints") or []:
                p = c.get("position")
                if c.get("resumable") and isinstance(p, int) and len(self.prefix) < p <= self.n:
                    cands.append((p, str(c.get("sha256")), entry_id))
        hashes = prefix_hashes(self.stream, [p for p, _, _ in cands])
        matching = sorted(((p, e) for p, sha, e in cands if hashes.get(p) == sha), reverse=True)
        return (matching[0][1], matching[0][0]) if matching else None

    # -- building ------------------------------------------------------------------------------------------

    def _resume(self, source: tuple[str, int]) -> tuple[int, list[Checkpoint], list[float]]:
        """Restore the source checkpoint; the checkpoints before it are carried over."""
        entry_id, position = source
        try:
            with self.cache.lock(entry_id, exclusive=False):
                manifest, tensors, index = self._load(entry_id, position)
        except (EntryError, OSError) as exc:
            self._unusable(entry_id, str(exc), owner=False)
            return 0, [], []
        carried, seconds = [], []
        for c, meta in enumerate(manifest["checkpoints"][: index + 1]):
            layers = []
            for l, counters in enumerate(meta["layers"]):
                layers.append(dict(counters, **{f: tensors[f"C{c}.L{l}.{f}"] for f in LAYER_FIELDS}))
            carried.append(Checkpoint(meta["position"], list(meta["blocks"]), layers, tensors.get(f"C{c}.logits")))
            seconds.append(float(meta.get("seconds") or 0.0))
        self.cache.touch(entry_id)
        return position, carried, seconds

    def _build(self, source: tuple[str, int] | None, on_progress: Callable[[int], None] | None, *,
               save: bool, note: str | None = None) -> ReadOutcome:
        runner = self.runner
        resume, ckpts, seconds = self._resume(source) if source else (0, [], [])
        base_seconds = seconds[-1] if seconds else 0.0
        t0 = time.perf_counter()
        wanted = {p for p in checkpoint_positions(self.n, len(self.prefix), runner.config.chunk_size, self.checkpoints) if p > resume}

        def after_chunk() -> None:
            if runner.tokens_seen in wanted and isinstance(runner.cache, ContextMemory):
                ckpts.append(Checkpoint.take(runner.cache, runner.last_logits))
                seconds.append(base_seconds + time.perf_counter() - t0)

        if resume == 0:
            runner.reset()
            fed = runner.feed(self.prefix) if self.prefix else 0
            base = fed
            fed += runner.feed(self.stream[fed:], (lambda k: on_progress(base + k)) if on_progress else None, after_chunk)
        else:
            fed = runner.feed(self.stream[resume:], (lambda k: on_progress(resume + k)) if on_progress else None, after_chunk)
        elapsed = time.perf_counter() - self.start
        how = "extended" if resume else "built"
        out = ReadOutcome(how, self.n, fed, elapsed, resume, (base_seconds - (elapsed - (time.perf_counter() - t0))) if resume else None, note=note)
        if save:
            out.entry_id, out.entry_bytes, out.note = self._save(ckpts, seconds)
        return out

    def _save(self, ckpts: list[Checkpoint], seconds: list[float]) -> tuple[str | None, int | None, str | None]:
        runner = self.runner
        if runner.config.disk_store:  # saving gathers every block in RAM, which the disk store exists to avoid
            log.warning("memory not cached: a memory read with --disk-store is not saved to the cache")
            return None, None, "not cached (--disk-store)"
        tensors, metas = memory_tensors(runner.cache, ckpts)
        hashes = prefix_hashes(self.stream, [c.position for c in ckpts])
        cs = runner.config.chunk_size
        for meta, s in zip(metas, seconds):
            meta["sha256"] = hashes[meta["position"]]
            # a read of a longer stream passes through exactly this state only at a prefill-chunk boundary
            meta["resumable"] = meta["position"] % cs == 0 and meta["position"] > len(self.prefix)
            meta["seconds"] = round(s, 3)
        doc_meta: dict[str, Any] = {}
        if self.document is not None:
            doc_meta, doc_tensors = document_state(self.document)
            tensors.update(doc_tensors)
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        budget = self.cache.budget()
        if size > budget:
            log.warning("memory not cached: %s is more than the cache budget of %s (--max-cache-size)", human_bytes(size), human_bytes(budget))
            return None, None, "not cached (over the size budget)"
        manifest = {
            "compat": self.compat,
            "compat_sha": self.compat_sha,
            "model_name": getattr(runner.loaded, "name", ""),
            "document_name": doc_meta.get("name", ""),
            "stream": {"tokens": self.n, "prefix_tokens": len(self.prefix), "sha256": self.full_sha},
            "checkpoints": metas,
            "document": doc_meta,
            "created": time.time(),
            "bytes": size,
        }
        try:
            written = write_entry(self.cache.path(self.entry_id), manifest, tensors)
        except OSError as exc:
            log.warning("could not save the memory to the cache: %s", one_line(exc, 200))
            return None, None, "not cached (write failed)"
        self.cache.evict(keep=frozenset({self.entry_id}))
        return self.entry_id, written, None
