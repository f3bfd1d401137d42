"""The block store of one layer: every evicted block's keys, values and representative keys.

Each block also keeps, computed once when it is written, the sum of its representative keys
(``repr_sum``: the paper's block score is a dot product with it, so scoring need not re-add the
representative keys for every query chunk) and the per-channel maximum and minimum of all its keys
(``bounds`` = [max | min] along the channel axis: ``relu(q) . max + min(q, 0) . min`` is the largest score
``q . k`` any key of the block can reach).

The arrays grow by half their size when full (amortised constant cost per block); :meth:`reserve` sizes
them once for a stream of known length, so that a long read neither copies the store nor holds two copies
of it while growing.

Blocks are immutable once written and only ever appended, so a snapshot of the store is just its block
count, and restoring it is a truncation. Block ``b`` holds the tokens ``first_token + b*block_size`` up to
(excluding) ``first_token + (b+1)*block_size`` of the stream, which later work uses to cite passages.

With ``offload=True`` the keys and values live in host memory (pinned when the compute device is CUDA) and
the retrieved blocks are copied into a small device-side cache of ``max_cached_block`` slots, least
recently used first out. Representative keys always stay on the compute device: they are scored for
every query chunk.

With ``disk=True`` the keys and values are written to files instead (:mod:`.disk_blocks`: documents larger
than RAM) and read back block by block into the same device-side cache; everything else is as with offload.

A store loaded from a saved memory (:meth:`BlockStore.load_state_dict` with ``share=True``) can keep the
saved keys and values where they are (e.g. a memory-mapped file) as a read-only *base* of ``n_base``
blocks; blocks appended later go to the growable buffers. Retrieval then gathers the selected blocks from
base and tail (as with offload), so loading a large memory does not copy it into RAM.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from .disk_blocks import DiskBlocks, disk_store_root, sweep_stale

_swept = False


class BlockStore:
    """Growable ``[capacity, Hkv, block_size, D]`` key/value blocks plus ``[capacity, Hkv, R, D]`` representatives
    and their ``[capacity, Hkv, 1, D]`` sums, and ``[capacity, Hkv, 1, 2D]`` per-channel key bounds (a view
    of a head-major ``[Hkv, capacity, 2D]`` buffer: each KV head's bounds are one contiguous run, which block
    scoring reads in one pass per head).

    Parameters
    ----------
    n_kv_heads, head_dim, block_size, repr_topk : shapes
    first_token : stream index of the first token of block 0 (``n_init``)
    device, dtype : compute device and storage dtype
    offload : keep keys/values in host memory, see module docstring
    max_cached_block : device cache slots when offloaded
    disk : keep keys/values in files on disk (implies ``offload``), see :mod:`.disk_blocks`
    name : names the layer's files when ``disk``
    """

    def __init__(
        self,
        n_kv_heads: int,
        head_dim: int,
        block_size: int,
        repr_topk: int,
        first_token: int,
        device: torch.device,
        dtype: torch.dtype,
        offload: bool = False,
        max_cached_block: int = 32,
        disk: bool = False,
        name: str = "blocks",
    ) -> None:
        self.block_size = block_size
        self.first_token = first_token
        self.device = device
        offload = offload or disk
        self.offload = offload
        self.n_blocks = 0
        self.n_base = 0  # blocks [0, n_base) live in the read-only base tensors (a loaded memory)
        self._base_k: torch.Tensor | None = None
        self._base_v: torch.Tensor | None = None
        storage = torch.device("cpu") if offload else device
        self.storage = storage
        self._shape = (n_kv_heads, block_size, head_dim)
        pin = offload and device.type == "cuda"
        self.keys = torch.empty((0, *self._shape), dtype=dtype, device=storage, pin_memory=pin)
        self.values = torch.empty_like(self.keys)
        self.repr_keys = torch.empty((0, n_kv_heads, repr_topk, head_dim), dtype=dtype, device=device)
        self.repr_sum = torch.empty((0, n_kv_heads, 1, head_dim), dtype=dtype, device=device)
        self._bounds = torch.empty((n_kv_heads, 0, 2 * head_dim), dtype=dtype, device=device)
        self._disk: DiskBlocks | None = None
        if disk:
            global _swept
            root = disk_store_root()
            if not _swept:
                _swept = True
                sweep_stale(root)
            self._disk = DiskBlocks(self._shape, dtype, root, name)
        if offload:
            self._slots_k = torch.empty((max_cached_block, *self._shape), dtype=dtype, device=device)
            self._slots_v = torch.empty_like(self._slots_k)
            self._slot_of: OrderedDict[int, int] = OrderedDict()  # block -> slot, least recent first

    @property
    def bounds(self) -> torch.Tensor:
        """[capacity, Hkv, 1, 2D] per-channel key bounds ``[max | min]``: a view of the head-major buffer."""
        return self._bounds.transpose(0, 1).unsqueeze(2)

    @bounds.setter
    def bounds(self, value: torch.Tensor) -> None:
        self._bounds = value.squeeze(2).transpose(0, 1).contiguous()

    @property
    def capacity(self) -> int:
        if self._disk is not None:  # the files grow as they are written
            return self.repr_keys.shape[0]
        return self.n_base + self.keys.shape[0]

    def reserve(self, n_blocks: int) -> None:
        """Make room for ``n_blocks`` blocks in all (one allocation instead of repeated growth)."""
        if n_blocks > self.capacity:
            self._resize(n_blocks)

    def _grow(self, needed: int) -> None:
        self._resize(max(needed, self.capacity + self.capacity // 2, 16))

    def _resize(self, new_cap: int) -> None:
        """Room for ``new_cap`` blocks in all: the growable keys/values after the (read-only) base, and the
        scoring tensors for every block."""
        for names, used, have in ((("keys", "values"), self.n_blocks - self.n_base, self.keys.shape[0]),
                                  (("repr_keys", "repr_sum", "bounds"), self.n_blocks, self.repr_keys.shape[0])):
            want = new_cap - (self.n_base if names[0] == "keys" else 0)
            if want <= have or (names[0] == "keys" and self._disk is not None):
                continue
            for name in names:
                if name == "bounds":  # head-major
                    old = self._bounds
                    self._bounds = torch.empty((old.shape[0], want, old.shape[2]), dtype=old.dtype, device=old.device)
                    self._bounds[:, :used] = old[:, :used]
                    continue
                old = getattr(self, name)
                new = torch.empty((want, *old.shape[1:]), dtype=old.dtype, device=old.device,
                                  pin_memory=old.is_pinned())
                new[:used] = old[:used]
                setattr(self, name, new)

    def append(self, keys: torch.Tensor, values: torch.Tensor, repr_keys: torch.Tensor) -> None:
        """Append blocks. ``keys``/``values``: [n, Hkv, bs, D]; ``repr_keys``: [n, Hkv, R, D]."""
        n = keys.shape[0]
        if self.n_blocks + n > self.capacity or self.n_blocks + n > self.repr_keys.shape[0]:
            self._grow(self.n_blocks + n)
        sl = slice(self.n_blocks, self.n_blocks + n)
        tail = slice(self.n_blocks - self.n_base, self.n_blocks - self.n_base + n)
        if self._disk is not None:
            self._disk.append(keys, values)
        else:  # a blocking copy: a non-blocking device-to-host copy could still be in flight when it is read
            self.keys[tail].copy_(keys)
            self.values[tail].copy_(values)
        self.repr_keys[sl] = repr_keys
        self.repr_sum[sl] = repr_keys.float().sum(dim=2, keepdim=True).to(self.repr_sum.dtype)
        self.bounds[sl] = torch.cat([keys.amax(dim=2, keepdim=True), keys.amin(dim=2, keepdim=True)], dim=-1).to(
            device=self.bounds.device, dtype=self.bounds.dtype)
        self.n_blocks += n

    def truncate(self, n_blocks: int) -> None:
        """Forget every block from ``n_blocks`` on (restore a snapshot)."""
        if n_blocks > self.n_blocks:
            raise ValueError(f"cannot truncate a store of {self.n_blocks} blocks to {n_blocks}")
        self.n_blocks = n_blocks
        if self._disk is not None:
            self._disk.truncate(n_blocks)
        if n_blocks < self.n_base:
            self.n_base = n_blocks
            self._base_k, self._base_v = self._base_k[:n_blocks], self._base_v[:n_blocks]
        if self.offload:
            for b in [b for b in self._slot_of if b >= n_blocks]:
                del self._slot_of[b]

    def span(self, block: int) -> tuple[int, int]:
        """Stream token range ``[start, end)`` that block ``block`` came from."""
        start = self.first_token + block * self.block_size
        return start, start + self.block_size

    def device_blocks(self, block_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Key/value tensors on the compute device and indices into them for the selected blocks.

        ``block_idx`` is [Hkv, K] (or [K]) with -1 for empty slots. Without offload this is the store itself
        and ``block_idx`` unchanged (the kernel gathers by index). With offload, the blocks not yet on the
        device are copied into LRU cache slots (the cache grows when one selection needs more slots than it
        has, e.g. when every KV head picks other blocks) and the indices are mapped to slots.
        """
        if not self.offload:
            if self.n_base == 0:
                return self.keys, self.values, block_idx
            return self._gather(block_idx)
        wanted = sorted({b for b in block_idx.flatten().tolist() if b >= 0})
        if len(wanted) > self._slots_k.shape[0]:
            extra = len(wanted) - self._slots_k.shape[0]
            pad = torch.empty((extra, *self._shape), dtype=self._slots_k.dtype, device=self.device)
            self._slots_k = torch.cat([self._slots_k, pad])
            self._slots_v = torch.cat([self._slots_v, pad.clone()])
        used = set(self._slot_of.values())
        free = [s for s in range(self._slots_k.shape[0]) if s not in used]
        needed = set(wanted)
        missing: list[tuple[int, int]] = []  # (block, slot)
        for b in wanted:
            if b in self._slot_of:
                self._slot_of.move_to_end(b)
                continue
            if free:
                slot = free.pop()
            else:  # evict the least recently used block not needed now
                victim = next(v for v in self._slot_of if v not in needed)
                slot = self._slot_of.pop(victim)
            missing.append((b, slot))
            self._slot_of[b] = slot
        if self._disk is not None and missing:  # one read per run of consecutive blocks, one copy
            k, v = self._disk.read([b for b, _ in missing])
            slots = torch.tensor([s for _, s in missing], device=self.device)
            self._slots_k.index_copy_(0, slots, k.to(self.device))
            self._slots_v.index_copy_(0, slots, v.to(self.device))
        else:
            for b, slot in missing:
                k, v = self.block(b)
                self._slots_k[slot].copy_(k, non_blocking=True)
                self._slots_v[slot].copy_(v, non_blocking=True)
        lookup = torch.full((max(self.n_blocks, 1) + 1,), -1, dtype=torch.long)
        for b in wanted:
            lookup[b + 1] = self._slot_of[b]
        idx = lookup[block_idx.cpu().long() + 1].to(self.device)  # -1 (empty) maps to -1
        return self._slots_k, self._slots_v, idx

    def block(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [Hkv, bs, D] of block ``b``, where they are stored (read from the file: disk)."""
        if self._disk is not None:
            k, v = self._disk.read([b])
            return k[0], v[0]
        if b < self.n_base:
            return self._base_k[b], self._base_v[b]
        return self.keys[b - self.n_base], self.values[b - self.n_base]

    def keys_of(self, blocks: torch.Tensor) -> torch.Tensor:
        """Every key of the blocks ``blocks`` [Hkv, M] (row ``h`` names KV head ``h``'s blocks), read from where
        they are stored (device, host memory, a loaded base or the disk files): [Hkv, M, bs, D] on the compute
        device. Without a disk or a loaded base this is one gather where the keys are (no host
        synchronisation); otherwise each distinct block is read once."""
        if self._disk is None and self.n_base == 0:
            heads = torch.arange(blocks.shape[0], device=self.keys.device)[:, None]
            return self.keys[blocks.to(self.keys.device), heads].to(self.device)
        wanted, inverse = torch.unique(blocks.cpu().long(), return_inverse=True)
        if self._disk is not None:
            k = self._disk.read(wanted.tolist(), values=False)[0]
        else:
            in_base, in_tail = wanted[wanted < self.n_base], wanted[wanted >= self.n_base] - self.n_base
            k = torch.cat([self._base_k.index_select(0, in_base).to(self.storage),
                           self.keys.index_select(0, in_tail.to(self.keys.device))])
        heads = torch.arange(blocks.shape[0])[:, None]
        return k.to(self.device)[inverse.to(self.device), heads.to(self.device)]

    def _gather(self, block_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The selected blocks copied out of base and tail into one compact tensor, and indices into it."""
        wanted = torch.unique(block_idx[block_idx >= 0].cpu())
        in_base = wanted[wanted < self.n_base]
        in_tail = wanted[wanted >= self.n_base] - self.n_base
        k = torch.cat([self._base_k.index_select(0, in_base), self.keys.index_select(0, in_tail.to(self.keys.device))])
        v = torch.cat([self._base_v.index_select(0, in_base), self.values.index_select(0, in_tail.to(self.keys.device))])
        lookup = torch.full((max(self.n_blocks, 1) + 1,), -1, dtype=torch.long)
        lookup[wanted + 1] = torch.arange(wanted.numel())
        idx = lookup[block_idx.cpu().long() + 1].to(block_idx.device)
        return k.to(self.device), v.to(self.device), idx

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every stored tensor of the first ``n_blocks`` blocks, for saving: views where the store holds them in
        one piece (valid until the store is next changed), else a concatenation."""
        n, nb = self.n_blocks, self.n_base
        out = {name: getattr(self, name)[:n] for name in ("repr_keys", "repr_sum", "bounds")}
        if self._disk is not None:
            out["keys"], out["values"] = self._disk.read(list(range(n)))
            return out
        for name, base in (("keys", self._base_k), ("values", self._base_v)):
            tail = getattr(self, name)[: n - nb]
            out[name] = tail if nb == 0 else base if n == nb else torch.cat([base, tail.to(base.device)])
        return out

    def state_dict(self) -> dict[str, torch.Tensor | int]:
        """A copy of the stored blocks (on the CPU) that later changes to the store do not affect."""
        state: dict[str, torch.Tensor | int] = {"n_blocks": self.n_blocks, "first_token": self.first_token}
        for name, t in self.tensors().items():
            state[name] = t.to("cpu", copy=True)
        return state

    def load_state_dict(self, state: dict, share: bool = False) -> None:
        """Replace the stored blocks by ``state`` (from :meth:`state_dict`, or tensors read from a file).

        With ``share=True`` and keys/values stored where this store keeps them (host memory), the given
        key/value tensors are used in place as a read-only base (no copy: e.g. a memory-mapped file); sums
        and bounds are taken from ``state`` when present, else recomputed.
        """
        if state["first_token"] != self.first_token:
            raise ValueError("saved memory was built with another n_init")
        self.n_blocks = 0
        self.n_base = 0
        self._base_k = self._base_v = None
        if self.offload:
            self._slot_of.clear()
        n = int(state["n_blocks"])
        if not n:
            return
        keys, values = state["keys"][:n], state["values"][:n]
        dtype = self.repr_keys.dtype
        if self._disk is not None:
            self._disk.truncate(0)
        if share and self._disk is None and self.storage.type == "cpu" and keys.device.type == "cpu" and keys.dtype == dtype and "bounds" in state:
            self._base_k, self._base_v, self.n_base = keys, values, n
            self.keys, self.values = self.keys[:0], self.values[:0]
            self.repr_keys = state["repr_keys"][:n].to(self.device, dtype, copy=True)
            self.repr_sum = state["repr_sum"][:n].to(self.device, dtype, copy=True)
            self.bounds = state["bounds"][:n].to(self.device, dtype, copy=True)
            self.n_blocks = n
            return
        self.append(keys.to(dtype), values.to(dtype), state["repr_keys"][:n].to(self.device, dtype))
        if "bounds" in state:  # saved sums and bounds are the ones computed when the blocks were first written
            self.repr_sum[:n] = state["repr_sum"][:n].to(self.device, dtype)
            self.bounds[:n] = state["bounds"][:n].to(self.device, dtype)
