"""A :class:`~infllm_cli.memory.cache.ContextMemory` and its checkpoints as flat named tensors + JSON.

Blocks are append-only, so one copy of every layer's final blocks serves every checkpoint: a checkpoint is
the small per-layer state (local window keys/values and attention mass, initial tokens, counters), each
layer's block count at that point, and the last logits. Tensor names::

    L{l}.keys  L{l}.values  L{l}.repr_keys  L{l}.repr_sum  L{l}.bounds          final blocks of layer l
    C{c}.L{l}.k_raw  .v  .mass  .k_init  .v_init                                 checkpoint c, layer l
    C{c}.logits                                                                  last logits at checkpoint c

The checkpoint's JSON (``position`` = tokens read, ``blocks`` per layer, and the layer counters) goes in
the manifest. A :class:`~infllm_cli.tokens.DocumentTokens` (the document's token ids and its provenance:
segments with files, sections, pages and lines) is kept as JSON plus ``doc.<field>`` int32 tensors for its
id arrays, restored field by field from its dataclass type hints, so fields added later survive too.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from array import array
from typing import Any

import torch

from ..memory.cache import ContextMemory

LAYER_FIELDS = ("k_raw", "v", "mass", "k_init", "v_init")
STORE_FIELDS = ("keys", "values", "repr_keys", "repr_sum", "bounds")


@dataclasses.dataclass
class Checkpoint:
    """The state of a memory after ``position`` tokens (everything but the blocks, which are shared)."""

    position: int
    blocks: list[int]
    layers: list[dict[str, Any]]  # LayerMemory.state_dict() each
    logits: torch.Tensor | None

    @classmethod
    def take(cls, memory: ContextMemory, logits: torch.Tensor | None) -> "Checkpoint":
        return cls(
            position=memory.n_seen,
            blocks=[m.store.n_blocks for m in memory.memories],
            layers=[m.state_dict() for m in memory.memories],
            logits=None if logits is None else logits.detach().clone(),
        )

    def meta(self) -> dict[str, Any]:
        counters = [{k: v for k, v in layer.items() if not isinstance(v, torch.Tensor)} for layer in self.layers]
        return {"position": self.position, "blocks": self.blocks, "layers": counters, "logits": self.logits is not None}


def memory_tensors(memory: ContextMemory, checkpoints: list[Checkpoint]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Tensors to save and the checkpoints' JSON."""
    tensors: dict[str, torch.Tensor] = {}
    for l, m in enumerate(memory.memories):
        for name, t in m.store.tensors().items():
            tensors[f"L{l}.{name}"] = t.to("cpu")
    metas = []
    for c, ck in enumerate(checkpoints):
        for l, layer in enumerate(ck.layers):
            for name in LAYER_FIELDS:
                tensors[f"C{c}.L{l}.{name}"] = layer[name].to("cpu")
        if ck.logits is not None:
            tensors[f"C{c}.logits"] = ck.logits.to("cpu")
        metas.append(ck.meta())
    return tensors, metas


def restore_checkpoint(memory: ContextMemory, tensors: dict[str, torch.Tensor], meta: dict[str, Any], index: int) -> torch.Tensor | None:
    """Put ``memory`` (empty, same shape and configuration) in the state of checkpoint ``index``; the blocks
    are used in place (memory-mapped) where the store lives in host memory. Returns the last logits."""
    if len(meta["blocks"]) != len(memory.memories):
        raise ValueError("saved memory has another number of layers")
    for l, m in enumerate(memory.memories):
        n = int(meta["blocks"][l])
        store_state: dict[str, Any] = {"n_blocks": n, "first_token": m.store.first_token}
        for name in STORE_FIELDS:
            store_state[name] = tensors[f"L{l}.{name}"]
        if n > store_state["keys"].shape[0]:
            raise ValueError("checkpoint refers to blocks the entry does not hold")
        layer = dict(meta["layers"][l])
        for name in LAYER_FIELDS:
            layer[name] = tensors[f"C{index}.L{l}.{name}"]
        m.store.load_state_dict(store_state, share=True)
        m.load_state_dict(layer, n)
    memory._question_pins = None
    logits = tensors.get(f"C{index}.logits")
    return None if logits is None else logits.to(memory.memories[0].k_raw.device)


# -- document provenance --------------------------------------------------------------------------------


def _to_json(value: Any) -> Any:
    if hasattr(type(value), "from_dict") and hasattr(value, "to_dict"):  # e.g. the span map of citations
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    return value


def _from_json(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if isinstance(tp, type) and hasattr(tp, "from_dict"):
        return tp.from_dict(value)
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        known = {f.name for f in dataclasses.fields(tp) if f.init}
        return tp(**{k: _from_json(hints.get(k, Any), v) for k, v in value.items() if k in known})
    if origin in (list, tuple) and args:
        items = [_from_json(args[0], v) for v in value]
        return items if origin is list else tuple(items)
    if origin is typing.Union or origin is types.UnionType:
        for arg in args:
            if arg is not type(None) and (dataclasses.is_dataclass(arg) or typing.get_origin(arg) or hasattr(arg, "from_dict")):
                return _from_json(arg, value)
    return value


def document_state(doc: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """JSON (provenance, report, counts) and int32 tensors (every ``array`` field, e.g. ``ids``) of a
    :class:`~infllm_cli.tokens.DocumentTokens`."""
    meta: dict[str, Any] = {}
    tensors: dict[str, torch.Tensor] = {}
    for f in dataclasses.fields(doc):
        value = getattr(doc, f.name)
        if isinstance(value, array):
            tensors[f"doc.{f.name}"] = torch.tensor(value, dtype=torch.int32) if len(value) else torch.zeros(0, dtype=torch.int32)
        else:
            meta[f.name] = _to_json(value)
    return meta, tensors


def restore_document(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Any:
    """The :class:`~infllm_cli.tokens.DocumentTokens` saved by :func:`document_state`."""
    from ..tokens import DocumentTokens

    doc = _from_json(DocumentTokens, meta)
    for f in dataclasses.fields(doc):
        t = tensors.get(f"doc.{f.name}")
        if t is not None:
            setattr(doc, f.name, array("i", t.tolist()))
    return doc


# -- one memory in a directory (ContextMemory.save / ContextMemory.load) --------------------------------


def save_memory(memory: ContextMemory, path: Any, *, logits: torch.Tensor | None = None, document: Any = None) -> int:
    """Write ``memory`` (and optionally the last logits and the document it holds) to directory ``path``."""
    from pathlib import Path

    from .files import write_entry

    ck = Checkpoint.take(memory, logits)
    tensors, metas = memory_tensors(memory, [ck])
    doc_meta: dict[str, Any] = {}
    if document is not None:
        doc_meta, doc_tensors = document_state(document)
        tensors.update(doc_tensors)
    m0 = memory.memories[0]
    manifest = {
        "kind": "memory",
        "config": memory.config.to_dict(),
        "shape": {"layers": len(memory.memories), "kv_heads": m0.k_raw.shape[0], "head_dim": m0.k_raw.shape[2]},
        "dtype": str(m0.k_raw.dtype).removeprefix("torch."),
        "keep_blocks": m0.keep_blocks,
        "checkpoints": metas,
        "document": doc_meta,
    }
    return write_entry(Path(path), manifest, tensors)


def load_memory(path: Any, loaded: Any, *, backend: str = "auto", attention: str = "infllm") -> tuple[ContextMemory, torch.Tensor | None, Any]:
    """(memory, last logits, document or None) saved by :func:`save_memory`, shaped for ``loaded``; blocks
    stay memory-mapped where the store lives in host memory. Raises :class:`~infllm_cli.persist.files.EntryError`
    for an unusable file and ``ValueError`` when it does not fit the model."""
    from pathlib import Path

    from ..config import MemoryConfig
    from ..runner import build_memory
    from .files import read_entry

    manifest, tensors = read_entry(Path(path))
    memory = build_memory(loaded, MemoryConfig(**manifest["config"]), attention, backend)
    m0 = memory.memories[0]
    want = {"layers": len(memory.memories), "kv_heads": m0.k_raw.shape[0], "head_dim": m0.k_raw.shape[2]}
    if manifest.get("shape") != want:
        raise ValueError(f"saved memory has shape {manifest.get('shape')}, the model needs {want}")
    if manifest.get("dtype") != str(m0.k_raw.dtype).removeprefix("torch."):
        raise ValueError(f"saved memory is {manifest.get('dtype')}, the model runs in {m0.k_raw.dtype}")
    logits = restore_checkpoint(memory, tensors, manifest["checkpoints"][0], 0)
    document = restore_document(manifest["document"], tensors) if manifest.get("document") else None
    return memory, logits, document
