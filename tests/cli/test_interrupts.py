"""A Ctrl-C during the import that torch makes of numpy is held back and raised after it, not lost."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from infllm_cli.cli.interrupts import ImportFirst, import_holding_ctrl_c

# a module whose import is hit by a Ctrl-C half-way through (the signal is sent to this very process)
INTERRUPTED_MODULE = "import os, signal\nos.kill(os.getpid(), signal.SIGINT)\nDONE = sum(range(1000))\n"


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [n for n in sys.modules if n.startswith("infllm_fake_")]:
        del sys.modules[name]


def test_a_ctrl_c_during_a_held_import_is_raised_after_it_completes(modules: Path) -> None:
    (modules / "infllm_fake_first.py").write_text(INTERRUPTED_MODULE)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        import_holding_ctrl_c("infllm_fake_first")
    assert sys.modules["infllm_fake_first"].DONE == 499500  # the import ran to its end
    assert signal.getsignal(signal.SIGINT) is before
    assert import_holding_ctrl_c("infllm_fake_first") is sys.modules["infllm_fake_first"]  # imported once


def test_the_hook_imports_the_first_module_before_the_trigger_then_steps_aside(modules: Path) -> None:
    (modules / "infllm_fake_numpy.py").write_text(INTERRUPTED_MODULE)
    (modules / "infllm_fake_torch.py").write_text("import infllm_fake_numpy\nVALUE = 7\n")
    hook = ImportFirst("infllm_fake_torch", "infllm_fake_numpy")
    sys.meta_path.insert(0, hook)
    try:
        with pytest.raises(KeyboardInterrupt):  # the Ctrl-C surfaces where torch is imported
            import infllm_fake_torch  # noqa: F401
        assert hook not in sys.meta_path and sys.modules["infllm_fake_numpy"].DONE == 499500
        import infllm_fake_torch  # noqa: F811 -- a later import goes through: nothing half-done is left

        assert infllm_fake_torch.VALUE == 7
    finally:
        if hook in sys.meta_path:
            sys.meta_path.remove(hook)


def test_a_missing_first_module_does_not_stop_the_trigger_import(modules: Path) -> None:
    (modules / "infllm_fake_torch2.py").write_text("VALUE = 3\n")
    hook = ImportFirst("infllm_fake_torch2", "infllm_fake_absent_numpy")
    sys.meta_path.insert(0, hook)
    try:
        import infllm_fake_torch2

        assert infllm_fake_torch2.VALUE == 3 and hook not in sys.meta_path
    finally:
        if hook in sys.meta_path:
            sys.meta_path.remove(hook)
