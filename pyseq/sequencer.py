"""Sequencer: the one writer of a sequenced ring, fed by every client's own inbound ring.

Each client (``pyseq.Client``) writes only its inbound ring ``<ring>.in.<client>``; the sequencer
finds those rings in /dev/shm, joins each as a gating reader, and its C loop (csrc/sequencer.c)
moves messages from them into the sequenced ring in rounds, with the GIL released: every message
gets the next sequence number, the sequencing time and the client's source id.  A per-client
token bucket (rate and burst, from :class:`Limits`) decides how many messages a client may have
moved per round; what it may not stays in its own ring, which back-pressures that client only.

Between slices of the C loop, Python does the housekeeping: new clients, clients whose process
died (their ring is drained, then removed), the stop request.  ``stop()`` (or SIGTERM/SIGINT in
``pyseq sequencer``) drains the inbound rings, publishes an END_OF_STREAM message and closes the
ring, so readers see the end of the stream.

System messages (message types from 0xFF00) are sequenced like any other, so every replica sees
the same facts at the same sequence: CLIENT_JOINED and CLIENT_LEFT (payload: the client's name,
source: its source id) and END_OF_STREAM.

With ``journal=DIR`` a journaler thread (pyseq.journaler) persists the stream, and a restart
continues it: the journal's torn tail is truncated, what a killed predecessor sequenced but had not
journaled is taken from its ring, and numbering resumes right after.  Each client is resumed
exactly once: every sequenced message carries the low 32 bits of its sequence in the client's
inbound ring (``origin`` in the frame), the inbound cursor moves only after the publish, and a new
sequencer skips what its predecessor sequenced after its last cursor store.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
import zlib
from typing import Any, Mapping, Optional

import numpy as np

from . import errors
from ._native import ffi, lib
from .idle import IdleStrategy, default_idle
from .journal import RecoveryReport
from .journaler import DEFAULT_SEGMENT_BYTES, FsyncPolicy, Journaler, open_for_sequencer
from .ring import SHM_PREFIX, Reader, Ring, validate_name

log = logging.getLogger("pyseq.sequencer")

SYSTEM_FIRST = 0xFF00
CLIENT_JOINED = 0xFF01
CLIENT_LEFT = 0xFF02
END_OF_STREAM = 0xFFFF
SEQUENCER_CURSOR = "sequencer"  # the name of the sequencer's cursor in every inbound ring
SHM_DIR = "/dev/shm"
INBOUND_INFIX = ".in."


def inbound_name(ring: str, client: str) -> str:
    """The name of the inbound ring of ``client`` on ``ring``."""
    return f"{ring}{INBOUND_INFIX}{client}"


def validate_sequenced_name(ring: str) -> str:
    """A sequenced ring's name: a ring name without ".in." (that marks inbound rings)."""
    validate_name(ring)
    if INBOUND_INFIX in ring:
        raise errors.RingNameError(f"a sequenced ring's name cannot contain {INBOUND_INFIX!r}: {ring!r}")
    validate_name(inbound_name(ring, "x"))
    return ring


def inbound_clients(ring: str) -> list[str]:
    """The clients that have an inbound ring on the sequenced ring ``ring`` now."""
    prefix = SHM_PREFIX.lstrip("/") + inbound_name(ring, "")
    with os.scandir(SHM_DIR) as entries:
        return sorted(e.name[len(prefix):] for e in entries if e.name.startswith(prefix) and len(e.name) > len(prefix))


def running_limits(sequenced: Ring) -> "Limits":
    """The limits a running sequencer wrote into its ring's header notes (defaults if none)."""
    try:
        return Limits.from_mapping(json.loads(sequenced.notes or "{}"))
    except (ValueError, TypeError):
        return Limits()


def last_origins(ring: str) -> dict[int, int]:
    """{source: origin} of the last message of each client in the ring ``ring`` of a sequencer that
    died (empty if there is no such ring): ``origin`` is the low 32 bits of that message's sequence in
    the client's inbound ring, or 0 if the client's last word was CLIENT_JOINED/CLIENT_LEFT."""
    if not Ring.exists(ring):
        return {}
    try:
        old = Ring.attach(ring)
    except errors.PyseqError:
        return {}
    with old:
        if not old.writer_gone or old.published_sequence < old.first_sequence:
            return {}
        with old.reader("origins", start="earliest") as reader:
            try:
                batch = reader.read_batch(old.capacity, timeout=0)
            except errors.PyseqError as e:
                log.warning("sequencer %r: cannot read the previous ring's tail: %s", ring, e)
                return {}
    types = batch["msg_type"]
    keep = (types < SYSTEM_FIRST) | (types == CLIENT_JOINED) | (types == CLIENT_LEFT)
    origins = np.where(types[keep] < SYSTEM_FIRST, batch["origin"][keep], 0)
    return dict(zip(batch["source"][keep].tolist(), origins.tolist()))  # the last one of each source wins


def _unwrap(low32: int, near: int) -> int:
    """The sequence whose low 32 bits are ``low32`` nearest to ``near``."""
    delta = (low32 - near) & 0xFFFFFFFF
    if delta >= 1 << 31:
        delta -= 1 << 32
    return near + delta


def source_id(client: str) -> int:
    """The source id stamped on a client's messages: the CRC-32 of its name, stable across restarts."""
    return zlib.crc32(client.encode()) or 1


@dataclasses.dataclass(frozen=True)
class Limit:
    """One client's protection: ``rate`` messages per second (0: unlimited) with bursts of ``burst``,
    and an inbound ring of ``capacity`` slots."""

    rate: float = 0.0
    burst: int = 1024
    capacity: int = 4096

    def __post_init__(self) -> None:
        if not isinstance(self.rate, (int, float)) or isinstance(self.rate, bool) or not math.isfinite(self.rate) \
                or not (self.rate == 0 or self.rate >= 1):
            raise ValueError(f"rate must be 0 (unlimited) or a finite number of messages per second >= 1: {self}")
        if not isinstance(self.burst, int) or isinstance(self.burst, bool) or self.burst < 1:
            raise ValueError(f"burst must be an int >= 1: {self}")
        if not isinstance(self.capacity, int) or isinstance(self.capacity, bool):
            raise ValueError(f"capacity must be an int: {self}")
        if self.capacity < 2 or self.capacity & (self.capacity - 1):
            raise ValueError(f"capacity must be a power of two >= 2: {self}")


@dataclasses.dataclass(frozen=True)
class Limits:
    """Per-client limits by client name, with a default for every other client."""

    default: Limit = Limit()
    clients: Mapping[str, Limit] = dataclasses.field(default_factory=dict)

    def for_client(self, name: str) -> Limit:
        return self.clients.get(name, self.default)

    def to_mapping(self) -> dict[str, Any]:
        return {"default": dataclasses.asdict(self.default),
                "clients": {name: dataclasses.asdict(v) for name, v in self.clients.items()}}

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "Limits":
        """``{"default": {"rate": .., "burst": .., "capacity": ..}, "clients": {"name": {...}}}``."""
        unknown = set(data) - {"default", "clients"}
        if unknown:
            raise ValueError(f"unknown keys in the limits: {sorted(unknown)}")
        default = Limit(**data.get("default", {}))
        clients = {name: dataclasses.replace(default, **v) for name, v in data.get("clients", {}).items()}
        return cls(default, clients)

    @classmethod
    def from_file(cls, path: str) -> "Limits":
        """Limits from a JSON file, or a TOML file (Python >= 3.11), of the shape of from_mapping."""
        with open(path, "rb") as f:
            raw = f.read()
        if path.endswith(".toml"):
            import tomllib  # Python >= 3.11

            return cls.from_mapping(tomllib.loads(raw.decode()))
        return cls.from_mapping(json.loads(raw))


@dataclasses.dataclass
class _Client:
    name: str
    index: int
    source: int
    ring: Ring
    reader: Reader
    refused_logged: int = 0


class Sequencer:
    """The sequencer of ring ``ring``: create it, then :meth:`run` (or :meth:`step` from a loop of
    your own), and :meth:`stop` from a signal handler or another thread."""

    def __init__(self, ring: str, *, capacity: int = 65536, slot_size: int = 128, limits: Optional[Limits] = None,
                 max_clients: int = 64, batch: int = 256, max_readers: int = 16,
                 first_sequence: Optional[int] = None, idle: Optional[IdleStrategy] = None, slice_s: float = 0.01,
                 scan_interval_s: float = 0.05, reader_timeout: float = 10.0, journal: Optional[str] = None,
                 fsync: "str | FsyncPolicy" = "batch", segment_bytes: int = DEFAULT_SEGMENT_BYTES,
                 journal_idle: Optional[IdleStrategy] = None, journal_schema: tuple[int, int] = (0, 0)) -> None:
        validate_sequenced_name(ring)
        if not 1 <= max_clients <= 4096 or not 1 <= batch <= 1 << 20:
            raise ValueError(f"max_clients must be 1..4096 and batch 1..2**20, not {max_clients}, {batch}")
        self.name = ring
        self.limits = limits or Limits()
        self.idle = idle or default_idle()
        self.slice_ns = int(slice_s * 1e9)
        self.scan_interval_s = scan_interval_s
        self.journal: Optional[Journaler] = None
        self.recovery: Optional[RecoveryReport] = None
        lock_fd = None
        if journal is not None:
            policy = FsyncPolicy.parse(fsync)
            # recover the journal (and what a killed predecessor left in its ring): numbering resumes
            # right after the last journaled sequence
            lock_fd, self.recovery, last = open_for_sequencer(os.fspath(journal), ring, segment_bytes)
            if first_sequence is not None and last and first_sequence != last + 1:
                os.close(lock_fd)
                raise errors.JournalError(
                    f"first_sequence {first_sequence} conflicts with journal {journal!r}, which ends at {last}: "
                    f"the sequence resumes at {last + 1} (leave first_sequence out)")
            first_sequence = first_sequence or last + 1
        # what a predecessor that died sequenced from each client, by the `origin` stamps in its ring
        self._origins = last_origins(ring)
        try:
            self.ring = Ring.create(ring, capacity, slot_size, max_readers=max_readers,
                                    first_sequence=first_sequence or 1, idle=self.idle, reader_timeout=reader_timeout)
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        if journal is not None:
            try:
                self.journal = Journaler(os.fspath(journal), self.ring, fsync=policy, segment_bytes=segment_bytes,
                                         idle=journal_idle or self.idle, lock_fd=lock_fd,
                                         schema_id=journal_schema[0], schema_version=journal_schema[1])
            except BaseException:
                os.close(lock_fd)  # type: ignore[arg-type]
                self.ring.close()
                raise
            self.ring.never_evict.add(self.journal._reader.index)
            self.journal.start()
        notes = json.dumps(self.limits.to_mapping())
        if len(notes.encode()) >= lib.PYSEQ_RING_NOTES_LENGTH:
            log.warning("sequencer %r: per-client limits too long for the ring header; clients will size their "
                        "inbound rings from the default limit only", ring)
            notes = json.dumps(Limits(self.limits.default).to_mapping())
        self.ring._write_notes(notes)
        self._entries = ffi.new("pyseq_inbound_t[]", max_clients)
        self._scratch = ffi.new("uint8_t[]", slot_size)
        self._state = ffi.new("pyseq_sequencer_t *")
        self._state.out = self.ring._w
        self._state.inbound = self._entries
        self._state.count = 0
        self._state.batch_limit = batch
        self._state.scratch = self._scratch
        self._state.scratch_length = slot_size
        self.max_clients = max_clients
        self.clients: dict[str, _Client] = {}
        self._ignored: set[str] = set()
        self._stop = False
        self._last_scan = 0.0
        self._rescan, self._shm_mtime, self._last_listing, self._scans = True, 0, 0, 0
        self.closed = False

    # ---- the loop ------------------------------------------------------------------------------

    def run(self, duration: Optional[float] = None) -> None:
        """Sequence until :meth:`stop` (or ``duration`` seconds), then drain and close."""
        end = None if duration is None else time.monotonic() + duration
        try:
            while not self._stop and (end is None or time.monotonic() < end):
                self.step()
        finally:
            self.close()

    def step(self) -> int:
        """One slice of the C loop (GIL released), then housekeeping; the messages moved."""
        if self.closed:
            raise errors.RingClosedError(f"sequencer {self.name!r} is closed")
        if self.journal is not None and self.journal.failure is not None:
            raise errors.JournalError(f"sequencer {self.name!r}: its journaler failed: {self.journal.failure}") \
                from self.journal.failure
        now = time.monotonic()
        if now - self._last_scan >= self.scan_interval_s:
            self._last_scan = now
            self._housekeeping()
        return int(lib.pyseq_sequencer_run(self._state, self.slice_ns, self.idle._c))

    def stop(self) -> None:
        """Ask :meth:`run` to finish: safe from a signal handler or another thread."""
        self._stop = True

    def close(self, drain_timeout: float = 5.0) -> None:
        """Drain every inbound ring (up to ``drain_timeout`` s), publish END_OF_STREAM, close the ring."""
        if self.closed:
            return
        self.closed = True
        try:
            deadline = time.monotonic() + drain_timeout
            try:
                self._housekeeping(join=False)
            except Exception:
                log.exception("sequencer %r: housekeeping failed while closing", self.name)
            # drain what every client had submitted when the stop came, with no rate limit
            targets = {}
            for c in self.clients.values():
                self._entries[c.index].rate_per_s = 0
                targets[c.index] = c.ring.published_sequence
            while time.monotonic() < deadline and any(
                    self._entries[i].reader.next_sequence <= t for i, t in targets.items()):
                if lib.pyseq_sequencer_round(self._state) == 0:
                    time.sleep(0.0005)
            left = sum(max(0, t - int(self._entries[i].reader.next_sequence) + 1) for i, t in targets.items())
            if left:
                log.warning("sequencer %r: %d submitted messages not drained at shutdown", self.name, left)
            for client in list(self.clients.values()):
                if client.ring.writer_gone and lib.pyseq_inbound_pending(self._entries + client.index) == 0 \
                        and self._room():
                    self._leave(client)
            try:
                self.ring.publish(END_OF_STREAM, b"", timeout=drain_timeout)
            except errors.BackPressureError:
                log.error("sequencer %r: no room for END_OF_STREAM within %.1f s (a stalled journal or a stuck "
                          "gating reader); closing without it", self.name, drain_timeout)
        finally:
            for client in list(self.clients.values()):
                # the cursor stays, at the position reached, for the next sequencer to take over
                self._sync_cursor(client)
                client.reader.close(release=False)
                client.ring.close()
            self.clients.clear()
            if self.journal is not None:
                self.journal.stop(drain_timeout)
            self.ring.close()

    def __enter__(self) -> "Sequencer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- clients -------------------------------------------------------------------------------

    def pending(self) -> int:
        """Messages waiting in the inbound rings."""
        return sum(int(lib.pyseq_inbound_pending(self._entries + c.index)) for c in self.clients.values())

    def stats(self) -> dict[str, Any]:
        """Counts per client (submitted, sequenced, deferred by the rate limit) and for the loop."""
        out = {}
        for c in self.clients.values():
            e = self._entries[c.index]
            out[c.name] = {"source": c.source, "submitted": c.ring.published_sequence,
                           "sequenced": int(e.sequenced), "deferred": int(e.deferred), "refused": int(e.refused),
                           "pending": int(lib.pyseq_inbound_pending(self._entries + c.index))}
        return {"clients": out, "rounds": int(self._state.rounds), "idle_rounds": int(self._state.idle_rounds),
                "out_full": int(self._state.out_full), "published_sequence": self.ring.published_sequence,
                "journal": self.journal.stats() if self.journal is not None else None}

    def _housekeeping(self, join: bool = True) -> None:
        if not self._room():
            self.ring._evict_stuck_readers(1)  # a dead gating reader must not stop the stream
            if not self._room():
                return  # no room for CLIENT_JOINED / CLIENT_LEFT (a stalled journal): later
        if join and self._shm_changed():
            for name in inbound_clients(self.name):
                if name not in self.clients and name not in self._ignored:
                    self._join(name)
        self._scans += 1
        probe = self._scans % 4 == 0  # a client's liveness (two flock calls) every 4th scan: ~200 ms
        for client in list(self.clients.values()):
            entry = self._entries + client.index
            if entry.refused > client.refused_logged:
                log.warning("sequencer %r: client %r submitted %d messages of a system type only the sequencer "
                            "writes (CLIENT_JOINED, END_OF_STREAM, ...); refused, not sequenced (%d in all)",
                            self.name, client.name, int(entry.refused) - client.refused_logged, int(entry.refused))
                client.refused_logged = int(entry.refused)
            if entry.status < 0:
                log.error("sequencer %r: client %r's inbound ring returned status %d; dropping it",
                          self.name, client.name, int(entry.status))
                self._leave(client)
            elif lib.pyseq_inbound_pending(entry) == 0 and (
                    client.ring.writer_closed or (probe and client.ring.writer_gone)):  # closed: at once; ended
                self._leave(client)

    def _shm_changed(self) -> bool:
        """Whether /dev/shm may hold a new inbound ring since the last scan: its mtime moved, or is too
        recent to trust (tmpfs stamps with a coarse clock), or a scan left work for later (a ring still
        being created, a name still held by a client that was leaving), or a second has passed.  Listing
        /dev/shm at every scan paused the C loop for ~50 us; a stat costs ~1 us."""
        now = time.time_ns()
        try:
            mtime = os.stat(SHM_DIR).st_mtime_ns
        except OSError:
            return True
        if self._rescan or mtime != self._shm_mtime or now - mtime < 100_000_000 \
                or now - self._last_listing > 1_000_000_000:
            self._rescan = False
            self._shm_mtime, self._last_listing = mtime, now
            return True
        return False

    def _room(self) -> bool:
        return bool(lib.pyseq_writer_wait_capacity(self.ring._w, 1, 0, self.idle._c))

    def _join(self, name: str) -> None:
        try:
            ring = Ring.attach(inbound_name(self.name, name))
        except (errors.RingNotFoundError, errors.RingNotReadyError):
            self._rescan = True
            return  # removed meanwhile, or still being created: the next scan sees it
        except errors.PyseqError as e:
            log.error("sequencer %r: ignoring inbound ring of %r: %s", self.name, name, e)
            self._ignored.add(name)
            return
        source = source_id(name)
        problem = None
        if ring.slot_size != self.ring.slot_size:
            problem = f"slot size {ring.slot_size}, the sequenced ring's is {self.ring.slot_size}"
        elif ring.writer_gone and ring.published_sequence < ring.first_sequence:
            problem = "its writer is gone and it holds nothing"
        elif any(c.source == source for c in self.clients.values()):
            problem = f"its source id {source} is already taken"
        free = [i for i in range(self.max_clients) if not self._entries[i].active]
        if problem is None and not free:
            problem = f"the sequencer's {self.max_clients} client entries are all in use"
        if problem:
            log.error("sequencer %r: not taking client %r: %s", self.name, name, problem)
            if ring.writer_gone:
                Ring.remove(ring.name)
            else:
                self._ignored.add(name)
            ring.close()
            return
        start: Any = "earliest"
        # a predecessor's cursor: resume where it stopped.  Its process may still be alive (closed,
        # exiting): it no longer reads, since this sequencer holds the sequenced ring's writer lock.
        for old in ring.readers():
            if old["name"] == SEQUENCER_CURSOR and old["state"] in ("active", "evicted"):
                start = max(ring.first_sequence, old["sequence"] + 1)
                lib.pyseq_cursor_release(ring._mapping().cursors + old["index"])
                origin = self._origins.pop(source, 0)
                if origin:  # sequenced by the predecessor after its last cursor store: skip them
                    done = min(_unwrap(origin, start - 1), ring.published_sequence)
                    if done >= start:
                        log.info("sequencer %r: client %r: %d messages were sequenced before the predecessor "
                                 "stored its cursor; skipping them", self.name, name, done - start + 1)
                        start = done + 1
                log.info("sequencer %r: client %r resumes at its sequence %d", self.name, name, start)
        reader = ring.reader(SEQUENCER_CURSOR, gating=True, start=start)
        index = free[0]
        limit = self.limits.for_client(name)
        entry = self._entries[index]
        entry.reader = reader._c[0]  # the C loop reads with a copy; the Reader object holds the cursor
        entry.source = source
        entry.rate_per_s = round(limit.rate)
        entry.burst = limit.burst
        entry.tokens = limit.burst * lib.PYSEQ_NANO_TOKENS
        entry.refilled_ns = lib.pyseq_clock_monotonic_ns()
        entry.sequenced = entry.deferred = entry.refused = 0
        entry.deferred_upto = 0
        entry.status = 0
        entry.active = 1
        self._state.count = max(int(self._state.count), index + 1)
        self.clients[name] = _Client(name, index, source, ring, reader)
        self.ring.publish(CLIENT_JOINED, name.encode(), source=source)
        log.info("sequencer %r: client %r joined (source %d)", self.name, name, source)

    def _sync_cursor(self, client: _Client) -> None:
        """Copy the C loop's position back into the client's Reader (the loop reads with a copy)."""
        entry = self._entries[client.index]
        client.reader._c.next_sequence = entry.reader.next_sequence

    def _leave(self, client: _Client) -> None:
        self._rescan = True  # a successor of the same name may be waiting
        self._entries[client.index].active = 0
        del self.clients[client.name]
        self.ring.publish(CLIENT_LEFT, client.name.encode(), source=client.source)
        client.reader.close()
        try:
            client.ring.unlink()
        finally:
            client.ring.close()
        log.info("sequencer %r: client %r left; its inbound ring is removed", self.name, client.name)
