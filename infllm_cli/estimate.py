"""Token counts and memory estimates made before any model is loaded (``infllm count``).

Token basis, best first:

1. **the model's own tokenizer** when ``--model`` is a local model directory, or a hub id whose
   tokenizer is already in the local Hugging Face cache (only the tokenizer files are read; exact);
2. **tiktoken** ``cl100k_base`` (then ``o200k_base``) when its BPE file is already in tiktoken's cache
   (``$TIKTOKEN_CACHE_DIR``, ``$DATA_GYM_CACHE_DIR`` or ``<tempdir>/data-gym-cache``). tiktoken downloads
   that file on first use; this module never lets it: it looks for the cached file itself and reads only
   that (an estimate: another model's tokenizer typically differs by 10-30%);
3. **characters / 4** (:data:`CHARS_PER_TOKEN`), the usual rule of thumb for English prose with a
   ~100K-token BPE vocabulary (a rough estimate: code, numbers and non-Latin scripts need more tokens).

Memory: the key/value cache holds, per token, ``2 (K and V) * layers * kv_heads * head_dim * bytes per
element``, read from the model's ``config.json``. With InfLLM every token read ends up either in the
bounded window (initial tokens + local window) or in a memory block, so the block store grows linearly
with the document; the window part is bounded by the configuration. ``streaming`` keeps only the window,
``dense`` keeps every token in the window. Model weights come on top (the size of the weight files of a
local directory is reported when known); activations of one prefill chunk also come on top.

Time: there is no honest nominal speed (it depends on the model size and the hardware by orders of
magnitude), so time is only estimated from a throughput the user measured (``--tokens-per-second``, e.g.
the prefill tokens/s printed by an earlier ``infllm ask``); otherwise it is reported as unknown.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .config import MemoryConfig

log = logging.getLogger("infllm.estimate")

CHARS_PER_TOKEN = 4

TIKTOKEN_ENCODINGS = ("cl100k_base", "o200k_base")

DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2, "float64": 8}


# -- token basis -------------------------------------------------------------------------------------


class CharEstimator:
    """``ceil(len(text) / 4)`` per piece: the documented rough estimate."""

    description = f"characters / {CHARS_PER_TOKEN}, rough estimate"
    exact = False

    def encode(self, text: str) -> list[int]:  # returns a dummy list of the right length
        return [0] * math.ceil(len(text) / CHARS_PER_TOKEN)


class TiktokenEncoder:
    exact = False

    def __init__(self, encoding: Any) -> None:
        self.encoding = encoding
        self.description = f"tiktoken {encoding.name}, estimate"

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)


def tiktoken_cache_dir() -> str | None:
    """tiktoken's cache directory (same rules as ``tiktoken.load.read_file_cached``); None if caching is off."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        cache = os.environ["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        cache = os.environ["DATA_GYM_CACHE_DIR"]
    else:
        cache = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    return cache or None


class _NotCached(Exception):
    pass


def _sha256_ok(data: bytes, expected: str | None) -> bool:
    return expected is None or hashlib.sha256(data).hexdigest() == expected


def _parse_tiktoken_bpe(data: bytes) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def cached_tiktoken(name: str) -> Any | None:
    """The tiktoken encoding ``name`` if its BPE file is already cached locally, else None. Never downloads.

    tiktoken's own constructor for the encoding supplies the URL, hash, split pattern and special tokens;
    its file loader is replaced, for this call only, by one that reads the cache and gives up otherwise.
    """
    try:
        import tiktoken
        from tiktoken_ext import openai_public
    except ImportError:
        return None
    cache = tiktoken_cache_dir()
    constructor = getattr(openai_public, name, None)
    if cache is None or constructor is None:
        return None

    def load_cached(blobpath: str, expected_hash: str | None = None) -> dict[bytes, int]:
        path = os.path.join(cache, hashlib.sha1(blobpath.encode()).hexdigest())
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError:
            raise _NotCached(path) from None
        if not _sha256_ok(data, expected_hash):
            log.debug("tiktoken cache file %s does not match its expected hash", path)
            raise _NotCached(path)
        return _parse_tiktoken_bpe(data)

    original = openai_public.load_tiktoken_bpe
    openai_public.load_tiktoken_bpe = load_cached
    try:
        spec = constructor()
    except _NotCached as exc:
        log.debug("tiktoken %s is not cached (%s)", name, exc)
        return None
    except Exception as exc:  # a malformed cache file
        log.debug("tiktoken %s unusable: %s: %s", name, type(exc).__name__, exc)
        return None
    finally:
        openai_public.load_tiktoken_bpe = original
    spec.pop("explicit_n_vocab", None)
    return tiktoken.Encoding(**spec)


def choose_encoder(model: str | None, policy: Any = None) -> tuple[Any, str | None]:
    """The best available token basis for ``count`` and the note on why better ones were not used.

    Returns ``(encoder, tokenizer_or_None)``; the encoder has ``encode(text)``, ``description``, ``exact``.
    A model whose tokenizer would run code from its folder is not an "unavailable" tokenizer: its
    :class:`~infllm_cli.errors.UnsafeModelError` is raised.
    """
    from .errors import ModelError, UnsafeModelError
    from .tokens import HFEncoder, load_tokenizer

    if model:
        try:
            tok = load_tokenizer(model, policy=policy)
        except UnsafeModelError:
            raise
        except ModelError as exc:
            log.info("model tokenizer not available offline (%s); estimating instead", exc)
        else:
            return HFEncoder(tok, f"model tokenizer: {model}"), tok
    for name in TIKTOKEN_ENCODINGS:
        encoding = cached_tiktoken(name)
        if encoding is not None:
            return TiktokenEncoder(encoding), None
    log.info("no tiktoken BPE file in the local cache (%s); using characters / %d", tiktoken_cache_dir(), CHARS_PER_TOKEN)
    return CharEstimator(), None


def offline_model_config(model: str | None, policy: Any = None) -> tuple[Any | None, str]:
    """The model's config without loading weights or touching the network; ``(None, reason)`` if not
    available (a hub id that is not in the local cache, an invalid directory). A model that would run
    code from its folder raises :class:`~infllm_cli.errors.UnsafeModelError`."""
    from .errors import ModelError, UnsafeModelError
    from .model_files import SAFE
    from .models import read_model_config

    if not model:
        return None, "no model given"
    path = Path(model).expanduser()
    try:
        return read_model_config(model, policy or SAFE), f"config of {path}" if path.exists() else f"cached config of {model}"
    except UnsafeModelError:
        raise
    except ModelError as exc:
        if path.exists():
            log.warning("%s", exc)
            return None, str(exc)
        log.debug("no local config for %s: %s", model, exc)
        return None, f"the config of {model} is not available offline; pass --model with a local model directory"


# -- memory ------------------------------------------------------------------------------------------


@dataclass
class ModelShape:
    layers: int
    kv_heads: int
    head_dim: int
    dtype: str
    dtype_bytes: int
    max_position_embeddings: int | None
    weights_bytes: int | None  # size of the weight files on disk
    heads: int = 0
    hidden_size: int = 0
    intermediate_size: int = 0
    vocab_size: int = 0
    parameters: int | None = None  # from the safetensors headers, when readable

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes

    @property
    def loaded_weights_bytes(self) -> int | None:
        """The weights in memory at ``dtype`` (parameter count x bytes), else their size on disk."""
        if self.parameters:
            return self.parameters * self.dtype_bytes
        return self.weights_bytes


def model_shape(config: Any, dtype: str = "auto", device: str = "auto", path: Path | None = None) -> ModelShape:
    """Shape facts from a transformers config. ``dtype='auto'`` follows the loader: bfloat16 on CUDA
    (as the engine loads it), float32 on CPU."""
    text_config = getattr(config, "text_config", None) or config
    layers = int(text_config.num_hidden_layers)
    heads = int(text_config.num_attention_heads)
    kv_heads = int(getattr(text_config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text_config, "head_dim", None) or text_config.hidden_size // heads)
    if dtype == "auto":
        on_cuda = device.startswith("cuda") or (device == "auto" and _cuda_available())
        dtype = "bfloat16" if on_cuda else "float32"
    weights = parameters = None
    if path is not None and path.is_dir():
        files = [*path.glob("*.safetensors")] or [*path.glob("*.bin")]
        weights = sum(f.stat().st_size for f in files) or None
        parameters = safetensors_parameters(files)
    return ModelShape(
        layers=layers,
        kv_heads=kv_heads,
        head_dim=head_dim,
        dtype=dtype,
        dtype_bytes=DTYPE_BYTES.get(dtype, 2),
        max_position_embeddings=getattr(text_config, "max_position_embeddings", None),
        weights_bytes=weights,
        heads=heads,
        hidden_size=int(getattr(text_config, "hidden_size", 0) or heads * head_dim),
        intermediate_size=int(getattr(text_config, "intermediate_size", 0) or 0),
        vocab_size=int(getattr(text_config, "vocab_size", 0) or 0),
        parameters=parameters,
    )


def safetensors_parameters(files: list[Path]) -> int | None:
    """Total parameter count from the JSON headers of ``*.safetensors`` files (a few KB read each); None
    when any file is not a readable safetensors file (other formats, damaged files)."""
    import json
    import struct

    total = 0
    for f in files:
        if f.suffix != ".safetensors":
            return None
        try:
            with open(f, "rb") as fh:
                (size,) = struct.unpack("<Q", fh.read(8))
                if not 0 < size <= 100 * 2**20:
                    return None
                header = json.loads(fh.read(size))
            for name, info in header.items():
                if name != "__metadata__":
                    total += math.prod(int(x) for x in info["shape"])
        except (OSError, ValueError, KeyError, TypeError, struct.error):
            return None
    return total or None


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # pragma: no cover
        return False


@dataclass
class MemoryEstimate:
    tokens: int
    attention: str
    blocks: int
    window_tokens: int
    kv_bytes_per_token: int | None
    window_bytes: int | None
    block_store_bytes: int | None
    total_kv_bytes: int | None
    offload: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate_memory(tokens: int, memory: MemoryConfig, attention: str, shape: ModelShape | None) -> MemoryEstimate:
    """Blocks and key/value bytes after reading ``tokens`` tokens (the question adds a few more)."""
    if attention == "dense":
        window, in_blocks = tokens, 0
    else:
        window = min(tokens, memory.max_window)
        in_blocks = 0 if attention == "streaming" else max(0, tokens - memory.n_init - memory.n_local)
    blocks = math.ceil(in_blocks / memory.block_size) if in_blocks else 0
    per = shape.kv_bytes_per_token if shape else None
    if per is None:
        return MemoryEstimate(tokens, attention, blocks, window, None, None, None, None, memory.offload)
    window_bytes = window * per
    store = blocks * block_bytes(memory, shape)
    return MemoryEstimate(tokens, attention, blocks, window, per, window_bytes, store, window_bytes + store, memory.offload)


def block_bytes(memory: MemoryConfig, shape: ModelShape) -> int:
    """Bytes of one memory block over all layers: its keys and values, its representative keys, their sum,
    and the per-channel key bounds (two keys' worth), as :class:`~infllm_cli.memory.block_store.BlockStore`
    keeps them."""
    per_key = shape.layers * shape.kv_heads * shape.head_dim * shape.dtype_bytes
    return per_key * (2 * memory.block_size + memory.repr_topk + 1 + 2)


def human_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
