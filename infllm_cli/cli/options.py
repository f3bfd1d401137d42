"""The options shared by the commands, defined once.

A command declares only its own arguments and takes ``opts: Options``; the :func:`shared` decorator adds
the shared options of the named groups to its signature (Typer reads the signature) and packs their
values into one :class:`Options` object.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import typing
from dataclasses import dataclass, fields
from typing import Annotated, Any, Callable, Optional

import typer

from ..errors import UsageError
from ..config import (
    ATTENTION_MODES, BLOCK_SCORES, MAX_NEW_TOKENS, MAX_SEED, MAX_TEMPERATURE, MEMORY_LIMITS, PRESETS, QUERY_MODES, SELECTIONS,
    GenerationConfig, MemoryConfig, preset, with_selection,
)

DEVICE_HELP = "auto (cuda when available, else cpu), cpu, cuda or cuda:N."
DTYPES = ("auto", "float32", "bfloat16", "float16")
BACKENDS = ("auto", "torch", "triton")
STYLES = ("brief", "detailed", "sections")
#: Answer length when --max-new-tokens is not given; a brief summary gets the smaller BRIEF_MAX_NEW_TOKENS.
DEFAULT_MAX_NEW_TOKENS = 512
BRIEF_MAX_NEW_TOKENS = 160

P_MODEL = "Model"
P_MEMORY = "Context memory"
P_GEN = "Generation"
P_IO = "Input and output"
P_CACHE = "Memory cache"


def _choice(name: str, allowed: tuple[str, ...]) -> Callable[[Optional[str]], Optional[str]]:
    def check(value: Optional[str]) -> Optional[str]:
        if value is not None and value not in allowed:
            raise typer.BadParameter(f"{value!r} is not one of: {', '.join(allowed)}")
        return value

    return check


@dataclass
class Options:
    """Values of the shared options (a field is None when its option was not given)."""

    # model
    model: Optional[str] = None
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    allow_pickle: bool = False
    backend: str = "auto"
    threads: Optional[str] = None  # parsed by infllm_cli.threads (a usage error unless a positive integer)
    # memory
    attention: str = "infllm"
    preset: str = "auto"
    n_init: Optional[int] = None
    n_local: Optional[int] = None
    block_size: Optional[int] = None
    topk: Optional[int] = None
    repr_topk: Optional[int] = None
    exc_block_size: Optional[int] = None
    chunk_size: Optional[int] = None
    max_cached_block: Optional[int] = None
    offload: Optional[bool] = None
    disk_store: bool = False
    selection: str = "default"
    per_kv_head: Optional[bool] = None
    block_score: Optional[str] = None
    query_score: Optional[str] = None
    neighbors: Optional[int] = None
    question_topk: Optional[int] = None
    question_neighbors: Optional[int] = None
    question_neighbor_rank: Optional[int] = None
    question_shared: Optional[int] = None
    rescore: Optional[int] = None
    question_exact: Optional[int] = None
    question_rescore: Optional[int] = None
    # generation
    max_new_tokens: Optional[int] = None  # None: DEFAULT_MAX_NEW_TOKENS, or the command's own default
    temperature: float = 0.0
    top_p: float = 1.0
    seed: Optional[int] = None
    # input/output
    max_tokens: Optional[int] = None
    memory_budget: Optional[str] = None
    skip_memory_check: bool = False
    progress_interval: Optional[float] = None
    max_bytes: Optional[int] = None
    password: Optional[str] = None
    password_origin: str = "--password"  # or "$INFLLM_PDF_PASSWORD": named when the password is wrong
    json: bool = False
    cite: bool = False
    max_sources: int = 5
    quiet: bool = False
    verbose: bool = False
    debug: bool = False
    # memory cache
    cache: bool = True
    refresh: bool = False
    max_cache_size: Optional[str] = None

    def memory_config(self, model_config: Any = None) -> tuple[MemoryConfig, str]:
        """The preset (``auto``: chosen from the model's trained context length) with the knobs applied.

        Raises :class:`ConfigError` (exit 2) for a configuration that cannot work.
        """
        name = self.preset
        if name == "auto":
            name = auto_preset(model_config)
        base = preset(name)
        chunk = self.chunk_size
        if chunk is None and self.exc_block_size is not None and self.exc_block_size > 0 and base.chunk_size % self.exc_block_size:
            # only --exc-block-size was given: round the preset's prefill chunk to a multiple of it
            chunk = max(1, base.chunk_size // self.exc_block_size) * self.exc_block_size
        config = with_selection(base, self.selection).replace(
            per_kv_head=self.per_kv_head,
            block_score=self.block_score,
            query_score=self.query_score,
            neighbors=self.neighbors,
            question_topk=self.question_topk,
            question_neighbors=self.question_neighbors,
            question_neighbor_rank=self.question_neighbor_rank,
            question_shared=self.question_shared,
            rescore=self.rescore,
            question_exact=self.question_exact,
            question_rescore=self.question_rescore,
            n_init=self.n_init,
            n_local=self.n_local,
            block_size=self.block_size,
            topk=self.topk,
            repr_topk=self.repr_topk,
            exc_block_size=self.exc_block_size,
            chunk_size=chunk,
            max_cached_block=self.max_cached_block,
            offload=self.offload,
            disk_store=self.disk_store or None,
        )
        return config, name

    def memory_cache(self) -> Any:
        """The :class:`~infllm_cli.persist.MemoryCache` to read through, or None with ``--no-cache``."""
        if not self.cache:
            if self.refresh:
                raise UsageError("--refresh rebuilds the cached memory: it cannot be combined with --no-cache")
            return None
        from ..persist import MemoryCache

        return MemoryCache(max_bytes=_size(self.max_cache_size))

    def load_policy(self) -> Any:
        """What loading the model may do beyond reading tensors (:class:`~infllm_cli.model_files.LoadPolicy`)."""
        from ..model_files import LoadPolicy

        return LoadPolicy(trust_remote_code=self.trust_remote_code, allow_pickle=self.allow_pickle)

    def generation_config(self, default_max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> GenerationConfig:
        """The decoding settings; ``default_max_new_tokens`` when --max-new-tokens was not given."""
        limit = default_max_new_tokens if self.max_new_tokens is None else self.max_new_tokens
        return GenerationConfig(max_new_tokens=limit, temperature=self.temperature, top_p=self.top_p, seed=self.seed)


def _size(text: Optional[str]) -> Optional[int]:
    if text is None:
        return None
    from ..persist.store import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise UsageError(f"--max-cache-size: {exc}") from None


def auto_preset(model_config: Any) -> str:
    """The largest preset whose whole window (initial tokens + local window) fits in the context length
    the model was trained on (``max_position_embeddings``); ``paper`` when that is unknown."""
    n_ctx = getattr(getattr(model_config, "text_config", None) or model_config, "max_position_embeddings", None)
    if not isinstance(n_ctx, int) or n_ctx <= 0:
        return "paper"
    for name in ("paper", "small", "tiny", "micro"):
        cfg = PRESETS[name]
        if cfg.max_window <= n_ctx:
            return name
    return "micro"


def _finite(flag: str, value: float) -> float:
    if value != value or value in (float("inf"), float("-inf")):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


def _top_p(value: float) -> float:
    if not (0.0 < value <= 1.0):  # also rejects nan
        raise typer.BadParameter(f"{value} is not in the range 0<x<=1")
    return value


# -- option definitions ------------------------------------------------------------------------------

_GROUPS: dict[str, list[tuple[str, Any, Any]]] = {
    "model": [
        ("model", Optional[str], typer.Option("--model", "-m", metavar="MODEL", help="Hugging Face model id (from the local cache) or model directory. Default: $INFLLM_MODEL, then `model` in ~/.config/infllm/config.toml, then Qwen/Qwen2.5-1.5B-Instruct.", rich_help_panel=P_MODEL, show_default=False)),
        ("device", str, typer.Option("--device", metavar="DEVICE", help=DEVICE_HELP, rich_help_panel=P_MODEL)),
        ("dtype", str, typer.Option("--dtype", metavar="DTYPE", help="auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16 or float16.", callback=_choice("dtype", DTYPES), rich_help_panel=P_MODEL)),
        ("threads", Optional[str], typer.Option("--threads", metavar="N", help="CPU threads for the model's computation. Default: $INFLLM_THREADS, else the physical cores not kept busy by other processes (logged with -v).", rich_help_panel=P_MODEL, show_default=False)),
        ("trust_remote_code", bool, typer.Option("--trust-remote-code", help="Run the Python code a model folder ships (auto_map) when its config or tokenizer needs it. Unsafe: that code can do anything your user can. Off: such models are refused.", rich_help_panel=P_MODEL)),
        ("allow_pickle", bool, typer.Option("--allow-pickle", help="Load pickle weights (pytorch_model.bin) when a model has no safetensors. Unsafe: a pickle file can run code when read. Off: such models are refused.", rich_help_panel=P_MODEL)),
    ],
    "backend": [
        ("backend", str, typer.Option("--backend", metavar="NAME", help="Memory-attention kernels: auto (triton on CUDA, torch otherwise), torch or triton.", callback=_choice("backend", BACKENDS), rich_help_panel=P_MODEL)),
    ],
    "memory": [
        ("attention", str, typer.Option("--attention", metavar="MODE", help="infllm (context memory), streaming (initial tokens + local window only) or dense (full attention: only for inputs that fit the model).", callback=_choice("attention", ATTENTION_MODES), rich_help_panel=P_MEMORY)),
        ("preset", str, typer.Option("--preset", metavar="NAME", help=f"Memory preset: auto (largest that fits the model's trained context), {', '.join(PRESETS)}. The knobs below override it.", callback=_choice("preset", ("auto", *PRESETS)), rich_help_panel=P_MEMORY)),
        ("n_init", Optional[int], typer.Option("--n-init", metavar="N", help="Initial tokens kept for good (attention sinks).", min=MEMORY_LIMITS["n_init"][0], max=MEMORY_LIMITS["n_init"][1], rich_help_panel=P_MEMORY, show_default=False)),
        ("n_local", Optional[int], typer.Option("--n-local", metavar="N", help="Local window, in tokens.", min=MEMORY_LIMITS["n_local"][0], max=MEMORY_LIMITS["n_local"][1], rich_help_panel=P_MEMORY, show_default=False)),
        ("block_size", Optional[int], typer.Option("--block-size", metavar="N", help="Tokens per memory block.", min=MEMORY_LIMITS["block_size"][0], max=MEMORY_LIMITS["block_size"][1], rich_help_panel=P_MEMORY, show_default=False)),
        ("topk", Optional[int], typer.Option("--topk", metavar="N", help="Memory blocks retrieved per query chunk.", min=MEMORY_LIMITS["topk"][0], max=MEMORY_LIMITS["topk"][1], rich_help_panel=P_MEMORY, show_default=False)),
        ("repr_topk", Optional[int], typer.Option("--repr-topk", metavar="N", help="Representative keys per block.", min=MEMORY_LIMITS["repr_topk"][0], max=MEMORY_LIMITS["repr_topk"][1], rich_help_panel=P_MEMORY, show_default=False)),
        ("exc_block_size", Optional[int], typer.Option("--exc-block-size", metavar="N", help="Queries sharing one block retrieval.", min=MEMORY_LIMITS["exc_block_size"][0], max=MEMORY_LIMITS["exc_block_size"][1], rich_help_panel=P_MEMORY, show_default=False)),
        ("chunk_size", Optional[int], typer.Option("--chunk-size", metavar="N", help="Prefill chunk in tokens (a multiple of --exc-block-size).", min=MEMORY_LIMITS["chunk_size"][0], max=MEMORY_LIMITS["chunk_size"][1], rich_help_panel=P_MEMORY, show_default=False)),
        ("max_cached_block", Optional[int], typer.Option("--max-cached-block", metavar="N", help="Blocks kept on the device when the store is offloaded.", min=MEMORY_LIMITS["max_cached_block"][0], max=MEMORY_LIMITS["max_cached_block"][1], rich_help_panel=P_MEMORY, show_default=False)),
        ("offload", Optional[bool], typer.Option("--offload/--no-offload", help="Keep the block store in host memory.", rich_help_panel=P_MEMORY, show_default=False)),
        ("disk_store", bool, typer.Option("--disk-store", help="Keep the memory blocks' keys and values in files on disk (documents larger than RAM; $INFLLM_DISK_STORE_DIR, else the cache directory). Implies --offload.", rich_help_panel=P_MEMORY)),
        ("selection", str, typer.Option("--selection", metavar="NAME", help=f"Block selection: {', '.join(SELECTIONS)} (paper: Xiao et al.'s; default: the best measured, see docs/retrieval.md). The selection knobs below override it.", callback=_choice("selection", tuple(SELECTIONS)), rich_help_panel=P_MEMORY)),
        ("per_kv_head", Optional[bool], typer.Option("--per-kv-head/--shared-ranking", help="Each KV head picks its own blocks, or one ranking summed over all heads.", rich_help_panel=P_MEMORY, show_default=False)),
        ("block_score", Optional[str], typer.Option("--block-score", metavar="MODE", help="Blocks scored by the min/max bounds of all their keys (bounds), their best representative key (repr_max) or the sum of their representative keys (repr_sum, the paper).", callback=_choice("block_score", BLOCK_SCORES), rich_help_panel=P_MEMORY, show_default=False)),
        ("query_score", Optional[str], typer.Option("--query-score", metavar="MODE", help="Blocks ranked by the chunk's best query (max) or its mean query (mean).", callback=_choice("query_score", QUERY_MODES), rich_help_panel=P_MEMORY, show_default=False)),
        ("neighbors", Optional[int], typer.Option("--neighbors", metavar="N", help="Also read N blocks on each side of every retrieved block.", min=MEMORY_LIMITS["neighbors"][0], max=MEMORY_LIMITS["neighbors"][1], rich_help_panel=P_MEMORY, show_default=False)),
        ("question_topk", Optional[int], typer.Option("--question-topk", metavar="N", help="Blocks per KV head ranked by the whole question and kept for the answer (0: off).", min=MEMORY_LIMITS["question_topk"][0], max=MEMORY_LIMITS["question_topk"][1], rich_help_panel=P_MEMORY, show_default=False)),
        ("question_neighbors", Optional[int], typer.Option("--question-neighbors", metavar="N", help="Also keep N blocks on each side of every block the question picked (0: off).", min=MEMORY_LIMITS["question_neighbors"][0], max=MEMORY_LIMITS["question_neighbors"][1], rich_help_panel=P_MEMORY, show_default=False)),
        ("question_neighbor_rank", Optional[int], typer.Option("--question-neighbor-rank", metavar="N", help="Keep such a neighbour only if it is among the N blocks the question favours over all layers and heads (default 64; 0: every neighbour).", min=MEMORY_LIMITS["question_neighbor_rank"][0], max=MEMORY_LIMITS["question_neighbor_rank"][1], rich_help_panel=P_MEMORY, show_default=False)),
        ("question_shared", Optional[int], typer.Option("--question-shared", metavar="N", help="Also keep, in every layer and KV head, the N blocks the question favours over all layers and heads (0: off).", min=MEMORY_LIMITS["question_shared"][0], max=MEMORY_LIMITS["question_shared"][1], rich_help_panel=P_MEMORY, show_default=False)),
        ("rescore", Optional[int], typer.Option("--rescore", metavar="M", help="Re-rank the M best blocks per KV head with every key they hold (0: off).", min=MEMORY_LIMITS["rescore"][0], max=MEMORY_LIMITS["rescore"][1], rich_help_panel=P_MEMORY, show_default=False)),
        ("question_exact", Optional[int], typer.Option("--question-exact", metavar="N", help="Also keep, in every layer and KV head, the N blocks the question's attention favours when weighed with every key (0: off).", min=MEMORY_LIMITS["question_exact"][0], max=MEMORY_LIMITS["question_exact"][1], rich_help_panel=P_MEMORY, show_default=False)),
        ("question_rescore", Optional[int], typer.Option("--question-rescore", metavar="M", help="Candidate blocks per KV head that --question-exact weighs with every key (default 256).", min=MEMORY_LIMITS["question_rescore"][0], max=MEMORY_LIMITS["question_rescore"][1], rich_help_panel=P_MEMORY, show_default=False)),
    ],
    "generation": [
        ("max_new_tokens", Optional[int], typer.Option("--max-new-tokens", metavar="N", help=f"Most tokens to generate per answer (default {DEFAULT_MAX_NEW_TOKENS}; {BRIEF_MAX_NEW_TOKENS} for summarize --style brief). An answer cut at this limit gets a warning on stderr and \"truncated\": true in --json.", min=0, max=MAX_NEW_TOKENS, rich_help_panel=P_GEN, show_default=False)),
        ("temperature", float, typer.Option("--temperature", metavar="T", help="0 = greedy decoding.", min=0.0, max=MAX_TEMPERATURE, callback=lambda v: _finite("--temperature", v), rich_help_panel=P_GEN)),
        ("top_p", float, typer.Option("--top-p", metavar="P", help="Nucleus sampling (with --temperature > 0): 0 < P <= 1.", callback=lambda v: _top_p(v), rich_help_panel=P_GEN)),
        ("seed", Optional[int], typer.Option("--seed", metavar="N", help="Random seed for sampling.", min=0, max=MAX_SEED, rich_help_panel=P_GEN, show_default=False)),
    ],
    "source": [
        ("max_bytes", Optional[int], typer.Option("--max-bytes", metavar="N", help="Largest input in bytes: the total of a directory's files (default 200 MiB), or a single file or stdin (default: no limit).", min=1, rich_help_panel=P_IO, show_default=False)),
        ("password", Optional[str], typer.Option("--password", metavar="PASSWORD", help="Password of an encrypted PDF.", rich_help_panel=P_IO, show_default=False, envvar="INFLLM_PDF_PASSWORD")),
    ],
    "limit": [
        ("max_tokens", Optional[int], typer.Option("--max-tokens", metavar="N", help="Refuse a source with more tokens than this (checked while reading, before any generation).", min=1, rich_help_panel=P_IO, show_default=False)),
        ("memory_budget", Optional[str], typer.Option("--memory-budget", metavar="SIZE", help="Memory the read may use, e.g. 8G or 512M (default: $INFLLM_MEMORY_BUDGET, else the memory available now). A read predicted to need more is refused before the model is loaded (exit 3).", rich_help_panel=P_IO, show_default=False)),
        ("skip_memory_check", bool, typer.Option("--skip-memory-check", help="Start even when the read is predicted not to fit in memory.", rich_help_panel=P_IO)),
    ],
    "cite": [
        ("cite", bool, typer.Option("--cite", help="After each answer, list the passages it attended to most (location, excerpt, share of attention); see docs/citations.md.", rich_help_panel=P_IO)),
        ("max_sources", int, typer.Option("--max-sources", metavar="N", help="Most sources listed with --cite.", min=1, max=100, rich_help_panel=P_IO)),
    ],
    "output": [
        ("json", bool, typer.Option("--json", help="Print JSON on stdout instead of text.", rich_help_panel=P_IO)),
        ("quiet", bool, typer.Option("--quiet", help="No progress, no status lines: only errors on stderr.", rich_help_panel=P_IO)),
        ("progress_interval", Optional[float], typer.Option("--progress-interval", metavar="SECONDS", help="When stderr is not a terminal, print a plain progress line this often (default: $INFLLM_PROGRESS_INTERVAL, else 10; 0: never).", min=0.0, rich_help_panel=P_IO, show_default=False)),
        ("verbose", bool, typer.Option("--verbose", "-v", help="More status lines on stderr.", rich_help_panel=P_IO)),
        ("debug", bool, typer.Option("--debug", help="Debug logging, and tracebacks for errors.", rich_help_panel=P_IO)),
    ],
}

_GROUPS["cache"] = [
    ("cache", bool, typer.Option("--cache/--no-cache", help="Reuse the memory saved by an earlier read of the same document with the same model and memory settings, and save it after a read (see `infllm cache`).", rich_help_panel=P_CACHE)),
    ("refresh", bool, typer.Option("--refresh", help="Read the document again and replace its saved memory.", rich_help_panel=P_CACHE)),
    ("max_cache_size", Optional[str], typer.Option("--max-cache-size", metavar="SIZE", help="Size budget of the memory cache (e.g. 2G, 500M); least recently used memories are removed beyond it. Default: $INFLLM_MAX_CACHE_SIZE, else 10% of the free disk space, at most 50 GiB.", rich_help_panel=P_CACHE, show_default=False)),
]

_DEFAULTS = {f.name: f.default for f in fields(Options)}


def _password_origin(password: str) -> str:
    """``$INFLLM_PDF_PASSWORD`` when the password came from the environment (no ``--password`` on the
    command line), else ``--password``."""
    given = any(arg == "--password" or arg.startswith("--password=") for arg in sys.argv[1:])
    if not given and os.environ.get("INFLLM_PDF_PASSWORD") == password:
        return "$INFLLM_PDF_PASSWORD"
    return "--password"


def shared(*groups: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add the options of ``groups`` to a command whose last parameter is ``opts: Options``."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        hints = typing.get_type_hints(func, include_extras=True)
        sig = inspect.signature(func)
        own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in sig.parameters.values() if p.name != "opts"]
        names: list[str] = []
        added: list[inspect.Parameter] = []
        for group in groups:
            for name, typ, option in _GROUPS[group]:
                names.append(name)
                added.append(
                    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=_DEFAULTS[name], annotation=Annotated[typ, option])
                )

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            values = {n: kwargs.pop(n) for n in names if n in kwargs}
            if values.get("password") is not None:
                values["password_origin"] = _password_origin(values["password"])
            return func(*args, opts=Options(**values), **kwargs)

        params = own + added
        wrapper.__signature__ = sig.replace(parameters=params, return_annotation=None)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        del wrapper.__wrapped__  # type: ignore[attr-defined]
        return wrapper

    return decorate
