"""Ctrl-C while a native package is being imported must end the command cleanly, not crash or vanish.

Three packages run native code during their import that does not survive a Python exception raised by a
Ctrl-C in the middle of it:

* torch's C module imports numpy itself and, if that import raises, clears the exception and goes on
  without numpy. A Ctrl-C landing there is swallowed: the command runs on as if nothing was pressed (seen:
  "empty input" instead of "interrupted" when stdin was closed right after the Ctrl-C, and "cannot load
  module more than once per process" errors). A Ctrl-C elsewhere in torch's import was lost the same way.
* triton's extension module (nanobind) builds Python enums while it initialises; a KeyboardInterrupt
  raised there becomes a C++ exception nothing catches, and the process aborts (status -6, "terminate
  called after throwing an instance of 'nanobind::python_error'"; seen on a loaded CI machine).

:func:`install` adds an import hook that runs the import of each of :data:`HELD` (the top-level package,
and with it everything that package imports while it initialises) with Ctrl-C held back
(:func:`holding_ctrl_c`): the import completes, and a Ctrl-C pressed meanwhile is delivered right after it,
to the handler that was in place (normally as the usual :class:`KeyboardInterrupt`). A command that never
imports them pays nothing.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import signal
import sys
import threading
from types import ModuleType
from typing import Any, Iterable, Iterator

#: top-level packages whose import runs with Ctrl-C held back (see the module docstring)
HELD = ("numpy", "torch", "triton")

_holding = False  # a hold is in force


@contextlib.contextmanager
def holding_ctrl_c() -> Iterator[None]:
    """Hold SIGINT back for the duration of the block, then deliver one received meanwhile to the handler
    that was in place before (Python's default raises :class:`KeyboardInterrupt`).

    Nested holds are one hold (the outermost delivers). Off the main thread (where handlers cannot be
    changed), and where SIGINT is ignored or not handled by Python, the block runs as it is.
    """
    global _holding
    if _holding or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if not callable(previous):  # SIG_IGN, SIG_DFL, or set from C: not ours to change
        yield
        return
    received: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    _holding = True
    failure: BaseException | None = None
    try:
        yield
    except BaseException as exc:
        if not received:
            raise
        failure = exc  # the block failed while a Ctrl-C was waiting: the Ctrl-C is reported first
    finally:
        _holding = False
        signal.signal(signal.SIGINT, previous)
    if received:
        previous(signal.SIGINT, None)
    if failure is not None:
        raise failure


class _HoldingLoader(importlib.abc.Loader):
    """Wraps a module's loader so that executing the module runs with Ctrl-C held back; once executed, the
    module's ``__loader__`` and ``__spec__.loader`` are the wrapped loader again."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        try:
            with holding_ctrl_c():
                self.loader.exec_module(module)
        finally:
            module.__loader__ = self.loader
            if getattr(module, "__spec__", None) is not None:
                module.__spec__.loader = self.loader

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, is_package, ... of the real loader
        return getattr(self.loader, name)


class HoldCtrlC(importlib.abc.MetaPathFinder):
    """Import hook: the modules named in ``names`` are found by the other finders as usual, and executed
    with Ctrl-C held back."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = frozenset(names)

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.names:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _HoldingLoader(spec.loader)
                return spec
        return None


def install(names: Iterable[str] = HELD) -> None:
    """Hold Ctrl-C back while the packages ``names`` are imported (see the module docstring); idempotent."""
    if any(isinstance(f, HoldCtrlC) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, HoldCtrlC(n for n in names if n not in sys.modules))
