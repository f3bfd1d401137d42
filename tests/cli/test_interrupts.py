"""A Ctrl-C during the import of a native package (torch, numpy, triton) is held back and delivered after the
import completes: not lost, and not raised inside native code."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from infllm_cli.cli.interrupts import HoldCtrlC, holding_ctrl_c

# a module whose import is hit by a Ctrl-C half-way through (the signal is sent to this very process)
INTERRUPTED_MODULE = "import os, signal\nos.kill(os.getpid(), signal.SIGINT)\nDONE = sum(range(1000))\n"


@pytest.fixture(autouse=True)
def ctrl_c_raises_keyboard_interrupt():
    """These tests send SIGINT to this very process and expect what a terminal's Ctrl-C does to Python: a
    KeyboardInterrupt. A shell without job control starts ``pytest &`` with SIGINT ignored, and Python keeps
    that, so install Python's own handler for each test and put back what was there."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [n for n in sys.modules if n.startswith("infllm_fake_")]:
        del sys.modules[name]


@pytest.fixture
def hook() -> HoldCtrlC:
    finder = HoldCtrlC(["infllm_fake_torch", "infllm_fake_numpy", "infllm_fake_pkg"])
    sys.meta_path.insert(0, finder)
    yield finder
    sys.meta_path.remove(finder)


def test_a_ctrl_c_in_a_held_block_is_raised_after_it_completes() -> None:
    before = signal.getsignal(signal.SIGINT)
    done = []
    with pytest.raises(KeyboardInterrupt):
        with holding_ctrl_c():
            os.kill(os.getpid(), signal.SIGINT)
            done.append(sum(range(1000)))
    assert done == [499500] and signal.getsignal(signal.SIGINT) is before


def test_a_held_block_without_ctrl_c_raises_its_own_errors() -> None:
    with pytest.raises(ZeroDivisionError), holding_ctrl_c():
        1 / 0


def test_a_ctrl_c_wins_over_the_error_of_the_block_it_interrupted() -> None:
    with pytest.raises(KeyboardInterrupt), holding_ctrl_c():
        os.kill(os.getpid(), signal.SIGINT)
        raise ImportError("a half-done import failing after the Ctrl-C")


def test_a_ctrl_c_is_delivered_to_the_handler_in_place() -> None:
    seen: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        with holding_ctrl_c():
            os.kill(os.getpid(), signal.SIGINT)
            assert seen == []  # held
        assert seen == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)


def test_an_ignored_ctrl_c_stays_ignored() -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with holding_ctrl_c():
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_ctrl_c_in_a_held_import_surfaces_after_the_whole_import(modules: Path, hook: HoldCtrlC) -> None:
    (modules / "infllm_fake_log.py").write_text("events = []\n")
    (modules / "infllm_fake_numpy.py").write_text(INTERRUPTED_MODULE)
    # torch's C code swallows exceptions from its numpy import: a nested held import must not raise inside it
    (modules / "infllm_fake_torch.py").write_text(
        "import infllm_fake_log\n"
        "try:\n    import infllm_fake_numpy\nexcept BaseException as exc:\n    infllm_fake_log.events.append(exc)\n"
        "infllm_fake_log.events.append('torch ran to its end')\n")
    import infllm_fake_log

    with pytest.raises(KeyboardInterrupt):  # the Ctrl-C surfaces where torch is imported, once it is done
        import infllm_fake_torch  # noqa: F401
    assert infllm_fake_log.events == ["torch ran to its end"] and sys.modules["infllm_fake_numpy"].DONE == 499500
    import infllm_fake_torch  # noqa: F811 -- a later import goes through

    assert type(infllm_fake_torch.__loader__).__name__ == "SourceFileLoader"
    assert infllm_fake_torch.__loader__ is infllm_fake_torch.__spec__.loader


def test_a_held_package_keeps_its_submodules_and_resources(modules: Path, hook: HoldCtrlC) -> None:
    package = modules / "infllm_fake_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("from . import part\n")
    (package / "part.py").write_text("VALUE = 5\n")
    (package / "data.txt").write_text("payload")
    import importlib.resources

    import infllm_fake_pkg

    assert infllm_fake_pkg.part.VALUE == 5
    assert importlib.resources.files(infllm_fake_pkg).joinpath("data.txt").read_text() == "payload"


def test_modules_not_named_and_missing_modules_import_as_usual(modules: Path, hook: HoldCtrlC) -> None:
    (modules / "infllm_fake_other.py").write_text("VALUE = 3\n")
    import infllm_fake_other

    assert type(infllm_fake_other.__loader__).__name__ == "SourceFileLoader"
    with pytest.raises(ModuleNotFoundError):
        import infllm_fake_numpy  # noqa: F401 -- named, but not on the path


# A child that holds Ctrl-C as the CLI does (unless told "bare"), and gets a SIGINT `delay` seconds after it
# starts loading triton's extension module: the SIGALRM handler sends it at the first Python bytecode run
# after the timer fires, which during the extension's initialisation is inside the enums it builds.
CHILD = """
import importlib.abc, os, signal, sys
delay, bare = float(sys.argv[1]), sys.argv[2] == "bare"
if not bare:
    from infllm_cli.cli.interrupts import install
    install()
class AtLibtriton(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "triton._C.libtriton":
            sys.meta_path.remove(self)
            signal.signal(signal.SIGALRM, lambda s, f: os.kill(os.getpid(), signal.SIGINT))
            signal.setitimer(signal.ITIMER_REAL, delay)
        return None
sys.meta_path.insert(0, AtLibtriton())
try:
    import triton
except KeyboardInterrupt:
    sys.exit(130)
signal.setitimer(signal.ITIMER_REAL, 0)
sys.exit(0 if "triton.knobs" in sys.modules else 1)
"""


def _child(*args: str) -> "subprocess.CompletedProcess[bytes]":
    import subprocess

    from tests.hostile.harness import REPO, child_env, ctrl_c_as_from_a_terminal

    return subprocess.run([sys.executable, *args], cwd=REPO, env=child_env(), capture_output=True, timeout=120,
                          preexec_fn=ctrl_c_as_from_a_terminal)


def _libtriton_import_seconds() -> float:
    """How long triton's extension module takes to import in a fresh process (``python -X importtime``)."""
    done = _child("-X", "importtime", "-c", "import triton")
    for line in done.stderr.decode().splitlines():
        if line.rstrip().endswith("triton._C.libtriton"):
            return int(line.split("|")[1]) / 1e6
    raise AssertionError("no import time for triton._C.libtriton:\n" + done.stderr.decode()[-2000:])


def test_ctrl_c_during_tritons_native_initialisation_is_held_not_an_abort() -> None:
    """Seen on CI: a Ctrl-C landing in libtriton's initialisation (nanobind) aborted the process with
    "terminate called after throwing an instance of 'nanobind::python_error'" (status -6). Held, it is a
    KeyboardInterrupt once the import is done (130). The delays sweep the whole initialisation."""
    pytest.importorskip("triton")
    span = _libtriton_import_seconds()
    delays = [0.0005 + span * 1.2 * i / 23 for i in range(24)]
    outcomes = {round(d * 1000, 1): _child("-c", CHILD, str(d), "held") for d in delays}
    bad = {ms: (p.returncode, p.stderr.decode()[-300:]) for ms, p in outcomes.items() if p.returncode not in (0, 130)}
    assert not bad, f"libtriton imports in {span * 1000:.0f} ms; Ctrl-C after (ms): (status, stderr) {bad}"
    assert any(p.returncode == 130 for p in outcomes.values())  # the Ctrl-C did land during the import
