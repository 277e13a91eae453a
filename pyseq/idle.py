"""Idle strategies: how a reader waits for the next message, or a writer for a gating reader.

Each strategy is a small value object; the waiting itself happens in C with the GIL released.
Busy-spin is the product's default for production readers (lowest latency, burns one core).
On a small machine, or in tests, use :class:`BackoffIdle`; the environment variable
``PYSEQ_IDLE`` (``busy-spin``, ``spin-yield``, ``backoff`` or ``blocking``) changes the default for every
reader and writer that does not name one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ._native import ffi, lib


@dataclass(frozen=True)
class IdleStrategy:
    """Spin ``spins`` times, then ``sched_yield`` ``yields`` times, then sleep from ``min_park_ns``
    doubling up to ``max_park_ns``; which phases apply depends on ``kind``."""

    kind: int
    spins: int = 0
    yields: int = 0
    min_park_ns: int = 1_000
    max_park_ns: int = 1_000_000
    _c: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.spins < 0 or self.yields < 0 or self.min_park_ns <= 0 or self.max_park_ns < self.min_park_ns:
            raise ValueError(f"invalid idle strategy {self!r}")
        c = ffi.new("pyseq_idle_t *")
        c.kind, c.spins, c.yields = self.kind, self.spins, self.yields
        c.min_park_ns, c.max_park_ns = self.min_park_ns, self.max_park_ns
        object.__setattr__(self, "_c", c)

    @property
    def name(self) -> str:
        return {lib.PYSEQ_IDLE_BUSY_SPIN: "busy-spin", lib.PYSEQ_IDLE_SPIN_YIELD: "spin-yield",
                lib.PYSEQ_IDLE_BACKOFF: "backoff", lib.PYSEQ_IDLE_BLOCKING: "blocking"}[self.kind]


def BusySpin() -> IdleStrategy:  # noqa: N802 - reads as a class at the call site
    """Spin on the pause instruction: the lowest latency; one core stays at 100 %."""
    return IdleStrategy(lib.PYSEQ_IDLE_BUSY_SPIN)


def SpinYield(spins: int = 1_000) -> IdleStrategy:  # noqa: N802
    """Spin ``spins`` times, then ``sched_yield`` between checks."""
    return IdleStrategy(lib.PYSEQ_IDLE_SPIN_YIELD, spins=spins)


def BackoffIdle(spins: int = 100, yields: int = 10, min_park_ns: int = 1_000,  # noqa: N802
                max_park_ns: int = 1_000_000) -> IdleStrategy:
    """Spin, then yield, then sleep with exponential back-off: what tests and small machines use."""
    return IdleStrategy(lib.PYSEQ_IDLE_BACKOFF, spins=spins, yields=yields,
                        min_park_ns=min_park_ns, max_park_ns=max_park_ns)


def BlockingIdle(spins: int = 100, yields: int = 10, max_park_ns: int = 10_000_000) -> IdleStrategy:  # noqa: N802
    """A reader spins, yields, then sleeps in the kernel (a futex in the ring) until the writer
    publishes: no CPU while idle and a wake-up as soon as a message comes, like a pipe's reader (the
    Disruptor's BlockingWaitStrategy).  The writer pays one relaxed load per publish while no reader
    of the ring blocks, a fence while one does, and a FUTEX_WAKE system call only when a reader is
    asleep.  ``max_park_ns`` bounds one sleep (a writer of an older layout never wakes anyone).
    Where something else waits (a writer for a gating reader, the sequencer, the journaler) it backs
    off like :func:`BackoffIdle`."""
    return IdleStrategy(lib.PYSEQ_IDLE_BLOCKING, spins=spins, yields=yields, min_park_ns=1_000,
                        max_park_ns=max_park_ns)


_BY_NAME = {"busy-spin": BusySpin, "spin-yield": SpinYield, "backoff": BackoffIdle, "blocking": BlockingIdle}


def idle_named(name: str, said_as: str = "idle strategy ") -> IdleStrategy:
    """The strategy called ``name`` (busy-spin, spin-yield, backoff, blocking) with its defaults;
    ValueError naming it (``said_as`` + its repr) if there is none of that name."""
    try:
        return _BY_NAME[name]()
    except KeyError:
        raise ValueError(f"{said_as}{name!r}: expected one of {', '.join(_BY_NAME)}") from None


def default_idle() -> IdleStrategy:
    """The strategy named by ``PYSEQ_IDLE``, busy-spin if it is unset."""
    return idle_named(os.environ.get("PYSEQ_IDLE", "busy-spin"), "PYSEQ_IDLE=")
