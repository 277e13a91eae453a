"""Running the ``pyseq`` command as a real process in tests: every wait has a timeout, and
``stop`` kills what is still running.  The ``sequencers`` fixture (conftest.py) builds on these."""
from __future__ import annotations

import os
import selectors
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

WAIT_S = 15.0
ENV = {**os.environ, "PYSEQ_IDLE": "backoff"}
REPO_TOOLS = Path(__file__).resolve().parent.parent / "tools"


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pyseq.cli", *args]


def run(*args: str, **kwargs: Any) -> subprocess.CompletedProcess:
    return subprocess.run(command(*args), capture_output=True, text=True, timeout=WAIT_S, env=ENV, **kwargs)


def read_until(proc: subprocess.Popen, done: Callable[[str], bool], timeout: float = WAIT_S) -> str:
    """Read ``proc``'s stdout until ``done(all read so far)``; fail after ``timeout`` or at its exit."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    out = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while not done(out.decode()):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{proc.args!r} printed {out.decode()!r}, not what was expected, "
                                     f"within {timeout} s")
            if sel.select(min(left, 0.2)):
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    raise AssertionError(f"{proc.args!r} exited ({proc.wait(WAIT_S)}) after printing "
                                         f"{out.decode()!r}")
                out += chunk
    return out.decode()


def stop(proc: subprocess.Popen) -> None:
    """Kill ``proc`` if it still runs, reap it, close its pipes."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(WAIT_S)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"{what}: not within {timeout} s")
