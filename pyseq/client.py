"""Client: a process's way into the sequencer, through an inbound ring of its own.

A client is the one writer of ``<ring>.in.<client>``; the sequencer reads it (a gating reader, so
nothing a client submitted is lost) and moves its messages into the sequenced ring.  ``submit`` is
the ring's C ``publish``: it returns the message's sequence in the client's own ring once the
message is there; the global sequence comes with the message in the sequenced ring.  While the
inbound ring is full (the client is over its rate limit, or the sequencer is behind), ``submit``
waits and ``try_submit`` returns None.  Every ``watch_interval`` seconds a submit also checks that
the sequencer is alive and raises :class:`SequencerStoppedError` if it is not.
"""
from __future__ import annotations

import re
import time
from typing import Any, Optional

from . import errors
from .idle import IdleStrategy
from .ring import Ring
from .sequencer import SEQUENCER_CURSOR, inbound_name, running_limits, source_id, validate_sequenced_name

CLIENT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")


class Client(Ring):
    """Connect with :meth:`connect`; ``submit``/``try_submit`` are ``publish``/``try_publish`` of the
    client's inbound ring."""

    submit = Ring.publish
    try_submit = Ring.try_publish
    submit_batch = Ring.publish_batch

    client_name: str
    source: int
    stale_after: float
    _sequenced: Optional[Ring] = None

    @classmethod
    def connect(cls, ring: str, client_name: str, *, capacity: Optional[int] = None, timeout: float = 5.0,
                stale_after: float = 2.0, watch_interval: float = 0.1,
                idle: Optional[IdleStrategy] = None) -> "Client":
        """Create this client's inbound ring on the sequenced ring ``ring`` and wait (up to
        ``timeout`` s) until the sequencer has joined it.  ``capacity`` defaults to the inbound
        capacity the sequencer's limits give this client name.  ``stale_after``: a sequencer whose
        heartbeat is older counts as stopped."""
        if not isinstance(client_name, str) or not CLIENT_NAME.fullmatch(client_name):
            raise errors.RingNameError(
                f"client name {client_name!r} may hold only letters, digits, '_' and '-'")
        validate_sequenced_name(ring)
        name = inbound_name(ring, client_name)
        try:
            sequenced = Ring.attach(ring)
        except errors.RingNotFoundError:
            raise errors.SequencerNotRunningError(f"no sequenced ring {ring!r}: is the sequencer running?") from None
        try:
            if sequenced.writer_gone:
                raise errors.SequencerNotRunningError(f"the sequencer of ring {ring!r} is not running")
            if capacity is None:
                capacity = running_limits(sequenced).for_client(client_name).capacity
            try:
                client = cls.create(name, capacity, sequenced.slot_size, max_readers=2, idle=idle,
                                    reader_timeout=1e9)
            except errors.RingExistsError as e:
                raise errors.ClientNameInUseError(
                    f"client name {client_name!r} is in use on ring {ring!r} by a live process ({e})") from None
        except BaseException:
            sequenced.close()
            raise
        client.client_name = client_name
        client.source = source_id(client_name)
        client.stale_after = stale_after
        client._sequenced = sequenced
        deadline = time.monotonic() + timeout
        while not any(r["name"] == SEQUENCER_CURSOR and r["state"] == "active" for r in client.readers()):
            if time.monotonic() >= deadline or sequenced.writer_gone:
                client.close()
                client.unlink()
                raise errors.SequencerNotRunningError(
                    f"the sequencer of ring {ring!r} did not take client {client_name!r} within {timeout} s")
            time.sleep(0.002)
        client._w.watch_ns = int(watch_interval * 1e9)
        return client

    @property
    def sequenced(self) -> Ring:
        """The sequenced ring this client submits to (attached; read it with ``.reader()``)."""
        if self._sequenced is None:
            raise errors.RingClosedError("the client is closed")
        return self._sequenced

    def check(self) -> None:
        """Raise :class:`SequencerStoppedError` if the sequencer closed, died or stopped beating."""
        seq = self.sequenced
        if seq.writer_gone:
            raise errors.SequencerStoppedError(
                f"the sequencer of ring {seq.name!r} has stopped (closed or its process is gone)")
        age = seq.writer_heartbeat_age
        if age > self.stale_after:
            raise errors.SequencerStoppedError(
                f"the sequencer of ring {seq.name!r} is not running: its heartbeat is {age:.2f} s old "
                f"(stale after {self.stale_after} s)")

    def wait_sequenced(self, timeout: Optional[float] = 5.0) -> None:
        """Wait until everything this client submitted is in the sequenced ring (``submit`` returns
        once a message is in the client's own ring, before it is sequenced).  Raises
        :class:`pyseq.TimeoutError` after ``timeout`` seconds (None: no limit), or
        :class:`SequencerStoppedError` if the sequencer stops meanwhile."""
        target = self.published_sequence
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.0001
        while True:
            done = max((r["sequence"] for r in self.readers() if r["name"] == SEQUENCER_CURSOR and
                        r["state"] == "active"), default=self.first_sequence - 1)
            if done >= target:
                return
            self.check()
            if deadline is not None and time.monotonic() >= deadline:
                raise errors.TimeoutError(f"client {self.client_name!r}: {target - done} submitted messages not "
                                          f"sequenced within {timeout} s")
            time.sleep(pause)
            pause = min(pause * 2, 0.01)

    def _watch(self) -> None:
        self.check()

    def _evict_stuck_readers(self, count: int) -> bool:
        """The sequencer is never evicted from a client's ring (its messages would be lost): a
        client held back by a stopped sequencer raises instead."""
        self.check()
        return False

    def close(self) -> None:
        """Close the inbound ring (the sequencer drains it, then removes it) and the sequenced ring.
        If the sequencer is already gone, the client removes its ring itself when everything in it
        was sequenced; a ring still holding messages stays for the next sequencer, which resumes it."""
        sequenced, orphaned = self._sequenced, False
        if sequenced is not None and not self.closed and sequenced.writer_gone:
            done = [r["sequence"] for r in self.readers() if r["name"] == SEQUENCER_CURSOR]
            orphaned = max(done, default=self.first_sequence - 1) >= self.published_sequence
        super().close()
        if sequenced is not None:
            if orphaned:
                Ring.remove(inbound_name(sequenced.name, self.client_name), force=True)
            sequenced.close()
            self._sequenced = None

    def __repr__(self) -> str:
        return f"<pyseq.Client {getattr(self, 'client_name', '?')!r} of {getattr(self._sequenced, 'name', '?')!r}>"

    def __reduce__(self) -> Any:
        raise TypeError("a Client belongs to the process that connected it")
