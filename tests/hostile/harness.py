"""Run the CLI as an untrusted-input victim would: a real process, with time and memory limits.

Every hostile-input test goes through :func:`run_cli` and checks the outcome with :func:`assert_clean_failure`
(or :func:`assert_clean_success`): the documented exit code, exactly one ``error:`` line, no traceback, and
nothing created or changed in the watched folders.
"""

from __future__ import annotations

import hashlib
import os
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parents[2]

#: Address-space limit of the child (bytes). torch reserves a few GiB of virtual memory when imported.
DEFAULT_MEMORY_LIMIT = 8 * 1024**3
DEFAULT_TIMEOUT = 120.0


@dataclass
class Outcome:
    returncode: int
    stdout: bytes
    stderr: bytes
    seconds: float

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", "replace")

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", "replace")


def child_env() -> dict[str, str]:
    """This process's environment, offline, with the checkout first on the import path."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def ctrl_c_as_from_a_terminal() -> None:
    """In a child, before it starts: SIGINT back to its default action. A test run started in the
    background by a script (``cmd &`` without job control) inherits SIGINT *ignored*, and a Python started
    with SIGINT ignored never raises KeyboardInterrupt, so the Ctrl-C tests would test nothing but that."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _limits(memory_limit: int, close: tuple[int, ...] = ()) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    for fd in close:
        os.close(fd)


def run_cli(
    *args: object,
    stdin: bytes | IO | int | None = None,
    stdout: IO | int | None = None,
    stderr: IO | int | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    memory_limit: int = DEFAULT_MEMORY_LIMIT,
    close: tuple[int, ...] = (),
    unset: tuple[str, ...] = (),
) -> Outcome:
    """Run ``python -m infllm_cli ARGS`` offline, with an address-space limit and a wall-clock timeout.

    ``stdin`` may be bytes (piped), a file object or descriptor (e.g. an opened directory or /dev/null), or
    ``subprocess.DEVNULL``. ``stdout``/``stderr`` default to pipes; pass an opened ``/dev/full`` to test full devices.
    ``close`` names descriptors (0, 1, 2) the child starts with closed, as after ``<&-``.
    ``unset`` names environment variables removed from the child's environment (e.g. ``HF_HUB_OFFLINE``, to
    check that the tool stays offline on its own).
    A timeout fails the test (the child is killed): hangs are defects.
    """
    import time

    full_env = {**child_env(), **(env or {})}
    for name in unset:
        full_env.pop(name, None)
    kwargs: dict = {}
    if isinstance(stdin, (bytes, bytearray)):
        kwargs["input"] = bytes(stdin)
    else:
        kwargs["stdin"] = subprocess.DEVNULL if stdin is None else stdin
    start = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "infllm_cli", *map(_arg, args)],
            stdout=subprocess.PIPE if stdout is None else stdout,
            stderr=subprocess.PIPE if stderr is None else stderr,
            cwd=cwd or REPO,
            env=full_env,
            timeout=timeout,
            preexec_fn=lambda: _limits(memory_limit, tuple(close)),
            **kwargs,
        )
    except subprocess.TimeoutExpired as exc:  # pragma: no cover - a failing test
        raise AssertionError(f"infllm {' '.join(map(str, args))} did not finish in {timeout} s") from exc
    return Outcome(proc.returncode, proc.stdout or b"", proc.stderr or b"", time.monotonic() - start)


def _arg(value: object) -> str | bytes:
    return value if isinstance(value, bytes) else os.fspath(value) if isinstance(value, Path) else str(value)


def error_lines(outcome: Outcome) -> list[str]:
    return [line for line in outcome.err.splitlines() if line.startswith("error:")]


def assert_clean_failure(outcome: Outcome, code: int, contains: str | None = None) -> str:
    """Exit ``code``, exactly one ``error:`` line on stderr (returned), no traceback, nothing on stdout."""
    err = outcome.err
    assert "Traceback" not in err, err
    assert "Fatal Python error" not in err, err
    assert outcome.returncode == code, f"exit {outcome.returncode}, wanted {code}; stderr:\n{err}"
    lines = error_lines(outcome)
    assert len(lines) == 1, f"wanted one error: line, got {len(lines)}:\n{err}"
    if contains is not None:
        assert contains.lower() in lines[0].lower(), lines[0]
    assert outcome.stdout == b"", outcome.out
    return lines[0]


def assert_clean_success(outcome: Outcome) -> None:
    err = outcome.err
    assert "Traceback" not in err, err
    assert outcome.returncode == 0, f"exit {outcome.returncode}; stderr:\n{err}"
    assert not error_lines(outcome), err


def snapshot(*roots: Path) -> dict[str, str]:
    """Path -> content hash (or link target / kind) of everything under ``roots``, to prove nothing changed."""
    seen: dict[str, str] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                if os.path.islink(path):
                    seen[path] = "link:" + os.readlink(path)
                elif os.path.isfile(path):
                    with open(path, "rb") as fh:
                        seen[path] = hashlib.sha256(fh.read()).hexdigest()
                elif os.path.isdir(path):
                    seen[path] = "dir"
                else:
                    seen[path] = "special"
    return seen
