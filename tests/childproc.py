"""Child processes for tests: started with the "spawn" context, killed (SIGKILL) and joined in a finally.

A child runs a module-level function of a test module; what the function returns comes back to the
test through one result queue, and an exception comes back as its traceback.  Signals between a test
and its children are ``multiprocessing`` events, and every wait on one has a timeout.
"""
from __future__ import annotations

import multiprocessing as mp
import queue
import time
import traceback
from typing import Any, Callable

SPAWN = mp.get_context("spawn")
JOIN_TIMEOUT = 10.0


def _trampoline(fn: Callable[..., Any], label: str, results: Any, args: tuple) -> None:
    try:
        value = fn(*args)
    except BaseException:
        results.put((label, "error", traceback.format_exc()))
        raise SystemExit(1)
    results.put((label, "ok", value))


class Children:
    """The child processes of one test."""

    def __init__(self) -> None:
        self.results = SPAWN.Queue()
        self.procs: dict[str, Any] = {}
        self._got: dict[str, tuple[str, Any]] = {}

    @staticmethod
    def event() -> Any:
        return SPAWN.Event()

    def start(self, label: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Start ``fn(*args)`` in a new process; its result is ``self.result(label, timeout)``."""
        assert label not in self.procs, f"two children labelled {label!r}"
        p = SPAWN.Process(target=_trampoline, args=(fn, label, self.results, args), name=label, daemon=True)
        p.start()
        self.procs[label] = p
        return p

    def pid(self, label: str) -> int:
        return self.procs[label].pid

    def result(self, label: str, timeout: float) -> Any:
        """What the child returned; an AssertionError with its traceback if it raised, or if it died
        or gave nothing within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        proc = self.procs[label]
        while label not in self._got:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"child {label!r} gave no result within {timeout} s "
                                     f"(alive: {proc.is_alive()}, exit code: {proc.exitcode})")
            try:
                got_label, status, value = self.results.get(timeout=min(0.2, remaining))
            except queue.Empty:
                if not proc.is_alive():
                    try:  # a child that exited may still have its result in the pipe
                        got_label, status, value = self.results.get(timeout=1.0)
                    except queue.Empty:
                        raise AssertionError(
                            f"child {label!r} exited (code {proc.exitcode}) without a result") from None
                else:
                    continue
            self._got[got_label] = (status, value)
        status, value = self._got[label]
        if status == "error":
            raise AssertionError(f"child {label!r} failed:\n{value}")
        return value

    def join(self, label: str, timeout: float = JOIN_TIMEOUT) -> int:
        """Wait for a child to exit; its exit code (negative: killed by that signal)."""
        p = self.procs[label]
        p.join(timeout)
        if p.is_alive():
            raise AssertionError(f"child {label!r} still running after {timeout} s")
        return p.exitcode

    def kill(self, label: str) -> None:
        """SIGKILL a child and reap it."""
        p = self.procs[label]
        p.kill()
        p.join(JOIN_TIMEOUT)

    def close(self) -> None:
        """Kill every child still running and join all of them."""
        stuck = []
        for label, p in self.procs.items():
            if p.is_alive():
                p.kill()
            p.join(JOIN_TIMEOUT)
            if p.is_alive():
                stuck.append(label)
        self.results.close()
        self.results.join_thread()
        if stuck:
            raise AssertionError(f"children {stuck} survived SIGKILL and a {JOIN_TIMEOUT} s join")


class Deadline:
    def __init__(self, seconds: float, what: str) -> None:
        self.end = time.monotonic() + seconds
        self.seconds, self.what = seconds, what

    def check(self) -> None:
        if time.monotonic() > self.end:
            raise AssertionError(f"{self.what}: not done within {self.seconds} s")

    @property
    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())
