"""How every command runs: logging and progress on stderr, and one-line errors with their exit codes."""

from __future__ import annotations

import sys
import traceback
from contextlib import contextmanager
from typing import Iterator

import typer

from ..config import ConfigError
from ..errors import EXIT_INTERRUPTED, EXIT_OUTPUT_CLOSED, InfllmError, OutputClosed
from ..formatting import one_line
from ..progress import Reporter, logging_restored, setup_logging
from .options import Options
from .stdio import write_err


def _pass_through() -> tuple[type[BaseException], ...]:
    """Typer's and click's own exits and usage errors: handled by Typer (in process) or the launcher."""
    classes: list[type[BaseException]] = [typer.Exit, typer.Abort]
    try:
        from typer._click import exceptions as vendored  # type: ignore[import-not-found]

        classes += [vendored.ClickException]
    except ImportError:  # Typer on the click package
        pass
    try:
        import click

        classes += [click.exceptions.Exit, click.ClickException, click.exceptions.Abort]
    except ImportError:  # pragma: no cover
        pass
    return tuple(classes)


PASS_THROUGH = _pass_through()


# -- error handling ------------------------------------------------------------------------------------


@contextmanager
def handle_errors(opts: Options) -> Iterator[None]:
    """Every failure becomes one line ``error: <message>`` on stderr and its documented exit code."""
    try:
        with logging_restored():
            yield
    except PASS_THROUGH:
        raise
    except KeyboardInterrupt:
        _flush_stdout()
        write_err("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED)
    except OutputClosed:
        # the reader of stdout went away (e.g. `| head`): stop quietly
        raise typer.Exit(EXIT_OUTPUT_CLOSED)
    except BrokenPipeError:  # a write to stdout that did not go through write_out
        raise typer.Exit(EXIT_OUTPUT_CLOSED)
    except InfllmError as exc:
        _fail(one_line(exc), exc.exit_code, opts.debug)
    except ConfigError as exc:
        _fail(one_line(exc), 2, opts.debug)
    except Exception as exc:
        _fail(f"internal error: {type(exc).__name__}: {one_line(exc)} (run with --debug for the traceback)", 1, opts.debug)


def _fail(message: str, code: int, debug: bool) -> None:
    _flush_stdout()
    if debug:
        try:
            traceback.print_exc(file=sys.stderr)
        except (OSError, ValueError, AttributeError):
            pass
    write_err(f"error: {message}")
    raise typer.Exit(code)


def _flush_stdout() -> None:
    """Push out what was answered so far, before an error line; a failing stdout is left to stdio.finish."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError, AttributeError):
        pass


def start(opts: Options) -> Reporter:
    """Logging and progress on stderr, and the CPU thread count (see :mod:`infllm_cli.threads`)."""
    from ..threads import configure_threads

    console = setup_logging(quiet=opts.quiet, verbose=opts.verbose, debug=opts.debug)
    configure_threads(opts.threads)
    return Reporter.for_cli(console, quiet=opts.quiet, interval=opts.progress_interval)


def quiet_library_progress() -> None:
    """transformers/huggingface_hub draw their own tqdm bars on stderr; ours replace them."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except Exception:  # pragma: no cover
        pass
