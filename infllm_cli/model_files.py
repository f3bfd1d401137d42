"""Find a model's folder and read its configuration without running anything from it.

A model is a local directory, or a hub id resolved to its snapshot folder in the local Hugging Face cache
by looking at the cache's files only (never the network). Its ``config.json`` is read here as plain JSON
and checked (an object, with a ``model_type``), and the folder is refused, before transformers sees it,
when loading it would import Python code shipped with the model (``auto_map`` naming a class transformers
does not have), unless the caller's :class:`LoadPolicy` trusts remote code.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .errors import ModelError, UnsafeModelError, UsageError

log = logging.getLogger("infllm.models")

SUPPORTED_FAMILIES: tuple[str, ...] = ("llama", "mistral", "qwen2", "qwen3", "phi3")

#: Largest JSON file read from a model folder (config.json, tokenizer_config.json, index files).
MAX_JSON_BYTES = 64 * 1024 * 1024

TRUST_HINT = "infllm runs no code from model folders; pass --trust-remote-code only if you trust this folder's Python files"


@dataclass(frozen=True)
class LoadPolicy:
    """What loading a model may do beyond reading tensors. Both default to the safe choice."""

    trust_remote_code: bool = False  # import and run Python files shipped with the model (auto_map)
    allow_pickle: bool = False  # load pickle checkpoints (pytorch_model.bin), which can run code when read

    def __post_init__(self) -> None:
        if not isinstance(self.trust_remote_code, bool) or not isinstance(self.allow_pickle, bool):
            raise TypeError("LoadPolicy fields are booleans")


SAFE = LoadPolicy()


def hf_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.endswith(("/", os.sep)) or name.count("/") > 1 or os.sep in name.replace("/", "")


def locate_model(name: str) -> Path:
    """The folder of model ``name``: an existing directory, or the cached snapshot of a hub id.

    Looks only at the local file system (the Hugging Face cache for hub ids); nothing is downloaded.
    """
    if not isinstance(name, str) or not name.strip():
        raise UsageError("the model name is empty; pass a model directory or a cached hub id with --model")
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"{path}: not a model directory (a file; pass the directory that holds config.json)")
        return path
    if _looks_like_path(name):
        raise ModelError(f"{name}: no such model directory")
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ModelError(f"model {name!r} is neither an existing directory nor a valid Hugging Face model id") from None
    cached = try_to_load_from_cache(name, "config.json")
    if not isinstance(cached, str):
        raise ModelError(
            f"model {name!r} is neither a local model directory nor in the local Hugging Face cache ({hf_cache_dir()}); "
            f"nothing is downloaded: fetch it first (hf download {name}) or pass a directory"
        )
    log.debug("model %s resolved to the cached snapshot %s", name, Path(cached).parent)
    return Path(cached).parent


def read_json_file(path: Path, what: str) -> Any:
    """Parse a JSON file of a model folder; one-line :class:`ModelError` naming the fault."""
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise ModelError(f"{path}: {size:,} bytes, over the {MAX_JSON_BYTES:,}-byte limit for {what}")
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ModelError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ModelError(f"{path}: not UTF-8 text") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise ModelError(f"{path}: JSON nested too deeply") from None


def read_config_json(folder: Path) -> dict[str, Any]:
    """``config.json`` of ``folder`` as a dict, checked to be an object with a string ``model_type``."""
    path = folder / "config.json"
    if not path.is_file():
        raise ModelError(f"{folder}: not a model directory (no config.json)")
    config = read_json_file(path, "config.json")
    if not isinstance(config, dict):
        raise ModelError(f"{path}: not a JSON object (a JSON {_json_kind(config)}); a model config is an object")
    model_type = config.get("model_type")
    if model_type is None:
        raise ModelError(f"{path}: no model_type; a model config names its architecture, e.g. \"model_type\": \"llama\"")
    if not isinstance(model_type, str) or not model_type.strip():
        raise ModelError(f"{path}: model_type must be a non-empty string, not {json.dumps(model_type)[:40]}")
    return config


def _json_kind(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}.get(type(value), "value")


def _auto_map(data: dict[str, Any]) -> dict[str, Any]:
    value = data.get("auto_map")
    return value if isinstance(value, dict) else {"<auto_map>": value} if value else {}


def custom_code_needed(folder: Path, config: dict[str, Any]) -> str | None:
    """Why loading ``folder`` would import Python files from it, or None when transformers' own classes do.

    Mirrors transformers: an ``auto_map`` is used only for a ``model_type`` transformers does not know, and a
    tokenizer ``auto_map`` only when ``tokenizer_class`` is not one of transformers' tokenizers.
    """
    model_map = {k: v for k, v in _auto_map(config).items() if k != "AutoTokenizer"}
    if model_map and config["model_type"] not in _transformers_model_types():
        first = next(iter(model_map.items()))
        return f"config.json maps model_type {config['model_type']!r} to code in the folder (auto_map {first[0]}: {str(first[1])[:60]})"
    tok_path = folder / "tokenizer_config.json"
    tok_config = read_json_file(tok_path, "tokenizer_config.json") if tok_path.is_file() else {}
    if not isinstance(tok_config, dict):
        raise ModelError(f"{tok_path}: not a JSON object")
    tok_map = _auto_map(tok_config).get("AutoTokenizer") or _auto_map(tok_config).get("<auto_map>") or _auto_map(config).get("AutoTokenizer")
    if tok_map:
        cls = tok_config.get("tokenizer_class")
        if not (isinstance(cls, str) and _known_tokenizer_class(cls)):
            return f"tokenizer_config.json names a custom tokenizer class {str(cls)[:40]!r} with code in the folder (auto_map AutoTokenizer)"
    return None


def _transformers_model_types() -> Any:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES  # imports torch: only when needed

    return CONFIG_MAPPING_NAMES


def _known_tokenizer_class(name: str) -> bool:
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    base = name[:-4] if name.endswith("Fast") else name
    try:
        return any(tokenizer_class_from_name(n) is not None for n in (base, base + "Fast"))
    except Exception:  # an odd name that transformers' registry lookup rejects
        return False


def inspect_config(name: str, policy: LoadPolicy = SAFE, *, require_supported: bool = True) -> tuple[Path, dict[str, Any]]:
    """Locate model ``name`` and check its config: (folder, config.json as a dict).

    Raises :class:`UnsafeModelError` for a folder that needs custom code (unless ``policy`` trusts it) and
    :class:`ModelError` for a broken config.json or (``require_supported``) an architecture the memory does
    not support.
    """
    folder = locate_model(name)
    config = read_config_json(folder)
    reason = custom_code_needed(folder, config)
    model_map = {k: v for k, v in _auto_map(config).items() if k != "AutoTokenizer"}
    if reason is None and model_map:
        if policy.trust_remote_code:
            reason = f"config.json's auto_map replaces transformers' {config['model_type']!r} classes with code in the folder"
        else:
            _warn_once(
                f"{folder}: config.json's auto_map (custom code) is ignored: model_type {config['model_type']!r} is "
                "loaded with transformers' own classes"
            )
    if reason is not None:
        if not policy.trust_remote_code:
            raise UnsafeModelError(f"{folder}: the model needs its own Python code: {reason}; {TRUST_HINT}")
        _warn_once(f"running the Python code shipped with {folder} (--trust-remote-code): {reason}")
    if require_supported and config["model_type"] not in SUPPORTED_FAMILIES:
        raise ModelError(
            f"unsupported architecture {config['model_type']!r} for {name}; supported: {', '.join(SUPPORTED_FAMILIES)}"
        )
    return folder, config


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    """A warning about a model folder, once per process (the folder is inspected at every step)."""
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning("%s", message)


@contextmanager
def transformers_quiet() -> Iterator[None]:
    """Keep transformers' and huggingface_hub's own warnings (load reports, "Some weights ..." notes, Python
    warnings) off stderr while they run, unless ``infllm`` logging is verbose (INFO or DEBUG)."""
    if logging.getLogger("infllm").isEnabledFor(logging.INFO):
        yield
        return
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hub = logging.getLogger("huggingface_hub")
    hub_level = hub.level
    hf_logging.set_verbosity_error()
    hub.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(previous)
        hub.setLevel(hub_level)
