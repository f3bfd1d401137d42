"""``infllm cache``: list, check and remove the saved document memories (see docs/cache.md)."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Annotated, Any, Optional

import typer

from ..errors import UsageError
from .options import Options
from .runtime import handle_errors, start

log = logging.getLogger("infllm.cli")

cache_app = typer.Typer(
    name="cache",
    help="The memory cache: documents read once and reused by ask, summarize and chat. "
    "Lives in $INFLLM_CACHE_DIR, else $XDG_CACHE_HOME/infllm, else ~/.cache/infllm.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON object per line on stdout.")]
SizeOpt = Annotated[Optional[str], typer.Option("--max-cache-size", metavar="SIZE", help="Size budget (e.g. 2G); default $INFLLM_MAX_CACHE_SIZE, else 10% of free disk, at most 50 GiB.", show_default=False)]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Tracebacks for errors.")]


def _cache(opts: Options) -> Any:
    return Options(max_cache_size=opts.max_cache_size).memory_cache()


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _ago(ts: float) -> str:
    if not ts:
        return "never"
    s = max(0.0, time.time() - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s / size:.0f} {unit} ago"
    return f"{s:.0f} s ago"


def _resolve(cache: Any, entry: str) -> str:
    matches = [i for i in cache.ids() if i.startswith(entry.strip().lower())] if entry.strip() else []
    if not matches:
        raise UsageError(f"no cached memory {entry!r} (see `infllm cache ls`)")
    if len(matches) > 1:
        raise UsageError(f"{entry!r} names {len(matches)} cached memories; give more of the id")
    return matches[0]


@cache_app.command("ls")
def ls(json_out: JsonOpt = False, max_cache_size: SizeOpt = None, debug: DebugOpt = False) -> None:
    """List the saved memories, most recently used first: id, document, model, tokens, size, last used."""
    from ..formatting import human_bytes

    opts = Options(json=json_out, max_cache_size=max_cache_size, debug=debug, quiet=True)
    with handle_errors(opts):
        start(opts)
        cache = _cache(opts)
        entries = cache.list()
        total = sum(e.bytes for e in entries)
        for e in entries:
            m = e.manifest or {}
            row = {
                "id": e.id,
                "document": m.get("document_name") or "",
                "model": m.get("model_name") or "",
                "tokens": (m.get("stream") or {}).get("tokens"),
                "bytes": e.bytes,
                "last_used": e.last_used,
                "problem": e.problem,
            }
            if json_out:
                _out(json.dumps(row, ensure_ascii=False))
            else:
                tokens = f"{row['tokens']:,} tokens" if isinstance(row["tokens"], int) else "? tokens"
                what = f"{row['document'] or '?'}  [{row['model'] or '?'}]" if e.problem is None else f"unusable: {e.problem}"
                _out(f"{e.id[:12]}  {what}  {tokens}  {human_bytes(e.bytes)}  used {_ago(e.last_used)}")
        if not json_out:
            _out(f"{len(entries)} memories, {human_bytes(total)} of a {human_bytes(cache.budget())} budget in {cache.root}")


@cache_app.command("rm")
def rm(entry: Annotated[str, typer.Argument(metavar="ID", help="Id (or unique prefix) from `infllm cache ls`.")], debug: DebugOpt = False) -> None:
    """Remove one saved memory."""
    opts = Options(debug=debug)
    with handle_errors(opts):
        start(opts)
        cache = _cache(opts)
        entry_id = _resolve(cache, entry)
        if not cache.remove(entry_id):
            raise UsageError(f"cached memory {entry_id[:12]} is in use by another infllm process; try again later")
        log.info("removed %s", entry_id[:12])


@cache_app.command("clear")
def clear(debug: DebugOpt = False) -> None:
    """Remove every saved memory (those in use by another process are kept)."""
    opts = Options(debug=debug)
    with handle_errors(opts):
        start(opts)
        removed, skipped = _cache(opts).clear()
        log.info("removed %d saved memories%s", removed, f" ({skipped} in use, kept)" if skipped else "")


@cache_app.command("verify")
def verify(json_out: JsonOpt = False, remove_bad: Annotated[bool, typer.Option("--remove", help="Remove the entries that fail.")] = False, debug: DebugOpt = False) -> None:
    """Check every saved memory (manifest and full checksums). Exit 3 when one fails."""
    opts = Options(json=json_out, debug=debug)
    with handle_errors(opts):
        start(opts)
        cache = _cache(opts)
        bad = 0
        for entry_id in cache.ids():
            problem = cache.verify(entry_id)
            bad += problem is not None
            if problem is not None and remove_bad:
                cache.remove(entry_id)
            if json_out:
                _out(json.dumps({"id": entry_id, "ok": problem is None, "problem": problem}))
            else:
                _out(f"{entry_id[:12]}  {'ok' if problem is None else 'FAILED: ' + problem}")
        if bad:
            from ..errors import InputError

            raise InputError(f"{bad} cached memor{'y' if bad == 1 else 'ies'} failed verification" + (" (removed)" if remove_bad else " (rerun with --remove, or they are rebuilt when next used)"))


@cache_app.command("prune")
def prune(max_cache_size: SizeOpt = None, debug: DebugOpt = False) -> None:
    """Remove least recently used memories until the cache fits its size budget."""
    opts = Options(max_cache_size=max_cache_size, debug=debug)
    with handle_errors(opts):
        start(opts)
        removed = _cache(opts).evict()
        log.info("removed %d saved memories", len(removed))
