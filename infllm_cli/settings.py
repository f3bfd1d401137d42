"""User settings: which model to use when ``--model`` is not given.

Resolution order (first that is set wins):

1. the ``--model`` option;
2. the environment variable ``INFLLM_MODEL``;
3. ``model = "..."`` in the user config file ``$XDG_CONFIG_HOME/infllm/config.toml``
   (``~/.config/infllm/config.toml`` when ``XDG_CONFIG_HOME`` is unset; ``INFLLM_CONFIG`` names another file);
4. :data:`DEFAULT_MODEL`, a small instruct model with a chat template and a 32K native window.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UsageError

log = logging.getLogger("infllm.settings")

DEFAULT_MODEL = "Qwen/Qwen2.5-1.5B-Instruct"
ENV_MODEL = "INFLLM_MODEL"
ENV_CONFIG = "INFLLM_CONFIG"


def config_path() -> Path:
    """The user config file (it need not exist)."""
    explicit = os.environ.get(ENV_CONFIG)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path("~/.config").expanduser())
    return Path(base) / "infllm" / "config.toml"


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib  # Python 3.11+
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            log.warning("cannot read %s: install 'tomli' on Python 3.10", path)
            return {}
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from exc


#: The keys the user config file may set; any other is reported (a warning naming it) and ignored.
CONFIG_KEYS = ("model",)


def read_config_file(path: Path | None = None) -> dict[str, Any]:
    """The user config file's contents, ``{}`` when there is none. Unknown keys (a typo such as
    ``modle``) get a warning naming them and are ignored."""
    path = path or config_path()
    if not path.is_file():
        return {}
    data = _load_toml(path)
    for key in data:
        if key not in CONFIG_KEYS:
            log.warning("config file %s: unknown key %r ignored (known: %s)", path, key, ", ".join(CONFIG_KEYS))
    return {k: v for k, v in data.items() if k in CONFIG_KEYS}


@dataclass(frozen=True)
class ModelChoice:
    name: str
    origin: str  # "option", "environment (INFLLM_MODEL)", "config file <path>", "default"


def resolve_model(option: str | None) -> ModelChoice:
    """The model to use, and where the choice came from (for the log). An empty ``--model`` is a usage
    error, never a silent fall-back to the next source."""
    if option is not None:
        if not option.strip():
            raise UsageError("--model is empty; pass a model directory or a hub id from the local Hugging Face cache")
        return ModelChoice(option, "option --model")
    env = os.environ.get(ENV_MODEL, "").strip()
    if env:
        return ModelChoice(env, f"environment {ENV_MODEL}")
    path = config_path()
    data = read_config_file(path)
    model = data.get("model")
    if model is not None:
        if not isinstance(model, str) or not model.strip():
            raise UsageError(f"config file {path}: 'model' must be a non-empty string")
        return ModelChoice(model.strip(), f"config file {path}")
    return ModelChoice(DEFAULT_MODEL, "default")
