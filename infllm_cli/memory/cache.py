"""InfLLM's memory as a transformers ``Cache``, and the attention function that reads it.

Integration goes through transformers' public extension points only:

* :class:`ContextMemory` is a ``Cache`` whose layers are :class:`MemoryCacheLayer` objects. The model calls
  ``past_key_values.update(k, v, layer_idx)``; the new keys/values are handed back unchanged (the memory
  is updated by the attention itself, one query chunk at a time).
* :func:`infllm_attention` is registered in ``AttentionInterface`` under the name ``"infllm"``. It gets the
  memory through the ``infllm_memory`` keyword argument, which transformers forwards from the model call to
  every attention layer. No mask function is registered, so transformers passes ``attention_mask=None`` and
  builds no mask; masking (bottom-right causal) is done by the memory kernels.

Use :func:`attention_implementation` to switch a loaded model to ``"infllm"`` for the duration of a call.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Iterator

import torch
from transformers import AttentionInterface
from transformers.cache_utils import Cache, CacheLayerMixin

from infllm_kernels.backend import Backend

from ..config import ANSWER_KNOBS, MemoryConfig, reading_config
from .layer_memory import LayerMemory
from .ledger import AttentionLedger
from .rope import RotaryTable
from .selection import best_blocks, favoured_blocks, pooled_question_mass

ATTENTION_NAME = "infllm"


class MemoryCacheLayer(CacheLayerMixin):
    """Adapter that lets a :class:`LayerMemory` sit in a transformers ``Cache``."""

    is_sliding = False

    def __init__(self, memory: LayerMemory) -> None:
        super().__init__()
        self.memory = memory
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        return key_states, value_states

    def get_seq_length(self) -> int:
        return self.memory.n_seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.memory.n_seen + query_length, 0

    def get_max_length(self) -> int:
        return -1


class ContextMemory(Cache):
    """The InfLLM context memory of a whole model: one :class:`LayerMemory` per attention layer.

    Parameters
    ----------
    config : memory knobs
    n_layers, n_kv_heads, head_dim : the model's attention shape
    rope : rotary table (from the model's own rotary embedding)
    backend : attention ops
    device, dtype : compute device and storage dtype
    keep_blocks : False for the streaming (sink + window) baseline
    """

    def __init__(
        self,
        config: MemoryConfig,
        n_layers: int,
        n_kv_heads: int,
        head_dim: int,
        rope: RotaryTable,
        backend: Backend,
        device: torch.device,
        dtype: torch.dtype,
        keep_blocks: bool = True,
    ) -> None:
        memories = [
            LayerMemory(config, n_kv_heads, head_dim, rope, backend, device, dtype, keep_blocks, name=f"layer{i:03d}")
            for i in range(n_layers)
        ]
        super().__init__(layers=[MemoryCacheLayer(m) for m in memories])
        self.config = config
        self.memories = memories
        self._question_pins: list[torch.Tensor] | None = None

    @property
    def n_seen(self) -> int:
        return self.memories[0].n_seen

    @property
    def n_blocks(self) -> int:
        return self.memories[0].store.n_blocks

    def block_spans(self) -> list[tuple[int, int]]:
        """Stream token range ``[start, end)`` of every stored block (the same for every layer)."""
        store = self.memories[0].store
        return [store.span(b) for b in range(store.n_blocks)]

    # snapshot / restore: cheap, because blocks are append-only ------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The state needed to come back here later (window copies and block counts, not the blocks)."""
        return {"layers": [m.state_dict() for m in self.memories], "blocks": [m.store.n_blocks for m in self.memories]}

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Return to ``snapshot``, taken earlier on this memory (later blocks are forgotten)."""
        for m, layer_state, n_blocks in zip(self.memories, snapshot["layers"], snapshot["blocks"]):
            m.load_state_dict(layer_state, n_blocks)

    def fork(self) -> "ContextMemory":
        """An independent copy (blocks included) that can diverge from this one, e.g. to answer questions
        concurrently. For questions answered one after another, :meth:`snapshot`/:meth:`restore` is cheaper."""
        shared = self.memories[0].rope
        return copy.deepcopy(self, memo={id(shared): shared})

    # answer-time block selection -------------------------------------------------------------------

    @contextlib.contextmanager
    def answer_config(self, config: MemoryConfig) -> Iterator[None]:
        """Read questions inside the block with ``config``, which may differ from this memory's configuration
        only in the answer-time knobs (:data:`~infllm_cli.config.ANSWER_KNOBS`): one read of a document,
        answered with several question-aware settings (the recall benchmark compares them on one read)."""
        if reading_config(config) != reading_config(self.config):
            changed = [k for k, v in config.to_dict().items() if k not in ANSWER_KNOBS and v != getattr(self.config, k)]
            raise ValueError(f"answer_config may change only {', '.join(ANSWER_KNOBS)}, not {', '.join(changed)}")
        previous = self.config
        self._use_config(config)
        try:
            yield
        finally:
            self._use_config(previous)

    def _use_config(self, config: MemoryConfig) -> None:
        self.config = config
        for m in self.memories:
            m.config = config
            m.selector.config = config

    def align_chunks(self) -> None:
        """Start a new query chunk at the next token, in every layer: a question then retrieves with its
        own queries instead of sharing a chunk with the end of the document."""
        for m in self.memories:
            m.align_chunks()

    @property
    def chunk_origin(self) -> int:
        """Stream position from which query chunks (and prefill chunks) are counted."""
        return self.memories[0].chunk_origin

    @contextlib.contextmanager
    def ranking_question(self) -> Iterator[None]:
        """Rank the blocks by the queries of the tokens read inside the block (per layer and KV head, by the
        attention mass the question would give them); on exit, keep each layer's ``question_topk`` best blocks
        for :meth:`pin_question_blocks` (question-aware retrieval).

        The caller usually reads the question a second time after restoring a snapshot taken before it, so
        that the question's own tokens, and the first answer token, already see the pinned blocks:
        :meth:`infllm_cli.runner.Runner.read_question` does this.
        """
        for m in self.memories:
            m.begin_question()
        try:
            yield
        finally:
            self._question_pins = self._end_question()

    def _end_question(self) -> list[torch.Tensor]:
        """Every layer's pins for the question just ranked (:meth:`LayerMemory.end_question`). The question mass
        pooled over all layers and KV heads is computed once: it picks the ``question_shared`` blocks and the
        ``question_neighbor_rank`` blocks that a question block's neighbour must be among (the other half of a
        fact cut by a block boundary draws the question too; the text around a whole fact does not)."""
        kept = [m for m in self.memories if m.question_scores is not None and m.keep_blocks]
        gate = self.config.question_neighbors > 0 and self.config.question_neighbor_rank > 0
        pooled = None
        if kept and (self.config.question_shared > 0 or gate):
            pooled = pooled_question_mass([m.question_scores for m in kept])
        near = favoured_blocks(pooled, self.config.question_neighbor_rank) if pooled is not None and gate else None
        shared = self._shared_question_blocks(kept, pooled)
        return [m.end_question(shared, near) for m in self.memories]

    def _shared_question_blocks(self, kept: list[LayerMemory], pooled: torch.Tensor | None) -> torch.Tensor | None:
        """[S] the ``question_shared`` blocks with the most question mass ``pooled`` over the ``kept`` layers (see
        :func:`~infllm_cli.memory.selection.pooled_question_mass`) and the ``question_exact`` ones its exactly
        weighed attention favours (a block in both lists is pinned once), or None when both are off."""
        picks = []
        if pooled is not None and self.config.question_shared > 0:
            picks.append(best_blocks(pooled, self.config.question_shared))
        if kept and self.config.question_exact > 0:
            exact = pooled_question_mass([m.question_exact_scores for m in kept])
            picks.append(best_blocks(exact, self.config.question_exact))
        return torch.cat(picks) if picks else None

    def pin_question_blocks(self) -> None:
        """Pin the blocks found by the last :meth:`ranking_question`."""
        pins = self._question_pins
        if pins is None:
            raise RuntimeError("no question was ranked: read one inside ranking_question() first")
        for m, blocks in zip(self.memories, pins):
            m.pin(blocks)

    def pin_blocks(self, blocks: list[int]) -> None:
        """Make every layer and head read ``blocks`` beside its own selection (e.g. an oracle)."""
        device = self.memories[0].k_raw.device
        for m in self.memories:
            m.pin(torch.tensor(blocks, dtype=torch.long, device=device))

    def unpin(self) -> None:
        for m in self.memories:
            m.pin(None)

    # citations --------------------------------------------------------------------------------------

    def new_ledger(self) -> AttentionLedger:
        """An empty :class:`~infllm_cli.memory.ledger.AttentionLedger` shaped for this memory's blocks."""
        return AttentionLedger(self.config.n_init, self.config.block_size, self.memories[0].k_raw.device)

    @contextlib.contextmanager
    def citing(self, ledger: AttentionLedger) -> Iterator[AttentionLedger]:
        """Add the attention every layer gives its window keys and retrieved blocks to ``ledger`` while
        inside the block (the citing attention kernels run only then)."""
        for m in self.memories:
            m.ledger = ledger
        try:
            yield ledger
        finally:
            for m in self.memories:
                m.ledger = None

    def blocks_of(self, start: int, end: int) -> list[int]:
        """Stored blocks that hold any token of the stream range ``[start, end)``."""
        store = self.memories[0].store
        first = max(0, (start - store.first_token) // store.block_size)
        last = min(store.n_blocks, -(-(end - store.first_token) // store.block_size))
        return list(range(first, last)) if end > store.first_token else []

    # persistence: everything, blocks included -----------------------------------------------------------

    def save(self, path: Any, *, logits: torch.Tensor | None = None, document: Any = None) -> int:
        """Write this memory to directory ``path`` (safetensors + JSON manifest with checksums, written
        atomically; never pickle). Returns the bytes written. See :mod:`infllm_cli.persist`."""
        from ..persist.memory_state import save_memory

        return save_memory(self, path, logits=logits, document=document)

    @classmethod
    def load(cls, path: Any, loaded: Any, *, backend: str = "auto", attention: str = "infllm") -> "ContextMemory":
        """A memory saved by :meth:`save`, for the model ``loaded`` (a :class:`~infllm_cli.models.LoadedModel`).
        Its blocks stay memory-mapped from the file when the store lives in host memory. Raises
        :class:`~infllm_cli.persist.files.EntryError` for a corrupted file, ``ValueError`` for another model shape."""
        from ..persist.memory_state import load_memory

        return load_memory(path, loaded, backend=backend, attention=attention)[0]

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "layers": [m.state_dict() for m in self.memories],
            "stores": [m.store.state_dict() for m in self.memories],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if MemoryConfig(**state["config"]) != self.config:
            raise ValueError("saved memory was built with another memory configuration")
        if len(state["layers"]) != len(self.memories):
            raise ValueError("saved memory has another number of layers")
        for m, layer_state, store_state in zip(self.memories, state["layers"], state["stores"]):
            m.load_state_dict(layer_state, store_state)


def infllm_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    infllm_memory: ContextMemory | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: ``query`` [1, H, L, D], ``key``/``value`` [1, Hkv, L, D] -> [1, L, H, D]."""
    if infllm_memory is None:
        raise RuntimeError("the 'infllm' attention needs the model to be called with infllm_memory=<ContextMemory>")
    if query.shape[0] != 1:
        raise ValueError(f"the InfLLM memory reads one stream at a time (batch size 1), got batch {query.shape[0]}")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = infllm_memory.memories[module.layer_idx].attend(query[0], key[0], value[0], scale)
    return out.transpose(0, 1).unsqueeze(0), None


AttentionInterface.register(ATTENTION_NAME, infllm_attention)


@contextlib.contextmanager
def attention_implementation(model: torch.nn.Module, name: str) -> Iterator[None]:
    """Run the enclosed calls with ``model.config._attn_implementation = name``, restored afterwards."""
    config = model.config
    previous = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = previous
