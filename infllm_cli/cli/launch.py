"""The process entry point of ``infllm`` and ``python -m infllm_cli``.

It runs the Typer application in non-standalone mode, so that every way out of it becomes one exit code
here: click's usage errors (2) and Ctrl-C outside a command (130) are reported with one line on a
stderr that may be unwritable, output failures outside a command (``--help >/dev/full``, ``--help |
head -c1``) get the codes of :mod:`.stdio` rather than click's 1, and the standard streams are settled
before the interpreter's shutdown (:func:`.stdio.finish`). Heavy modules are imported only after the
standard descriptors are guarded.
"""

from __future__ import annotations

import sys
from typing import NoReturn, Sequence

from ..errors import EXIT_INTERRUPTED, EXIT_IO_ERROR, EXIT_OUTPUT_CLOSED, InfllmError, OutputClosed
from . import stdio


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); its exit code."""
    if sys.stdout is None:
        stdio.write_err("error: cannot write to stdout: it is closed")
        return EXIT_IO_ERROR
    try:
        from .interrupts import install

        install()  # before anything imports torch
        _rich_broken_pipe_raises()
        from .app import app

        abort, click_error = _click_exceptions()
        try:
            result = app(args=list(argv) if argv is not None else None, standalone_mode=False)
        except abort:  # Ctrl-C or end of input while click parses or prompts
            stdio.write_err("interrupted")
            return EXIT_INTERRUPTED
        except click_error as exc:  # a usage error found while parsing
            _show(exc)
            return exc.exit_code
        except InfllmError as exc:  # from an eager option (--version) outside any command
            if not isinstance(exc, OutputClosed):
                stdio.write_err(f"error: {exc}")
            return exc.exit_code
        except OSError as exc:  # click's own output (help, version) failed
            failure = stdio.output_error(exc)
            if failure.exit_code != EXIT_OUTPUT_CLOSED:
                stdio.write_err(f"error: {failure}")
            return failure.exit_code
    except KeyboardInterrupt:  # while importing, or between commands
        stdio.write_err("interrupted")
        return EXIT_INTERRUPTED
    return result if isinstance(result, int) else 0


def _click_exceptions() -> tuple[tuple[type[BaseException], ...], type[Exception]]:
    """(abort classes, ClickException) of the click that Typer runs on: recent Typer vendors its own."""
    import typer

    try:
        from typer._click.exceptions import ClickException  # type: ignore[import-not-found]
    except ImportError:  # Typer on the click package
        from click.exceptions import Abort, ClickException

        return (Abort, typer.Abort), ClickException
    return (typer.Abort,), ClickException


def _rich_broken_pipe_raises() -> None:
    """rich (Typer's help and error screens) exits with 1 on a broken pipe (``Console.on_broken_pipe``);
    here it raises :class:`OutputClosed` for stdout, so that the code is 141, and ignores stderr."""
    from rich.console import Console

    def on_broken_pipe(console: Console) -> None:
        console.quiet = True
        try:
            to_stdout = console.file.fileno() == 1
        except (AttributeError, OSError, ValueError):
            to_stdout = console.file is sys.stdout
        if to_stdout:
            raise OutputClosed("stdout was closed by its reader")

    Console.on_broken_pipe = on_broken_pipe  # type: ignore[method-assign]


def _show(exc: Exception) -> None:
    """Print a usage error as one line, ``error: <message> (see: infllm CMD --help)``; lost if stderr cannot
    be written."""
    message = " ".join(str(exc.format_message()).split())  # type: ignore[attr-defined]
    ctx = getattr(exc, "ctx", None)
    hint = f" (see: {ctx.command_path} --help)" if ctx is not None and getattr(ctx, "command_path", "") else ""
    stdio.write_err(f"error: {message}{hint}")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console-script entry point."""
    stdio.guard_descriptors()
    code = run(argv)
    sys.exit(stdio.finish(code))
