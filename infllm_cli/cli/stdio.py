"""The standard streams of the ``infllm`` process: writing answers, failing output, and a clean exit.

Policy (the exit codes are documented in :mod:`infllm_cli.errors`):

* stdout carries the answers. A write that fails because its reader went away (``EPIPE``: ``| head``,
  a closed pipe) ends the command quietly with 141, the shell's code for a process killed by SIGPIPE.
  A write that fails otherwise (``>/dev/full``, an I/O error) ends it with 74 (``EX_IOERR`` of
  sysexits.h) and one ``error:`` line on stderr. A stdout closed before the start (``>&-``) is 74 too.
* stderr carries diagnostics only: when it cannot be written (``2>/dev/full``, a closed pipe) they are
  lost, and the exit code is the one the command would have had anyway.
* Whatever failed, the process ends without Python's "Exception ignored ... BrokenPipeError" at
  shutdown: a stream whose final flush fails is pointed at ``/dev/null`` (``dup2`` on its descriptor,
  as the Python documentation advises for SIGPIPE), so the interpreter's own flush succeeds.

In-process callers (tests through ``CliRunner``, notebooks) use :func:`write_out` and :func:`write_err`;
the descriptor-level steps (:func:`guard_descriptors`, :func:`finish`) run only in the process entry
point, :mod:`.launch`.
"""

from __future__ import annotations

import errno
import os
import sys

from ..errors import EXIT_OUTPUT_CLOSED, OutputClosed, OutputError


def output_error(exc: OSError) -> OutputError:
    """The :class:`OutputError` for a failed write to stdout."""
    if isinstance(exc, BrokenPipeError) or exc.errno in (errno.EPIPE, errno.ECONNRESET):
        return OutputClosed("stdout was closed by its reader")
    return OutputError(f"cannot write to stdout: {exc.strerror or exc}")


def write_out(text: str) -> None:
    """Write answer text to stdout and flush it; a failed write raises :class:`OutputError`."""
    stream = sys.stdout
    if stream is None:
        raise OutputError("cannot write to stdout: it is closed")
    try:
        stream.write(text)
        stream.flush()
    except OSError as exc:
        raise output_error(exc) from None


def write_err(line: str) -> None:
    """Write one diagnostic line to stderr; when stderr cannot be written the line is lost, silently."""
    stream = sys.stderr
    if stream is None:
        return
    try:
        stream.write(line + "\n")
        stream.flush()
    except (OSError, ValueError):
        pass


def stdin_problem() -> str | None:
    """Why stdin cannot be read, or None. (A directory as stdin never gets here: CPython refuses to start
    with one, "Fatal Python error: init_sys_streams", before any Python code runs; see docs/cli.md.)"""
    if sys.stdin is None:
        return "stdin is closed"
    return None


# -- process level (the entry point only) ---------------------------------------------------------------


def _point_at_devnull(fd: int, flags: int) -> None:
    try:
        null = os.open(os.devnull, flags)
    except OSError:  # pragma: no cover - no /dev/null
        return
    if null != fd:
        try:
            os.dup2(null, fd)
        except OSError:  # pragma: no cover
            pass
        os.close(null)


def guard_descriptors() -> None:
    """Point closed standard descriptors (``<&-``, ``>&-``, ``2>&-``) at ``/dev/null``, so that no file the
    command opens later can take descriptor 0, 1 or 2 and receive stray writes. Python has already set
    the matching ``sys.std*`` to None; stderr gets a /dev/null stream so that logging stays quiet."""
    for fd, flags in ((0, os.O_RDONLY), (1, os.O_WRONLY), (2, os.O_WRONLY)):
        try:
            os.fstat(fd)
        except OSError:
            _point_at_devnull(fd, flags)
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115


def _settle(stream: object, fd: int) -> OSError | None:
    """Flush ``stream``; when that fails, point ``fd`` at /dev/null (the pending bytes go there) and
    return the error."""
    if stream is None:
        return None
    try:
        stream.flush()  # type: ignore[attr-defined]
        return None
    except (OSError, ValueError) as exc:
        try:
            real_fd = stream.fileno()  # type: ignore[attr-defined]
        except (OSError, ValueError, AttributeError):
            real_fd = fd
        _point_at_devnull(real_fd, os.O_WRONLY)
        try:
            stream.flush()  # type: ignore[attr-defined]
        except (OSError, ValueError):
            pass
        return exc if isinstance(exc, OSError) else None


def finish(code: int) -> int:
    """Flush stdout and stderr before the interpreter does; the exit code, changed only when output the
    command believed written (code 0) could not be flushed. After a failed write stdout and stderr
    are left pointing at /dev/null so that the interpreter's shutdown stays quiet."""
    out_error = _settle(sys.stdout, 1)
    if out_error is not None and code == 0:
        failure = output_error(out_error)
        code = failure.exit_code
        if code != EXIT_OUTPUT_CLOSED:
            write_err(f"error: {failure}")
    _settle(sys.stderr, 2)
    return code

