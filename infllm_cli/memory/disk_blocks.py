"""Memory blocks' keys and values in files on disk: a block store for documents larger than RAM.

With ``MemoryConfig.disk_store`` (``--disk-store``) each layer's :class:`~infllm_cli.memory.block_store.BlockStore`
writes the keys and values of every evicted block to two files with ``pwrite`` and reads back only the
blocks a query chunk retrieves, with ``pread``, into the device-side block cache (as with ``--offload``).
Representative keys, their sums and the key bounds -- what every query chunk scores -- stay in memory:
they are ``repr_topk + 3`` key rows per block against the block's ``2 * block_size`` key and value rows.

Why ``pread``/``pwrite`` and not a memory map: pages of a written memory map count in the process's
resident memory until the kernel writes them back and drops them, so a map does not bound the process's
memory. Plain file I/O goes through the page cache, which the kernel sizes to the free memory and which
is not part of the process; the process holds only the blocks being read.

Files live in ``<cache root>/blocks/<pid>-<random>/`` (:func:`~infllm_cli.persist.store.cache_root`, or
``$INFLLM_DISK_STORE_DIR``) and are deleted when the store is closed or the process exits; directories
left by a process that no longer runs (killed) are removed when the next disk store is created.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import weakref
from pathlib import Path

import torch

log = logging.getLogger("infllm.memory")

ENV_DIR = "INFLLM_DISK_STORE_DIR"


def disk_store_root() -> Path:
    """Where disk-backed stores put their files: ``$INFLLM_DISK_STORE_DIR``, else ``<cache root>/blocks``."""
    given = os.environ.get(ENV_DIR, "").strip()
    if given:
        return Path(given).expanduser()
    from ..persist.store import cache_root

    return cache_root() / "blocks"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def sweep_stale(root: Path) -> int:
    """Remove the directories of disk stores whose process no longer runs; returns how many."""
    removed = 0
    try:
        entries = list(root.iterdir())
    except OSError:
        return 0
    for entry in entries:
        pid, _, _ = entry.name.partition("-")
        if entry.is_dir() and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
    return removed


class DiskBlocks:
    """Keys and values of ``[n, Hkv, block_size, D]`` blocks in two files, appended and read by block index.

    Parameters
    ----------
    shape : ``(Hkv, block_size, D)`` of one block
    dtype : storage dtype (any: the files hold the raw bytes)
    directory : the folder to create the files in (a fresh one is made there)
    name : file name stem (e.g. the layer index)
    """

    def __init__(self, shape: tuple[int, int, int], dtype: torch.dtype, directory: Path, name: str = "blocks") -> None:
        self.shape = shape
        self.dtype = dtype
        self.block_bytes = int(torch.empty(shape, dtype=dtype).nbytes)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=directory))
        self.n_blocks = 0
        self._fds = [os.open(self.path / f"{name}.{part}", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
                     for part in ("keys", "values")]
        self._finalizer = weakref.finalize(self, _remove, list(self._fds), self.path)

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Write blocks ``[n, Hkv, bs, D]`` after the last one."""
        if keys.shape[1:] != self.shape or values.shape != keys.shape:
            raise ValueError(f"blocks of shape {tuple(keys.shape)} / {tuple(values.shape)} do not fit a store of {self.shape}")
        offset = self.n_blocks * self.block_bytes
        for fd, t in zip(self._fds, (keys, values)):
            data = _bytes_of(t.detach().to("cpu", self.dtype).contiguous())
            written = os.pwrite(fd, data, offset)
            if written != len(data):
                raise OSError(f"disk store: short write to {self.path} ({written} of {len(data)} bytes; disk full?)")
        self.n_blocks += keys.shape[0]

    def read(self, blocks: list[int], values: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Keys and values ``[len(blocks), Hkv, bs, D]`` of the given blocks, in that order (on the CPU); the
        values are None when ``values`` is False (only the keys are read)."""
        n = len(blocks)
        k = torch.empty((n, *self.shape), dtype=self.dtype)
        v = torch.empty_like(k) if values else None
        for out in (k, v) if values else (k,):
            fd = self._fds[0 if out is k else 1]
            buf = _bytes_of(out)
            i = 0
            while i < n:  # one read per run of consecutive blocks
                j = i + 1
                while j < n and blocks[j] == blocks[j - 1] + 1:
                    j += 1
                self._read_into(fd, buf[i * self.block_bytes : j * self.block_bytes], blocks[i])
                i = j
        return k, v

    def _read_into(self, fd: int, view: memoryview, block: int) -> None:
        if not 0 <= block < self.n_blocks:
            raise IndexError(f"block {block} is not in a disk store of {self.n_blocks} blocks")
        got = os.preadv(fd, [view], block * self.block_bytes)
        if got != len(view):
            raise OSError(f"disk store: short read from {self.path} ({got} of {len(view)} bytes)")

    def truncate(self, n_blocks: int) -> None:
        """Forget every block from ``n_blocks`` on."""
        for fd in self._fds:
            os.ftruncate(fd, n_blocks * self.block_bytes)
        self.n_blocks = n_blocks

    @property
    def nbytes(self) -> int:
        """Bytes on disk (keys and values)."""
        return 2 * self.n_blocks * self.block_bytes

    def close(self) -> None:
        """Close and delete the files (also done when the store is garbage collected or the process exits)."""
        self._finalizer()


def _bytes_of(t: torch.Tensor) -> memoryview:
    """A writable byte view of a contiguous CPU tensor (any dtype, bfloat16 included)."""
    return memoryview(t.view(-1).view(torch.uint8).numpy()).cast("B")


def _remove(fds: list[int], path: Path) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
    shutil.rmtree(path, ignore_errors=True)
