"""How every command runs: logging and progress on stderr, and one-line errors with their exit codes."""

from __future__ import annotations

import sys
import traceback
from contextlib import contextmanager
from typing import Iterator

import click
import typer

from ..config import ConfigError
from ..errors import EXIT_INTERRUPTED, InfllmError
from ..formatting import one_line
from ..progress import Reporter, logging_restored, setup_logging
from .options import Options


# -- error handling ------------------------------------------------------------------------------------


@contextmanager
def handle_errors(opts: Options) -> Iterator[None]:
    """Every failure becomes one line ``error: <message>`` on stderr and its documented exit code."""
    try:
        with logging_restored():
            yield
    except (typer.Exit, click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
        raise
    except InfllmError as exc:
        _fail(one_line(exc), exc.exit_code, opts.debug)
    except ConfigError as exc:
        _fail(one_line(exc), 2, opts.debug)
    except KeyboardInterrupt:
        _flush_stdout()
        typer.echo("interrupted", err=True)
        raise typer.Exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        # the reader of stdout went away (e.g. `| head`): stop quietly
        try:
            sys.stdout = open("/dev/null", "w")  # noqa: SIM115
        except OSError:
            pass
        raise typer.Exit(141)
    except Exception as exc:
        _fail(f"internal error: {type(exc).__name__}: {one_line(exc)} (run with --debug for the traceback)", 1, opts.debug)


def _fail(message: str, code: int, debug: bool) -> None:
    _flush_stdout()
    if debug:
        traceback.print_exc(file=sys.stderr)
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except Exception:
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
