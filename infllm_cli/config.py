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
``max_cached_block`` memory blocks kept on the compute device when the block store is offloaded (more
                    slots are added when one query chunk reads more blocks than that)
``chunk_size``      prefill chunk: tokens fed to the model per forward (a multiple of ``exc_block_size``)
==================  =====================================================================================

Block selection (how a query chunk picks its ``topk`` blocks; see docs/retrieval.md for what each does
and what it measured). The paper's behaviour is the named selection ``paper``; the dataclass defaults are
the best combination the recall benchmark found (named ``default``):

=====================  ==================================================================================
``per_kv_head``        each KV head ranks the blocks and reads its own ``topk`` (paper: one ranking
                       summed over all heads)
``block_score``        what a block is scored with: ``bounds`` (per-channel min/max of all its keys: an
                       upper bound of any key's score, so no token can be missed), ``repr_max`` (its best
                       representative key), ``repr_sum`` (paper: the sum of its representative keys)
``query_score``        ``max``: each query of the chunk scores the blocks and the best query counts;
                       ``mean`` (paper): the chunk's mean query scores them
``neighbors``          also read the ``neighbors`` blocks before and after every hit (facts split across
                       a block boundary)
``question_topk``      question-aware retrieval: when a prompt is read with
                       :meth:`~infllm_cli.runner.Runner.read_question`, every question token and head
                       spreads a softmax over the blocks' scores; the ``question_topk`` blocks with the most
                       mass (per KV head) are kept for the question and the whole answer, beside each
                       token's own retrieval
``question_neighbors`` also pin the ``question_neighbors`` blocks before and after each of the question's
                       blocks (a fact cut by a block boundary; costs nothing while reading), each only
                       if it is itself among the ``question_neighbor_rank`` (64) blocks the question's
                       attention favours over all layers and KV heads (pooled as for ``question_shared``):
                       the other half of a cut fact draws the question too, the text around a whole fact
                       does not (0: every neighbour is pinned)
``question_shared``    also pin, in every layer and KV head, the ``question_shared`` blocks the question's
                       attention favours over all layers and KV heads (each head's question mass normalised
                       and summed; widened by ``question_neighbors``): a block the heads that match the
                       question find is read by the heads that copy from it too
``rescore``            re-rank exactly: the ``rescore`` best blocks by ``block_score`` are scored again
                       with every key they hold (best ``q . k``) and the ``topk`` best of those are read;
                       0: off
``question_exact``     also pin, in every layer and KV head, the ``question_exact`` blocks the question's
                       *exact* attention favours over all layers and KV heads (pooled as for
                       ``question_shared``, widened by ``question_neighbors``): each layer's
                       ``question_rescore`` best blocks per KV head by ``block_score`` are weighed with
                       every key they hold (the share of the question's attention each really draws among
                       them); this tells apart facts of one phrasing by the name the question asks for
``question_rescore``   how many candidate blocks per KV head ``question_exact`` weighs exactly (256; at
                       least 1 when ``question_exact`` is on; unused when it is off)
=====================  ==================================================================================
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

ATTENTION_MODES = ("infllm", "streaming", "dense")
BLOCK_SCORES = ("bounds", "repr_max", "repr_sum")
QUERY_MODES = ("max", "mean")


class ConfigError(ValueError):
    """A configuration that cannot work; the message says what to change."""


#: Allowed range (inclusive) of each integer memory knob. The upper bounds are far above any useful value
#: (the ``paper`` preset's window is 4,096 tokens) and keep an absurd value (``--n-local 10**12``) from
#: sizing tables and buffers that exhaust memory: it is refused before anything is loaded.
MEMORY_LIMITS: dict[str, tuple[int, int]] = {
    "n_init": (0, 65_536),
    "n_local": (1, 1_048_576),
    "block_size": (1, 65_536),
    "topk": (0, 4_096),
    "repr_topk": (0, 1_024),
    "exc_block_size": (1, 65_536),
    "chunk_size": (1, 1_048_576),
    "max_cached_block": (0, 65_536),
    "neighbors": (0, 8),
    "question_topk": (0, 1_024),
    "question_neighbors": (0, 8),
    "question_neighbor_rank": (0, 1_048_576),
    "question_shared": (0, 64),
    "rescore": (0, 4_096),
    "question_exact": (0, 64),
    "question_rescore": (0, 65_536),
}

#: Knobs used only when a question is read (question-aware retrieval): what is stored while reading a
#: document does not depend on them, so one read can be answered with any of their values.
ANSWER_KNOBS = ("question_topk", "question_neighbors", "question_neighbor_rank", "question_shared", "question_exact",
                "question_rescore")

#: Most float32 scores the question's exact weighing (``question_exact``) holds at once (64 MiB): the
#: question's rows are scored in slices that fit.
EXACT_SCORE_BUDGET = 1 << 24

#: Most tokens one answer may generate (``--max-new-tokens``).
MAX_NEW_TOKENS = 131_072
#: Largest ``temperature`` (beyond it sampling is uniform noise anyway).
MAX_TEMPERATURE = 100.0
#: Sampling seeds are 0 .. 2**63 - 1 (what a torch generator takes).
MAX_SEED = 2**63 - 1


def check_range(name: str, value: object, low: int, high: int) -> None:
    """Raise :class:`ConfigError` unless ``value`` is an integer in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{name} must be an integer from {low:,} to {high:,}, got {value!r}")


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
    disk_store: bool = False
    """Keep the blocks' keys and values in files on disk (documents larger than RAM; implies ``offload``)."""
    per_kv_head: bool = True
    block_score: str = "bounds"
    query_score: str = "mean"
    neighbors: int = 0
    question_topk: int = 4
    question_neighbors: int = 1
    question_neighbor_rank: int = 64
    question_shared: int = 4
    rescore: int = 0
    question_exact: int = 0
    question_rescore: int = 256

    def __post_init__(self) -> None:
        for name, (low, high) in MEMORY_LIMITS.items():
            check_range(name, getattr(self, name), low, high)
        if self.block_score not in BLOCK_SCORES:
            raise ConfigError(f"block_score must be one of {', '.join(BLOCK_SCORES)}, got {self.block_score!r}")
        if self.query_score not in QUERY_MODES:
            raise ConfigError(f"query_score must be one of {', '.join(QUERY_MODES)}, got {self.query_score!r}")
        for name in ("per_kv_head", "offload", "disk_store"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.topk > 0 and self.repr_topk < 1 and self.block_score != "bounds":
            raise ConfigError("repr_topk must be at least 1 when topk > 0 (blocks are scored through their representative keys)")
        if self.question_exact > 0 and self.question_rescore < 1:
            raise ConfigError(
                f"question_exact ({self.question_exact}) weighs candidate blocks exactly: set question_rescore to how many "
                "per KV head (e.g. --question-rescore 256)"
            )
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

    @property
    def max_window(self) -> int:
        """Largest number of local-window keys a query can see: eviction is block-granular, and before the
        first eviction the initial tokens are still in the window."""
        return self.n_init + self.n_local + self.block_size + self.exc_block_size - 1

    @property
    def selection(self) -> dict[str, Any]:
        """The block-selection knobs."""
        return {name: getattr(self, name) for name in SELECTIONS["paper"]}

    @property
    def question_pins(self) -> int:
        """Blocks a question pins per KV head before ``question_neighbors`` (0: questions are read once)."""
        return self.question_topk + self.question_shared + self.question_exact

    @property
    def memory_distance(self) -> int:
        """Relative position at which every memory token (initial tokens, retrieved blocks) is seen."""
        return self.n_local

    def replace(self, **changes: Any) -> "MemoryConfig":
        """A copy with ``changes`` applied (``None`` values are ignored) and validated again."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SELECTIONS: dict[str, dict[str, Any]] = {
    # Xiao et al.: the chunk's mean query against the sum of each block's representative keys, one ranking
    # summed over all heads, no neighbours, no question-aware blocks.
    "paper": {"per_kv_head": False, "block_score": "repr_sum", "query_score": "mean", "neighbors": 0, "question_topk": 0, "question_neighbors": 0, "question_neighbor_rank": 0, "question_shared": 0, "rescore": 0, "question_exact": 0, "question_rescore": 256},
    # the best combination on the recall benchmark (docs/retrieval.md)
    "default": {"per_kv_head": True, "block_score": "bounds", "query_score": "mean", "neighbors": 0, "question_topk": 4, "question_neighbors": 1, "question_neighbor_rank": 64, "question_shared": 4, "rescore": 0, "question_exact": 0, "question_rescore": 256},
}


def reading_config(config: MemoryConfig) -> MemoryConfig:
    """``config`` with the answer-time knobs (:data:`ANSWER_KNOBS`) at their defaults: equal for two
    configurations whose reads of a document store the same memory."""
    return config.replace(**{f.name: f.default for f in dataclasses.fields(MemoryConfig) if f.name in ANSWER_KNOBS})


def with_selection(config: MemoryConfig, name: str) -> MemoryConfig:
    """``config`` with the named block selection (``paper`` or ``default``)."""
    try:
        return config.replace(**SELECTIONS[name])
    except KeyError:
        raise ConfigError(f"unknown selection {name!r}; choose one of: {', '.join(SELECTIONS)}") from None


PRESETS: dict[str, MemoryConfig] = {
    # thunlp/InfLLM llama-3-inf-llm.yaml / mistral-inf-llm.yaml
    "paper": MemoryConfig(),
    # Same shape with a 2K window: for models trained on 2-4K tokens and for CPU runs.
    "small": MemoryConfig(n_init=64, n_local=2048, block_size=128, topk=8, repr_topk=4, exc_block_size=256, chunk_size=2048),
    # For tiny models trained on 512 tokens (e.g. llama2.c TinyStories): the whole window stays in distribution.
    "tiny": MemoryConfig(n_init=4, n_local=256, block_size=32, topk=4, repr_topk=2, exc_block_size=64, chunk_size=512),
    # For models trained on 256 tokens (e.g. the recall test model): window and memory distance inside 256.
    "micro": MemoryConfig(n_init=4, n_local=128, block_size=32, topk=4, repr_topk=4, exc_block_size=32, chunk_size=512),
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
        check_range("max_new_tokens", self.max_new_tokens, 0, MAX_NEW_TOKENS)
        if self.seed is not None:
            check_range("seed", self.seed, 0, MAX_SEED)
        if not (isinstance(self.temperature, (int, float)) and 0.0 <= self.temperature <= MAX_TEMPERATURE):
            raise ConfigError(f"temperature must be from 0 to {MAX_TEMPERATURE:g}, got {self.temperature!r}")
        if not (isinstance(self.top_p, (int, float)) and 0.0 < self.top_p <= 1.0):
            raise ConfigError(f"top_p must be in (0, 1]: above 0 and at most 1, got {self.top_p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
