"""The context memory of one attention layer, and the attention of a query chunk against it.

State, for a stream of ``n_seen`` tokens:

* ``local``: the keys/values of stream tokens ``[local_start, n_seen)``, unrotated, in a fixed-capacity
  buffer, plus the same keys rotated at their position in the window and the attention mass each one
  has received so far;
* ``init``: the first ``n_init`` tokens, once they have left the local window;
* ``store``: every evicted block (:class:`~infllm_cli.memory.block_store.BlockStore`).

Algorithm for a query chunk of ``L`` tokens starting at stream position ``t`` (one "exc block"):

1. evict: while the oldest full block ``[s, s + block_size)`` of the window satisfies
   ``s + block_size <= t - n_local``, move it to the store with its ``repr_topk`` most-attended tokens as
   representative keys (the first eviction also moves the ``n_init`` initial tokens to ``init``). So
   every query sees at least ``n_local`` tokens of true local context, and no token is seen twice;
2. append the chunk's keys/values to the window;
3. retrieve: rank the stored blocks for the chunk and keep the ``topk`` best, plus any pinned blocks and
   their neighbours (:class:`~infllm_cli.memory.selection.BlockSelector`; the paper ranks with the chunk's
   mean memory query);
4. attend: one softmax over [initial tokens | retrieved blocks | local window] (backend op);
5. account: add the attention mass the window's keys received to their scores.

With ``n_local`` at least the stream length nothing is ever evicted and this is exactly causal dense
attention. Each query chunk only sees its own layer's history, so the result does not depend on how the
stream was cut into forward passes (as long as the cuts fall on multiples of ``exc_block_size`` counted
from ``chunk_origin``, which :meth:`LayerMemory.align_chunks` moves so that a question starts a chunk of
its own).

Answer-time state (not part of :meth:`LayerMemory.state_dict`, cleared by :meth:`LayerMemory.load_state_dict`):
``pinned`` blocks read by every chunk beside its own selection, ``question_scores`` accumulated while a
question is being ranked, an optional ``probe`` called with every selection (diagnostics), and an
optional ``ledger`` (:class:`~infllm_cli.memory.ledger.AttentionLedger`) that, while attached, receives the
attention each window key and each retrieved block got (citations; the citing kernel runs only then).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from infllm_kernels.backend import Backend

from ..config import MemoryConfig
from .block_store import BlockStore
from .rope import RotaryTable
from .selection import BlockSelector

Probe = Callable[["LayerMemory", torch.Tensor, torch.Tensor], None]


class LayerMemory:
    """Context memory of one layer.

    Parameters
    ----------
    config : memory knobs
    n_kv_heads, head_dim : the layer's key/value shape
    rope : shared rotary table covering ``config.max_window + 1`` positions
    backend : attention ops
    device, dtype : compute device and storage dtype
    keep_blocks : False for the streaming baseline (evicted blocks are dropped, never retrieved)
    name : names the layer's block files when ``config.disk_store``
    """

    def __init__(
        self,
        config: MemoryConfig,
        n_kv_heads: int,
        head_dim: int,
        rope: RotaryTable,
        backend: Backend,
        device: torch.device,
        dtype: torch.dtype,
        keep_blocks: bool = True,
        name: str = "blocks",
    ) -> None:
        self.config = config
        self.rope = rope
        self.backend = backend
        self.keep_blocks = keep_blocks and config.topk > 0
        self.n_seen = 0
        self.local_start = 0
        self.chunk_origin = 0
        self.selector = BlockSelector(config, backend, n_kv_heads)
        self.pinned: torch.Tensor | None = None  # [Hkv, P] blocks every chunk reads (question / oracle)
        self.question_scores: torch.Tensor | None = None  # [Hkv, n] question mass per block
        self.question_exact_scores: torch.Tensor | None = None  # [Hkv, n] the same, weighed exactly
        self.scale = 1.0  # the attention's softmax scale, from the last attend()
        self.probe: Probe | None = None
        self.ledger: Any = None  # AttentionLedger while citing
        self.last_selection: torch.Tensor | None = None  # [Hkv, K] block indices of the last chunk
        cap = config.max_window + 1
        shape = (n_kv_heads, cap, head_dim)
        self.k_raw = torch.zeros(shape, dtype=dtype, device=device)
        self.k_rot = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.mass = torch.zeros(cap, dtype=torch.float32, device=device)
        self.k_init = torch.zeros((n_kv_heads, 0, head_dim), dtype=dtype, device=device)
        self.v_init = self.k_init.clone()
        self.store = BlockStore(
            n_kv_heads, head_dim, config.block_size, config.repr_topk, config.n_init, device, dtype,
            offload=config.offload, max_cached_block=config.max_cached_block,
            disk=config.disk_store and self.keep_blocks, name=name,
        )

    @property
    def n_local(self) -> int:
        """Tokens currently in the local window buffer."""
        return self.n_seen - self.local_start

    # -- the algorithm ---------------------------------------------------------------------------------

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        """Attention of a run of new tokens against the memory, updating it.

        Parameters
        ----------
        q : [H, L, D] unrotated queries of the new tokens
        k, v : [Hkv, L, D] their unrotated keys and values

        Returns
        -------
        out : [H, L, D]
        """
        exc = self.config.exc_block_size
        self.scale = scale
        outs = []
        start = 0
        while start < q.shape[1]:
            # chunk boundaries on absolute multiples of exc_block_size: independent of forward sizes
            end = min(q.shape[1], start + exc - ((self.n_seen - self.chunk_origin) % exc))
            outs.append(self._attend_chunk(q[:, start:end], k[:, start:end], v[:, start:end], scale))
            start = end
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)

    def _attend_chunk(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        n_new = q.shape[1]
        self._evict(self.n_seen)
        lo = self.n_local
        hi = lo + n_new
        self.k_raw[:, lo:hi] = k
        self.v[:, lo:hi] = v
        self.k_rot[:, lo:hi] = self.rope.rotate(k, lo)
        self.mass[lo:hi] = 0
        q_local = self.rope.rotate(q, lo)
        q_mem = self.rope.rotate(q, self.config.memory_distance, constant=True)
        k_blocks, v_blocks, block_idx = self._retrieve(q_mem)
        args = (q_local, q_mem, self.k_rot[:, :hi], self.v[:, :hi], self.k_init, self.v_init,
                k_blocks, v_blocks, block_idx, scale)
        if self.ledger is not None:  # citing: the same attention, plus the mass of every retrieved block
            out, mass, block_mass = self.backend.attention_with_citations(*args)
            if self.keep_blocks:
                self.mass[:hi] += mass
            self.ledger.add(self.local_start, mass, block_mass, self.last_selection, q.shape[0] * n_new)
        elif self.keep_blocks:  # attention mass only matters for choosing representative keys
            out, mass = self.backend.attention_and_mass(*args)
            self.mass[:hi] += mass
        else:
            out, _ = self.backend.memory_attention(*args)
        self.n_seen += n_new
        return out

    def _retrieve(self, q_mem: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        store = self.store
        n_kv = self.k_raw.shape[0]
        if not self.keep_blocks or store.n_blocks == 0:
            idx = torch.zeros((n_kv, 0), dtype=torch.long, device=q_mem.device)
            self.last_selection = idx
        else:
            if self.question_scores is not None:
                self._rank_question(q_mem)
            idx = self.selector.select(q_mem, store, self.pinned)
            self.last_selection = idx
            if self.probe is not None:
                self.probe(self, q_mem, idx)
        return store.device_blocks(idx)

    def _rank_question(self, q_mem: torch.Tensor) -> None:
        mass = self.selector.question_mass(q_mem, self.store, self.scale)
        self.question_scores = _accumulate(self.question_scores, mass)
        if self.config.question_exact > 0:
            exact = self.selector.exact_question_mass(q_mem, self.store, self.scale, mass)
            self.question_exact_scores = _accumulate(self.question_exact_scores, exact)

    # -- answer-time selection control -----------------------------------------------------------------

    def align_chunks(self) -> None:
        """Start a new query chunk at the next token (chunks are counted from here on)."""
        self.chunk_origin = self.n_seen

    def begin_question(self) -> None:
        """Rank blocks by the queries of the tokens read from now on (see :meth:`end_question`)."""
        self.question_scores = torch.zeros((self.k_raw.shape[0], 0), device=self.k_raw.device)
        self.question_exact_scores = torch.zeros_like(self.question_scores)

    def end_question(self, shared: torch.Tensor | None = None, near: torch.Tensor | None = None) -> torch.Tensor:
        """Stop ranking; the ``question_topk`` best blocks per KV head and the ``shared`` blocks [S] (other
        layers' best, see :meth:`ContextMemory.ranking_question`), widened by the neighbours ``near`` [n]
        bool allows (None: all): [Hkv, P]."""
        scores, self.question_scores, self.question_exact_scores = self.question_scores, None, None
        if scores is None or not self.keep_blocks:
            return torch.zeros((self.k_raw.shape[0], 0), dtype=torch.long, device=self.k_raw.device)
        return self.selector.question_blocks(scores, shared, near)

    def pin(self, blocks: torch.Tensor | None) -> None:
        """Blocks [Hkv, P] (or [P] for every head) that every chunk reads from now on; None to stop."""
        if blocks is not None and blocks.dim() == 1:
            blocks = blocks[None].expand(self.k_raw.shape[0], -1)
        self.pinned = None if blocks is None else blocks.to(device=self.k_raw.device, dtype=torch.long)

    def _evict(self, t: int) -> None:
        """Move every full block that is at least ``n_local`` tokens behind position ``t`` out of the window."""
        cfg = self.config
        bs = cfg.block_size
        first = cfg.n_init if self.local_start == 0 else self.local_start  # stream index of the oldest block
        n_blocks = max(0, (t - cfg.n_local - first) // bs)
        if n_blocks == 0:
            return
        off = first - self.local_start  # buffer offset of that block
        if self.local_start == 0:  # the initial tokens leave the window with the first block
            self.k_init = self.k_raw[:, : cfg.n_init].clone()
            self.v_init = self.v[:, : cfg.n_init].clone()
        end = off + n_blocks * bs
        if self.keep_blocks:
            n_kv, _, d = self.k_raw.shape
            kb = self.k_raw[:, off:end].reshape(n_kv, n_blocks, bs, d).transpose(0, 1)
            vb = self.v[:, off:end].reshape(n_kv, n_blocks, bs, d).transpose(0, 1)
            top = self.mass[off:end].view(n_blocks, bs).topk(cfg.repr_topk, dim=1).indices  # [n, R]
            gather = top[:, None, :, None].expand(n_blocks, n_kv, cfg.repr_topk, d)
            self.store.append(kb, vb, torch.gather(kb, 2, gather))
        # shift the window left and re-rotate the remaining keys at their new positions
        keep = self.n_local - end
        self.k_raw[:, :keep] = self.k_raw[:, end : end + keep].clone()
        self.v[:, :keep] = self.v[:, end : end + keep].clone()
        self.mass[:keep] = self.mass[end : end + keep].clone()
        self.k_rot[:, :keep] = self.rope.rotate(self.k_raw[:, :keep], 0)
        self.local_start = first + n_blocks * bs

    # -- state -----------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        n = self.n_local
        return {
            "n_seen": self.n_seen,
            "local_start": self.local_start,
            "chunk_origin": self.chunk_origin,
            "k_raw": self.k_raw[:, :n].clone(),
            "v": self.v[:, :n].clone(),
            "mass": self.mass[:n].clone(),
            "k_init": self.k_init.clone(),
            "v_init": self.v_init.clone(),
        }

    def load_state_dict(self, state: dict[str, Any], store_blocks: int | dict, share: bool = False) -> None:
        """Restore from :meth:`state_dict`; ``store_blocks`` is a block count (truncate) or a store state
        (``share``: see :meth:`BlockStore.load_state_dict`)."""
        self.n_seen = state["n_seen"]
        self.local_start = state["local_start"]
        self.chunk_origin = state.get("chunk_origin", 0)
        self.pinned = None
        self.question_scores = self.question_exact_scores = None
        n = self.n_local
        dev = self.k_raw.device
        self.k_raw[:, :n] = state["k_raw"].to(dev)
        self.v[:, :n] = state["v"].to(dev)
        self.mass[:n] = state["mass"].to(dev)
        self.k_rot[:, :n] = self.rope.rotate(self.k_raw[:, :n], 0)
        self.k_init = state["k_init"].to(dev)
        self.v_init = state["v_init"].to(dev)
        if isinstance(store_blocks, int):
            self.store.truncate(store_blocks)
        else:
            self.store.load_state_dict(store_blocks, share=share)


def _accumulate(total: torch.Tensor | None, mass: torch.Tensor) -> torch.Tensor:
    """``total + mass`` for [Hkv, n] masses, ``total`` padded with zeros for blocks evicted since it began."""
    if total is None:
        return mass
    if total.shape[1] < mass.shape[1]:
        total = torch.nn.functional.pad(total, (0, mass.shape[1] - total.shape[1]))
    return total + mass
