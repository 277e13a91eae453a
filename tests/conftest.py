"""Fixtures shared by the ring tests: unique ring names that are always removed, and child processes
that are always killed.

The machine these run on has two cores, so nothing in a test busy-spins: PYSEQ_IDLE is set to
back-off here, before anything imports pyseq, and child processes inherit it.
"""
from __future__ import annotations

import os

os.environ["PYSEQ_IDLE"] = "backoff"

import glob  # noqa: E402
import multiprocessing as mp  # noqa: E402
import subprocess  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable, Iterator  # noqa: E402

import pytest  # noqa: E402

import pyseq  # noqa: E402
from childproc import Children  # noqa: E402
from cliproc import ENV, command, read_until, stop  # noqa: E402

NAME_PREFIX = f"t{os.getpid()}-"


def unique_ring_name() -> str:
    return f"{NAME_PREFIX}{uuid.uuid4().hex[:8]}"


def shm_file(name: str) -> str:
    return f"/dev/shm/pyseq.{name}"


@pytest.fixture
def ring_names() -> Iterator[Callable[[], str]]:
    """A factory of unique ring names; every ring of those names is removed after the test."""
    made: list[str] = []

    def new() -> str:
        made.append(unique_ring_name())
        return made[-1]

    try:
        yield new
    finally:
        for name in made:
            # the ring, and the inbound rings of its clients: a client that closed after its sequencer
            # stopped leaves its ring for the next sequencer, as documented
            for path in [shm_file(name)] + glob.glob(glob.escape(shm_file(name)) + ".in.*"):
                try:
                    pyseq.Ring.remove(path[len("/dev/shm/pyseq."):])
                except OSError:
                    if os.path.lexists(path):
                        os.unlink(path)


@pytest.fixture
def ring_name(ring_names: Callable[[], str]) -> str:
    """A ring name no other test uses; the ring is removed after the test."""
    return ring_names()


@pytest.fixture
def children(ring_names: Callable[[], str]) -> Iterator[Children]:
    """Start child processes; every one is SIGKILLed and joined after the test (before its rings
    are removed: this fixture depends on ring_names, so it is torn down first)."""
    kids = Children()
    try:
        yield kids
    finally:
        kids.close()


@pytest.fixture
def sequencers(ring_names: Callable[[], str], tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start ``pyseq sequencer --ring RING ...`` and wait for its ready line (what it printed up to
    there is the process's ``banner``, its stderr goes to ``log_path``); after the test every one is
    killed and what it leaves in /dev/shm (inbound rings) is removed; the ring_names fixture removes
    the sequenced ring itself."""
    procs: list[tuple[subprocess.Popen, str]] = []

    def start(ring: str, *args: str) -> subprocess.Popen:
        log_path = tmp_path / f"sequencer-{len(procs)}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(command("sequencer", "--ring", ring, *args), stdout=subprocess.PIPE, stderr=log,
                                    env=ENV)
        procs.append((proc, ring))
        ready = f"sequencer {ring} ready pid {proc.pid}\n"
        proc.log_path = log_path  # type: ignore[attr-defined]
        proc.banner = read_until(proc, lambda out: ready in out)  # type: ignore[attr-defined]
        return proc

    try:
        yield start
    finally:
        for proc, ring in procs:
            stop(proc)
            for path in glob.glob(f"/dev/shm/pyseq.{glob.escape(ring)}.*"):
                os.unlink(path)


@pytest.fixture(autouse=True)
def no_child_process_survives_a_test() -> Iterator[None]:
    yield
    left = mp.active_children()
    for p in left:
        p.kill()
        p.join(10)
    assert not left, f"child processes outlived the test: {left}"


@pytest.fixture(autouse=True, scope="session")
def no_ring_survives_the_session() -> Iterator[None]:
    yield
    left = sorted(glob.glob(shm_file(NAME_PREFIX + "*")))
    for path in left:
        os.unlink(path)
    assert not left, f"rings left in /dev/shm by the tests: {left}"
