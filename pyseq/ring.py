"""Ring: a single-writer ring buffer of sequenced messages in POSIX shared memory.

A ring is the shared-memory object ``/dev/shm/pyseq.<name>``; its layout is ``csrc/ring_layout.h``.
One process creates it and is its only writer (``Ring.create``); any process attaches by name
(``Ring.attach``) and registers readers, each with a cursor in the ring's header.  Publishing,
polling, batch reads and every wait run in C with the GIL released; this module opens, maps,
validates and raises.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import re
import time
import weakref
from typing import Any, Iterator, NoReturn, Optional, Union

import numpy as np

from . import errors
from ._native import HotReader, HotWriter, address, ffi, lib
from .idle import IdleStrategy, default_idle
from .message import FRAME_LENGTH, Message, batch_dtype

log = logging.getLogger("pyseq.ring")

NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
NAME_MAX = lib.PYSEQ_RING_NAME_LENGTH - 8  # leaves room for a suffix such as ".in.<client>"
SHM_PREFIX = "/pyseq."
PAGE_SIZE = mmap.PAGESIZE
# fault every page in at map time: a first lap that faults every 32 slots is a 10-30 us tail here
MAP_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
SLICE_NS = 100_000_000  # a wait without a timeout is cut in slices so Ctrl-C and liveness checks run
UNREADY_GRACE_S = 5.0   # a ring still uninitialised after this long was abandoned by its creator

Start = Union[str, int]


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid ring name, else raise :class:`pyseq.RingNameError`."""
    if not isinstance(name, str):
        raise errors.RingNameError(f"a ring name is a str, not {type(name).__name__}")
    if not name:
        raise errors.RingNameError("a ring name cannot be empty")
    if len(name) > NAME_MAX:
        raise errors.RingNameError(f"ring name {name!r} is {len(name)} characters; the limit is {NAME_MAX}")
    if not NAME_PATTERN.fullmatch(name):
        raise errors.RingNameError(
            f"ring name {name!r} may hold only letters, digits, '.', '_' and '-' "
            f"(no '/'), and may not start with '.' or '-'")
    return name


def shm_path(name: str) -> str:
    """Where the ring ``name`` lives on Linux."""
    return "/dev/shm" + SHM_PREFIX + validate_name(name)


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists and is not a zombie (kill(pid, 0) and /proc, in C)."""
    if pid <= 0:
        return False
    return pid == os.getpid() or not lib.pyseq_process_ended(pid)


def _timeout_ns(timeout: Optional[float]) -> int:
    if timeout is None:
        return -1
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0 or None, not {timeout}")
    return int(timeout * 1e9)


def _slice_ns(deadline: Optional[float]) -> int:
    """The next wait slice: SLICE_NS, or what is left before ``deadline`` (time.monotonic; None: never)."""
    if deadline is None:
        return SLICE_NS
    return max(0, min(SLICE_NS, int((deadline - time.monotonic()) * 1e9)))


def _shm_open(name: str, flags: int, mode: int = 0o600) -> int:
    fd = lib.shm_open((SHM_PREFIX + name).encode(), flags, mode)
    if fd < 0:
        err = ffi.errno
        if err == errno.ENOENT:
            raise errors.RingNotFoundError(f"no ring named {name!r} ({shm_path(name)} does not exist)")
        if err == errno.EACCES:
            raise errors.RingPermissionError(f"ring {name!r}: permission denied opening {shm_path(name)}")
        raise OSError(err, f"shm_open {shm_path(name)}: {os.strerror(err)}")
    return fd


class _Mapping:
    """The three mapped parts of a ring in this process and the cffi pointers into them."""

    def __init__(self, fd: int, header: Any, writable_slots: bool) -> None:
        self.cursors_offset = int(header.cursors_offset)
        self.slots_offset = int(header.slots_offset)
        self.file_length = int(header.file_length)
        if writable_slots:
            self.maps = [mmap.mmap(fd, self.file_length, flags=MAP_FLAGS)]
            whole = ffi.from_buffer(self.maps[0])
            self.buffers = [whole]
            self.header = ffi.cast("pyseq_ring_header_t *", whole)
            self.cursors_ptr = whole + self.cursors_offset
            self.slots_ptr = whole + self.slots_offset
        else:
            head = mmap.mmap(fd, self.cursors_offset, flags=MAP_FLAGS, prot=mmap.PROT_READ)
            curs = mmap.mmap(fd, self.slots_offset - self.cursors_offset, flags=MAP_FLAGS,
                             offset=self.cursors_offset)
            slots = mmap.mmap(fd, self.file_length - self.slots_offset, flags=MAP_FLAGS, prot=mmap.PROT_READ,
                              offset=self.slots_offset)
            self.maps = [head, curs, slots]
            self.buffers = [ffi.from_buffer(m) for m in self.maps]
            self.header = ffi.cast("pyseq_ring_header_t *", self.buffers[0])
            self.cursors_ptr = self.buffers[1]
            self.slots_ptr = self.buffers[2]
        self.cursors = ffi.cast("pyseq_cursor_t *", self.cursors_ptr)

    def close(self) -> None:
        for b in self.buffers:
            ffi.release(b)
        for m in self.maps:
            m.close()
        self.buffers, self.maps = [], []


class Ring(HotWriter):
    """A handle on one ring: the writer's (from :meth:`create`) or an attached one (:meth:`attach`).

    The writer publishes; any handle makes readers.  Use as a context manager, or call
    :meth:`close`; closing never removes the ring (``unlink`` / ``Ring.remove`` do).
    ``publish`` and ``forward`` are C methods (pyseq._fast) for the common case; the ``*_slow``
    methods below take every other case.
    """

    def __init__(self, name: str, fd: int, mapping: _Mapping, is_writer: bool,
                 idle: Optional[IdleStrategy], reader_timeout: float) -> None:
        self.name = name
        self._fd = fd
        self._map: Optional[_Mapping] = mapping
        self.is_writer = is_writer
        self.idle = idle or default_idle()
        self.reader_timeout = reader_timeout
        h = mapping.header
        self.capacity = int(h.capacity)
        self.slot_size = int(h.slot_size)
        self.max_payload = self.slot_size - FRAME_LENGTH
        self.max_readers = int(h.max_readers)
        self.first_sequence = int(h.first_sequence)
        self.dtype = batch_dtype(self.slot_size)
        self._readers: "weakref.WeakSet[Reader]" = weakref.WeakSet()
        self._w: Any = None
        if is_writer:
            self._w = ffi.new("pyseq_writer_t *")
            lib.pyseq_writer_init(self._w, h, mapping.cursors_ptr, mapping.slots_ptr)
            self._bind(address(self._w), self._w)
            self._gating_seen: dict[int, tuple[int, float]] = {}
        # cursors of this process the writer must never evict (the journaler's: a gap in the journal
        # is worse than a stall)
        self.never_evict: set[int] = set()

    # ---- opening ------------------------------------------------------------------------------

    @classmethod
    def create(cls, name: str, capacity: int = 4096, slot_size: int = 128, *, max_readers: int = 16,
               mode: int = 0o600, first_sequence: int = 1, idle: Optional[IdleStrategy] = None,
               reader_timeout: float = 10.0) -> "Ring":
        """Create the ring ``name`` and become its one writer.

        ``capacity`` slots (a power of two) of ``slot_size`` bytes (a multiple of 64, of which 32 are
        the frame header); ``max_readers`` cursor entries; ``mode`` the file mode (0600: only this
        user).  ``first_sequence`` is the sequence of the first message (a restarted sequencer
        resumes after its journal).  A gating reader that is dead, or has not moved for
        ``reader_timeout`` seconds while holding the writer back, is evicted.

        A ring of that name whose writer is alive is refused (:class:`RingExistsError`); one whose
        writer died is replaced, with a warning.
        """
        validate_name(name)
        for arg, value in (("capacity", capacity), ("slot_size", slot_size), ("max_readers", max_readers),
                           ("first_sequence", first_sequence)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise errors.RingConfigError(f"{arg} must be an int, not {type(value).__name__}")
        if capacity < 2 or capacity & (capacity - 1) or capacity > 1 << 32:
            raise errors.RingConfigError(f"capacity must be a power of two from 2 to 2**32, not {capacity}")
        if slot_size < 64 or slot_size % 64 or slot_size > 1 << 24:
            raise errors.RingConfigError(
                f"slot_size must be a multiple of 64 from 64 to 16 MiB, not {slot_size} "
                f"(each slot holds a {FRAME_LENGTH}-byte frame header and the payload)")
        if not 1 <= max_readers <= 4096:
            raise errors.RingConfigError(f"max_readers must be from 1 to 4096, not {max_readers}")
        if first_sequence < 1:
            raise errors.RingConfigError(f"first_sequence must be >= 1, not {first_sequence}")
        if not isinstance(reader_timeout, (int, float)) or isinstance(reader_timeout, bool) or reader_timeout <= 0:
            raise errors.RingConfigError(f"reader_timeout must be a number of seconds > 0, not {reader_timeout!r}")
        length = int(lib.pyseq_ring_file_length(capacity, slot_size, max_readers, PAGE_SIZE))
        assert length > 0

        for _attempt in range(3):
            try:
                fd = _shm_open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)
            except FileExistsError:
                cls._replace_if_abandoned(name)
                continue
            except OSError as e:
                if e.errno != errno.EEXIST:
                    raise
                cls._replace_if_abandoned(name)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.fchmod(fd, mode)  # shm_open's mode is masked by the umask
                os.ftruncate(fd, length)
                probe = mmap.mmap(fd, length)
                try:
                    rc = lib.pyseq_ring_format(ffi.from_buffer(probe), length, capacity, slot_size, max_readers,
                                               PAGE_SIZE, first_sequence, name.encode(), os.getpid())
                finally:
                    probe.close()
                if rc != 0:
                    raise errors.RingConfigError(f"invalid ring shape (status {rc})")
                header = ffi.new("pyseq_ring_header_t *")
                ffi.memmove(header, os.pread(fd, ffi.sizeof("pyseq_ring_header_t"), 0),
                            ffi.sizeof("pyseq_ring_header_t"))
                return cls(name, fd, _Mapping(fd, header, writable_slots=True), True, idle, reader_timeout)
            except BaseException:
                os.close(fd)
                lib.shm_unlink((SHM_PREFIX + name).encode())
                raise
        raise errors.RingExistsError(f"ring {name!r} was re-created by another process while this one tried")

    @staticmethod
    def _replace_if_abandoned(name: str) -> None:
        """Another ring of this name exists: unlink it if its writer is gone, else refuse."""
        try:
            fd = _shm_open(name, os.O_RDWR)
        except errors.RingNotFoundError:
            return  # removed meanwhile: try again
        try:
            if not _try_exclusive(fd):
                pid = _writer_pid_of(fd)
                raise errors.RingExistsError(
                    f"ring {name!r} already exists and its writer (pid {pid}) is alive; "
                    f"a ring has exactly one writer")
            st = os.fstat(fd)
            raw = os.pread(fd, 16, 0) if st.st_size >= PAGE_SIZE else b""
            magic = int.from_bytes(raw[:8], "little") if raw else 0
            if magic not in (0, lib.PYSEQ_RING_MAGIC):
                raise errors.RingExistsError(
                    f"{shm_path(name)} exists and is not a pyseq ring; remove it if it is not needed")
            ready = bool(raw) and int.from_bytes(raw[8:12], "little") != 0
            if not ready and time.time() - st.st_mtime < UNREADY_GRACE_S:
                raise errors.RingExistsError(f"ring {name!r} is being created by another process")
            closed = st.st_size >= PAGE_SIZE and \
                int.from_bytes(os.pread(fd, 4, 152), "little") == lib.PYSEQ_WRITER_CLOSED  # writer_state
            (log.info if closed else log.warning)(
                "ring %r: its writer %s; replacing it with a new ring", name,
                "closed it" if closed else "is gone (it ended without closing the ring)")
            lib.shm_unlink((SHM_PREFIX + name).encode())
        finally:
            os.close(fd)

    @classmethod
    def attach(cls, name: str, *, timeout: float = 0.0, idle: Optional[IdleStrategy] = None) -> "Ring":
        """Attach to the ring ``name`` created by another process (or this one).

        Waits up to ``timeout`` seconds for the ring to exist and be initialised; then checks its
        magic, layout version, sizes and file length before trusting anything in it.
        """
        validate_name(name)
        deadline = time.monotonic() + timeout
        while True:
            try:
                return cls._attach_once(name, idle)
            except (errors.RingNotFoundError, errors.RingNotReadyError):
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.005)

    @classmethod
    def _attach_once(cls, name: str, idle: Optional[IdleStrategy]) -> "Ring":
        fd = _shm_open(name, os.O_RDWR)
        try:
            header = _read_header(fd, name)
            return cls(name, fd, _Mapping(fd, header, writable_slots=False), False, idle, 10.0)
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def remove(name: str, *, force: bool = False) -> bool:
        """Remove the ring ``name`` from /dev/shm; True if it existed.  Mapped handles stay valid.

        A ring whose writer is alive in another process is not removed (:class:`RingExistsError`):
        a new ``create`` of the name would then give it a second writer.  ``force=True`` removes it
        all the same."""
        validate_name(name)
        if not force:
            try:
                fd = _shm_open(name, os.O_RDONLY)
            except errors.RingNotFoundError:
                return False
            try:
                if not _try_exclusive(fd):
                    pid = _writer_pid_of(fd)
                    if pid != os.getpid():
                        raise errors.RingExistsError(
                            f"ring {name!r} has a live writer (pid {pid}); it removes the ring itself "
                            f"(ring.unlink()), or pass force=True")
            finally:
                os.close(fd)
        if lib.shm_unlink((SHM_PREFIX + name).encode()) == 0:
            return True
        if ffi.errno == errno.ENOENT:
            return False
        raise OSError(ffi.errno, f"shm_unlink {shm_path(name)}: {os.strerror(ffi.errno)}")

    @staticmethod
    def exists(name: str) -> bool:
        return os.path.exists(shm_path(name))

    def unlink(self) -> bool:
        """Remove this ring's name from /dev/shm, if the name still refers to this ring (and not to
        one created since under the same name); True if it did."""
        if self._map is not None:
            try:
                if os.stat(shm_path(self.name)).st_ino != os.fstat(self._fd).st_ino:
                    return False
            except FileNotFoundError:
                return False
        return Ring.remove(self.name, force=self.is_writer)

    # ---- lifetime ------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._map is None

    def _mapping(self) -> _Mapping:
        if self._map is None:
            raise errors.RingClosedError(f"ring {self.name!r} is closed")
        return self._map

    def close(self) -> None:
        """Close readers made here, unmap, and (for the writer) mark the ring closed: end of stream."""
        if self._map is None:
            return
        for r in list(self._readers):
            r.close()
        if self.is_writer:
            self._unbind()
            lib.pyseq_header_set_writer(self._map.header, os.getpid(), lib.PYSEQ_WRITER_CLOSED)
            self._w = None
        self._map.close()
        self._map = None
        os.close(self._fd)  # for the writer this also drops the writer lock

    def __enter__(self) -> "Ring":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if self._map is not None:
                self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        role = "writer" if self.is_writer else "attached"
        return f"<pyseq.Ring {self.name!r} {role} capacity={self.capacity} slot_size={self.slot_size}>"

    # ---- writing -------------------------------------------------------------------------------

    def _writer(self) -> Any:
        if self._w is None:
            if self._map is None:
                raise errors.RingClosedError(f"ring {self.name!r} is closed")
            raise errors.NotWriterError(
                f"this handle attached to ring {self.name!r}; only the process that created it writes")
        return self._w

    def _publish_slow(self, msg_type: Any, payload: Any = None, *, source: int = 0, schema_version: int = 0,
                      timestamp_ns: int = 0, timeout: Optional[float] = None) -> int:
        """``publish`` for every case its C fast path does not take: a record to encode, a payload
        that is not a contiguous buffer, values out of range, a closed or attached handle, and
        back-pressure (wait up to ``timeout``, evicting dead gating readers, then raise)."""
        if isinstance(msg_type, type):
            raise TypeError(f"publish() takes a record instance or (msg_type, payload), not the class "
                            f"{msg_type.__name__}")
        if payload is None and hasattr(msg_type, "encode") and hasattr(msg_type, "msg_type"):
            record = msg_type
            if schema_version not in (0, record.version):
                raise ValueError(f"schema_version={schema_version} conflicts with the record's version "
                                 f"{record.version}")
            msg_type, payload, schema_version = record.msg_type, record.encode(), record.version
        w = self._writer()
        if timeout is not None and (not isinstance(timeout, (int, float)) or isinstance(timeout, bool)
                                    or timeout < 0):
            raise ValueError(f"timeout must be a number of seconds >= 0 or None, not {timeout!r}")
        _check_field("msg_type", msg_type, 0xFFFF)
        _check_field("schema_version", schema_version, 0xFFFF)
        _check_field("source", source, 0xFFFFFFFF)
        _check_field("timestamp_ns", timestamp_ns, (1 << 63) - 1)
        if payload is None:
            raise TypeError("publish(msg_type, payload) needs a payload (bytes or a buffer), or a declared record")
        try:
            data = memoryview(payload).cast("B")
        except TypeError:
            raise TypeError(f"payload must be bytes or a contiguous buffer, not {type(payload).__name__}") from None
        if len(data) > self.max_payload:
            raise errors.MessageTooLargeError(
                f"payload of {len(data)} bytes; ring {self.name!r} slots hold at most {self.max_payload}")
        buf = ffi.from_buffer(data)
        try:
            while True:
                seq = lib.pyseq_writer_try_publish(w, msg_type, schema_version, source, timestamp_ns, buf, len(data))
                if seq > 0:
                    return int(seq)
                if seq == lib.PYSEQ_EWATCH:
                    self._watch()
                    continue
                self._wait_capacity(1, timeout)
        finally:
            ffi.release(buf)

    def try_publish(self, msg_type: Any, payload: Any = None, *, source: int = 0, schema_version: int = 0,
                    timestamp_ns: int = 0) -> Optional[int]:
        """Publish one message if there is room now; None if a gating reader holds the writer back.
        (Dead gating readers are still evicted first.)"""
        try:
            return self.publish(msg_type, payload, source=source, schema_version=schema_version,
                                timestamp_ns=timestamp_ns, timeout=0)
        except errors.BackPressureError:
            return None

    def _forward_slow(self, reader: "Reader", *, keep_timestamp: bool = False,
                      timeout: Optional[float] = None) -> int:
        """``forward`` for every case its C fast path does not take (see ``forward``)."""
        w = self._writer()
        if not isinstance(reader, Reader):
            raise TypeError(f"forward() takes a pyseq.Reader, not {type(reader).__name__}")
        reader._check_open()
        if int.from_bytes(reader._mv[:8], "little", signed=True) <= 0:
            raise ValueError(f"reader {reader.name!r} has not read a message yet: nothing to forward")
        while True:
            seq = lib.pyseq_writer_try_forward(w, reader._buf, bool(keep_timestamp))
            if seq > 0:
                return int(seq)
            if seq == lib.PYSEQ_ETOO_LARGE:
                raise errors.MessageTooLargeError(
                    f"the forwarded payload does not fit ring {self.name!r} (at most {self.max_payload} bytes)")
            if seq == lib.PYSEQ_EWATCH:
                self._watch()
                continue
            self._wait_capacity(1, timeout)

    def publish_batch(self, msg_type: Any, records: np.ndarray, *, source: int = 0, schema_version: int = 0,
                      timestamp_ns: int = 0, timeout: Optional[float] = None) -> int:
        """Publish every element of ``records`` as one message each; return the first sequence.

        ``records`` is a contiguous numpy array: a structured array (one record a message, e.g.
        ``Order.to_array(...)``) or a 2-D uint8 array (one row a message).  The messages take
        consecutive sequences; one C call copies as many as the ring has room for.  ``msg_type`` may
        be a declared record class (its message type and version go into the frames).
        """
        if isinstance(msg_type, type) and hasattr(msg_type, "msg_type") and hasattr(msg_type, "version"):
            if schema_version not in (0, msg_type.version):
                raise ValueError(f"schema_version={schema_version} conflicts with {msg_type.__name__}'s "
                                 f"version {msg_type.version}")
            msg_type, schema_version = msg_type.msg_type, msg_type.version
        _check_field("msg_type", msg_type, 0xFFFF)
        _check_field("schema_version", schema_version, 0xFFFF)
        _check_field("source", source, 0xFFFFFFFF)
        w = self._writer()
        arr = np.ascontiguousarray(records)
        if arr.ndim == 2 and arr.dtype == np.uint8:
            count, record_length = arr.shape
        elif arr.ndim == 1:
            count, record_length = arr.shape[0], arr.dtype.itemsize
        else:
            raise ValueError("records must be a 1-D structured array or a 2-D uint8 array")
        if record_length > self.max_payload:
            raise errors.MessageTooLargeError(
                f"records of {record_length} bytes; ring {self.name!r} slots hold at most {self.max_payload}")
        first = int(w.next_sequence)
        if count == 0:
            return first
        buf = ffi.from_buffer(arr)
        done = 0
        try:
            while done < count:
                n = lib.pyseq_writer_try_publish_batch(w, msg_type, schema_version, source, timestamp_ns,
                                                       buf + done * record_length, record_length, count - done)
                if n == lib.PYSEQ_EWATCH:
                    self._watch()
                    continue
                if n < 0:
                    raise errors.PyseqError(f"publish_batch failed (status {n})")
                done += n
                if done < count:
                    self._wait_capacity(min(count - done, self.capacity), timeout)
        except errors.BackPressureError as e:
            raise errors.BackPressureError(f"{e} ({done} of {count} records were published, "
                                           f"sequences {first}..{first + done - 1})") from None
        finally:
            ffi.release(buf)
        return first

    def _wait_capacity(self, count: int, timeout: Optional[float]) -> None:
        """Wait (in C, by the idle strategy) until ``count`` slots are free; evict dead gating readers."""
        w = self._w
        deadline = None if timeout is None else time.monotonic() + timeout
        idle = self.idle._c
        while True:
            if lib.pyseq_writer_wait_capacity(w, count, _slice_ns(deadline), idle):
                return
            now = time.monotonic()
            if self._evict_stuck_readers(count):
                continue
            if deadline is not None and now >= deadline:
                if timeout == 0:
                    raise errors.BackPressureError(f"ring {self.name!r} is full")
                blocker = self._slowest_gating_reader()
                raise errors.BackPressureError(
                    f"ring {self.name!r} is full: gating reader {blocker} has not consumed the slot "
                    f"the writer needs (waited {timeout} s)")

    def _watch(self) -> None:
        """Called from a publish once per ``watch_ns`` of the writer (off for a plain ring); a
        subclass checks what it depends on here (a Client: its sequencer) and raises."""

    def _slowest_gating_reader(self) -> str:
        infos = [r for r in self.readers() if r["gating"] and r["state"] == "active"]
        if not infos:
            return "(none)"
        r = min(infos, key=lambda i: i["sequence"])
        read = f"has read up to sequence {r['sequence']}" if r["sequence"] >= self.first_sequence else \
            "has read nothing yet"
        return f"{r['name']!r} (pid {r['pid']}, {read})"

    def _evict_stuck_readers(self, count: int) -> bool:
        """Evict gating readers whose process is gone, or that held the writer back without moving
        for ``reader_timeout`` seconds.  True if any was evicted."""
        m = self._mapping()
        now = time.monotonic()
        needed = int(self._w.next_sequence) + count - 1 - self.capacity
        evicted = False
        for i in range(self.max_readers):
            c = m.cursors + i
            if lib.pyseq_cursor_state(c) != lib.PYSEQ_CURSOR_ACTIVE or not c.gating or i in self.never_evict:
                self._gating_seen.pop(i, None)
                continue
            seq = int(lib.pyseq_cursor_sequence(c))
            pid = int(c.pid)
            reason = None
            if not pid_alive(pid):
                reason = f"its process (pid {pid}) is gone"
            elif seq < needed:
                last_seq, since = self._gating_seen.get(i, (seq, now))
                if last_seq != seq:
                    since = now
                self._gating_seen[i] = (seq, since)
                beat_age = (int(lib.pyseq_clock_realtime_ns()) - int(c.heartbeat_ns)) / 1e9
                if now - since >= self.reader_timeout and beat_age >= self.reader_timeout:
                    reason = (f"it has not moved from sequence {seq} for {now - since:.1f} s "
                              f"and its heartbeat is {beat_age:.1f} s old")
            if reason and lib.pyseq_cursor_evict(c, m.header):
                name = ffi.string(c.name).decode(errors="replace")
                log.warning("ring %r: evicted gating reader %r (cursor %d): %s", self.name, name, i, reason)
                self._gating_seen.pop(i, None)
                evicted = True
        if evicted:
            lib.pyseq_writer_gating_scan(self._w)
        return evicted

    def heartbeat(self) -> None:
        """Refresh the writer's heartbeat in the header (publishing does it too)."""
        lib.pyseq_writer_heartbeat(self._writer())

    @property
    def next_sequence(self) -> int:
        """The sequence the next publish will give (writer only)."""
        return int(self._writer().next_sequence)

    # ---- reading -------------------------------------------------------------------------------

    def reader(self, name: str = "", *, gating: bool = False, start: Start = "earliest",
               idle: Optional[IdleStrategy] = None, stale_after: Optional[float] = None,
               durable: bool = False) -> "Reader":
        """Register a reader with a cursor in the ring's header.

        ``start``: ``"earliest"`` (the oldest message still in the ring), ``"latest"`` (only what
        is published from now on) or a sequence number.  A ``gating`` reader holds the writer back:
        nothing it has not read is overwritten (join it before the writer runs ahead, or start at
        "latest": a gating reader that asks for old messages can be lapped before the writer sees it).
        ``stale_after`` (seconds): a wait that finds nothing to read and the writer's heartbeat older
        than this raises :class:`WriterStalledError` (for rings whose writer heartbeats, such as the
        sequencer's).  A ``durable`` reader sees a message only once the ring's journal holds it as
        its fsync policy promises (the header's ``journaled_sequence``), so it never acts on a message
        that a crash could erase; the ring must have a journal (a sequencer started with one).
        """
        if durable and int(self._mapping().header.journal_state) == lib.PYSEQ_JOURNAL_NONE:
            raise errors.RingConfigError(
                f"ring {self.name!r} has no journal: a durable reader would never see a message "
                f"(start its sequencer with a journal)")
        if stale_after is not None and (not isinstance(stale_after, (int, float)) or stale_after <= 0):
            raise ValueError(f"stale_after must be a number of seconds > 0 or None, not {stale_after!r}")
        m = self._mapping()
        published = int(lib.pyseq_header_published(m.header))
        if start == "earliest":
            next_seq = max(self.first_sequence, published - self.capacity + 1)
        elif start == "latest":
            next_seq = published + 1
        elif isinstance(start, int) and not isinstance(start, bool) and start >= 1:
            next_seq = start
        else:
            raise ValueError(f"start must be 'earliest', 'latest' or a sequence >= 1, not {start!r}")
        index = self._claim_cursor()
        c = m.cursors + index
        label = (name or f"pid{os.getpid()}")[: lib.PYSEQ_CURSOR_NAME_LENGTH - 1]
        lib.pyseq_cursor_activate(c, next_seq - 1, 1 if gating else 0, os.getpid(), label.encode())
        r = Reader(self, index, label, gating, next_seq, idle or self.idle, stale_after)
        if durable:
            r._c.durable = 1
            r.durable = True
        if start == "latest":
            # the cursor is visible now (activate ends with a seq_cst fence): start after what the
            # writer published meanwhile, which it may overwrite without seeing this cursor
            r.skip_to(int(lib.pyseq_header_published(m.header)) + 1)
        self._readers.add(r)
        return r

    def _claim_cursor(self) -> int:
        m = self._mapping()
        pid = os.getpid()
        for i in range(self.max_readers):
            if lib.pyseq_cursor_state(m.cursors + i) == lib.PYSEQ_CURSOR_FREE and \
                    lib.pyseq_cursor_claim(m.cursors + i, lib.PYSEQ_CURSOR_FREE, pid):
                return i
        for i in range(self.max_readers):  # reclaim the entry of a reader whose process is gone
            c = m.cursors + i
            state = int(lib.pyseq_cursor_state(c))
            if state == lib.PYSEQ_CURSOR_FREE:
                continue
            owner = state >> 2 if state & lib.PYSEQ_CURSOR_STATE_MASK == lib.PYSEQ_CURSOR_CLAIMED else int(c.pid)
            if not pid_alive(owner) and lib.pyseq_cursor_claim(c, state, pid):
                return i
        raise errors.ReaderTableFullError(
            f"ring {self.name!r}: all {self.max_readers} reader cursors are held by live readers")

    def _release_reader(self, reader: "Reader") -> None:
        if reader in self._readers:
            self._readers.discard(reader)

    # ---- introspection -------------------------------------------------------------------------

    @property
    def published_sequence(self) -> int:
        """The last sequence published (first_sequence - 1 if none)."""
        return int(lib.pyseq_header_published(self._mapping().header))

    @property
    def journaled_sequence(self) -> int:
        """The last sequence the ring's journal holds as its fsync policy promises (first_sequence - 1
        if none, or if the ring has no journal)."""
        return int(self._mapping().header.journaled_sequence)

    @property
    def journal_state(self) -> str:
        """``none`` (no journal), ``running``, ``stalled`` (its writes fail) or ``stopped``."""
        return {0: "none", 1: "running", 2: "stalled", 3: "stopped"}.get(
            int(self._mapping().header.journal_state), "?")

    def info(self) -> dict[str, Any]:
        h = self._mapping().header
        pid = int(h.writer_pid)
        return {
            "name": self.name, "capacity": self.capacity, "slot_size": self.slot_size,
            "max_readers": self.max_readers, "first_sequence": self.first_sequence,
            "published_sequence": self.published_sequence, "writer_pid": pid,
            "writer_alive": pid_alive(pid) and int(h.writer_state) == lib.PYSEQ_WRITER_OPEN,
            "writer_state": {0: "none", 1: "open", 2: "closed"}.get(int(h.writer_state), "?"),
            "writer_heartbeat_ns": int(h.writer_heartbeat_ns), "eviction_count": int(h.eviction_count),
            "full_count": int(h.full_count),
            "journal_state": self.journal_state, "journaled_sequence": int(h.journaled_sequence),
            "journal_fsync": {0: "never", 1: "interval", 2: "batch"}.get(int(h.journal_fsync), "?"),
            "journal_errors": int(h.journal_errors),
            "created_ns": int(h.created_ns), "readers": self.readers(),
        }

    def readers(self) -> list[dict[str, Any]]:
        """Every cursor entry in use: name, pid, gating, state, sequence, lag, alive."""
        m = self._mapping()
        published = self.published_sequence
        out = []
        for i in range(self.max_readers):
            c = m.cursors + i
            state = int(lib.pyseq_cursor_state(c)) & lib.PYSEQ_CURSOR_STATE_MASK
            if state == lib.PYSEQ_CURSOR_FREE:
                continue
            seq = int(lib.pyseq_cursor_sequence(c))
            out.append({
                "index": i, "name": ffi.string(c.name).decode(errors="replace"), "pid": int(c.pid),
                "gating": bool(c.gating), "sequence": seq, "lag": max(0, published - seq),
                "state": {1: "claimed", 2: "active", 3: "evicted"}.get(state, "?"),
                "heartbeat_ns": int(c.heartbeat_ns), "alive": pid_alive(int(c.pid)), "held_count": int(c.held_count),
            })
        return out

    @property
    def writer_closed(self) -> bool:
        """True once the writer closed the ring (end of stream)."""
        return int(self._mapping().header.writer_state) == lib.PYSEQ_WRITER_CLOSED

    @property
    def notes(self) -> str:
        """The writer's notes in the header (a sequencer: its client limits as JSON); "" if none."""
        return ffi.string(self._mapping().header.notes).decode(errors="replace")

    def _write_notes(self, text: str) -> None:
        data = text.encode()
        if len(data) >= lib.PYSEQ_RING_NOTES_LENGTH:
            raise ValueError(f"notes of {len(data)} bytes; the header holds {lib.PYSEQ_RING_NOTES_LENGTH - 1}")
        self._writer()  # only the writer writes its notes
        ffi.memmove(self._mapping().header.notes, data + b"\0", len(data) + 1)

    @property
    def writer_heartbeat_age(self) -> float:
        """Seconds since the writer's last heartbeat (it beats on every publish and in its loop)."""
        return (int(lib.pyseq_clock_realtime_ns()) - int(self._mapping().header.writer_heartbeat_ns)) / 1e9

    @property
    def writer_gone(self) -> bool:
        """True once the writer closed the ring or its process ended: nothing more will come.

        The writer holds an exclusive flock on the ring while it lives (the kernel drops it when the
        process ends, before it is even reaped): a shared flock that succeeds means it is gone."""
        if self.writer_closed:
            return True
        if self.is_writer:
            return False
        try:
            fcntl.flock(self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        return True


def _try_exclusive(fd: int) -> bool:
    """Take the writer's lock (flock LOCK_EX) on ``fd`` if nobody holds it.  A few tries: a reader
    probing the writer's liveness (writer_gone) holds a shared lock for a microsecond."""
    for attempt in range(5):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            time.sleep(0.001 * (attempt + 1))
    return False


def _check_field(name: str, value: Any, maximum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= value <= maximum:
        raise ValueError(f"{name} must be from 0 to {maximum}, not {value}")


def _writer_pid_of(fd: int) -> int:
    raw = os.pread(fd, 136, 0)
    return int.from_bytes(raw[128:136], "little", signed=True) if len(raw) == 136 else 0


def _read_header(fd: int, name: str) -> Any:
    """Read and check the header page through a private copy; raise a clear error for anything off."""
    size = os.fstat(fd).st_size
    hsize = ffi.sizeof("pyseq_ring_header_t")
    if size == 0:
        raise errors.RingNotReadyError(f"ring {name!r} exists but is empty: its creator has not sized it yet")
    if size < hsize:
        raise errors.RingFormatError(f"ring {name!r}: {shm_path(name)} is {size} bytes, too short for a "
                                     f"pyseq ring header ({hsize} bytes): truncated or not a pyseq ring")
    header = ffi.new("pyseq_ring_header_t *")
    raw = os.pread(fd, hsize, 0)
    ffi.memmove(header, raw, hsize)
    if header.magic != lib.PYSEQ_RING_MAGIC:
        if header.magic == 0 and header.layout_version == 0:
            raise errors.RingNotReadyError(f"ring {name!r} is not initialised yet")
        raise errors.RingFormatError(f"{shm_path(name)} is not a pyseq ring (magic {int(header.magic):#018x})")
    version = int(header.layout_version)
    if version == 0:
        raise errors.RingNotReadyError(f"ring {name!r} is not initialised yet (layout version 0)")
    if version >> 16 != lib.PYSEQ_RING_LAYOUT_MAJOR:
        raise errors.RingFormatError(
            f"ring {name!r} has layout version {version >> 16}.{version & 0xFFFF}; this pyseq reads "
            f"{lib.PYSEQ_RING_LAYOUT_MAJOR}.x")
    capacity, slot_size, max_readers = int(header.capacity), int(header.slot_size), int(header.max_readers)
    expected = int(lib.pyseq_ring_file_length(capacity, slot_size, max_readers, PAGE_SIZE))
    if expected == 0 or int(header.file_length) != expected:
        raise errors.RingFormatError(
            f"ring {name!r}: inconsistent header (capacity {capacity}, slot_size {slot_size}, "
            f"max_readers {max_readers}, file_length {int(header.file_length)}, expected {expected})")
    if int(header.slots_offset) + capacity * slot_size > expected or int(header.cursors_offset) < hsize:
        raise errors.RingFormatError(f"ring {name!r}: header offsets out of range")
    if size < expected:
        raise errors.RingFormatError(
            f"ring {name!r}: {shm_path(name)} is {size} bytes but its header says {expected}: truncated")
    return header


class Reader(HotReader):
    """One cursor on a ring: poll, read with a timeout, read batches, iterate.

    Messages come in sequence order, each exactly once.  A reader the writer overtook raises
    :class:`LappedError` (never torn data); :meth:`skip_to` restarts it further on.
    ``read``, ``read_seq``, ``poll`` and ``poll_seq`` are C methods (pyseq._fast); they hand every
    case but a message read to ``_read_slow``/``_read_seq_slow``, which raise.
    """

    def __init__(self, ring: Ring, index: int, name: str, gating: bool, next_seq: int,
                 idle: IdleStrategy, stale_after: Optional[float] = None) -> None:
        m = ring._mapping()
        self.ring = ring
        self.index = index
        self.name = name
        self.gating = gating
        self.durable = False
        self.idle = idle
        self._idle_c = idle._c
        self._cursor = m.cursors + index
        self._c = ffi.new("pyseq_reader_t *")
        lib.pyseq_reader_init(self._c, m.header, m.cursors_ptr, m.slots_ptr, self._cursor, next_seq)
        self._buf = ffi.new("char[]", ring.slot_size)
        self._buf_len = ring.slot_size
        self._mv = memoryview(ffi.buffer(self._buf))
        self._closed = False
        self.stale_after = stale_after
        self._bind(address(self._c), address(self._buf), ring.slot_size, address(self._idle_c),
                   int(stale_after * 1e9) if stale_after else 0, Message, (self._c, self._buf, self._idle_c))

    @property
    def next_sequence(self) -> int:
        """The sequence this reader will return next."""
        return int(self._c.next_sequence)

    def _read_slow(self, status: Optional[int], timeout: Optional[float] = None) -> Message:
        self._read_seq_slow(status, timeout)
        return self._message()

    def _read_seq_slow(self, status: Optional[int], timeout: Optional[float] = None) -> int:
        """What ``read``/``read_seq``/``poll`` do when their C fast path returned no message:
        ``status`` is what it returned (None if it did not run: closed, or an unusual timeout)."""
        self._check_open()
        if status is None:
            if timeout is not None and (not isinstance(timeout, (int, float)) or isinstance(timeout, bool)):
                raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
            status = int(self._read_status(_timeout_ns(timeout)))
            if status > 0:
                return status
        if status == 0:
            if self.ring.writer_gone:
                status = int(self._read_status(0))  # the writer's last word, published before it went
                if status > 0:
                    return status
                if status == 0:
                    self._raise(lib.PYSEQ_EEND)
            elif self.stale_after and self.ring.writer_heartbeat_age > self.stale_after:
                self._raise(lib.PYSEQ_ESTALE)
            else:
                raise errors.TimeoutError(
                    f"no message on ring {self.ring.name!r} at sequence {self.next_sequence} within {timeout} s")
        self._raise(status)
        raise AssertionError("unreachable")

    @property
    def last(self) -> Message:
        """The message in this reader's buffer (the one the last read returned), as a Message."""
        self._check_open()
        return self._message()

    @property
    def buffer(self) -> memoryview:
        """This reader's copy buffer: the last message's frame header (``pyseq.FRAME_LENGTH`` bytes) and
        payload.  Overwritten by the next read."""
        return self._mv

    def read_batch(self, limit: int, timeout: Optional[float] = 0.0, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Up to ``limit`` messages as a numpy structured array of ``ring.dtype`` (a copy of whole
        slots, made in one C call).  Waits up to ``timeout`` seconds (None: for ever) for the first
        one; returns an empty array if none came, or raises :class:`EndOfStreamError` if the writer
        is gone and everything was read (unless ``timeout`` is 0: then it only polls).  Pass ``out``
        (an array of ``ring.dtype``) to reuse a buffer.  The payload column holds ``slot_size - 32``
        bytes; ``length`` says how many are the message (``pyseq.batch_payloads`` views them as
        records)."""
        self._check_open()
        if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
            raise ValueError(f"limit must be an int > 0, not {limit!r}")
        if out is None:
            out = np.empty(limit, dtype=self.ring.dtype)
        elif out.dtype != self.ring.dtype or not out.flags.c_contiguous or len(out) < limit:
            raise ValueError("out must be a contiguous array of ring.dtype with room for limit messages")
        deadline = None if timeout is None else time.monotonic() + _timeout_ns(timeout) / 1e9
        buf = ffi.from_buffer(out)
        try:
            while True:
                n = lib.pyseq_reader_read_batch(self._c, buf, limit, _slice_ns(deadline), self._idle_c)
                if n != 0 or timeout == 0:
                    break
                if self.ring.writer_gone:  # one more look: the writer's last word
                    n = lib.pyseq_reader_read_batch(self._c, buf, limit, 0, self._idle_c)
                    if n == 0:
                        n = lib.PYSEQ_EEND
                    break
                if self.stale_after and self.ring.writer_heartbeat_age > self.stale_after:
                    n = lib.PYSEQ_ESTALE
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    break
                self._check_open()
        finally:
            ffi.release(buf)
        if n >= 0:
            return out[:n]
        self._raise(n)

    def __iter__(self) -> Iterator[Message]:
        """Every message, waiting for the next; ends when the writer has closed the ring (or its
        process ended) and this reader has read everything published."""
        while True:
            self._check_open()
            seq = self._read_status(SLICE_NS)
            if seq > 0:
                yield self._message()
            elif seq == lib.PYSEQ_EEND:
                return
            elif seq == 0:
                self._check_open()
                if self.ring.writer_gone:
                    seq = self._read_status(0)  # the writer's last word, published before it went
                    if seq > 0:
                        yield self._message()
                    elif seq == 0:  # everything read (a durable reader: everything journaled)
                        return
                    else:
                        self._raise(seq)
            else:
                self._raise(seq)

    def skip_to(self, sequence: int) -> None:
        """Continue from ``sequence`` (after a :class:`LappedError`: its ``resume_at``)."""
        self._check_open()
        if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 1:
            raise ValueError(f"sequence must be an int >= 1, not {sequence!r}")
        lib.pyseq_reader_skip_to(self._c, sequence)

    def heartbeat(self) -> None:
        """Refresh this reader's heartbeat (waiting does it too); a gating reader that is busy for
        longer than the writer's ``reader_timeout`` calls this to avoid eviction.  Raises
        :class:`ReaderEvictedError` if the writer already evicted it."""
        self._check_open()
        if lib.pyseq_cursor_state(self._cursor) == lib.PYSEQ_CURSOR_EVICTED:
            raise errors.ReaderEvictedError(
                f"reader {self.name!r} of ring {self.ring.name!r} was evicted by the writer; it no longer "
                f"holds the writer back")
        lib.pyseq_reader_heartbeat(self._c)

    @property
    def lag(self) -> int:
        """Messages published that this reader has not read yet."""
        self._check_open()
        return self.ring.published_sequence - self.next_sequence + 1

    def _check_open(self) -> None:
        if self._closed or self.ring.closed:
            raise errors.RingClosedError(f"reader {self.name!r} of ring {self.ring.name!r} is closed")

    def _raise(self, status: int) -> NoReturn:
        self._check_open()
        if status == lib.PYSEQ_ELAPPED:
            first = self.next_sequence
            resume = max(self.ring.first_sequence, self.ring.published_sequence - self.ring.capacity + 1,
                         first + 1)
            detail = ""
            if lib.pyseq_cursor_state(self._cursor) == lib.PYSEQ_CURSOR_EVICTED:
                detail = "this gating reader was evicted by the writer"
            raise errors.LappedError(first, resume - first, resume, detail)
        if status == lib.PYSEQ_EEND:
            raise errors.EndOfStreamError(
                f"ring {self.ring.name!r}: its writer is gone and every message up to sequence "
                f"{self.next_sequence - 1} was read")
        if status == lib.PYSEQ_ESTALE:
            raise errors.WriterStalledError(
                f"ring {self.ring.name!r}: its writer (pid {self.ring.info()['writer_pid']}) is alive but its "
                f"heartbeat is {self.ring.writer_heartbeat_age:.2f} s old (stale after {self.stale_after} s)")
        if status == lib.PYSEQ_EINVAL:
            raise ValueError("invalid argument to the ring's C core")
        raise errors.PyseqError(f"ring {self.ring.name!r}: unexpected status {status}")

    def close(self, release: bool = True) -> None:
        """Give the cursor back (a gating reader stops holding the writer).  ``release=False`` leaves
        the cursor where it is, holding its position, for a successor to take over (the sequencer
        does this with its cursors in the clients' rings)."""
        if self._closed:
            return
        self._closed = True
        self._unbind()
        if not self.ring.closed:
            lib.pyseq_reader_unblock(self._c)  # it no longer parks: the writer stops looking for it
        if release and not self.ring.closed:
            lib.pyseq_cursor_release(self._cursor)
        self.ring._release_reader(self)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<pyseq.Reader {self.name!r} of {self.ring.name!r} next={self.next_sequence}"
                f"{' gating' if self.gating else ''}>")
