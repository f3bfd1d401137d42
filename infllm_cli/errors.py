"""User-facing errors. Each carries a documented exit code; the CLI prints ``error: <message>`` on one line.

Exit codes
----------
1    unexpected internal error (a bug; ``--debug`` shows the traceback)
2    usage error (bad option or argument value)
3    input error: missing path, empty input, binary file, no readable text, needs OCR, too large
4    PDF error: encrypted without the right password, corrupt beyond recovery
5    model error: unknown model, directory without weights, unsupported architecture, broken or
     inconsistent model files, a model that would run code (remote code, pickle) without the user's opt-in
6    backend/device error: the requested backend or device cannot run here
74   output error: stdout cannot be written (a full device such as ``>/dev/full``, an I/O error, or stdout
     closed before the start); one ``error:`` line on stderr (``EX_IOERR`` of sysexits.h)
130  interrupted (Ctrl-C)
141  stdout was closed by its reader (``infllm ask ... | head -c1``): the command stops quietly, with the
     code a shell reports for a process ended by SIGPIPE (128 + 13)

stderr carries only diagnostics: when it cannot be written (``2>/dev/full``) they are lost and the exit
code is the one the command would have had anyway (e.g. 3 for a missing file).
"""

from __future__ import annotations


class InfllmError(Exception):
    """Base class: a problem the user can fix. ``str(err)`` is the one-line message."""

    exit_code = 1


class UsageError(InfllmError):
    exit_code = 2


class InputError(InfllmError):
    exit_code = 3


class PdfError(InputError):
    exit_code = 4


class ModelError(InfllmError):
    exit_code = 5


class UnsafeModelError(ModelError):
    """A model refused because loading it would run code from its folder (custom Python, pickle)."""


class DeviceError(InfllmError):
    exit_code = 6


class OutputError(InfllmError):
    """stdout cannot be written (full device, I/O error, closed)."""

    exit_code = 74


class OutputClosed(OutputError):
    """The reader of stdout went away (EPIPE): the command ends quietly, without an error line."""

    exit_code = 141


EXIT_INTERRUPTED = 130
EXIT_IO_ERROR = OutputError.exit_code
EXIT_OUTPUT_CLOSED = OutputClosed.exit_code
