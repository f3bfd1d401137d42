"""The memory cache directory: entries, locks, least-recently-used eviction, listing and verification.

Layout under :func:`cache_root` (``$INFLLM_CACHE_DIR``, else ``$XDG_CACHE_HOME/infllm``, else
``~/.cache/infllm``)::

    memories/entries/<id>/manifest.json, tensors.safetensors     one saved memory (see persist.files)
    memories/locks/<id>.lock                                      its lock file

Concurrency: a process that builds or replaces entry ``<id>`` holds an exclusive ``fcntl.flock`` on its
lock file for the whole read-and-save; a reader holds a shared lock while it checks and maps an entry;
eviction and ``rm`` only take entries whose lock they get without waiting. Entries are replaced by an
atomic directory rename (persist.files), so a crash never leaves a half-written entry under its name.

"Last used" is the manifest's modification time (touched on every use); eviction removes the least
recently used entries until the cache fits its budget: ``--max-cache-size`` / ``$INFLLM_MAX_CACHE_SIZE``,
else :data:`DEFAULT_FRACTION` of the space the cache could use (free space + what it holds now), capped at
:data:`DEFAULT_CAP`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .files import MANIFEST, EntryError, check_files, entry_bytes, read_manifest

log = logging.getLogger("infllm.cache")

ENV_DIR = "INFLLM_CACHE_DIR"
ENV_MAX = "INFLLM_MAX_CACHE_SIZE"
DEFAULT_FRACTION = 0.10
DEFAULT_CAP = 50 << 30
_ID = re.compile(r"^[0-9a-f]{8,64}$")
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
          "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}


def cache_root() -> Path:
    explicit = os.environ.get(ENV_DIR, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path("~/.cache").expanduser())
    return Path(base) / "infllm"


def parse_size(text: str) -> int:
    """``"2G"``, ``"500 MiB"``, ``"1048576"`` -> bytes (binary units); ``ValueError`` otherwise."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text or "")
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (examples: 500M, 2G, 1.5GiB, 1048576)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


@dataclass
class EntryInfo:
    """One entry as listed: its manifest, or why it cannot be used."""

    id: str
    path: Path
    bytes: int
    last_used: float
    manifest: dict[str, Any] | None
    problem: str | None = None


class LockBusy(Exception):
    """The entry's lock is held by another process."""


class MemoryCache:
    """The cache directory (``directory``: default :func:`cache_root`) with a size budget in bytes."""

    def __init__(self, directory: Path | str | None = None, max_bytes: int | None = None) -> None:
        self.root = (Path(directory).expanduser() if directory is not None else cache_root()) / "memories"
        self.entries_dir = self.root / "entries"
        self.locks_dir = self.root / "locks"
        if max_bytes is None and os.environ.get(ENV_MAX, "").strip():
            max_bytes = parse_size(os.environ[ENV_MAX])
        self._max_bytes = max_bytes

    def path(self, entry_id: str) -> Path:
        if not _ID.match(entry_id):
            raise ValueError(f"not a cache entry id: {entry_id!r}")
        return self.entries_dir / entry_id

    # -- locks -----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, entry_id: str, *, exclusive: bool, wait: bool = True) -> Iterator[None]:
        """Hold the entry's ``flock`` (raises :class:`LockBusy` when ``wait`` is False and it is taken)."""
        self.locks_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.locks_dir / f"{entry_id}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            flags = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB)
            try:
                fcntl.flock(fd, flags)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise LockBusy(entry_id) from None
                raise
            yield
        finally:
            os.close(fd)  # closing releases the lock

    # -- entries ---------------------------------------------------------------------------------------

    def ids(self) -> list[str]:
        try:
            return sorted(p.name for p in self.entries_dir.iterdir() if p.is_dir() and _ID.match(p.name))
        except OSError:
            return []

    def info(self, entry_id: str) -> EntryInfo:
        path = self.path(entry_id)
        try:
            used = (path / MANIFEST).stat().st_mtime
        except OSError:
            used = 0.0
        try:
            manifest, problem = read_manifest(path), None
        except EntryError as exc:
            manifest, problem = None, str(exc)
        return EntryInfo(entry_id, path, entry_bytes(path), used, manifest, problem)

    def list(self) -> list[EntryInfo]:
        """Every entry, most recently used first."""
        return sorted((self.info(i) for i in self.ids()), key=lambda e: -e.last_used)

    def touch(self, entry_id: str) -> None:
        try:
            os.utime(self.path(entry_id) / MANIFEST)
        except OSError:
            pass

    def remove(self, entry_id: str, *, wait: bool = False) -> bool:
        """Delete an entry; False when another process holds it (or it is gone)."""
        path = self.path(entry_id)
        try:
            with self.lock(entry_id, exclusive=True, wait=wait):
                if not path.exists():
                    return False
                trash = path.parent / f".rm-{entry_id}-{os.getpid()}"
                os.rename(path, trash)
                shutil.rmtree(trash, ignore_errors=True)
        except LockBusy:
            return False
        # the lock file stays: unlinking it could let two processes lock different files of one name
        return True

    def clear(self) -> tuple[int, int]:
        """Remove every entry not in use by another process: (removed, skipped)."""
        removed = skipped = 0
        for entry_id in self.ids():
            if self.remove(entry_id):
                removed += 1
            else:
                skipped += 1
        for stale in self.entries_dir.glob(".tmp-*") if self.entries_dir.exists() else []:
            if time.time() - stale.stat().st_mtime > 3600:  # an interrupted write, long ago
                shutil.rmtree(stale, ignore_errors=True)
        return removed, skipped

    def verify(self, entry_id: str) -> str | None:
        """None if the entry is intact (manifest and full checksums), else what is wrong."""
        try:
            with self.lock(entry_id, exclusive=False):
                manifest = read_manifest(self.path(entry_id))
                check_files(self.path(entry_id), manifest, full=True)
        except EntryError as exc:
            return str(exc)
        return None

    # -- size budget -----------------------------------------------------------------------------------

    def total_bytes(self) -> int:
        return sum(entry_bytes(self.entries_dir / i) for i in self.ids())

    def budget(self) -> int:
        """Most bytes the cache may hold (see module docstring)."""
        if self._max_bytes is not None:
            return self._max_bytes
        probe = self.root
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            free = shutil.disk_usage(probe).free
        except OSError:
            free = 0
        return int(min(DEFAULT_CAP, DEFAULT_FRACTION * (free + self.total_bytes())))

    def evict(self, keep: frozenset[str] = frozenset()) -> list[str]:
        """Remove least recently used entries (never those in ``keep`` or in use) until within budget."""
        budget = self.budget()
        entries = self.list()
        total = sum(e.bytes for e in entries)
        removed: list[str] = []
        for e in reversed(entries):  # least recently used first
            if total <= budget:
                break
            if e.id in keep:
                continue
            if self.remove(e.id):
                total -= e.bytes
                removed.append(e.id)
        if removed:
            log.info("cache over its %s budget: removed %d least recently used memories", _human(budget), len(removed))
        return removed


def _human(n: int) -> str:
    from ..formatting import human_bytes

    return human_bytes(n)
