"""Stream a document through the model into its context memory, then generate.

The function list reads as the algorithm: :meth:`Runner.feed` cuts a token iterator into prefill chunks and
runs :meth:`Runner.prefill` on each (only the last position's logits are computed), :meth:`Runner.read_question`
reads a prompt so that it retrieves on its own (and, with ``question_topk``, ranks the memory blocks by the
question and keeps the best for the answer), :meth:`Runner.generate` reads a prompt that way, then repeats
:meth:`Runner.decode_one_token` and yields text as it is produced.

Only the current chunk of token ids is ever held: a document is never materialised twice. Apart from the
block store, memory is bounded by the configuration (window buffers, one chunk of activations).
"""

from __future__ import annotations

import contextlib
import logging
import resource
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from transformers import DynamicCache

from infllm_kernels.backend import BackendError, select_backend

from .config import ATTENTION_MODES, GenerationConfig, MemoryConfig
from .errors import DeviceError, UsageError
from .memory.cache import ATTENTION_NAME, ContextMemory, attention_implementation
from .memory.rope import RotaryTable, find_rotary_embedding
from .models import LoadedModel
from .sampling import make_generator, sample_next

log = logging.getLogger("infllm.runner")


@dataclass
class RunStats:
    """Counters accumulated over a runner's life (``dataclasses.asdict`` gives a dict)."""

    tokens_read: int = 0
    blocks: int = 0
    prefill_seconds: float = 0.0
    generate_seconds: float = 0.0
    generated_tokens: int = 0
    peak_memory_bytes: int = 0



def peak_memory_bytes(device: torch.device) -> int:
    """Peak allocated device memory on CUDA; peak resident set size of the process on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def resolve_backend(backend: str, device: torch.device) -> Any:
    """The attention kernels for ``backend`` on ``device`` (the choice is logged)."""
    try:
        return select_backend(backend, device)
    except BackendError as exc:
        raise DeviceError(str(exc)) from None


def build_memory(loaded: LoadedModel, config: MemoryConfig, attention: str, backend: str | Any) -> ContextMemory:
    """An empty :class:`ContextMemory` shaped for ``loaded.model``; ``backend`` is a name or resolved kernels."""
    ops = resolve_backend(backend, loaded.device) if isinstance(backend, str) else backend
    mc = loaded.model.config
    head_dim = getattr(mc, "head_dim", None) or mc.hidden_size // mc.num_attention_heads
    n_kv = getattr(mc, "num_key_value_heads", None) or mc.num_attention_heads
    rope = RotaryTable(find_rotary_embedding(loaded.model), config.max_window + 1, loaded.device)
    return ContextMemory(
        config, mc.num_hidden_layers, n_kv, head_dim, rope, ops, loaded.device, loaded.dtype,
        keep_blocks=(attention == "infllm"),
    )


class Runner:
    """One document stream through one model.

    Parameters
    ----------
    loaded : model and tokenizer
    memory : memory knobs (``chunk_size`` is also the prefill chunk of ``dense``)
    attention : ``infllm`` (context memory), ``streaming`` (initial tokens + local window, no retrieval)
        or ``dense`` (the model's own full attention, for comparison)
    backend : ``auto``, ``torch`` or ``triton`` for the memory ops
    """

    def __init__(self, loaded: LoadedModel, memory: MemoryConfig, attention: str = "infllm", backend: str = "auto") -> None:
        if attention not in ATTENTION_MODES:
            raise UsageError(f"unknown attention {attention!r}; choose one of: {', '.join(ATTENTION_MODES)}")
        self.loaded = loaded
        self.model = loaded.model
        self.config = memory
        self.attention = attention
        self.backend = backend
        self._ops: Any = None  # resolved (and logged) once, on the first reset
        self.finish_reason: str | None = None  # of the last generate(): "stop" or "length"
        self.stats = RunStats()
        self.reset()

    # -- state -----------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget everything read so far."""
        if self.attention == "dense":
            self.cache: ContextMemory | DynamicCache = DynamicCache(config=self.model.config)
        else:
            if self._ops is None:
                self._ops = resolve_backend(self.backend, self.loaded.device)
            self.cache = build_memory(self.loaded, self.config, self.attention, self._ops)
        self.tokens_seen = 0
        self.last_logits: torch.Tensor | None = None

    def snapshot(self) -> dict[str, Any]:
        """Cheap marker of the current state; :meth:`restore` returns to it (e.g. before each question)."""
        if isinstance(self.cache, ContextMemory):
            cache_state: Any = self.cache.snapshot()
        else:
            cache_state = self.tokens_seen
        return {"cache": cache_state, "tokens_seen": self.tokens_seen, "last_logits": self.last_logits}

    def restore(self, snapshot: dict[str, Any]) -> None:
        if isinstance(self.cache, ContextMemory):
            self.cache.restore(snapshot["cache"])
        elif self.tokens_seen > snapshot["cache"]:
            # transformers >= 5.20: crop(-n) removes the last n tokens
            self.cache.crop(snapshot["cache"] - self.tokens_seen)
        self.tokens_seen = snapshot["tokens_seen"]
        self.last_logits = snapshot["last_logits"]

    def reserve(self, tokens: int) -> None:
        """Size the block store once for a stream of ``tokens`` tokens in all (a document of known length):
        no growth, no copies while reading it."""
        if isinstance(self.cache, ContextMemory):
            cfg = self.config
            blocks = -(-max(0, tokens - cfg.n_init - cfg.n_local) // cfg.block_size)
            for m in self.cache.memories:
                if m.keep_blocks:
                    m.store.reserve(blocks)

    @property
    def blocks(self) -> int:
        return self.cache.n_blocks if isinstance(self.cache, ContextMemory) else 0

    # -- the algorithm ---------------------------------------------------------------------------------

    @torch.inference_mode()
    def forward(self, ids: Sequence[int], logits_to_keep: int = 1) -> torch.Tensor:
        """Run ``ids`` through the model after everything seen so far; logits [logits_to_keep or n, V]."""
        input_ids = torch.tensor([list(ids)], dtype=torch.long, device=self.loaded.device)
        n = input_ids.shape[1]
        if self.attention == "dense":
            positions = torch.arange(self.tokens_seen, self.tokens_seen + n, device=input_ids.device)[None]
            out = self.model(input_ids=input_ids, position_ids=positions, past_key_values=self.cache,
                             use_cache=True, logits_to_keep=logits_to_keep)
        else:
            # every position 0: the memory applies rotary positions itself, relative to its window
            positions = torch.zeros_like(input_ids)
            with attention_implementation(self.model, ATTENTION_NAME):
                out = self.model(input_ids=input_ids, position_ids=positions, past_key_values=self.cache,
                                 use_cache=True, logits_to_keep=logits_to_keep, infllm_memory=self.cache)
        self.tokens_seen += n
        logits = out.logits[0]
        self.last_logits = logits[-1]
        return logits

    def chunks(self, tokens: Iterable[int]) -> Iterator[list[int]]:
        """Cut ``tokens`` into prefill chunks whose boundaries fall on multiples of ``chunk_size`` in the stream."""
        size = self.config.chunk_size
        chunk: list[int] = []
        origin = self.cache.chunk_origin if isinstance(self.cache, ContextMemory) else 0
        want = size - (self.tokens_seen - origin) % size
        for tok in tokens:
            chunk.append(int(tok))
            if len(chunk) == want:
                yield chunk
                chunk, want = [], size
        if chunk:
            yield chunk

    def prefill(self, ids: Sequence[int]) -> None:
        """Feed one chunk; only the last position's logits are computed."""
        self.forward(ids, logits_to_keep=1)

    def feed(self, tokens: Iterable[int], on_progress: Callable[[int], None] | None = None,
             after_chunk: Callable[[], None] | None = None) -> int:
        """Stream ``tokens`` into the memory chunk by chunk; returns how many were fed. ``after_chunk`` is
        called after every prefill chunk (e.g. to take checkpoints of the memory)."""
        fed = 0
        start = time.perf_counter()
        for chunk in self.chunks(tokens):
            self.prefill(chunk)
            fed += len(chunk)
            if after_chunk is not None:
                after_chunk()
            if on_progress is not None:
                on_progress(fed)
        self.stats.tokens_read += fed
        self.stats.prefill_seconds += time.perf_counter() - start
        self._update_stats()
        return fed

    def read_question(self, prompt_tokens: Sequence[int], pinned_blocks: Sequence[int] | None = None) -> None:
        """Feed a question (or any prompt the answer follows).

        With the context memory, the prompt starts a query chunk of its own, and when ``question_topk``,
        ``question_shared`` or ``question_exact`` is above 0 it is read twice: first to rank the memory blocks by its queries (the
        state is then restored), then again with the best blocks pinned, so that the prompt's tokens and
        every answer token read them beside their own retrieval. ``pinned_blocks`` pins those blocks instead
        of ranking (an oracle). The pins last until the next :meth:`restore` / :meth:`reset`.
        """
        cache = self.cache
        if isinstance(cache, ContextMemory) and prompt_tokens:
            cache.align_chunks()
            if pinned_blocks is not None:
                cache.pin_blocks(list(pinned_blocks))
            elif cache.config.question_pins and cache.n_blocks > 0:
                before = self.snapshot()
                with cache.ranking_question():
                    for chunk in self.chunks(prompt_tokens):
                        self.forward(chunk, logits_to_keep=1)
                self.restore(before)
                cache.pin_question_blocks()
        self.feed(prompt_tokens)

    def decode_one_token(self, token: int) -> torch.Tensor:
        """Feed one generated token; logits [V] for the next."""
        return self.forward([token], logits_to_keep=1)[-1]

    def generate(self, prompt_tokens: Sequence[int], gen: GenerationConfig, ledger: Any = None) -> Iterator[str]:
        """Feed ``prompt_tokens`` then yield the generated text piece by piece.

        Stops at an end-of-sequence token (tokenizer/model/``gen.stop_token_ids``) or after
        ``gen.max_new_tokens`` tokens; :attr:`finish_reason` then says which (``"stop"`` or ``"length"``;
        None while generating, or when the consumer stopped early). With a ``ledger`` (from
        ``runner.cache.new_ledger()``; context memory only), the attention the answer's tokens give the window
        and the retrieved blocks is added to it (see :mod:`infllm_cli.memory.ledger`).
        """
        self.finish_reason: str | None = None
        if prompt_tokens:
            self.read_question(prompt_tokens)
        if self.last_logits is None:
            raise UsageError("nothing to continue from: feed a document or a prompt first")
        stop = self.loaded.eos_token_ids | set(gen.stop_token_ids)
        generator = make_generator(gen, self.loaded.device)
        decoder = TextDeltas(self.loaded.tokenizer)
        logits = self.last_logits
        start = time.perf_counter()
        citing = contextlib.ExitStack()
        if ledger is not None:
            if not isinstance(self.cache, ContextMemory):
                raise UsageError("citations need the context memory (attention infllm or streaming), not dense attention")
            citing.enter_context(self.cache.citing(ledger))
        try:
            for _ in range(gen.max_new_tokens):
                token = sample_next(logits, gen, generator)
                if token in stop:
                    self.finish_reason = "stop"
                    break
                self.stats.generated_tokens += 1
                delta = decoder.push(token)
                if delta:
                    yield delta
                logits = self.decode_one_token(token)
            else:
                self.finish_reason = "length"
            tail = decoder.flush()
            if tail:
                yield tail
        finally:
            citing.close()
            self.stats.generate_seconds += time.perf_counter() - start
            self._update_stats()

    def _update_stats(self) -> None:
        self.stats.blocks = self.blocks
        self.stats.peak_memory_bytes = peak_memory_bytes(self.loaded.device)


class TextDeltas:
    """Incremental detokenizer: decodes a sliding window of ids so each step costs O(1), and holds back
    text that ends in an incomplete UTF-8 sequence."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token: int) -> str:
        self.ids.append(token)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        text = self._decode(self.ids[self.prefix_offset :])
        if len(text) > len(prefix) and not text.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return text[len(prefix) :]
        return ""

    def flush(self) -> str:
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        text = self._decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return text[len(prefix) :]
