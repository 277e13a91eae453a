"""Replica: drives a state machine from a snapshot, then the journal, then the live ring.

::

    replica = pyseq.Replica(ReferenceData(), ring="market", journal="./journal", snapshots="./snap-a")
    replica.run_until_caught_up()     # snapshot -> journal -> live ring: no gap, no duplicate
    replica.follow(duration=1.0)      # keep applying the live stream

Every message is applied exactly once, in sequence order (a gap or a repeat raises
:class:`ReplicaError`, which never happens unless the inputs are inconsistent).  The switch from the
journal to the ring (replay-merge) needs no coordination: the replica replays the journal as far as
it goes, then reads the ring from the next sequence; the journaler is a gating reader of the ring, so
the ring still holds every message the journal does not have yet.  If the ring overtakes the
replica (a slow replica, a non-gating reader), it goes back to the journal and merges again.

Admin messages act at their sequence in every replica: :class:`pyseq.TakeSnapshot` writes a snapshot
(``snapshots=`` directory), :class:`pyseq.ActivateSchema` switches a message type's schema version
at its ``at_sequence`` (``machine.schema_versions``).  With ``digest_client=`` (a
:class:`pyseq.Client`) a replica publishes its digest after each snapshot, for a
:class:`DigestMonitor` to compare.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Iterable, Optional

from . import errors, snapshot
from .admin import ACTIVATE_SCHEMA, TAKE_SNAPSHOT, REPLICA_DIGEST, ActivateSchema, ReplicaDigest
from .idle import BackoffIdle, IdleStrategy
from .journal import Journal
from .message import Message
from .ring import Reader, Ring
from .sequencer import END_OF_STREAM
from .statemachine import StateMachine

log = logging.getLogger("pyseq.replica")


class Replica:
    """One replica of ``machine``: sources (any of ``ring``, ``journal``, ``snapshots``), the last
    sequence applied, and the machine's state and digest."""

    def __init__(self, machine: StateMachine, *, ring: Optional[str] = None, journal: Optional[str] = None,
                 snapshots: Optional[str] = None, name: Optional[str] = None,
                 snapshot_from: Optional[str] = None, digest_client: Any = None, gating: bool = False,
                 durable: bool = False, idle: Optional[IdleStrategy] = None, nats: Optional[str] = None,
                 stream: Optional[str] = None) -> None:
        """``snapshots``: the directory this replica writes its snapshots to and, unless
        ``snapshot_from`` names another directory (or file), starts from.  ``gating``: hold the ring's
        writer back rather than fall behind it; ``durable``: apply only what the journal holds.
        ``nats`` and ``stream``: on another host, read the JetStream stream a :class:`pyseq.Bridge`
        fills instead of a ring and a journal (after the snapshot, if any)."""
        if (nats is None) != (stream is None):
            raise ValueError("a remote replica needs both nats= (a URL) and stream=")
        if nats is not None and (ring is not None or journal is not None):
            raise ValueError("a replica reads a ring and a journal, or a NATS stream, not both")
        if ring is None and journal is None and nats is None:
            raise ValueError("a replica needs a ring, a journal, or both (or a NATS stream)")
        self.machine = machine
        self.ring_name = ring
        self.journal_path = journal
        self.snapshots = snapshots
        self.snapshot_from = snapshot_from if snapshot_from is not None else snapshots
        self.name = name or f"{machine.name}-{os.getpid()}"
        self.digest_client = digest_client
        self.gating = gating
        self.durable = durable
        self.idle = idle or BackoffIdle()
        self.last_applied = 0
        self.last_timestamp_ns = 0
        self.started_from: Optional[int] = None  # the sequence of the snapshot it started from (None: none)
        self.snapshots_written: list[str] = []
        self.ended = False  # the last message applied is END_OF_STREAM (the sequencer stopped; a restart continues)
        self.applied = 0
        self._pending: list[tuple[int, int, int]] = []  # (at_sequence, message_type, schema_version)
        self._ring: Optional[Ring] = None
        self._reader: Optional[Reader] = None
        self._bootstrapped = False
        self.nats_url, self.stream = nats, stream
        self._remote: Any = None  # a pyseq.RemoteReader

    # ---- state ---------------------------------------------------------------------------------

    @property
    def state(self) -> StateMachine:
        return self.machine

    def digest(self) -> str:
        return self.machine.digest()

    @property
    def lag(self) -> int:
        """Messages the ring (or the NATS stream) holds that this replica has not applied (0 without
        either)."""
        if self.nats_url is not None:
            if self._remote is None:
                return 0
            return max(0, self._remote.last_sequence() - self.last_applied)
        ring = self._attach()
        if ring is None:
            return 0
        published = ring.published_sequence
        if ring.writer_gone:  # a restarted sequencer has a new ring by the same name
            try:
                with Ring.attach(ring.name) as current:
                    published = max(published, current.published_sequence)
            except errors.PyseqError:
                pass
        return max(0, published - self.last_applied)

    # ---- driving -------------------------------------------------------------------------------

    def run_until_caught_up(self, timeout: Optional[float] = 60.0) -> int:
        """Start (snapshot, then journal), then apply until nothing published is left unapplied
        (the ring's published sequence, read after the last apply), or the stream ended.  Returns
        the last sequence applied; :class:`pyseq.TimeoutError` if not caught up in ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._bootstrap()
        if self.nats_url is not None:
            if self._follow_remote(deadline, until_caught_up=True) != "caught-up":
                raise errors.TimeoutError(f"replica {self.name!r}: not caught up with stream {self.stream!r} within "
                                          f"{timeout} s (applied {self.last_applied})")
            return self.last_applied
        while True:
            if self.journal_path is not None and self._reader is None:  # a live reader is already merged
                self._replay_journal()
            if self.ring_name is None:
                return self.last_applied
            status = self._follow_ring(deadline, until_caught_up=True)
            if status == "caught-up":
                return self.last_applied
            if deadline is not None and time.monotonic() >= deadline:
                raise errors.TimeoutError(
                    f"replica {self.name!r}: not caught up within {timeout} s (applied {self.last_applied}, "
                    f"lag {self.lag})")

    def follow(self, duration: Optional[float] = None, until_sequence: Optional[int] = None) -> int:
        """Keep applying the live stream for ``duration`` s (None: until ``until_sequence`` is applied
        or the stream ends); returns the last sequence applied."""
        deadline = None if duration is None else time.monotonic() + duration
        self._bootstrap()
        if self.nats_url is not None:
            self._follow_remote(deadline, until_caught_up=False, until_sequence=until_sequence)
            return self.last_applied
        while True:
            if until_sequence is not None and self.last_applied >= until_sequence:
                return self.last_applied
            if deadline is not None and time.monotonic() >= deadline:
                return self.last_applied
            if self.ring_name is None:
                self._replay_journal()
                if until_sequence is None or self.last_applied >= until_sequence:
                    return self.last_applied
                time.sleep(0.01)
                continue
            status = self._follow_ring(deadline, until_caught_up=False, until_sequence=until_sequence)
            if status == "lapped" and self.journal_path is not None:
                self._replay_journal()
            elif status == "ended" and until_sequence is None and duration is None:
                return self.last_applied

    def apply_messages(self, messages: Iterable[Message]) -> None:
        """Apply messages from any source (they must continue the sequence)."""
        for msg in messages:
            self._apply(msg)

    def close(self) -> None:
        self._close_ring()
        if self._remote is not None:
            self._remote.close()
            self._remote = None

    def __enter__(self) -> "Replica":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the three sources ---------------------------------------------------------------------

    def start(self) -> None:
        """Restore the starting snapshot, if any (run_until_caught_up and follow do it first)."""
        self._bootstrap()

    def _bootstrap(self) -> None:
        if self._bootstrapped:
            return
        self._bootstrapped = True
        if self.snapshot_from is None:
            return
        if self.snapshot_from.endswith(snapshot.SUFFIX):  # a file, named explicitly: it must be there
            path: Optional[str] = self.snapshot_from
            if not os.path.isfile(self.snapshot_from):
                raise errors.SnapshotError(f"snapshot {self.snapshot_from!r}: no such file")
        else:  # a directory: its newest snapshot, if any (none yet: start from the beginning)
            path = snapshot.latest(self.snapshot_from)
        if path is None:
            if self.snapshot_from != self.snapshots:
                log.warning("replica %r: no snapshot in %r; starting from the beginning of the stream", self.name,
                            self.snapshot_from)
            return
        snap = snapshot.read(path)
        snapshot.restore(snap, self.machine)
        self._pending = list(snap.pending_activations)
        self.last_applied = snap.sequence
        self.last_timestamp_ns = snap.timestamp_ns
        self.started_from = snap.sequence
        log.info("replica %r: restored %s (sequence %d, digest %s…)", self.name, os.path.basename(path),
                 snap.sequence, snap.digest[:16])

    def _replay_journal(self) -> None:
        assert self.journal_path is not None
        try:
            journal = Journal(self.journal_path)
        except errors.JournalNotFoundError:
            if self.ring_name is None:
                raise
            return
        for msg in journal.records(start=self.last_applied + 1):
            self._apply(msg)

    def _attach(self) -> Optional[Ring]:
        if self.ring_name is None:
            return None
        if self._ring is not None and not self._ring.closed:
            return self._ring
        try:
            self._ring = Ring.attach(self.ring_name)
        except (errors.RingNotFoundError, errors.RingNotReadyError):
            return None
        return self._ring

    def _close_ring(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._ring is not None:
            self._ring.close()
            self._ring = None

    def _follow_ring(self, deadline: Optional[float], until_caught_up: bool,
                     until_sequence: Optional[int] = None) -> str:
        """Apply from the ring: "caught-up", "lapped" (back to the journal), "ended" (the writer is
        gone: the stream ended or the sequencer restarts), or "deadline"."""
        ring = self._attach()
        if ring is None:
            if until_caught_up and self.journal_path is not None:
                return "caught-up"  # no ring (the sequencer is gone): the journal has it all
            time.sleep(0.01)
            return "deadline" if deadline is not None and time.monotonic() >= deadline else "ended"
        if self._reader is not None and self._reader.next_sequence != self.last_applied + 1:
            self._reader.close()  # applied from elsewhere meanwhile: merge again
            self._reader = None
        if self._reader is None:
            first = self.last_applied + 1
            published = ring.published_sequence
            oldest = max(ring.first_sequence, published - ring.capacity + 1)
            if first < oldest:
                if self.journal_path is None:
                    raise errors.ReplicaError(
                        f"replica {self.name!r}: ring {ring.name!r} holds sequences from {oldest}, it needs {first}, "
                        f"and it has no journal to fill the gap")
                self._replay_journal()
                return "lapped"
            if first > published + 1:
                if ring.writer_gone:  # an old ring left by a stopped sequencer: wait for the new one
                    self._close_ring()
                    time.sleep(0.01)
                    return "ended"
                raise errors.ReplicaError(f"replica {self.name!r} has applied up to {self.last_applied} but ring "
                                          f"{ring.name!r} has published only up to {published}")
            self._reader = ring.reader(f"replica-{self.name}"[:31], start=first, gating=self.gating,
                                       durable=self.durable, idle=self.idle)
        reader = self._reader
        while True:
            try:
                msg = reader.poll()
            except errors.LappedError as e:
                log.info("replica %r: overtaken by the ring (%s); back to the journal", self.name, e)
                self._reader.close()
                self._reader = None
                return "lapped"
            if msg is not None:
                self._apply(msg)
                if until_sequence is not None and self.last_applied >= until_sequence:
                    return "caught-up"
                if deadline is not None and self.applied & 63 == 0 and time.monotonic() >= deadline:
                    return "deadline"
                continue
            if until_caught_up and self.last_applied >= (ring.journaled_sequence if self.durable
                                                         else ring.published_sequence):
                return "caught-up"
            if until_sequence is not None and self.last_applied >= until_sequence:
                return "caught-up"
            if deadline is not None and time.monotonic() >= deadline:
                return "deadline"
            wait = 0.05 if deadline is None else min(0.05, max(0.0, deadline - time.monotonic()))
            try:
                msg = reader.read(timeout=wait)
            except errors.TimeoutError:
                continue
            except errors.EndOfStreamError:
                self._close_ring()
                return "caught-up" if until_caught_up else "ended"
            except errors.LappedError:
                self._reader.close()
                self._reader = None
                return "lapped"
            self._apply(msg)
            if until_sequence is not None and self.last_applied >= until_sequence:
                return "caught-up"

    def _follow_remote(self, deadline: Optional[float], until_caught_up: bool,
                       until_sequence: Optional[int] = None) -> str:
        """Apply from the JetStream stream: "caught-up" (the stream's last sequence, asked after the
        last apply, is applied; or ``until_sequence`` is) or "deadline"."""
        from .remote import RemoteReader

        if self._remote is None or self._remote.next_sequence != self.last_applied + 1:
            if self._remote is not None:
                self._remote.close()
            self._remote = RemoteReader(self.nats_url, self.stream, start=self.last_applied + 1)  # type: ignore[arg-type]
        remote = self._remote
        target = remote.last_sequence() if until_caught_up else None
        while True:
            if until_sequence is not None and self.last_applied >= until_sequence:
                return "caught-up"
            if target is not None and self.last_applied >= target:
                target = remote.last_sequence()
                if self.last_applied >= target:
                    return "caught-up"
            wait = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
            if wait <= 0:
                return "deadline"
            for msg in remote.read_messages(1024, timeout=wait):
                self._apply(msg)
            if self.ended and until_sequence is None and deadline is None:
                return "ended"  # the sequencer's END_OF_STREAM: nothing more will come

    # ---- applying ------------------------------------------------------------------------------

    def _apply(self, msg: Message) -> None:
        if msg.seq != self.last_applied + 1:
            if msg.seq <= self.last_applied:
                raise errors.ReplicaError(f"replica {self.name!r}: sequence {msg.seq} again (applied up to "
                                          f"{self.last_applied})")
            raise errors.ReplicaError(f"replica {self.name!r}: sequences {self.last_applied + 1}..{msg.seq - 1} are "
                                      f"missing (a journal that starts later than the snapshot?)")
        while self._pending and self._pending[0][0] <= msg.seq:
            _, message_type, version = self._pending.pop(0)
            self.machine.schema_versions[message_type] = version
        a = None
        if msg.msg_type == ACTIVATE_SCHEMA:
            try:
                a = ActivateSchema.decode(msg.payload)
            except errors.SchemaError as e:  # ignored, the same way in every replica
                log.warning("replica %r: sequence %d: an ActivateSchema that does not decode (%s) is ignored",
                            self.name, msg.seq, e)
        if a is not None:
            if a.at_sequence <= msg.seq:  # "now": from the next message on
                self.machine.schema_versions[a.message_type] = a.schema_version
            else:
                self._pending.append((a.at_sequence, a.message_type, a.schema_version))
                self._pending.sort()
        self.machine.apply(msg)
        self.last_applied = msg.seq
        self.last_timestamp_ns = msg.timestamp_ns
        self.applied += 1
        self.ended = msg.msg_type == END_OF_STREAM
        if msg.msg_type == TAKE_SNAPSHOT:
            self._take_snapshot()

    def _take_snapshot(self) -> None:
        if self.snapshots is not None:
            path = snapshot.write(self.snapshots, self.machine, self.last_applied, self.last_timestamp_ns,
                                  self._pending)
            self.snapshots_written.append(path)
            log.info("replica %r: snapshot at %d written to %s", self.name, self.last_applied, path)
        if self.digest_client is not None:
            self.digest_client.submit(ReplicaDigest(replica=_fit(self.name, 24), machine=_fit(self.machine.name, 16),
                                                    sequence=self.last_applied,
                                                    digest=bytes.fromhex(self.machine.digest())[:32]))

    def publish_digest(self, client: Any) -> None:
        """Submit this replica's current digest through ``client`` (a :class:`pyseq.Client`)."""
        client.submit(ReplicaDigest(replica=_fit(self.name, 24), machine=_fit(self.machine.name, 16),
                                    sequence=self.last_applied, digest=bytes.fromhex(self.machine.digest())[:32]))


def _fit(text: str, size: int) -> str:
    """``text`` cut to at most ``size`` UTF-8 bytes (on a character boundary)."""
    return text.encode()[:size].decode(errors="ignore")


class DigestMonitor:
    """Compares the digests replicas publish (:class:`pyseq.ReplicaDigest`): two different digests
    of the same machine at the same sequence are a divergence, logged as an error, passed to
    ``on_divergence`` and kept in :attr:`divergences`."""

    def __init__(self, on_divergence: Optional[Callable[[int, str, dict[str, str]], None]] = None) -> None:
        self.seen: dict[tuple[str, int], dict[str, str]] = {}
        self.divergences: list[tuple[int, str, dict[str, str]]] = []
        self.on_divergence = on_divergence

    def apply(self, msg: Message) -> None:
        if msg.msg_type != REPLICA_DIGEST:
            return
        try:
            d = ReplicaDigest.decode(msg.payload)
        except errors.SchemaError as e:
            log.warning("digest monitor: sequence %d: a ReplicaDigest that does not decode (%s)", msg.seq, e)
            return
        key = (d.machine, d.sequence)
        by_replica = self.seen.setdefault(key, {})
        by_replica[d.replica] = d.digest.hex()
        if len(set(by_replica.values())) > 1:
            event = (d.sequence, d.machine, dict(by_replica))
            if not self.divergences or self.divergences[-1][:2] != event[:2]:
                log.error("DIVERGENCE: state machine %r at sequence %d: %s", d.machine, d.sequence, by_replica)
            self.divergences.append(event)
            if self.on_divergence is not None:
                self.on_divergence(*event)

    def check(self) -> None:
        """Raise :class:`DivergenceError` if any divergence was seen."""
        if self.divergences:
            seq, machine, digests = self.divergences[0]
            raise errors.DivergenceError(f"state machine {machine!r} diverged at sequence {seq}: {digests}")
