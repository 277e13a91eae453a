"""The journaler: a thread of the sequencer that persists the sequenced ring to a journal.

It is a gating reader of the sequenced ring, so the ring never overwrites a message that is not
written yet.  Its loop is C (csrc/journal.c) with the GIL released: records are encoded with their
CRC32C into a buffer, written with one ``pwrite`` per batch, fdatasync'ed as the policy says, and
only then is the gating cursor advanced and ``journaled_sequence`` published in the ring's header
for durable readers (``ring.reader(durable=True)``).

Fsync policies (``fsync=``): ``"never"`` (journaled once written: survives a crash of the process,
not of the host), ``"interval:MS"`` (an fdatasync at most every MS milliseconds; durable readers
see a message after the fdatasync that covers it), ``"batch"`` (an fdatasync after every write: each
batch is on disk before anyone may act on it; batches grow with the load, as in group commit).

A write that fails (disk full, file size limit, I/O error) is retried with back-off; meanwhile the
ring fills, the sequencer stops taking messages and clients are back-pressured: nothing accepted is
dropped.  The stall and the recovery are logged and counted (``journal_errors`` in the header).
"""
from __future__ import annotations

import dataclasses
import errno
import fcntl
import logging
import os
import threading
import time
from typing import Any, Optional

from . import errors
from ._native import ffi, lib
from .idle import IdleStrategy, default_idle
from .journal import (LOCK_NAME, SEGMENT_HEADER_LENGTH, Journal, RecoveryReport, _remove_segment, index_header,
                      read_segment_header, recover, segment_header, segment_name)
from .ring import Reader, Ring

log = logging.getLogger("pyseq.journal")

JOURNAL_CURSOR = "journaler"
ID_NAME = "ID"
DEFAULT_SEGMENT_BYTES = 64 << 20
DEFAULT_BUFFER_BYTES = 1 << 20
_RETRY_FIRST_S = 0.01
_RETRY_MAX_S = 1.0


@dataclasses.dataclass(frozen=True)
class FsyncPolicy:
    """When the journal fdatasyncs: ``mode`` is ``never``, ``interval`` or ``batch``."""

    mode: str
    interval_ms: float = 0.0

    @classmethod
    def parse(cls, text: "str | FsyncPolicy") -> "FsyncPolicy":
        """``never``, ``batch`` or ``interval:MS`` (milliseconds, > 0)."""
        if isinstance(text, FsyncPolicy):
            return text
        if not isinstance(text, str):
            raise errors.JournalError(f"fsync policy must be a string, not {type(text).__name__}")
        if text in ("never", "batch"):
            return cls(text)
        if text.startswith("interval:"):
            try:
                ms = float(text.split(":", 1)[1])
            except ValueError:
                ms = -1.0
            if ms > 0 and ms < 3.6e6:
                return cls("interval", ms)
        raise errors.JournalError(f"fsync policy must be 'never', 'batch' or 'interval:MS' (MS > 0), not {text!r}")

    @property
    def code(self) -> int:
        return {"never": lib.PYSEQ_FSYNC_NEVER, "interval": lib.PYSEQ_FSYNC_INTERVAL,
                "batch": lib.PYSEQ_FSYNC_BATCH}[self.mode]

    def __str__(self) -> str:
        return f"interval:{self.interval_ms:g}" if self.mode == "interval" else self.mode


def lock_journal(path: str) -> int:
    """Create the journal directory if needed and take its writer lock (an flock on ``LOCK``, dropped
    by the kernel when the process ends); :class:`JournalLockedError` if another process holds it."""
    os.makedirs(path, exist_ok=True)
    fd = os.open(os.path.join(path, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise errors.JournalLockedError(f"journal {path!r} is being written by another process (pid {holder})") \
            from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def journal_id(path: str) -> int:
    """The journal directory's id (its ``ID`` file, made on first use): the journaler writes it into
    the ring's header, so a restart knows whether a leftover ring was written to this journal."""
    id_path = os.path.join(path, ID_NAME)
    try:
        with open(id_path) as f:
            return int(f.read().strip(), 16)
    except (FileNotFoundError, ValueError):
        value = int.from_bytes(os.urandom(8), "little") or 1
        with open(id_path + ".tmp", "w") as f:
            f.write(f"{value:016x}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(id_path + ".tmp", id_path)
        return value


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _SegmentWriter:
    """The C journal state plus the files it writes: opening, rolling and closing segments."""

    def __init__(self, path: str, reader: Reader, publish_to: Any, policy: FsyncPolicy, segment_bytes: int,
                 buffer_bytes: int, schema_id: int, schema_version: int) -> None:
        ring = reader.ring
        self.path = path
        self.reader = reader
        self.policy = policy
        self.ring_name = ring.name
        self.max_payload = ring.max_payload
        self.schema = (schema_id, schema_version)
        self.buffer_bytes = max(buffer_bytes, ring.slot_size + 64)
        self._buffer = ffi.new("uint8_t[]", self.buffer_bytes)
        j = self.c = ffi.new("pyseq_journal_t *")
        j.reader = reader._c[0]  # the C loop reads with a copy; the Reader object holds the cursor
        j.publish_to = publish_to
        j.fd = -1
        j.index_fd = -1
        j.fsync_mode = policy.code
        j.fsync_interval_ns = int(policy.interval_ms * 1e6)
        j.segment_limit = segment_bytes
        j.max_payload = self.max_payload
        j.buffer = self._buffer
        j.buffer_capacity = self.buffer_bytes
        j.written_sequence = j.synced_sequence = reader.next_sequence - 1
        j.synced_ns = lib.pyseq_clock_monotonic_ns()
        self.segment: Optional[str] = None
        self._open_last_or_new()

    def _open_last_or_new(self) -> None:
        files = Journal(self.path).segment_files()
        next_seq = int(self.c.written_sequence) + 1
        if files:
            seg = read_segment_header(files[-1])
            if seg.size <= SEGMENT_HEADER_LENGTH:  # no record in it (recovered): start it again
                _remove_segment(seg.path)
            elif seg.max_payload == self.max_payload and (seg.schema_id, seg.schema_version) == self.schema and \
                    seg.size < int(self.c.segment_limit) and Journal(self.path).last_sequence() + 1 == next_seq:
                self._open(seg.path, seg.size, append=True)  # (recovered: it ends with a whole record)
                return
        self._new_segment(next_seq)

    def _new_segment(self, first_sequence: int) -> None:
        path = os.path.join(self.path, segment_name(first_sequence))
        if os.path.exists(path):
            raise errors.JournalError(f"journal {self.path!r}: {os.path.basename(path)} exists already")
        with open(path + ".tmp", "wb") as f:
            f.write(segment_header(first_sequence, self.max_payload, self.ring_name, *self.schema))
            f.flush()
            if self.policy.mode != "never":
                os.fsync(f.fileno())
        with open(path[: -4] + ".idx", "wb") as f:
            f.write(index_header(first_sequence))
        os.rename(path + ".tmp", path)  # a segment appears whole, header and all
        if self.policy.mode != "never":
            _fsync_dir(self.path)
        self._open(path, SEGMENT_HEADER_LENGTH, append=False)
        log.info("journal %r: segment %s started", self.path, os.path.basename(path))

    def _open(self, path: str, size: int, append: bool) -> None:
        self._close_files()
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        index_path = path[: -4] + ".idx"
        try:
            index_fd = os.open(index_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError:
            index_fd = -1
        index_size = os.fstat(index_fd).st_size if index_fd >= 0 else 0
        if index_fd >= 0 and index_size < len(index_header(0)):
            os.pwrite(index_fd, index_header(read_segment_header(path).first_sequence), 0)
            index_size = len(index_header(0))
        j = self.c
        j.fd = fd
        j.index_fd = index_fd
        j.offset = size
        j.index_offset = index_size
        # after appending to a recovered segment, index from the next record on
        j.next_index_at = size if append else SEGMENT_HEADER_LENGTH
        self.segment = path

    def roll(self) -> None:
        """The next record does not fit: sync and close this segment, start the next."""
        if self.policy.mode != "never":
            self.sync()
        self._new_segment(int(self.c.written_sequence) + 1)

    def sync(self) -> None:
        if lib.pyseq_journal_sync(self.c) != 0:
            raise OSError(int(self.c.last_errno), os.strerror(int(self.c.last_errno)))

    def _close_files(self) -> None:
        j = self.c
        for name in ("fd", "index_fd"):
            fd = int(getattr(j, name))
            if fd >= 0:
                os.close(fd)
                setattr(j, name, -1)

    def close(self) -> None:
        self._close_files()
        self.segment = None


class Journaler:
    """The journal thread of one sequenced ring (the :class:`pyseq.Sequencer` makes it).

    :meth:`start` recovers the journal (already done by :func:`open_for_sequencer` in a sequencer),
    then journals everything the ring publishes until :meth:`stop`, which journals what is left and
    fdatasyncs whatever the policy.
    """

    def __init__(self, path: str, ring: Ring, *, fsync: "str | FsyncPolicy" = "batch",
                 segment_bytes: int = DEFAULT_SEGMENT_BYTES, buffer_bytes: int = DEFAULT_BUFFER_BYTES,
                 idle: Optional[IdleStrategy] = None, schema_id: int = 0, schema_version: int = 0,
                 lock_fd: Optional[int] = None, slice_s: float = 0.02) -> None:
        if not ring.is_writer:
            raise errors.NotWriterError("the journaler runs in the process that writes the ring")
        if not isinstance(segment_bytes, int) or segment_bytes < 4096:
            raise errors.JournalError(f"segment_bytes must be an int >= 4096, not {segment_bytes!r}")
        self.path = os.fspath(path)
        self.policy = FsyncPolicy.parse(fsync)
        self.ring = ring
        self.idle = idle or default_idle()
        self._lock_fd = lock_fd if lock_fd is not None else lock_journal(self.path)
        self.slice_ns = int(slice_s * 1e9)
        self._reader = ring.reader(JOURNAL_CURSOR, gating=True, start=ring.next_sequence)
        header = ring._w.ring.header
        header.journal_fsync = self.policy.code
        header.journal_id = journal_id(self.path)
        self._writer = _SegmentWriter(self.path, self._reader, header, self.policy, segment_bytes, buffer_bytes,
                                      schema_id, schema_version)
        header.journal_state = lib.PYSEQ_JOURNAL_RUNNING
        self._header = header
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.failure: Optional[BaseException] = None
        self.stalls = 0
        self.stalled_since: Optional[float] = None

    # ---- the thread ----------------------------------------------------------------------------

    def start(self) -> "Journaler":
        self._thread = threading.Thread(target=self._run, name=f"pyseq-journaler-{self.ring.name}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._step(self.slice_ns)
        except BaseException as e:  # noqa: BLE001 - reported through .failure and the log
            self.failure = e
            self._header.journal_state = lib.PYSEQ_JOURNAL_STALLED
            log.critical("journal %r: the journaler stopped: %s: %s; the ring will fill and the sequencer stop "
                         "taking messages", self.path, type(e).__name__, e)

    def _step(self, duration_ns: int) -> int:
        """One call of the C loop; rolls segments and retries failed writes.  The records written."""
        rc = int(lib.pyseq_journal_run(self._writer.c, duration_ns, self.idle._c))
        if rc >= 0:
            if self.stalled_since is not None and int(self._writer.c.pending) == 0:
                log.warning("journal %r: writing again after %.1f s; nothing was lost", self.path,
                            time.monotonic() - self.stalled_since)
                self.stalled_since = None
                self._header.journal_state = lib.PYSEQ_JOURNAL_RUNNING
            return rc
        if rc == lib.PYSEQ_JROLL:
            self._writer.roll()
            return 0
        if rc == lib.PYSEQ_JIO:
            self._stalled(int(self._writer.c.last_errno))
            return 0
        if rc == lib.PYSEQ_ELAPPED:
            raise errors.JournalError(
                f"journal {self.path!r}: the journaler's cursor was overtaken in ring {self.ring.name!r} at "
                f"sequence {int(self._writer.c.written_sequence) + 1} (evicted?): the journal cannot be complete")
        raise errors.JournalError(f"journal {self.path!r}: unexpected status {rc}")

    def _stalled(self, err: int) -> None:
        now = time.monotonic()
        if self.stalled_since is None:
            self.stalled_since = now
            self.stalls += 1
            self._header.journal_state = lib.PYSEQ_JOURNAL_STALLED
            log.error("journal %r: write failed (%s: %s) at sequence %d; the sequencer stops taking messages "
                      "until the journal can write again (retrying)", self.path, errno.errorcode.get(err, err),
                      os.strerror(err), int(self._writer.c.written_sequence) + 1)
        lib.pyseq_reader_heartbeat(ffi.addressof(self._writer.c, "reader"))
        waited = now - self.stalled_since
        self._stop.wait(min(_RETRY_MAX_S, max(_RETRY_FIRST_S, waited / 4)))

    # ---- state ---------------------------------------------------------------------------------

    @property
    def journaled_sequence(self) -> int:
        return int(self._writer.c.synced_sequence)

    @property
    def written_sequence(self) -> int:
        return int(self._writer.c.written_sequence)

    @property
    def stalled(self) -> bool:
        return self.stalled_since is not None

    def stats(self) -> dict[str, Any]:
        j = self._writer.c
        return {"path": self.path, "fsync": str(self.policy), "records": int(j.records), "bytes": int(j.bytes),
                "writes": int(j.writes), "syncs": int(j.syncs), "errors": int(j.errors), "stalls": self.stalls,
                "stalled": self.stalled, "written_sequence": int(j.written_sequence),
                "journaled_sequence": int(j.synced_sequence),
                "segment": os.path.basename(self._writer.segment or "")}

    # ---- stopping ------------------------------------------------------------------------------

    def stop(self, timeout: float = 5.0) -> int:
        """Journal what the ring holds (up to ``timeout`` s), fdatasync, close; the messages that could
        not be journaled (0 unless the disk failed), which stay in the ring for the next start."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("journal %r: the journaler thread did not stop within %.1f s", self.path, timeout)
        deadline = time.monotonic() + timeout
        target = self.ring.published_sequence
        while self.failure is None and int(self._writer.c.written_sequence) < target and time.monotonic() < deadline:
            self._step(0)
            if self.stalled:
                time.sleep(0.01)
        left = target - int(self._writer.c.written_sequence)
        try:
            if int(self._writer.c.fd) >= 0:
                self._writer.sync()
        except OSError as e:
            log.error("journal %r: final fdatasync failed: %s", self.path, e)
        if left:
            log.error("journal %r: %d sequenced messages (from %d) could not be journaled; they stay in ring %r "
                      "and the next sequencer start journals them", self.path, left,
                      int(self._writer.c.written_sequence) + 1, self.ring.name)
            self._header.journal_state = lib.PYSEQ_JOURNAL_STALLED
        else:
            self._header.journal_state = lib.PYSEQ_JOURNAL_STOPPED
        self._writer.close()
        self._reader.close(release=left == 0)
        os.close(self._lock_fd)
        return left


def open_for_sequencer(path: str, ring_name: str,
                       segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> tuple[int, RecoveryReport, int]:
    """What a sequencer does before it creates its ring: lock the journal, recover it (truncate a
    torn tail), then journal what a predecessor that died left in its ring and never journaled.
    Returns the lock fd, the recovery report and the last journaled sequence (0: empty)."""
    lock_fd = lock_journal(path)
    try:
        report = recover(path)
        if report.torn_tail is not None:
            log.warning("journal %r: torn tail truncated: %s", path, report.torn_tail)
        last = report.last_sequence
        last = _journal_from_old_ring(path, ring_name, last, segment_bytes)
        return lock_fd, report, last
    except BaseException:
        os.close(lock_fd)
        raise


def _journal_from_old_ring(path: str, ring_name: str, last: int, segment_bytes: int) -> int:
    """A sequencer killed before its journaler caught up leaves the messages in its ring (shared
    memory outlives the process): journal them now, so nothing it sequenced is lost or renumbered."""
    if not Ring.exists(ring_name):
        return last
    try:
        old = Ring.attach(ring_name)
    except errors.PyseqError as e:
        log.warning("journal %r: cannot look into the old ring %r: %s", path, ring_name, e)
        return last
    with old:
        if not old.writer_gone:
            return last  # Ring.create will refuse it: another sequencer is running
        if old.journal_state == "none":
            log.warning("journal %r: the previous ring %r had no journal; its messages are not copied into this "
                        "one, which continues at sequence %d", path, ring_name, last + 1)
            return last
        published = old.published_sequence
        if published <= last:
            return last
        if int(old._mapping().header.journal_id) != journal_id(path):
            log.warning("journal %r: the previous ring %r (sequences %d..%d) was journaled into another journal "
                        "directory; its messages are not copied", path, ring_name, old.first_sequence, published)
            return last
        oldest = max(old.first_sequence, published - old.capacity + 1)
        if last + 1 < oldest:
            log.error("journal %r: the old ring %r holds %d..%d but the journal ends at %d: %d messages were "
                      "sequenced and are in neither; numbering resumes after the journal", path, ring_name,
                      oldest, published, last, oldest - last - 1)
            return last
        reader = old.reader("journal-recovery", start=last + 1)
        try:
            writer = _SegmentWriter(path, reader, ffi.NULL, FsyncPolicy("batch"), segment_bytes,
                                    DEFAULT_BUFFER_BYTES, 0, 0)
            try:
                idle = default_idle()
                while int(writer.c.written_sequence) < published:
                    rc = int(lib.pyseq_journal_run(writer.c, 0, idle._c))
                    if rc == lib.PYSEQ_JROLL:
                        writer.roll()
                    elif rc < 0:
                        raise errors.JournalError(f"journal {path!r}: recovering from the old ring {ring_name!r} "
                                                  f"failed at sequence {int(writer.c.written_sequence) + 1} "
                                                  f"(status {rc}, errno {int(writer.c.last_errno)})")
                    elif rc == 0:
                        break
                writer.sync()
            finally:
                writer.close()
            recovered = int(writer.c.written_sequence)
        finally:
            reader.close()
    if recovered > last:
        log.warning("journal %r: journaled %d messages (%d..%d) that the previous sequencer of %r had sequenced "
                    "but not journaled when it ended", path, recovered - last, last + 1, recovered, ring_name)
    return recovered
