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
130  interrupted (Ctrl-C)
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


EXIT_INTERRUPTED = 130
