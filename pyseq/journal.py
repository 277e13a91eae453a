"""The journal on disk: segment files of checksummed records, read, verified, recovered.

The format is documented byte by byte in csrc/journal_format.h.  A journal is a directory:
``<first sequence, 20 digits>.seg`` segment files holding consecutive sequences, each with a sparse
``.idx`` index, and a ``LOCK`` file its one writer (the sequencer's journaler) holds.

- :class:`Journal` reads: :meth:`Journal.records` (a sequence range, message types; seeks through
  the index), :meth:`Journal.verify` (every record checked, every problem listed),
  :meth:`Journal.info`.  Scanning and checksums run in C over a read-only mapping.
- :func:`recover` is what a sequencer does on start: the torn tail of the last segment (a crash
  during a write) is truncated and reported, so the journal ends with a whole record, and numbering
  resumes right after it.  A bad record anywhere else is :class:`pyseq.JournalCorruptError`.

The writer is in :mod:`pyseq.journaler`.
"""
from __future__ import annotations

import bisect
import dataclasses
import mmap
import os
import re
import struct
from typing import Any, Generator, Iterable, Iterator, Optional

from . import errors
from ._native import ffi, lib
from .message import FRAME, Message

SEGMENT_SUFFIX = ".seg"
INDEX_SUFFIX = ".idx"
LOCK_NAME = "LOCK"
SEGMENT_HEADER_LENGTH: int = lib.PYSEQ_SEGMENT_HEADER_LENGTH
RECORD_OVERHEAD: int = lib.PYSEQ_RECORD_OVERHEAD
INDEX_HEADER_LENGTH: int = lib.PYSEQ_INDEX_HEADER_LENGTH
INDEX_ENTRY = struct.Struct("<qQ")
_SEGMENT_NAME = re.compile(r"^(\d{20})\.seg$")
_SCAN_REASONS = {
    lib.PYSEQ_SCAN_PARTIAL: "a partial record (the data ends inside it)",
    lib.PYSEQ_SCAN_BAD_LENGTH: "a record length that does not match its payload length",
    lib.PYSEQ_SCAN_BAD_CRC: "a checksum mismatch",
    lib.PYSEQ_SCAN_BAD_SEQUENCE: "a record out of sequence",
}
_CHUNK = 4096  # records validated in C per step of a Python iteration
MAX_PAYLOAD = (1 << 24) - 32  # a ring's largest slot (16 MiB) less its frame


def segment_name(first_sequence: int) -> str:
    return f"{first_sequence:020d}{SEGMENT_SUFFIX}"


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C of ``data`` (continuing ``crc``): the journal's checksum, in C."""
    return int(lib.pyseq_crc32c(crc, data, len(data)))


def segment_header(first_sequence: int, max_payload: int, ring_name: str, schema_id: int = 0,
                   schema_version: int = 0, created_ns: Optional[int] = None) -> bytes:
    """The 128 header bytes of a new segment."""
    h = ffi.new("pyseq_segment_header_t *")
    h.magic = lib.PYSEQ_JOURNAL_MAGIC
    h.format_version = lib.PYSEQ_JOURNAL_FORMAT_VERSION
    h.header_length = SEGMENT_HEADER_LENGTH
    h.schema_id = schema_id
    h.schema_version = schema_version
    h.first_sequence = first_sequence
    h.created_ns = int(lib.pyseq_clock_realtime_ns()) if created_ns is None else created_ns
    h.max_payload = max_payload
    name = ring_name.encode()[: lib.PYSEQ_SEGMENT_RING_NAME_LENGTH - 1]
    ffi.memmove(h.ring_name, name, len(name))
    raw = bytes(ffi.buffer(h))
    h.header_crc = crc32c(raw[:124])
    return bytes(ffi.buffer(h))


def index_header(first_sequence: int) -> bytes:
    h = ffi.new("pyseq_index_header_t *")
    h.magic = lib.PYSEQ_INDEX_MAGIC
    h.format_version = lib.PYSEQ_JOURNAL_FORMAT_VERSION
    h.entry_length = lib.PYSEQ_INDEX_ENTRY_LENGTH
    h.first_sequence = first_sequence
    h.stride = lib.PYSEQ_INDEX_STRIDE
    return bytes(ffi.buffer(h))


@dataclasses.dataclass(frozen=True)
class Segment:
    """One segment file, its header checked."""

    path: str
    first_sequence: int
    max_payload: int
    ring_name: str
    schema_id: int
    schema_version: int
    created_ns: int
    size: int

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def index_path(self) -> str:
        return self.path[: -len(SEGMENT_SUFFIX)] + INDEX_SUFFIX


@dataclasses.dataclass(frozen=True)
class Problem:
    """A record that is not valid: where, which sequence was expected there, and why.  ``torn_tail``:
    it ends the last segment with nothing valid after it (a crash during a write), which recovery
    truncates; every other problem is corruption."""

    segment: str
    offset: int
    sequence: int
    reason: str
    torn_tail: bool = False
    bytes: int = 0

    def __str__(self) -> str:
        kind = "torn tail" if self.torn_tail else "corrupt"
        extent = f", {self.bytes} bytes" if self.torn_tail else ""
        return f"{kind}: {self.segment} at offset {self.offset} (sequence {self.sequence}{extent}): {self.reason}"


@dataclasses.dataclass
class VerifyReport:
    path: str
    segments: int = 0
    records: int = 0
    bytes: int = 0
    first_seq: Optional[int] = None
    last_seq: Optional[int] = None
    problems: list[Problem] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No corruption (a torn tail alone is what a crash leaves: recovery truncates it)."""
        return not any(not p.torn_tail for p in self.problems)

    @property
    def torn_tail(self) -> Optional[Problem]:
        return next((p for p in self.problems if p.torn_tail), None)

    def to_mapping(self) -> dict[str, Any]:
        return {"path": self.path, "ok": self.ok, "segments": self.segments, "records": self.records,
                "bytes": self.bytes, "first_seq": self.first_seq, "last_seq": self.last_seq,
                "problems": [dataclasses.asdict(p) for p in self.problems]}


@dataclasses.dataclass(frozen=True)
class RecoveryReport:
    """What :func:`recover` found: the last whole record, and the torn tail it cut off (if any)."""

    last_sequence: int            # 0 if the journal is empty
    segments: int
    torn_tail: Optional[Problem]


class _Mapped:
    """A read-only mapping of one segment (empty files map to nothing)."""

    def __init__(self, path: str) -> None:
        with open(path, "rb") as f:
            self.size = os.fstat(f.fileno()).st_size
            self.map = mmap.mmap(f.fileno(), self.size, prot=mmap.PROT_READ) if self.size else None
        self.ptr = ffi.from_buffer(self.map) if self.map is not None else ffi.NULL

    def close(self) -> None:
        if self.map is not None:
            ffi.release(self.ptr)
            self.map.close()
            self.map = None

    def __enter__(self) -> "_Mapped":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_segment_header(path: str) -> Segment:
    """The checked header of a segment file; :class:`JournalCorruptError` if it is not valid."""
    name = os.path.basename(path)
    m = _SEGMENT_NAME.match(name)
    with open(path, "rb") as f:
        raw = f.read(SEGMENT_HEADER_LENGTH)
        size = os.fstat(f.fileno()).st_size
    expected = int(m.group(1)) if m else 0

    def bad(reason: str) -> errors.JournalCorruptError:
        return errors.JournalCorruptError(name, 0, expected, f"segment header: {reason}")

    if len(raw) < SEGMENT_HEADER_LENGTH:
        raise bad(f"the file is {len(raw)} bytes, shorter than a segment header ({SEGMENT_HEADER_LENGTH})")
    h = ffi.new("pyseq_segment_header_t *")
    ffi.memmove(h, raw, SEGMENT_HEADER_LENGTH)
    if h.magic != lib.PYSEQ_JOURNAL_MAGIC:
        raise bad("not a pyseq journal segment (bad magic)")
    if crc32c(raw[:124]) != h.header_crc:
        raise bad("checksum mismatch")
    if h.format_version != lib.PYSEQ_JOURNAL_FORMAT_VERSION or h.header_length != SEGMENT_HEADER_LENGTH:
        raise bad(f"format version {int(h.format_version)}, header length {int(h.header_length)}; this pyseq "
                  f"reads version {lib.PYSEQ_JOURNAL_FORMAT_VERSION}")
    if m is None or int(h.first_sequence) != expected or expected < 1:
        raise bad(f"first sequence {int(h.first_sequence)} does not match the file name")
    if int(h.max_payload) > MAX_PAYLOAD:
        raise bad(f"max payload {int(h.max_payload)} is larger than any ring's ({MAX_PAYLOAD})")
    return Segment(path, int(h.first_sequence), int(h.max_payload), ffi.string(h.ring_name).decode(errors="replace"),
                   int(h.schema_id), int(h.schema_version), int(h.created_ns), size)


class Journal:
    """A journal directory, for reading (any number of readers, while the sequencer writes it)."""

    def __init__(self, path: str) -> None:
        self.path = os.fspath(path)
        if not os.path.isdir(self.path):
            raise errors.JournalNotFoundError(f"no journal directory at {self.path!r}")

    def segment_files(self) -> list[str]:
        """Segment files by first sequence (headers not read)."""
        names = sorted(n for n in os.listdir(self.path) if _SEGMENT_NAME.match(n))
        return [os.path.join(self.path, n) for n in names]

    def segments(self) -> list[Segment]:
        """Every segment, headers checked (:class:`JournalCorruptError` for a bad one)."""
        return [read_segment_header(p) for p in self.segment_files()]

    # ---- reading -------------------------------------------------------------------------------

    def records(self, start: Optional[int] = None, stop: Optional[int] = None,
                types: Optional[Iterable[int]] = None) -> Iterator[Message]:
        """Messages with ``start <= seq <= stop`` (either open), of the message ``types`` given (all if
        None), in sequence order.  Seeks through the index to ``start``.  A torn tail ends the
        iteration; corruption raises :class:`JournalCorruptError` when the iteration reaches it."""
        wanted = None if types is None else frozenset(types)
        if stop is not None and stop < max(1, start or 1):
            return
        segments = self.segments()
        if start is not None and segments:
            firsts = [s.first_sequence for s in segments]
            segments = segments[max(0, bisect.bisect_right(firsts, start) - 1):]
        following: Optional[int] = None  # the sequence the next segment must start with
        for i, seg in enumerate(segments):
            last = i == len(segments) - 1
            if following is not None and seg.first_sequence != following:
                if stop is not None and stop < following:
                    return
                raise errors.JournalCorruptError(
                    seg.name, 0, following, f"the segment starts at {seg.first_sequence} but the previous one "
                    f"ended at {following - 1}: sequences are missing (a segment file was removed?)")
            with _Mapped(seg.path) as m:
                offset, expected = SEGMENT_HEADER_LENGTH, seg.first_sequence
                if start is not None and start > seg.first_sequence:
                    offset, expected = _seek(seg, m, start)
                following = yield from _iterate(seg, m, offset, expected, start, stop, wanted, last)
            if stop is not None and following > stop:
                return

    def last_sequence(self) -> int:
        """The sequence of the last whole record (0 if none), a torn tail ignored."""
        for seg in reversed(self.segments()):
            with _Mapped(seg.path) as m:
                scan = _scan(m, SEGMENT_HEADER_LENGTH, seg.first_sequence, seg.max_payload)
                if scan.records:
                    return int(scan.last_sequence)
            return seg.first_sequence - 1
        return 0

    # ---- checking ------------------------------------------------------------------------------

    def verify(self) -> VerifyReport:
        """Check every record of every segment and list every problem (with resynchronisation past a
        bad record, so one bad record does not hide the next); segment boundaries are checked too."""
        report = VerifyReport(self.path)
        files = self.segment_files()
        if not files:
            return report
        previous_last: Optional[int] = None
        for i, path in enumerate(files):
            name = os.path.basename(path)
            try:
                seg = read_segment_header(path)
            except errors.JournalCorruptError as e:
                size = os.path.getsize(path)
                torn = i == len(files) - 1 and size <= SEGMENT_HEADER_LENGTH  # a crash while it was created
                report.problems.append(Problem(name, 0, e.sequence, e.reason, torn_tail=torn,
                                               bytes=size if torn else 0))
                previous_last = None
                continue
            report.segments += 1
            report.bytes += seg.size
            if previous_last is not None and seg.first_sequence != previous_last + 1:
                report.problems.append(Problem(name, 0, previous_last + 1,
                                               f"the segment starts at {seg.first_sequence}; the previous one "
                                               f"ended at {previous_last}"))
            last_segment = i == len(files) - 1
            with _Mapped(path) as m:
                offset, expected = SEGMENT_HEADER_LENGTH, seg.first_sequence
                while True:
                    scan = _scan(m, offset, expected, seg.max_payload)
                    if scan.records:
                        if report.first_seq is None:
                            report.first_seq = expected
                        report.records += int(scan.records)
                        report.last_seq = int(scan.last_sequence)
                    if scan.status == lib.PYSEQ_SCAN_END:
                        break
                    bad_at = int(scan.end_offset)
                    resync = int(lib.pyseq_journal_find_record(m.ptr, m.size, bad_at + 8, seg.max_payload))
                    reason = _reason(scan)
                    if resync < 0:
                        report.problems.append(Problem(name, bad_at, int(scan.last_sequence) + 1, reason,
                                                       torn_tail=last_segment, bytes=m.size - bad_at))
                        break
                    report.problems.append(Problem(name, bad_at, int(scan.last_sequence) + 1, reason))
                    offset = resync
                    expected = _record_sequence(m, resync)
                previous_last = report.last_seq if report.last_seq is not None else seg.first_sequence - 1
        return report

    def info(self) -> dict[str, Any]:
        """Segments, first/last sequence, records and counts by message type (a full scan)."""
        by_type: dict[int, int] = {}
        segments = []
        for seg in self.segments():
            with _Mapped(seg.path) as m:
                scan = _scan(m, SEGMENT_HEADER_LENGTH, seg.first_sequence, seg.max_payload)
                counts = _count_types(m, SEGMENT_HEADER_LENGTH, int(scan.end_offset))
            for t, n in counts.items():
                by_type[t] = by_type.get(t, 0) + n
            segments.append({"file": seg.name, "first_seq": seg.first_sequence,
                             "last_seq": int(scan.last_sequence), "records": int(scan.records), "bytes": seg.size,
                             "ring": seg.ring_name, "schema_id": seg.schema_id,
                             "schema_version": seg.schema_version, "max_payload": seg.max_payload,
                             "complete": scan.status == lib.PYSEQ_SCAN_END})
        records = sum(s["records"] for s in segments)
        return {"path": self.path, "segments": len(segments), "records": records,
                "first_seq": segments[0]["first_seq"] if records else None,
                "last_seq": segments[-1]["last_seq"] if records else None,
                "bytes": sum(s["bytes"] for s in segments),
                "by_type": {str(t): n for t, n in sorted(by_type.items())}, "segment_list": segments}


def recover(path: str) -> RecoveryReport:
    """Make the journal end with a whole record: truncate the torn tail of the last segment (reported
    in the result), drop index entries past it, remove a last segment whose header was torn (a crash
    while it was being created: it held no record).  Any
    other bad record raises :class:`JournalCorruptError`.  Call it with the journal's lock held (the
    journaler does)."""
    journal = Journal(path)
    files = journal.segment_files()
    torn: Optional[Problem] = None
    if not files:
        return RecoveryReport(0, 0, None)
    last_path = files[-1]
    try:
        seg = read_segment_header(last_path)
    except errors.JournalCorruptError as e:
        size = os.path.getsize(last_path)
        if size > SEGMENT_HEADER_LENGTH:
            raise
        # a crash while the segment was being created: nothing was in it
        torn = Problem(os.path.basename(last_path), 0, e.sequence, e.reason, torn_tail=True, bytes=size)
        _remove_segment(last_path)
        files.pop()
        if not files:
            return RecoveryReport(0, 0, torn)
        seg = read_segment_header(files[-1])
    with _Mapped(seg.path) as m:
        scan = _scan(m, SEGMENT_HEADER_LENGTH, seg.first_sequence, seg.max_payload)
        end = int(scan.end_offset)
        if scan.status != lib.PYSEQ_SCAN_END:
            resync = int(lib.pyseq_journal_find_record(m.ptr, m.size, end + 8, seg.max_payload))
            if resync >= 0:
                raise errors.JournalCorruptError(seg.name, end, int(scan.last_sequence) + 1,
                                                 f"{_reason(scan)}, with valid records after it (at offset {resync})")
            torn = Problem(seg.name, end, int(scan.last_sequence) + 1, _reason(scan), torn_tail=True,
                           bytes=m.size - end)
        last = int(scan.last_sequence)
    if torn is not None and torn.segment == seg.name:
        with open(seg.path, "r+b") as f:
            f.truncate(end)
            os.fsync(f.fileno())
    _trim_index(seg, end)
    # the segments before the last are complete by construction; check their boundaries cheaply
    if len(files) > 1:
        previous = read_segment_header(files[-2])
        if previous.first_sequence >= seg.first_sequence:
            raise errors.JournalCorruptError(seg.name, 0, seg.first_sequence, "segments out of order")
    return RecoveryReport(last, len(files), torn)


def _remove_segment(path: str) -> None:
    os.unlink(path)
    index = path[: -len(SEGMENT_SUFFIX)] + INDEX_SUFFIX
    if os.path.exists(index):
        os.unlink(index)


def _trim_index(seg: Segment, end: int) -> None:
    """Drop the index entries of ``seg`` that point at or past ``end`` (a truncated tail)."""
    path = seg.index_path
    if not os.path.exists(path):
        return
    with open(path, "r+b") as f:
        raw = f.read()
        if len(raw) < INDEX_HEADER_LENGTH or raw[:8] != index_header(seg.first_sequence)[:8]:
            f.seek(0)
            f.truncate(0)
            f.write(index_header(seg.first_sequence))
            return
        keep = INDEX_HEADER_LENGTH
        while keep + INDEX_ENTRY.size <= len(raw) and INDEX_ENTRY.unpack_from(raw, keep)[1] < end:
            keep += INDEX_ENTRY.size
        if keep != len(raw):
            f.truncate(keep)


def _scan(m: _Mapped, offset: int, expected: int, max_payload: int, max_records: int = 0,
          stop_sequence: int = 0) -> Any:
    out = ffi.new("pyseq_scan_t *")
    lib.pyseq_journal_scan(m.ptr, m.size, offset, expected, max_payload, max_records, stop_sequence, out)
    return out


def _reason(scan: Any) -> str:
    reason = _SCAN_REASONS.get(int(scan.status), f"status {int(scan.status)}")
    if scan.status == lib.PYSEQ_SCAN_BAD_SEQUENCE:
        reason += f": found {int(scan.found_sequence)}, expected {int(scan.last_sequence) + 1}"
    return reason


def _record_sequence(m: _Mapped, offset: int) -> int:
    assert m.map is not None
    return int(FRAME.unpack_from(m.map, offset + 8)[0])


def _count_types(m: _Mapped, offset: int, end: int) -> dict[int, int]:
    counts: dict[int, int] = {}
    data = m.map
    while offset < end:
        assert data is not None
        record_length = int.from_bytes(data[offset + 4: offset + 8], "little")
        msg_type = int.from_bytes(data[offset + 28: offset + 30], "little")
        counts[msg_type] = counts.get(msg_type, 0) + 1
        offset += record_length
    return counts


def _seek(seg: Segment, m: _Mapped, start: int) -> tuple[int, int]:
    """The offset and sequence of the nearest indexed record at or before ``start`` (through the
    index, each entry checked against the record it points to), else the segment's first record."""
    best = (SEGMENT_HEADER_LENGTH, seg.first_sequence)
    try:
        with open(seg.index_path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return best
    if len(raw) < INDEX_HEADER_LENGTH or raw[:INDEX_HEADER_LENGTH] != index_header(seg.first_sequence):
        return best
    n = (len(raw) - INDEX_HEADER_LENGTH) // INDEX_ENTRY.size
    sequences = [INDEX_ENTRY.unpack_from(raw, INDEX_HEADER_LENGTH + k * INDEX_ENTRY.size)[0] for k in range(n)]
    k = bisect.bisect_right(sequences, start) - 1
    while k >= 0:
        seq, offset = INDEX_ENTRY.unpack_from(raw, INDEX_HEADER_LENGTH + k * INDEX_ENTRY.size)
        if seg.first_sequence <= seq <= start and \
                lib.pyseq_journal_record_valid(m.ptr, m.size, offset, seg.max_payload) and \
                _record_sequence(m, offset) == seq:
            return offset, seq
        k -= 1
    return best


def _iterate(seg: Segment, m: _Mapped, offset: int, expected: int, start: Optional[int], stop: Optional[int],
             wanted: Optional[frozenset[int]], last_segment: bool) -> Generator[Message, None, int]:
    """Yield the segment's messages from ``offset`` (sequence ``expected``); return the sequence
    after the last one scanned."""
    data = m.map
    if start is not None and start > expected:  # skip in C up to start
        scan = _scan(m, offset, expected, seg.max_payload, 0, start)
        offset, expected = int(scan.end_offset), int(scan.last_sequence) + 1
        if scan.status != lib.PYSEQ_SCAN_LIMIT:
            _end_of_data(seg, m, scan, last_segment)
            return expected
    while True:
        scan = _scan(m, offset, expected, seg.max_payload, _CHUNK, (stop + 1) if stop is not None else 0)
        end = int(scan.end_offset)
        assert data is not None or end == offset
        while offset < end:
            assert data is not None
            record_length = int.from_bytes(data[offset + 4: offset + 8], "little")
            seq, ts, length, msg_type, version, source, _origin = FRAME.unpack_from(data, offset + 8)
            if wanted is None or msg_type in wanted:
                yield Message(seq, ts, msg_type, version, source, data[offset + RECORD_OVERHEAD:
                                                                     offset + RECORD_OVERHEAD + length])
            offset += record_length
        expected = int(scan.last_sequence) + 1
        if scan.status == lib.PYSEQ_SCAN_LIMIT and (stop is None or expected <= stop):
            continue
        if scan.status != lib.PYSEQ_SCAN_LIMIT:
            _end_of_data(seg, m, scan, last_segment)
        return expected


def _end_of_data(seg: Segment, m: _Mapped, scan: Any, last_segment: bool) -> None:
    """The scan stopped before the end of the file: a torn tail of the last segment ends the data;
    anything else is corruption."""
    if scan.status == lib.PYSEQ_SCAN_END:
        return
    end = int(scan.end_offset)
    if last_segment and lib.pyseq_journal_find_record(m.ptr, m.size, end + 8, seg.max_payload) < 0:
        return
    raise errors.JournalCorruptError(seg.name, end, int(scan.last_sequence) + 1, _reason(scan))
