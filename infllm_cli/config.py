"""Validated configuration for the context memory and for generation, with named presets.

The memory knobs are InfLLM's (Xiao et al., arXiv 2402.04617; defaults from thunlp/InfLLM's configs for
Llama-3-8B-Instruct and Mistral-7B-Instruct-v0.2):

==================  =====================================================================================
``n_init``          initial tokens ("attention sinks") kept for good and attended by every query
``n_local``         local window: every query sees at least the ``n_local`` tokens before it at their true
                    relative positions (eviction into blocks is block-granular, so up to
                    :attr:`MemoryConfig.max_window` tokens can be in the window)
``block_size``      tokens per memory block
``topk``            memory blocks retrieved for each query chunk
``repr_topk``       representative keys per block, used to score a block against a query chunk
``exc_block_size``  query chunk: how many queries share one block retrieval
``max_cached_block`` memory blocks kept on the compute device when the block store is offloaded
``chunk_size``      prefill chunk: tokens fed to the model per forward (a multiple of ``exc_block_size``)
==================  =====================================================================================
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

ATTENTION_MODES = ("infllm", "streaming", "dense")


class ConfigError(ValueError):
    """A configuration that cannot work; the message says what to change."""


@dataclass(frozen=True)
class MemoryConfig:
    """InfLLM context-memory knobs. Construct directly, from a preset, or with :meth:`replace`."""

    n_init: int = 128
    n_local: int = 4096
    block_size: int = 128
    topk: int = 16
    repr_topk: int = 4
    exc_block_size: int = 512
    max_cached_block: int = 32
    chunk_size: int = 8192
    offload: bool = False
    """Keep the block store in host memory and move retrieved blocks to the compute device."""

    def __post_init__(self) -> None:
        positive = ("n_local", "block_size", "exc_block_size", "chunk_size")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("n_init", "topk", "repr_topk", "max_cached_block"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
        if self.topk > 0 and self.repr_topk < 1:
            raise ConfigError("repr_topk must be at least 1 when topk > 0 (blocks are scored through their representative keys)")
        if self.repr_topk > self.block_size:
            raise ConfigError(
                f"repr_topk ({self.repr_topk}) cannot exceed block_size ({self.block_size}): "
                "lower --repr-topk or raise --block-size"
            )
        if self.exc_block_size > self.n_local:
            raise ConfigError(
                f"exc_block_size ({self.exc_block_size}) must not exceed n_local ({self.n_local}): "
                "a query chunk has to fit in the local window; lower --exc-block-size or raise --n-local"
            )
        if self.chunk_size % self.exc_block_size != 0:
            raise ConfigError(
                f"chunk_size ({self.chunk_size}) must be a multiple of exc_block_size ({self.exc_block_size}) "
                "so that results do not depend on the prefill chunk; pick e.g. "
                f"--chunk-size {max(1, self.chunk_size // self.exc_block_size) * self.exc_block_size}"
            )
        if self.offload and self.topk > self.max_cached_block:
            raise ConfigError(
                f"max_cached_block ({self.max_cached_block}) must be at least topk ({self.topk}) when the block "
                "store is offloaded: every retrieved block needs a slot on the compute device"
            )

    @property
    def max_window(self) -> int:
        """Largest number of local-window keys a query can see: eviction is block-granular, and before the
        first eviction the initial tokens are still in the window."""
        return self.n_init + self.n_local + self.block_size + self.exc_block_size - 1

    @property
    def memory_distance(self) -> int:
        """Relative position at which every memory token (initial tokens, retrieved blocks) is seen."""
        return self.n_local

    def replace(self, **changes: Any) -> "MemoryConfig":
        """A copy with ``changes`` applied (``None`` values are ignored) and validated again."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[str, MemoryConfig] = {
    # thunlp/InfLLM llama-3-inf-llm.yaml / mistral-inf-llm.yaml
    "paper": MemoryConfig(),
    # Same shape with a 2K window: for models trained on 2-4K tokens and for CPU runs.
    "small": MemoryConfig(n_init=64, n_local=2048, block_size=128, topk=8, repr_topk=4, exc_block_size=256, chunk_size=2048),
    # For tiny models trained on 512 tokens (e.g. llama2.c TinyStories): the whole window stays in distribution.
    "tiny": MemoryConfig(n_init=4, n_local=256, block_size=32, topk=4, repr_topk=2, exc_block_size=64, chunk_size=512),
}


def preset(name: str) -> MemoryConfig:
    """The named preset (``paper``, ``small`` or ``tiny``)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown memory preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings. ``temperature == 0`` means greedy decoding."""

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ConfigError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
