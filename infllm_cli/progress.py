"""Progress on stderr (rich), and the CLI's logging setup.

Progress is drawn live only when stderr is a terminal and ``--quiet`` is off. When stderr is not a
terminal (a log file, a pipe, a batch job) a plain line is printed every ``interval`` seconds instead
(``--progress-interval``, ``$INFLLM_PROGRESS_INTERVAL``, default 10; 0 turns them off), without control
sequences. ``--quiet`` prints neither. Generation gets no live display when stdout is the same terminal
(it would tear the streamed answer). Times remaining come from :class:`~infllm_cli.eta.EtaEstimator`
(a smoothed cost that accounts for its measured growth), not from the average rate so far.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from .errors import UsageError
from .eta import EtaEstimator, format_duration

ENV_PROGRESS_INTERVAL = "INFLLM_PROGRESS_INTERVAL"
DEFAULT_PROGRESS_INTERVAL = 10.0

_HANDLER_MARK = "_infllm_cli_handler"


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except Exception:
        return False


class _Formatter(logging.Formatter):
    """``message`` for info, ``warning: message`` for warnings, ``debug [logger]: message`` for debug."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.levelno >= logging.ERROR:
            text = f"error: {msg}"
        elif record.levelno >= logging.WARNING:
            text = f"warning: {msg}"
        elif record.levelno >= logging.INFO:
            text = msg
        else:
            text = f"debug [{record.name}]: {msg}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class _ConsoleHandler(logging.Handler):
    """Writes through a rich console, so that log lines and live progress do not garble each other."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            style = "yellow" if record.levelno >= logging.WARNING else ("dim" if record.levelno < logging.INFO else None)
            self.console.print(Text(text, style=style or ""), highlight=False, soft_wrap=True)
        except Exception:  # pragma: no cover
            self.handleError(record)


def make_console(stream: TextIO | None = None) -> Console:
    stream = stream if stream is not None else sys.stderr
    return Console(file=stream, stderr=stream is sys.stderr, highlight=False, soft_wrap=True)


def setup_logging(*, quiet: bool = False, verbose: bool = False, debug: bool = False, console: Console | None = None) -> Console:
    """Configure the ``infllm`` loggers once per invocation, to the current stderr.

    Default: the CLI's own status lines (``infllm.cli``, INFO) and warnings from everything else;
    ``--verbose``: INFO from every ``infllm`` logger; ``--debug``: DEBUG; ``--quiet``: errors only.
    """
    console = console or make_console()
    root = logging.getLogger("infllm")
    for h in list(root.handlers):
        if getattr(h, _HANDLER_MARK, False):
            root.removeHandler(h)
    handler: logging.Handler
    if _isatty(console.file):
        handler = _ConsoleHandler(console)
    else:
        handler = logging.StreamHandler(console.file)
    handler.setFormatter(_Formatter())
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
    root.propagate = False
    if debug:
        level, cli_level = logging.DEBUG, logging.DEBUG
    elif quiet:
        level, cli_level = logging.ERROR, logging.ERROR
    elif verbose:
        level, cli_level = logging.INFO, logging.INFO
    else:
        level, cli_level = logging.WARNING, logging.INFO
    root.setLevel(level)
    logging.getLogger("infllm.cli").setLevel(cli_level)
    if not debug:
        # transformers and friends: only errors, through their own handlers
        for name in ("transformers", "huggingface_hub"):
            logging.getLogger(name).setLevel(logging.ERROR)
    return console


_CONFIGURED = ("infllm", "infllm.cli", "transformers", "huggingface_hub")


@contextmanager
def logging_restored() -> Iterator[None]:
    """Undo :func:`setup_logging` afterwards (handlers, levels, propagation), so that a command run in
    process (tests, notebooks) leaves the host's logging as it found it."""
    saved = [(logging.getLogger(n), list(logging.getLogger(n).handlers), logging.getLogger(n).level, logging.getLogger(n).propagate) for n in _CONFIGURED]
    try:
        yield
    finally:
        for logger, handlers, level, propagate in saved:
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = propagate


def format_rate(rate: float) -> str:
    """A rate for people: whole numbers from 10 up ("5,279"), two significant digits below ("0.27")."""
    return f"{rate:,.0f}" if rate >= 10 else f"{rate:.2g}"


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "tokens")
        if not speed:
            return Text("")
        return Text(f"{format_rate(speed)} {unit}/s", style="progress.data.speed")


class _EtaColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        eta = task.fields.get("eta")
        return Text(f"ETA {format_duration(eta)}", style="progress.remaining")


def progress_interval(value: float | None = None) -> float:
    """Seconds between plain progress lines: ``value``, else ``$INFLLM_PROGRESS_INTERVAL``, else 10."""
    if value is not None:
        return float(value)
    env = os.environ.get(ENV_PROGRESS_INTERVAL, "").strip()
    if not env:
        return DEFAULT_PROGRESS_INTERVAL
    try:
        seconds = float(env)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise UsageError(f"{ENV_PROGRESS_INTERVAL} must be a number of seconds >= 0, got {env!r}")
    return seconds


class PlainProgress:
    """A task's progress as a plain stderr line every ``interval`` seconds (stderr is not a terminal)."""

    def __init__(self, stream: TextIO, description: str, total: int | None, unit: str, interval: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.description = description
        self.total = total
        self.unit = unit
        self.interval = interval
        self.clock = clock
        self.started = clock()
        self.next_at = self.started + interval
        self.eta = EtaEstimator(clock=clock)
        self.eta.start(0)

    def update(self, completed: int = 0, info: str | None = None) -> None:
        self.eta.update(completed)
        now = self.clock()
        if now < self.next_at:
            return
        self.next_at = now + self.interval
        self.stream.write(self.line(completed, info, now) + "\n")
        self.stream.flush()

    def line(self, completed: int, info: str | None, now: float) -> str:
        elapsed = now - self.started
        parts = [f"{self.description}: {completed:,}"]
        if self.total:
            parts[0] += f"/{self.total:,} {self.unit} ({100 * completed / self.total:.1f}%)"
        else:
            parts[0] += f" {self.unit}"
        if info:
            parts.append(info)
        rate = self.eta.rate()
        if rate:
            parts.append(f"{format_rate(rate)} {self.unit}/s")
        parts.append(f"elapsed {format_duration(elapsed)}")
        if self.total:
            parts.append(f"ETA {format_duration(self.eta.remaining(self.total))}")
        return ", ".join(parts)


class _CountColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit", "tokens")
        done = int(task.completed)
        if task.total is None:
            return Text(f"{done:,} {unit}")
        return Text(f"{done:,}/{int(task.total):,} {unit}")


class Reporter:
    """Live progress lines on stderr; a no-op unless ``enabled``."""

    def __init__(self, console: Console, *, enabled: bool, stdout_is_terminal: bool | None = None,
                 interval: float | None = None) -> None:
        self.console = console
        self.live = enabled and _isatty(console.file)
        self.interval = progress_interval(interval) if enabled else 0.0
        self.plain = enabled and not self.live and self.interval > 0
        self.enabled = self.live
        self.stdout_is_terminal = _isatty(sys.stdout) if stdout_is_terminal is None else stdout_is_terminal

    @classmethod
    def for_cli(cls, console: Console, *, quiet: bool, interval: float | None = None) -> "Reporter":
        return cls(console, enabled=not quiet, interval=interval)

    @contextmanager
    def task(self, description: str, *, total: int | None = None, unit: str = "tokens") -> Iterator[Callable[..., None]]:
        """A live line while the block runs (plain lines every ``interval`` seconds when stderr is not a
        terminal); yields ``update(completed, info=None)``."""
        if self.plain:
            plain = PlainProgress(self.console.file, description, total, unit, self.interval)
            yield plain.update
            return
        if not self.enabled:
            yield lambda completed=0, info=None: None
            return
        columns: list[ProgressColumn] = [SpinnerColumn(), TextColumn("{task.description}")]
        if total is not None:
            columns += [BarColumn(), _CountColumn(), _RateColumn(), _EtaColumn()]
        else:
            columns += [_CountColumn(), _RateColumn(), TimeElapsedColumn(), TextColumn("{task.fields[info]}")]
        # never redirect stdout: the answer must reach the real stdout, not the progress console
        progress = Progress(
            *columns, console=self.console, transient=True, speed_estimate_period=10.0,
            redirect_stdout=False, redirect_stderr=False,
        )
        task_id = progress.add_task(description, total=total, unit=unit, info="", eta=None)
        eta = EtaEstimator()
        eta.start(0)

        def update(completed: int = 0, info: str | None = None) -> None:
            fields: dict[str, Any] = {}
            if total is not None:
                eta.update(completed)
                fields["eta"] = eta.remaining(total)
            if info is not None:
                fields["info"] = info
            progress.update(task_id, completed=completed, **fields)

        with progress:
            yield update

    @contextmanager
    def status(self, message: str) -> Iterator[None]:
        """A spinner while something without measurable progress runs (loading a model)."""
        if not self.enabled:
            yield
            return
        progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
            console=self.console, transient=True, redirect_stdout=False, redirect_stderr=False,
        )
        progress.add_task(message, total=None)
        with progress:
            yield

    @contextmanager
    def generating(self, description: str = "generating") -> Iterator[Callable[[int], None]]:
        """Token count while generating, only when the answer does not stream to the same terminal."""
        if self.stdout_is_terminal:
            yield lambda n: None
            return
        with self.task(description, unit="tokens") as update:
            yield lambda n: update(n)
