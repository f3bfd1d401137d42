"""Ctrl-C while torch is being imported must not be lost.

torch's C module imports numpy itself and, if that import raises, clears the exception and goes on without
numpy. A Ctrl-C that lands inside that import (about a tenth of a second, early in every command that loads
a model) is therefore swallowed: the command runs on as if nothing was pressed, with a half-imported numpy
behind it (seen: "empty input" instead of "interrupted" when stdin was closed right after the Ctrl-C, and
"cannot load module more than once per process" errors).

:func:`install` adds an import hook that, the first time ``torch`` is about to be imported, imports numpy
first with Ctrl-C held back (:func:`import_holding_ctrl_c`): the import completes, and a Ctrl-C pressed
meanwhile is raised right after it as the usual :class:`KeyboardInterrupt`. A command that never imports
torch pays nothing.
"""

from __future__ import annotations

import importlib
import importlib.abc
import signal
import sys
import threading
from typing import Any


def import_holding_ctrl_c(name: str) -> Any:
    """Import module ``name`` with SIGINT deferred until the import has finished; a SIGINT received
    meanwhile is then raised as :class:`KeyboardInterrupt`. Off the main thread (where signal handlers
    cannot be changed) this is a plain import."""
    if name in sys.modules or threading.current_thread() is not threading.main_thread():
        return importlib.import_module(name)
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        module = importlib.import_module(name)
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
    if received:
        raise KeyboardInterrupt
    return module


class ImportFirst(importlib.abc.MetaPathFinder):
    """Import hook: just before ``trigger`` is first imported, import ``first`` with Ctrl-C held back, then
    step aside (the hook removes itself and finds nothing: the normal finders import ``trigger``)."""

    def __init__(self, trigger: str, first: str) -> None:
        self.trigger = trigger
        self.first = first

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname == self.trigger:
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            try:
                import_holding_ctrl_c(self.first)
            except ImportError:  # ``first`` is optional for ``trigger`` (torch runs without numpy)
                pass
        return None


def install() -> None:
    """Hold Ctrl-C back while torch's numpy import runs (see the module docstring); idempotent."""
    if "torch" in sys.modules or any(isinstance(f, ImportFirst) and f.trigger == "torch" for f in sys.meta_path):
        return
    sys.meta_path.insert(0, ImportFirst("torch", "numpy"))
