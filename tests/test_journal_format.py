"""The journal on disk is what csrc/journal_format.h draws, and reading it never lies.

1. Layout: the offsets and sizes drawn in journal_format.h (copied here as numbers, not computed)
   match the structs cffi and the C compiler see, and a journal built byte by byte from the drawing
   with ``struct.pack`` (and a pure-Python CRC32C) is what ``Journal`` reads.  The other way round, a
   journal written by a real Sequencer is read back by a pure-Python reader of the drawing.
2. CRC32C: published vectors, the SSE4.2 path against the table path and a pure-Python reference for
   every length 0..300 at every misalignment, and continuation.
3. A real Sequencer + Clients journal: verify, density, payloads/types/sources, system messages,
   segment rolling, ``records(start, stop, types)`` ranges, the index (used, and only a hint).
4. Hypothesis-generated damage (bit flips, overwritten runs, truncation, appended garbage, zeroed
   ranges, segment headers, index files): always detected or harmless, never a crash, a hang or a
   message that differs from the one journaled under its sequence; recover() truncates exactly the
   torn tail and leaves a journal that verifies clean.
5. recover(): torn tails, corruption with records after it, header-only and torn-header segments,
   and numbering across a restart (no reuse, no gap).
6. FsyncPolicy.parse and the journal's writer lock.

Tests named ``test_regression_*`` reproduce bugs found while writing this file, now fixed; the one
left named ``test_bug_*`` is a strict xfail, a known limit (see its docstring).  The property tests check everything else strictly; where
a generated example hits one of those known bugs (today: only the index seek of
test_regression_a_damaged_index_entry_makes_records_skip_messages; negative stops are left out of the range
test for test_regression_records_with_a_negative_stop_returns_records) they check the bug's exact shape
instead of failing (``KNOWN_BUG_HITS`` counts them, shown with ``-s``).

Everything runs in this process: the sequencer in a thread, clients in the main thread.  Ring names
carry the conftest prefix (``t<pid>-``) so the session check finds any left behind.
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import itertools
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time
import uuid
from typing import Any, Callable, Iterable, Iterator, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyseq
from pyseq import Message
from pyseq._native import ffi, lib
from pyseq.errors import JournalCorruptError, JournalError, JournalLockedError
from pyseq.journal import Journal, _Mapped, _seek, crc32c, index_header, recover, segment_header
from pyseq.journaler import FsyncPolicy, lock_journal
from pyseq.sequencer import source_id

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(os.path.dirname(HERE), "csrc")

# ---- the drawing of journal_format.h, as numbers ---------------------------------------------------------

SEGMENT_HEADER_OFFSETS = {"magic": 0, "format_version": 8, "header_length": 12, "schema_id": 16,
                          "schema_version": 20, "first_sequence": 24, "created_ns": 32, "max_payload": 40,
                          "flags": 44, "ring_name": 48, "reserved": 112, "header_crc": 124}
SEGMENT_HEADER_SIZES = {"magic": 8, "format_version": 4, "header_length": 4, "schema_id": 4, "schema_version": 4,
                        "first_sequence": 8, "created_ns": 8, "max_payload": 4, "flags": 4, "ring_name": 64,
                        "reserved": 12, "header_crc": 4}
RECORD_OFFSETS = {"crc": 0, "record_length": 4, "frame": 8, "frame.sequence": 8, "frame.timestamp_ns": 16,
                  "frame.length": 24, "frame.msg_type": 28, "frame.schema_version": 30, "frame.source": 32,
                  "frame.origin": 36}
RECORD_SIZES = {"crc": 4, "record_length": 4, "frame": 32, "frame.sequence": 8, "frame.timestamp_ns": 8,
                "frame.length": 4, "frame.msg_type": 2, "frame.schema_version": 2, "frame.source": 4,
                "frame.origin": 4}
INDEX_HEADER_OFFSETS = {"magic": 0, "format_version": 8, "entry_length": 12, "first_sequence": 16, "stride": 24,
                        "reserved": 28}
INDEX_HEADER_SIZES = {"magic": 8, "format_version": 4, "entry_length": 4, "first_sequence": 8, "stride": 4,
                      "reserved": 4}
INDEX_ENTRY_OFFSETS = {"sequence": 0, "offset": 8}

# the same, as struct formats (little-endian, no padding)
SEG_HDR = struct.Struct("<8sIIIIqqII64s12sI")
REC_HDR = struct.Struct("<II")
FRAME = struct.Struct("<qqIHHII")
IDX_HDR = struct.Struct("<8sIIqII")
IDX_ENTRY = struct.Struct("<qQ")
assert (SEG_HDR.size, REC_HDR.size + FRAME.size, IDX_HDR.size, IDX_ENTRY.size) == (128, 40, 32, 16)

SLOT_SIZE = 256
MAX_PAYLOAD = SLOT_SIZE - 32
TYPES = [0, 1, 2, 77, 0x1234, 0xFEFF]
SYSTEM_TYPES = [pyseq.CLIENT_JOINED, pyseq.CLIENT_LEFT, pyseq.END_OF_STREAM]
KNOWN_BUG_HITS: dict[str, int] = {}


def record_length(payload_length: int) -> int:
    return (40 + payload_length + 7) // 8 * 8


# ---- a pure-Python CRC32C ---------------------------------------------------------------------------------

POLY = 0x82F63B78


def crc32c_bitwise(data: bytes, crc: int = 0) -> int:
    """CRC-32C straight from the definition (reflected 0x1EDC6F41, init and xorout 0xFFFFFFFF)."""
    c = crc ^ 0xFFFFFFFF
    for byte in data:
        c ^= byte
        for _ in range(8):
            c = (c >> 1) ^ POLY if c & 1 else c >> 1
    return c ^ 0xFFFFFFFF


_TABLE: list[int] = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ POLY if _c & 1 else _c >> 1
    _TABLE.append(_c)


def ref_crc32c(data: bytes, crc: int = 0) -> int:
    """The same CRC, a byte at a time through a table (fast enough for whole journals)."""
    c = crc ^ 0xFFFFFFFF
    table = _TABLE
    for byte in data:
        c = (c >> 8) ^ table[(c ^ byte) & 0xFF]
    return c ^ 0xFFFFFFFF


# ---- journals built from the drawing ----------------------------------------------------------------------


def doc_segment_header(first: int, max_payload: int, ring_name: bytes, schema_id: int = 0, schema_version: int = 0,
                       created_ns: int = 0, flags: int = 0) -> bytes:
    head = SEG_HDR.pack(b"PYSEQJNL", 1, 128, schema_id, schema_version, first, created_ns, max_payload, flags,
                        ring_name.ljust(64, b"\0"), bytes(12), 0)
    return head[:124] + struct.pack("<I", ref_crc32c(head[:124]))


def doc_record(seq: int, ts: int, msg_type: int, schema_version: int, source: int, payload: bytes,
               origin: int = 0, padding: Optional[bytes] = None) -> bytes:
    length = len(payload)
    rl = record_length(length)
    covered = struct.pack("<I", rl) + FRAME.pack(seq, ts, length, msg_type, schema_version, source, origin) + payload
    pad = bytes(rl - 40 - length) if padding is None else padding
    assert len(pad) == rl - 40 - length
    return struct.pack("<I", ref_crc32c(covered)) + covered + pad


def doc_index(first: int, entries: Iterable[tuple[int, int]]) -> bytes:
    return IDX_HDR.pack(b"PYSEQIDX", 1, 16, first, 65536, 0) + b"".join(IDX_ENTRY.pack(s, o) for s, o in entries)


def seg_name(first: int) -> str:
    return f"{first:020d}.seg"


@dataclasses.dataclass(repr=False)
class DocRecord:
    offset: int
    record_length: int
    length: int
    message: Message
    origin: int

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # hypothesis prints this
        p.text(repr(self))

    def __repr__(self) -> str:
        return f"<record {self.seq} at {self.offset}, {self.record_length} bytes>"

    @property
    def seq(self) -> int:
        return self.message.seq

    @property
    def covered_end(self) -> int:  # the CRC covers [offset + 4, offset + 40 + length)
        return self.offset + 40 + self.length


@dataclasses.dataclass(repr=False)
class DocSegment:
    name: str
    size: int
    header: dict[str, Any]
    records: list[DocRecord]
    index: Optional[list[tuple[int, int]]]

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # hypothesis prints this
        p.text(repr(self))

    def __repr__(self) -> str:
        return f"<segment {self.name}, {self.size} bytes, {len(self.records)} records, index {self.index}>"

    @property
    def first(self) -> int:
        return int(self.header["first_sequence"])


def read_by_the_doc(path: str, strict_index: bool = True) -> list[DocSegment]:
    """Read a journal directory with nothing but journal_format.h, asserting every rule it states."""
    names = sorted(n for n in os.listdir(path) if re.fullmatch(r"\d{20}\.seg", n))
    out: list[DocSegment] = []
    expected_first: Optional[int] = None
    for name in names:
        with open(os.path.join(path, name), "rb") as f:
            raw = f.read()
        assert len(raw) >= 128, name
        fields = dict(zip(["magic", "format_version", "header_length", "schema_id", "schema_version",
                           "first_sequence", "created_ns", "max_payload", "flags", "ring_name", "reserved",
                           "header_crc"], SEG_HDR.unpack_from(raw, 0)))
        assert fields["magic"] == b"PYSEQJNL"
        assert fields["format_version"] == 1 and fields["header_length"] == 128
        assert fields["header_crc"] == ref_crc32c(raw[:124]), "header_crc: CRC32C of bytes 0..123"
        assert b"\0" in fields["ring_name"], "ring_name is NUL-terminated"
        assert fields["reserved"] == bytes(12) and fields["flags"] == 0
        assert fields["first_sequence"] == int(name[:20]) >= 1
        if expected_first is not None:
            assert fields["first_sequence"] == expected_first, "segments hold consecutive sequences"
        records: list[DocRecord] = []
        offset, seq = 128, fields["first_sequence"]
        while offset < len(raw):
            assert offset % 8 == 0
            assert len(raw) - offset >= 40, f"{name}: a partial record at {offset}"
            crc, rl = REC_HDR.unpack_from(raw, offset)
            s, ts, length, msg_type, version, source, origin = FRAME.unpack_from(raw, offset + 8)
            assert s == seq, f"{name} at {offset}: sequence {s}, expected {seq}"
            assert length <= fields["max_payload"]
            assert rl == record_length(length), "record_length == round_up(40 + length, 8)"
            assert offset + rl <= len(raw)
            assert crc == ref_crc32c(raw[offset + 4: offset + 40 + length]), "crc: CRC32C of bytes 4 .. 40+length-1"
            assert raw[offset + 40 + length: offset + rl] == bytes(rl - 40 - length), "zero padding"
            payload = raw[offset + 40: offset + 40 + length]
            records.append(DocRecord(offset, rl, length, Message(s, ts, msg_type, version, source, payload), origin))
            offset += rl
            seq += 1
        expected_first = seq
        index = _read_index_by_the_doc(path, name, fields["first_sequence"], records, strict_index)
        out.append(DocSegment(name, len(raw), fields, records, index))
    return out


def _read_index_by_the_doc(path: str, name: str, first: int, records: list[DocRecord],
                           strict: bool) -> Optional[list[tuple[int, int]]]:
    idx_path = os.path.join(path, name[:-4] + ".idx")
    if not os.path.exists(idx_path):
        return None
    with open(idx_path, "rb") as f:
        raw = f.read()
    assert IDX_HDR.unpack_from(raw, 0) == (b"PYSEQIDX", 1, 16, first, 65536, 0)
    assert (len(raw) - 32) % 16 == 0
    entries = [IDX_ENTRY.unpack_from(raw, k) for k in range(32, len(raw), 16)]
    at = {r.offset: r.seq for r in records}
    for (s, o), nxt in zip(entries, entries[1:] + [None]):
        assert at.get(o) == s, f"{name}: index entry ({s}, {o}) does not point at record {s}"
        if nxt is not None:
            assert nxt[0] > s and nxt[1] > o, "entries in increasing order"
    if strict:  # one entry for the first record at or past every 64 KiB (after the previous entry)
        want, due = [], 128
        for r in records:
            if r.offset >= due:
                want.append((r.seq, r.offset))
                due = r.offset + 65536
        assert entries == want
    return entries


# ---- a real sequencer, in a thread ---------------------------------------------------------------------


def fresh_ring_name() -> str:
    return f"t{os.getpid()}-{uuid.uuid4().hex[:8]}"


def remove_rings(name: str) -> None:
    """The sequenced ring ``name`` and any inbound ring ``name.in.*`` left (names this module made)."""
    for path in glob.glob(f"/dev/shm/pyseq.{glob.escape(name)}") + \
            glob.glob(f"/dev/shm/pyseq.{glob.escape(name)}.in.*"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@pytest.fixture
def ring(ring_name: str) -> Iterator[str]:
    yield ring_name
    remove_rings(ring_name)


Plan = list[tuple[str, int, bytes, int]]  # (client, msg_type, payload, schema_version), in submission order


def ring_messages(name: str) -> list[Message]:
    """Every message still in the (closed) sequenced ring: the ground truth the journal must equal."""
    r = pyseq.Ring.attach(name)
    out = []
    try:
        reader = r.reader(start="earliest")
        while True:
            try:
                out.append(reader.read(timeout=0))
            except pyseq.EndOfStreamError:
                break
        reader.close()
    finally:
        r.close()
    return out


def run_sequencer(journal: str, name: str, plan: Plan, **kwargs: Any) -> tuple[pyseq.Sequencer, list[Message]]:
    """Sequence ``plan`` through real clients into a journaled ring; the sequencer and what its ring holds."""
    kwargs.setdefault("capacity", 8192)
    kwargs.setdefault("slot_size", SLOT_SIZE)
    kwargs.setdefault("limits", pyseq.Limits(default=pyseq.Limit(capacity=256)))
    seq = pyseq.Sequencer(name, journal=os.fspath(journal), **kwargs)
    thread = threading.Thread(target=seq.run, name="test-sequencer", daemon=True)
    thread.start()
    clients: dict[str, pyseq.Client] = {}
    try:
        for client, *_ in plan:
            if client not in clients:
                clients[client] = pyseq.Client.connect(name, client, timeout=10)
        for client, msg_type, payload, version in plan:
            clients[client].submit(msg_type, payload, schema_version=version)
    finally:
        for c in clients.values():
            c.close()
        seq.stop()
        thread.join(30)
    assert not thread.is_alive(), "the sequencer did not stop"
    assert seq.journal is not None and seq.journal.failure is None
    assert seq.ring.closed
    return seq, ring_messages(name)


def make_plan(rnd: random.Random, clients: list[str], n: int, max_payload: int = MAX_PAYLOAD) -> Plan:
    """``n`` messages spread over ``clients``; the first client sends every payload size 0..max_payload."""
    sizes = list(range(max_payload + 1))
    rnd.shuffle(sizes)
    plan: Plan = []
    for i in range(n):
        client = clients[0] if i < len(sizes) else rnd.choice(clients)
        if i < len(sizes):
            size = sizes[i]
        else:
            size = rnd.choice([0, max_payload, rnd.randrange(max_payload + 1)])
        plan.append((client, rnd.choice(TYPES), rnd.randbytes(size), rnd.choice([0, 1, 2, 0xFFFF])))
    return plan


@dataclasses.dataclass(repr=False)
class Built:
    """A pristine journal written by a real sequencer, and everything known about it."""

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # hypothesis prints this
        p.text(repr(self))

    def __repr__(self) -> str:
        return f"<journal {os.path.basename(os.path.dirname(self.path))}: {len(self.messages)} messages>"

    path: str
    ring: str
    plan: Plan
    messages: list[Message]           # the ring's messages: what the journal must hold
    by_seq: dict[int, Message]
    segments: list[DocSegment]
    files: dict[str, bytes]           # every .seg/.idx file's bytes
    segment_bytes: int
    started_ns: int
    ended_ns: int
    sequencer: pyseq.Sequencer

    @property
    def first(self) -> int:
        return self.messages[0].seq

    @property
    def last(self) -> int:
        return self.messages[-1].seq

    def copy_to(self, path: str) -> str:
        os.makedirs(path, exist_ok=True)
        for name, data in self.files.items():
            with open(os.path.join(path, name), "wb") as f:
                f.write(data)
        return path


def build(path: str, n: int, clients: list[str], segment_bytes: int, seed: int, **kwargs: Any) -> Built:
    name = fresh_ring_name()
    plan = make_plan(random.Random(seed), clients, n)
    started = time.time_ns()
    try:
        seq, messages = run_sequencer(path, name, plan, segment_bytes=segment_bytes, **kwargs)
    finally:
        remove_rings(name)
    ended = time.time_ns()
    files = {}
    for fname in os.listdir(path):
        if fname.endswith((".seg", ".idx")):
            with open(os.path.join(path, fname), "rb") as f:
                files[fname] = f.read()
    return Built(path, name, plan, messages, {m.seq: m for m in messages}, read_by_the_doc(path), files,
                 segment_bytes, started, ended, seq)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """~400 messages from two clients in ~20 segments of <= 4096 bytes (one index entry each)."""
    return build(str(tmp_path_factory.mktemp("small") / "journal"), 400, ["alpha", "beta"], 4096, seed=1)


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """6000 messages in segments of <= 400000 bytes: several index entries per segment."""
    return build(str(tmp_path_factory.mktemp("big") / "journal"), 6000, ["gamma"], 400_000, seed=2)


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Turn a hang into a failure (SIGALRM; the C scans return between chunks, so Python sees it)."""
    def on_alarm(signum: int, frame: Any) -> None:
        raise AssertionError(f"hung for more than {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def collect(it: Iterator[Message]) -> tuple[list[Message], Optional[JournalCorruptError]]:
    got: list[Message] = []
    try:
        for m in it:
            got.append(m)
    except JournalCorruptError as e:
        return got, e
    return got, None


def expected_seqs(built: Built, start: Optional[int], stop: Optional[int], types: Optional[set[int]]) -> list[int]:
    lo = built.first if start is None else max(start, built.first)
    hi = built.last if stop is None else min(stop, built.last)
    return [s for s in range(lo, hi + 1) if types is None or built.by_seq[s].msg_type in types]


def note_known_bug(name: str) -> None:
    KNOWN_BUG_HITS[name] = KNOWN_BUG_HITS.get(name, 0) + 1


@pytest.fixture(scope="module", autouse=True)
def show_known_bug_hits() -> Iterator[None]:
    """How often the property tests ran into the bugs of the test_bug_* tests (shown with -s)."""
    yield
    if KNOWN_BUG_HITS:
        print(f"\nknown bugs hit by generated examples: {KNOWN_BUG_HITS}")


# =========================================================================================================
# 1. Layout
# =========================================================================================================


@pytest.mark.parametrize("field", sorted(set(SEGMENT_HEADER_OFFSETS) - {"reserved"}))
def test_each_segment_header_field_is_at_its_documented_offset_and_width(field: str) -> None:
    fields = dict(ffi.typeof("pyseq_segment_header_t").fields)
    assert fields[field].offset == SEGMENT_HEADER_OFFSETS[field]
    assert ffi.sizeof(fields[field].type) == SEGMENT_HEADER_SIZES[field]


def test_the_segment_header_is_128_bytes_with_12_reserved_before_the_crc() -> None:
    assert ffi.sizeof("pyseq_segment_header_t") == 128 == lib.PYSEQ_SEGMENT_HEADER_LENGTH
    assert lib.PYSEQ_SEGMENT_RING_NAME_LENGTH == 64
    fields = dict(ffi.typeof("pyseq_segment_header_t").fields)
    end_of_name = fields["ring_name"].offset + ffi.sizeof(fields["ring_name"].type)
    assert (end_of_name, fields["header_crc"].offset - end_of_name) == (112, 12)
    # the drawing's offsets tile the 128 bytes exactly
    spans = sorted((SEGMENT_HEADER_OFFSETS[f], SEGMENT_HEADER_SIZES[f]) for f in SEGMENT_HEADER_OFFSETS)
    assert [o for o, _ in spans] == list(itertools.accumulate([0] + [s for _, s in spans[:-1]]))
    assert sum(s for _, s in spans) == 128


@pytest.mark.parametrize("field", sorted(set(INDEX_HEADER_OFFSETS) - {"reserved"}))
def test_each_index_header_field_is_at_its_documented_offset_and_width(field: str) -> None:
    fields = dict(ffi.typeof("pyseq_index_header_t").fields)
    assert fields[field].offset == INDEX_HEADER_OFFSETS[field]
    assert ffi.sizeof(fields[field].type) == INDEX_HEADER_SIZES[field]


def test_record_and_index_sizes_and_constants_are_the_documented_ones() -> None:
    assert ffi.sizeof("pyseq_index_header_t") == 32 == lib.PYSEQ_INDEX_HEADER_LENGTH
    assert lib.PYSEQ_INDEX_ENTRY_LENGTH == 16
    assert lib.PYSEQ_RECORD_HEADER_LENGTH == 8
    assert lib.PYSEQ_RECORD_OVERHEAD == 40 == lib.PYSEQ_RECORD_HEADER_LENGTH + ffi.sizeof("pyseq_frame_t")
    assert lib.PYSEQ_RECORD_ALIGN == 8 and lib.PYSEQ_SEGMENT_HEADER_LENGTH % lib.PYSEQ_RECORD_ALIGN == 0
    assert lib.PYSEQ_INDEX_STRIDE == 65536
    assert lib.PYSEQ_JOURNAL_FORMAT_VERSION == 1
    assert lib.PYSEQ_JOURNAL_MAGIC == int.from_bytes(b"PYSEQJNL", "little")
    assert lib.PYSEQ_INDEX_MAGIC == int.from_bytes(b"PYSEQIDX", "little")
    # the frame inside a record is the ring's frame (record offset = 8 + frame offset)
    frame = dict(ffi.typeof("pyseq_frame_t").fields)
    for key, offset in RECORD_OFFSETS.items():
        if key.startswith("frame."):
            assert 8 + frame[key[6:]].offset == offset, key
            assert ffi.sizeof(frame[key[6:]].type) == RECORD_SIZES[key], key
    from pyseq import journal as pj
    assert pj.INDEX_ENTRY.size == 16 and pj.RECORD_OVERHEAD == 40 and pj.SEGMENT_HEADER_LENGTH == 128
    assert pyseq.message.FRAME.format == FRAME.format


def test_the_c_compiler_lays_out_every_drawn_struct_as_drawn(tmp_path: Any) -> None:
    """cffi does not declare the record header and the index entry: ask the C compiler directly."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    checks = []
    for struct_name, offsets in [("pyseq_segment_header_t", SEGMENT_HEADER_OFFSETS),
                                 ("pyseq_record_header_t", RECORD_OFFSETS),
                                 ("pyseq_index_header_t", {k: v for k, v in INDEX_HEADER_OFFSETS.items()
                                                           if k != "reserved"}),
                                 ("pyseq_index_entry_t", INDEX_ENTRY_OFFSETS)]:
        for field in offsets:
            checks.append(f'printf("{struct_name} {field} %zu %zu\\n", offsetof({struct_name}, {field}), '
                          f'sizeof(((({struct_name} *)0)->{field})));')
        checks.append(f'printf("{struct_name} SIZE %zu 0\\n", sizeof({struct_name}));')
    src = tmp_path / "layout.c"
    src.write_text('#include <stdio.h>\n#include <stddef.h>\n#include "journal_format.h"\nint main(void) {\n'
                   + "\n".join(checks) + "\nreturn 0;\n}\n")
    exe = tmp_path / "layout"
    subprocess.run([cc, "-std=c11", "-I", CSRC, "-o", str(exe), str(src)], check=True, capture_output=True)
    got = {}
    for line in subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.splitlines():
        struct_name, field, offset_text, size_text = line.split()
        got[(struct_name, field)] = (int(offset_text), int(size_text))
    for f, off in SEGMENT_HEADER_OFFSETS.items():
        assert got[("pyseq_segment_header_t", f)] == (off, SEGMENT_HEADER_SIZES[f]), f
    for f, off in RECORD_OFFSETS.items():
        assert got[("pyseq_record_header_t", f)] == (off, RECORD_SIZES[f]), f
    for f, off in INDEX_HEADER_OFFSETS.items():
        if f != "reserved":
            assert got[("pyseq_index_header_t", f)] == (off, INDEX_HEADER_SIZES[f]), f
    assert got[("pyseq_index_entry_t", "sequence")] == (0, 8)
    assert got[("pyseq_index_entry_t", "offset")] == (8, 8)
    assert got[("pyseq_segment_header_t", "SIZE")][0] == 128
    assert got[("pyseq_record_header_t", "SIZE")][0] == 40
    assert got[("pyseq_index_header_t", "SIZE")][0] == 32
    assert got[("pyseq_index_entry_t", "SIZE")][0] == 16


def test_segment_header_and_index_header_are_the_drawn_bytes() -> None:
    made = segment_header(12345, 224, "orders-ring", schema_id=0xABCDEF01, schema_version=7, created_ns=-5)
    assert made == doc_segment_header(12345, 224, b"orders-ring", 0xABCDEF01, 7, -5)
    # a ring name is cut at 63 bytes, so the NUL always fits
    long_name = segment_header(1, 96, "x" * 100, created_ns=1)
    assert long_name == doc_segment_header(1, 96, b"x" * 63, created_ns=1)
    assert index_header(987654321) == doc_index(987654321, [])


def test_a_journal_built_from_the_drawing_is_read_back(tmp_path: Any) -> None:
    """Two segments, index files and all, written with struct.pack and a pure-Python CRC."""
    rnd = random.Random(7)
    path = str(tmp_path / "hand")
    os.makedirs(path)
    max_payload = 100
    originals: list[Message] = []
    offsets: dict[int, int] = {}
    for first, last in [(7, 30), (31, 60)]:
        data = bytearray(doc_segment_header(first, max_payload, b"hand-made", 3, 4, 1_700_000_000_000_000_000))
        for s in range(first, last + 1):
            payload = rnd.randbytes(rnd.choice([0, 1, 7, 8, 9, max_payload, rnd.randrange(max_payload)]))
            m = Message(s, 1_700_000_000_000_000_000 + s, rnd.choice(TYPES), rnd.randrange(65536),
                        rnd.randrange(1 << 32), payload)
            originals.append(m)
            offsets[s] = len(data)
            data += doc_record(m.seq, m.timestamp_ns, m.msg_type, m.schema_version, m.source, m.payload,
                               origin=rnd.randrange(1 << 32))
        with open(os.path.join(path, seg_name(first)), "wb") as f:
            f.write(data)
        entries = [(s, offsets[s]) for s in range(first, last + 1, 5)]
        with open(os.path.join(path, seg_name(first)[:-4] + ".idx"), "wb") as f:
            f.write(doc_index(first, entries))
    j = Journal(path)
    assert list(j.records()) == originals
    report = j.verify()
    assert (report.ok, report.problems, report.records, report.first_seq, report.last_seq, report.segments) == \
        (True, [], 54, 7, 60, 2)
    assert j.last_sequence() == 60
    info = j.info()
    assert (info["records"], info["first_seq"], info["last_seq"]) == (54, 7, 60)
    assert sum(info["by_type"].values()) == 54
    seg = j.segments()[1]
    assert (seg.first_sequence, seg.max_payload, seg.ring_name, seg.schema_id, seg.schema_version) == \
        (31, 100, "hand-made", 3, 4)
    with _Mapped(seg.path) as mapped:  # the hand-written index is what the reader seeks with
        assert _seek(seg, mapped, 44) == (offsets[41], 41)
        assert _seek(seg, mapped, 31) == (128, 31)
    for start in range(1, 64):
        for stop in (start, start + 3, None):
            assert list(j.records(start, stop)) == [m for m in originals if m.seq >= start and
                                                     (stop is None or m.seq <= stop)]
    assert recover(path) == pyseq.journal.RecoveryReport(60, 2, None)


def test_padding_is_outside_the_crc_as_drawn(tmp_path: Any) -> None:
    """The CRC covers bytes 4 .. 40+length-1: non-zero padding neither invalidates a record nor
    leaks into its payload (harmless; verify does not check the zero padding)."""
    path = str(tmp_path / "pad")
    os.makedirs(path)
    rec = doc_record(1, 5, 9, 0, 1, b"abc", padding=b"\xee" * 5)
    with open(os.path.join(path, seg_name(1)), "wb") as f:
        f.write(doc_segment_header(1, 64, b"p") + rec)
    assert list(Journal(path).records()) == [Message(1, 5, 9, 0, 1, b"abc")]
    assert Journal(path).verify().problems == []


@pytest.mark.parametrize("which", ["small", "big"])
def test_a_real_journal_is_what_the_drawing_says(which: str, request: pytest.FixtureRequest) -> None:
    built: Built = request.getfixturevalue(which)
    segs = built.segments  # read_by_the_doc asserted every per-record rule already
    assert [r.message for s in segs for r in s.records] == built.messages
    for s in segs:
        h = s.header
        assert h["max_payload"] == MAX_PAYLOAD, "the ring's slot_size - 32"
        assert h["ring_name"].rstrip(b"\0").decode() == built.ring
        assert (h["schema_id"], h["schema_version"]) == (0, 0)
        assert built.started_ns <= h["created_ns"] <= built.ended_ns, "created_ns is CLOCK_REALTIME"
        assert s.index is not None, "every segment has its index file"
    assert len(segs) >= 3
    # origin: the message's sequence in its client's inbound ring (low 32 bits); 0 for system messages
    counts: dict[int, int] = {}
    for r in (r for s in segs for r in s.records):
        if r.message.msg_type >= pyseq.SYSTEM_FIRST:
            assert r.origin == 0
        else:
            counts[r.message.source] = counts.get(r.message.source, 0) + 1
            assert r.origin == counts[r.message.source]


# =========================================================================================================
# 2. CRC32C
# =========================================================================================================

RFC3720_READ_PDU = bytes.fromhex("01c00000000000000000000000000000" "14000000000004000000001400000018"
                                 "28000000000000000200000000000000")
CRC_VECTORS = [
    (b"123456789", 0xE3069283),
    (b"", 0),
    (bytes(32), 0x8A9136AA),                 # RFC 3720 B.4: 32 bytes of zeros
    (b"\xff" * 32, 0x62A8AB43),              # 32 bytes of ones
    (bytes(range(32)), 0x46DD794E),          # 32 incrementing bytes
    (bytes(range(31, -1, -1)), 0x113FDB5C),  # 32 decrementing bytes
    (RFC3720_READ_PDU, 0xD9963A56),          # an iSCSI read command PDU
]


def crc_at(fn: Callable[..., int], data: bytes, misalign: int, crc: int = 0, guard: int = 0xA5) -> int:
    """``fn`` over ``data`` placed at an address that is ``misalign`` mod 8, between guard bytes."""
    buf = ffi.new("uint8_t[]", len(data) + 32)
    ffi.memmove(buf, bytes([guard]) * (len(data) + 32), len(data) + 32)
    shift = (misalign - int(ffi.cast("uintptr_t", buf))) % 8 + 8
    ffi.memmove(buf + shift, data, len(data))
    return int(fn(crc, buf + shift, len(data)))


@pytest.mark.parametrize("data, expected", CRC_VECTORS, ids=lambda v: str(v)[:12])
def test_crc32c_known_vectors(data: bytes, expected: int) -> None:
    assert crc32c_bitwise(data) == expected
    assert ref_crc32c(data) == expected
    assert crc32c(data) == expected
    assert int(lib.pyseq_crc32c(0, data, len(data))) == expected
    assert int(lib.pyseq_crc32c_table(0, data, len(data))) == expected
    for misalign in range(8):
        assert crc_at(lib.pyseq_crc32c, data, misalign) == expected
        assert crc_at(lib.pyseq_crc32c_table, data, misalign) == expected


def test_the_hardware_path_is_the_one_in_use_where_the_cpu_has_it() -> None:
    with open("/proc/cpuinfo") as f:
        has = " sse4_2" in f.read()
    assert bool(lib.pyseq_crc32c_hardware()) == has


def test_crc32c_every_length_0_to_300_at_every_misalignment() -> None:
    rnd = random.Random(3)
    for n in range(301):
        data = rnd.randbytes(n)
        want = ref_crc32c(data)
        for misalign in range(8):
            guard = rnd.randrange(256)
            assert crc_at(lib.pyseq_crc32c, data, misalign, guard=guard) == want, (n, misalign)
            assert crc_at(lib.pyseq_crc32c_table, data, misalign, guard=guard) == want, (n, misalign)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300), misalign=st.integers(0, 7), seed=st.integers(0, 2**32 - 1),
       cut=st.integers(0, 300))
def test_crc32c_hardware_table_and_reference_agree_and_continue(data: bytes, misalign: int, seed: int,
                                                                cut: int) -> None:
    want = ref_crc32c(data, seed)
    assert crc_at(lib.pyseq_crc32c, data, misalign, seed) == want
    assert crc_at(lib.pyseq_crc32c_table, data, misalign, seed) == want
    cut = min(cut, len(data))
    head, tail = data[:cut], data[cut:]
    for fn in (lib.pyseq_crc32c, lib.pyseq_crc32c_table):
        assert crc_at(fn, tail, (misalign + cut) % 8, crc_at(fn, head, misalign, seed)) == want
    assert crc32c(tail, crc32c(head, seed)) == want


# =========================================================================================================
# 3. A journal written by a real Sequencer
# =========================================================================================================


def test_the_journal_holds_every_message_of_the_ring_densely(small: Built) -> None:
    j = Journal(small.path)
    report = j.verify()
    assert report.ok and report.problems == []
    assert (report.first_seq, report.last_seq, report.records) == (1, small.last, len(small.messages))
    assert report.segments == len(small.segments) and report.bytes == sum(s.size for s in small.segments)
    got = list(j.records())
    assert got == small.messages
    assert [m.seq for m in got] == list(range(1, small.last + 1))
    assert j.last_sequence() == small.last
    info = j.info()
    assert (info["records"], info["first_seq"], info["last_seq"], info["segments"]) == \
        (len(small.messages), 1, small.last, len(small.segments))
    by_type: dict[str, int] = {}
    for m in small.messages:
        by_type[str(m.msg_type)] = by_type.get(str(m.msg_type), 0) + 1
    assert info["by_type"] == by_type
    assert all(s["complete"] for s in info["segment_list"])


def test_payloads_types_versions_and_sources_are_the_submitted_ones(small: Built) -> None:
    got = list(Journal(small.path).records())
    for client in ("alpha", "beta"):
        sent = [(t, p, v) for c, t, p, v in small.plan if c == client]
        mine = [m for m in got if m.source == source_id(client) and m.msg_type < pyseq.SYSTEM_FIRST]
        assert [(m.msg_type, m.payload, m.schema_version) for m in mine] == sent
    sizes = {len(m.payload) for m in got if m.msg_type < pyseq.SYSTEM_FIRST}
    assert sizes == set(range(MAX_PAYLOAD + 1)), "every payload size from 0 to the ring's max"
    assert {m.msg_type for m in got} == set(TYPES) | set(SYSTEM_TYPES)
    timestamps = [m.timestamp_ns for m in got]
    assert timestamps == sorted(timestamps) and small.started_ns <= timestamps[0] <= timestamps[-1] <= small.ended_ns


def test_the_system_messages_are_journaled(small: Built) -> None:
    got = list(Journal(small.path).records())
    system = [(m.msg_type, m.source, m.payload) for m in got if m.msg_type >= pyseq.SYSTEM_FIRST]
    for client in ("alpha", "beta"):
        assert system.count((pyseq.CLIENT_JOINED, source_id(client), client.encode())) == 1
        assert system.count((pyseq.CLIENT_LEFT, source_id(client), client.encode())) == 1
        joined = next(m.seq for m in got if m.msg_type == pyseq.CLIENT_JOINED and m.payload == client.encode())
        left = next(m.seq for m in got if m.msg_type == pyseq.CLIENT_LEFT and m.payload == client.encode())
        theirs = [m.seq for m in got if m.source == source_id(client) and m.msg_type < pyseq.SYSTEM_FIRST]
        assert joined < min(theirs) and max(theirs) < left
    assert got[-1][2:] == (pyseq.END_OF_STREAM, 0, 0, b"")
    assert len(system) == 5


def check_rolling(built: Built) -> None:
    """A segment is rolled when the next record would take it past segment_bytes (and only then)."""
    segs = built.segments
    for s, nxt in zip(segs, segs[1:]):
        assert s.size <= built.segment_bytes or len(s.records) == 1
        assert s.size + nxt.records[0].record_length > built.segment_bytes, f"{s.name} rolled early"
        assert nxt.first == s.records[-1].seq + 1
    assert segs[-1].size <= built.segment_bytes or len(segs[-1].records) == 1


def test_segments_roll_at_segment_bytes(small: Built, big: Built) -> None:
    check_rolling(small)
    check_rolling(big)
    assert len(small.segments) >= 10
    assert all(len(s.index or []) >= 4 for s in big.segments[:-1]), "several index entries per full segment"


@pytest.mark.parametrize("segment_bytes, slot_size", [(5000, 256), (65536, 256), (4096, 8192)])
def test_other_segment_sizes(tmp_path: Any, ring: str, segment_bytes: int, slot_size: int) -> None:
    """An odd segment size; a large one; records larger than the segment (one record per segment)."""
    rnd = random.Random(segment_bytes)
    max_payload = slot_size - 32
    n = 40 if slot_size > 1024 else 700
    plan = [("c", rnd.choice(TYPES), rnd.randbytes(rnd.choice([0, max_payload, rnd.randrange(max_payload)])), 0)
            for _ in range(n)]
    path = str(tmp_path / "j")
    _, messages = run_sequencer(path, ring, plan, segment_bytes=segment_bytes, slot_size=slot_size,
                                capacity=1024)
    segs = read_by_the_doc(path)
    assert [r.message for s in segs for r in s.records] == messages == list(Journal(path).records())
    built = Built(path, ring, plan, messages, {}, segs, {}, segment_bytes, 0, 0, None)  # type: ignore[arg-type]
    check_rolling(built)
    assert Journal(path).verify().problems == []


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_records_ranges_and_types(small: Built, big: Built, data: st.DataObject) -> None:
    built = data.draw(st.sampled_from([small, big]), label="journal")
    bound = st.one_of(st.none(), st.integers(-3, built.last + 5),
                      st.sampled_from([s.first for s in built.segments]).flatmap(
                          lambda b: st.integers(b - 2, b + 2)))
    start = data.draw(bound, label="start")
    stop = data.draw(bound, label="stop")
    if stop is not None and stop < 0:
        stop = None  # a negative stop is test_regression_records_with_a_negative_stop_returns_records
    if start is not None and stop is None and built is big:
        stop = max(start, 0) + data.draw(st.integers(0, 400), label="span")  # keep the big journal's examples short
    types = data.draw(st.one_of(st.none(), st.sets(st.sampled_from(TYPES + SYSTEM_TYPES))), label="types")
    with deadline(20):
        got = list(Journal(built.path).records(start, stop, types))
    want = [built.by_seq[s] for s in expected_seqs(built, start, stop, types)]
    assert got == want


def test_ranges_across_every_segment_boundary_and_outside_the_journal(small: Built) -> None:
    j = Journal(small.path)
    msgs = small.messages
    for s in small.segments[1:]:
        b = s.first
        for start, stop in [(b - 1, b), (b - 2, b + 2), (b, b), (b - 1, b - 1), (b, None)]:
            want = [m for m in msgs if m.seq >= start and (stop is None or m.seq <= stop)]
            assert list(j.records(start, stop)) == want
    last = small.last
    assert list(j.records(last + 1)) == [] and list(j.records(last + 1000, last + 2000)) == []
    assert list(j.records(-100, 0)) == [] and list(j.records(0, 0)) == []
    assert list(j.records(-100, 2)) == msgs[:2]
    assert list(j.records(last, last + 10)) == msgs[-1:]
    assert list(j.records(10, 5)) == []
    assert list(j.records(types=[])) == []
    assert list(j.records(types=[pyseq.END_OF_STREAM])) == msgs[-1:]


def test_the_index_is_used_and_only_a_hint(big: Built, tmp_path: Any) -> None:
    """Seeking goes through the index (the reader starts at the nearest entry at or before start), and
    with the index files deleted, emptied or garbled every range reads the same."""
    j = Journal(big.path)
    segments = j.segments()
    rnd = random.Random(11)
    starts = sorted({rnd.randrange(1, big.last + 1) for _ in range(60)} |
                    {e[0] for s in big.segments for e in s.index or []})
    for start in starts:
        seg = [s for s in segments if s.first_sequence <= start][-1]
        doc = next(d for d in big.segments if d.first == seg.first_sequence)
        entry = [e for e in doc.index or [] if e[0] <= start][-1]
        with _Mapped(seg.path) as m:
            assert _seek(seg, m, start) == (entry[1], entry[0])
    queries = [(s, s + rnd.randrange(0, 300)) for s in starts] + [(s, None) for s in starts[-5:]]
    want = {q: list(j.records(*q)) for q in queries}
    for q, msgs in want.items():
        assert msgs == [big.by_seq[s] for s in expected_seqs(big, q[0], q[1], None)]

    def garble(path: str, how: str) -> None:
        for name in os.listdir(path):
            if not name.endswith(".idx"):
                continue
            p = os.path.join(path, name)
            raw = bytearray(open(p, "rb").read())
            if how == "deleted":
                os.unlink(p)
                continue
            if how == "empty":
                raw = bytearray()
            elif how == "header":
                raw[20] ^= 0x40                          # first_sequence
            elif how == "offsets+8":
                for k in range(32, len(raw), 16):
                    struct.pack_into("<Q", raw, k + 8, struct.unpack_from("<Q", raw, k + 8)[0] + 8)
            elif how == "sequences+1":
                for k in range(32, len(raw), 16):
                    struct.pack_into("<q", raw, k, struct.unpack_from("<q", raw, k)[0] + 1)
            elif how == "random-tail":
                raw[32:] = rnd.randbytes(len(raw) - 32)
            elif how == "offsets-past-end":
                for k in range(32, len(raw), 16):
                    struct.pack_into("<Q", raw, k + 8, 1 << 62)
            with open(p, "wb") as f:
                f.write(raw)

    for how in ["deleted", "empty", "header", "offsets+8", "sequences+1", "random-tail", "offsets-past-end"]:
        path = big.copy_to(str(tmp_path / how))
        garble(path, how)
        jj = Journal(path)
        for seg in jj.segments():
            with _Mapped(seg.path) as m:
                assert _seek(seg, m, seg.first_sequence + 500) == (128, seg.first_sequence), how
        for q, msgs in want.items():
            assert list(jj.records(*q)) == msgs, (how, q)
        assert jj.verify().problems == []


# =========================================================================================================
# 4. Damage: detected or harmless, never wrong
# =========================================================================================================


@dataclasses.dataclass
class SegDamage:
    doc: DocSegment
    is_last: bool
    new_size: int
    header: bool                       # a byte of the 128-byte header changed or is gone
    lost: list[DocRecord]              # records whose CRC-covered bytes changed or that the file cut
    appended: bool
    clean_cut: bool                    # only truncated, exactly at a record boundary (>= 128)
    intact_after_first_lost: bool      # an unchanged record at its place after the first lost one


@dataclasses.dataclass
class Damage:
    segments: list[SegDamage]          # the damaged segment files only

    @property
    def serious(self) -> list[SegDamage]:  # segments with anything a reader must notice (not just padding)
        return [d for d in self.segments if d.header or d.lost or d.appended]

    @property
    def meaningful(self) -> bool:
        return bool(self.serious)

    @property
    def last(self) -> Optional[SegDamage]:
        return next((d for d in self.segments if d.is_last), None)

    @property
    def only_last(self) -> bool:
        return all(d.is_last for d in self.serious)

    def header_damaged(self, name: str) -> bool:
        return any(d.header and d.doc.name == name for d in self.segments)


def analyse(built: Built, path: str) -> Damage:
    out = []
    for k, doc in enumerate(built.segments):
        old = built.files[doc.name]
        with open(os.path.join(path, doc.name), "rb") as f:
            new = f.read()
        if new == old:
            continue
        # lost: a CRC-covered byte changed, or the file ends before the record does (padding included)
        lost = [r for r in doc.records if new[r.offset: r.covered_end] != old[r.offset: r.covered_end] or
                len(new) < r.offset + r.record_length]
        first_lost = lost[0].seq if lost else None
        lost_set = {r.seq for r in lost}
        intact_after = first_lost is not None and any(r.seq > first_lost and r.seq not in lost_set
                                                      for r in doc.records)
        boundaries = {r.offset for r in doc.records} | {128}
        clean_cut = len(new) < len(old) and new == old[:len(new)] and len(new) in boundaries
        out.append(SegDamage(doc, k == len(built.segments) - 1, len(new), len(new) < 128 or new[:128] != old[:128],
                             lost, len(new) > len(old), clean_cut, intact_after))
    return Damage(out)


def check_stream(built: Built, damage: Damage, path: str, start: Optional[int], stop: Optional[int],
                 types: Optional[set[int]]) -> None:
    """records(start, stop, types) on a damaged journal: every message it yields is the original of its
    sequence, in order and in range; what it leaves out it leaves out only by raising
    JournalCorruptError or at a torn tail of the last segment with nothing intact after it."""
    got, err = collect(Journal(path).records(start, stop, types))
    seqs = [m.seq for m in got]
    for m in got:
        assert m == built.by_seq.get(m.seq), f"sequence {m.seq}: a message that was never journaled"
    assert seqs == sorted(set(seqs))
    want = expected_seqs(built, start, stop, types)
    assert set(seqs) <= set(want)
    if err is not None:
        assert damage.meaningful, f"JournalCorruptError from an undamaged (or padding-only) journal: {err}"
    else:
        assert damage.meaningful or seqs == want, "harmless damage changed what is read"
    assert seqs == want[:len(seqs)], "a hole in what records() returned"
    if err is None and len(seqs) < len(want):
        missing = want[len(seqs)]
        d = damage.last
        assert d is not None and d.lost, f"records() ended early at {missing} without damage in the last segment"
        assert missing >= d.doc.first and d.lost[0].seq <= missing, \
            f"records() ended early at {missing}: not after the first damaged record {d.lost[0].seq}"
        assert not d.intact_after_first_lost, "records() ended at damage with intact records after it"


def check_recover(built: Built, damage: Damage, path: str) -> None:
    last_doc = built.segments[-1]
    d = damage.last
    try:
        report = recover(path)
    except JournalCorruptError as e:
        if len(built.segments) > 1 and e.segment == built.segments[-2].name:
            # recover reads the header of the segment before the last (an ordering check)
            assert damage.header_damaged(e.segment) and e.offset == 0, f"recover raised: {e}"
            return
        assert d is not None and (d.header or d.lost), f"recover raised for damage outside the last segment: {e}"
        if d.header:
            assert d.new_size > 128 and e.offset == 0 and e.segment == last_doc.name
        else:
            assert d.lost and d.intact_after_first_lost, f"recover raised on a torn tail: {e}"
            f = d.lost[0]
            assert (e.segment, e.offset, e.sequence) == (last_doc.name, f.offset, f.seq)
        with open(os.path.join(path, last_doc.name), "rb") as fh:
            assert len(fh.read()) == d.new_size, "recover changed a segment it refused"
        return
    torn = report.torn_tail
    if d is None:
        assert (report.last_sequence, torn) == (built.last, None)
        expected_last = built.last
    elif d.header:
        assert d.new_size <= 128, "recover accepted a last segment with a bad header and data"
        assert not os.path.exists(os.path.join(path, last_doc.name))
        assert not os.path.exists(os.path.join(path, last_doc.name[:-4] + ".idx"))
        expected_last = last_doc.first - 1
        if not damage.only_last:
            return  # the segment before, now the last, may have had a tail of its own to cut
        assert torn is not None and (torn.segment, torn.offset, torn.sequence, torn.bytes) == \
            (last_doc.name, 0, last_doc.first, d.new_size)
        assert report.last_sequence == expected_last
    elif d.lost:
        assert not d.intact_after_first_lost, "recover truncated damage with intact records after it"
        f = d.lost[0]
        expected_last = f.seq - 1
        assert report.last_sequence == expected_last
        if d.new_size > f.offset:
            assert torn is not None
            assert (torn.segment, torn.offset, torn.sequence, torn.bytes) == \
                (last_doc.name, f.offset, f.seq, d.new_size - f.offset)
        else:
            assert torn is None  # a clean cut at a record boundary
        assert os.path.getsize(os.path.join(path, last_doc.name)) == f.offset
    else:  # appended garbage, or damage to padding only
        expected_last = built.last
        assert report.last_sequence == built.last
        if d.appended:
            assert torn is not None and (torn.segment, torn.offset, torn.sequence, torn.bytes) == \
                (last_doc.name, last_doc.size, built.last + 1, d.new_size - last_doc.size)
        else:
            assert torn is None
        assert os.path.getsize(os.path.join(path, last_doc.name)) == last_doc.size
    if damage.only_last:
        # the journal now ends at the last whole record before the damage, and verifies clean
        v = Journal(path).verify()
        assert v.problems == [] and v.last_seq == (expected_last if expected_last >= built.first else None)
        assert list(Journal(path).records()) == built.messages[:expected_last - built.first + 1]
        idx = os.path.join(path, last_doc.name[:-4] + ".idx")
        if os.path.exists(idx):  # no entry left past the cut
            raw = open(idx, "rb").read()
            size = os.path.getsize(os.path.join(path, last_doc.name))
            assert all(IDX_ENTRY.unpack_from(raw, k)[1] < size for k in range(32, len(raw) - 15, 16))


def corrupt_segment(data: st.DataObject, built: Built, path: str) -> None:
    docs = built.segments
    doc = data.draw(st.one_of(st.just(docs[-1]), st.sampled_from(docs)), label="segment")
    p = os.path.join(path, doc.name)
    raw = bytearray(open(p, "rb").read())
    size = len(raw)
    kinds = ["flip", "overwrite", "truncate", "append", "zero", "header", "copy-record", "power-cut"]
    if size < 128:  # cut short by an earlier corruption of this example
        kinds = ["append"] if size == 0 else ["flip", "truncate", "append"]
    kind = data.draw(st.sampled_from(kinds), label="kind")
    pos = st.integers(0, max(0, size - 1))
    records = [r for r in doc.records if r.offset + r.record_length <= size]
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 4), label="flips")):
            raw[data.draw(pos, label="at")] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    elif kind == "overwrite":
        at = data.draw(pos, label="at")
        run = data.draw(st.binary(min_size=1, max_size=64), label="run")
        raw[at: at + len(run)] = run[: size - at]
    elif kind == "truncate":
        near = st.sampled_from([r.offset for r in records] + [min(128, size - 1)]).flatmap(
            lambda o: st.integers(max(0, o - 9), min(size - 1, o + 9)))
        raw = raw[: data.draw(st.one_of(pos, near), label="cut")]
    elif kind == "append":
        raw += data.draw(st.one_of(st.binary(min_size=1, max_size=300),
                                   st.integers(1, 5000).map(bytes)), label="garbage")
    elif kind == "zero":
        at = data.draw(pos, label="at")
        n = data.draw(st.integers(1, 600), label="n")
        raw[at: at + n] = bytes(len(raw[at: at + n]))
    elif kind == "header":
        at = data.draw(st.integers(0, 127), label="at")
        raw[at] ^= data.draw(st.integers(1, 255), label="xor")
    elif kind == "copy-record" and records:  # a whole valid record where another one was (a misdirected write)
        src = data.draw(st.sampled_from(records), label="src")
        dst = data.draw(st.sampled_from(records), label="dst")
        rec = bytes(raw[src.offset: src.offset + src.record_length])
        raw[dst.offset: dst.offset + len(rec)] = rec[: size - dst.offset]
    elif kind == "power-cut":  # the tail's last page(s) zeroed, the file size kept
        cut = data.draw(pos, label="from")
        raw[cut:] = bytes(size - cut)
    with open(p, "wb") as f:
        f.write(raw)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("scratch"))


def check_damaged_journal(built: Built, path: str,
                          ranges: Iterable[tuple[Optional[int], Optional[int], Optional[set[int]]]]) -> None:
    """Everything a damaged copy of ``built`` at ``path`` must satisfy (see test_damaged_segments_...)."""
    damage = analyse(built, path)
    with deadline(20):
        report = Journal(path).verify()
        last = damage.last
        clean_cut_of_last = damage.only_last and last is not None and last.clean_cut
        if damage.meaningful and not clean_cut_of_last:
            assert report.problems, "verify did not report the damage"
            if not damage.only_last or (last is not None and ((last.header and last.new_size > 128) or
                                                              last.intact_after_first_lost)):
                assert not report.ok, "corruption reported as a torn tail"
        else:
            assert report.problems == []
            assert report.last_seq == (last.lost[0].seq - 1 if clean_cut_of_last and last else built.last)
        with contextlib.suppress(JournalError):
            Journal(path).info()
            Journal(path).last_sequence()
        check_stream(built, damage, path, None, None, None)
        for start, stop, types in ranges:
            check_stream(built, damage, path, start, stop, types)
        check_recover(built, damage, path)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_damaged_segments_are_detected_or_harmless_never_wrong(small: Built, scratch: str,
                                                               data: st.DataObject) -> None:
    """Damage drawn by hypothesis (1-2 corruptions of segment files); check_stream and check_recover
    say what 'detected or harmless, never wrong' means exactly."""
    path = small.copy_to(tempfile.mkdtemp(dir=scratch))
    try:
        for _ in range(data.draw(st.integers(1, 2), label="corruptions")):
            corrupt_segment(data, small, path)
        bound = st.one_of(st.none(), st.integers(1, small.last))
        types = st.one_of(st.none(), st.sets(st.sampled_from(TYPES), min_size=1))
        ranges = [(data.draw(bound, label="start"), data.draw(bound, label="stop"), data.draw(types, label="types"))
                  for _ in range(3)]
        check_damaged_journal(small, path, ranges)
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("which", ["last", "middle"])
def test_every_cut_and_every_flipped_byte_of_a_segment(small: Built, scratch: str, which: str) -> None:
    """Not drawn but swept: truncation at and around every record boundary, bit flips and zeroed runs
    spread over the segment, of the last segment or one in the middle."""
    doc = small.segments[-1] if which == "last" else small.segments[len(small.segments) // 2]
    original = small.files[doc.name]
    last = which == "last"
    around = (lambda r: (r.offset, r.offset + 1, r.covered_end, r.offset + r.record_length - 1)) if last else \
        (lambda r: (r.offset, r.offset + 1))
    cuts = sorted({c for r in doc.records for c in around(r)} | {0, 64, 127, 128})
    damaged: list[bytes] = [original[:cut] for cut in cuts if 0 <= cut < doc.size]
    damaged += [original[:k] + bytes([original[k] ^ (1 << (k % 8))]) + original[k + 1:]
                for k in range(5, doc.size, 53 if last else 97)]
    damaged += [original[:k] + bytes(16) + original[k + 16:] for k in range(0, doc.size, 160 if last else 320)]
    ranges = [(doc.first + 2, None, None), (None, doc.first + 3, {1, 2}), (doc.first - 1, doc.first + 1, None)]
    path = small.copy_to(tempfile.mkdtemp(dir=scratch))
    restore = {doc.name, small.segments[-1].name, small.segments[-1].name[:-4] + ".idx"}
    try:
        for raw in damaged:
            for name in restore:  # what the previous round damaged, or recover cut
                with open(os.path.join(path, name), "wb") as f:
                    f.write(small.files[name])
            with open(os.path.join(path, doc.name), "wb") as f:
                f.write(raw)
            check_damaged_journal(small, path, ranges)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def corrupt_index(data: st.DataObject, built: Built, path: str) -> None:
    doc = data.draw(st.sampled_from(built.segments), label="segment")
    p = os.path.join(path, doc.name[:-4] + ".idx")
    if not os.path.exists(p):
        return  # deleted by an earlier corruption of this example
    raw = bytearray(open(p, "rb").read())
    size = len(raw)
    entries = list(range(32, size - 15, 16))
    genuine = [(r.seq, r.offset) for r in doc.records]
    kinds = ["append", "delete"]
    if size:
        kinds += ["flip", "overwrite", "truncate", "zero"]
    if entries:
        kinds += ["swap", "other-record", "misaligned"]
    kind = data.draw(st.sampled_from(kinds), label="kind")
    pos = st.integers(0, max(0, size - 1))
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 4), label="flips")):
            raw[data.draw(pos, label="at")] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    elif kind == "overwrite":
        at = data.draw(pos, label="at")
        run = data.draw(st.binary(min_size=1, max_size=40), label="run")
        raw[at: at + len(run)] = run
    elif kind == "truncate":
        raw = raw[: data.draw(pos, label="cut")]
    elif kind == "append":
        raw += data.draw(st.binary(min_size=1, max_size=100), label="garbage")
    elif kind == "zero":
        at = data.draw(pos, label="at")
        n = data.draw(st.integers(1, 48), label="n")
        raw[at: at + n] = bytes(len(raw[at: at + n]))
    elif kind == "delete":
        os.unlink(p)
        return
    elif kind == "swap" and len(entries) >= 2:
        a, b = data.draw(st.lists(st.sampled_from(entries), min_size=2, max_size=2, unique=True), label="swap")
        raw[a: a + 16], raw[b: b + 16] = raw[b: b + 16], raw[a: a + 16]
    elif kind == "other-record":  # a plausible entry: a real record's offset under another sequence
        at = data.draw(st.sampled_from(entries), label="entry")
        s1 = data.draw(st.sampled_from(genuine), label="a")[0]
        o2 = data.draw(st.sampled_from(genuine), label="b")[1]
        struct.pack_into("<qQ", raw, at, s1, o2)
    elif kind == "misaligned":
        at = data.draw(st.sampled_from(entries), label="entry")
        s, o = struct.unpack_from("<qQ", raw, at)
        struct.pack_into("<qQ", raw, at, s, o + data.draw(st.integers(-12, 12), label="delta"))
    with open(p, "wb") as f:
        f.write(raw)


def seeks_past(path: str, start: int) -> bool:
    """True if the index makes the reader start after ``start`` (test_bug_a_damaged_index_entry_...)."""
    segs = [s for s in Journal(path).segments() if s.first_sequence <= start]
    if not segs:
        return False
    with _Mapped(segs[-1].path) as m:
        return _seek(segs[-1], m, start)[1] > start


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_damaged_index_files_are_harmless(big: Built, scratch: str, data: st.DataObject) -> None:
    path = big.copy_to(tempfile.mkdtemp(dir=scratch))
    try:
        for _ in range(data.draw(st.integers(1, 3), label="corruptions")):
            corrupt_index(data, big, path)
        j = Journal(path)
        index_entries = [e[0] for s in big.segments for e in s.index or []]
        with deadline(20):
            for _ in range(6):
                start = data.draw(st.one_of(st.integers(1, big.last),
                                            st.sampled_from(index_entries).map(lambda s: s + 1)), label="start")
                stop = start + data.draw(st.integers(0, 200), label="span")
                types = data.draw(st.one_of(st.none(), st.sets(st.sampled_from(TYPES), min_size=1)), label="types")
                got = list(j.records(start, stop, types))
                want = [big.by_seq[s] for s in expected_seqs(big, start, stop, types)]
                assert got == want
            assert j.verify().problems == []
            assert recover(path) == pyseq.journal.RecoveryReport(big.last, len(big.segments), None)
        for doc in big.segments:
            with open(os.path.join(path, doc.name), "rb") as f:
                assert f.read() == big.files[doc.name], "index damage changed a segment"
        assert list(itertools.islice(Journal(path).records(big.last - 50), 100)) == big.messages[-51:]
    finally:
        shutil.rmtree(path, ignore_errors=True)


# =========================================================================================================
# 5. recover()
# =========================================================================================================


def last_segment(path: str) -> str:
    return Journal(path).segment_files()[-1]


def test_recover_truncates_a_partial_record_and_reports_it(small: Built, tmp_path: Any) -> None:
    path = small.copy_to(str(tmp_path / "j"))
    doc = small.segments[-1]
    victim = doc.records[-2]  # CLIENT_LEFT or a data record; END_OF_STREAM after it goes too
    os.truncate(os.path.join(path, doc.name), victim.offset + 17)
    v = Journal(path).verify()
    assert v.ok and v.torn_tail is not None and v.torn_tail.offset == victim.offset
    report = recover(path)
    assert report.last_sequence == victim.seq - 1 and report.segments == len(small.segments)
    t = report.torn_tail
    assert t is not None and t.torn_tail
    assert (t.segment, t.offset, t.sequence, t.bytes) == (doc.name, victim.offset, victim.seq, 17)
    assert "partial" in t.reason and doc.name in str(t) and str(victim.seq) in str(t)
    assert os.path.getsize(os.path.join(path, doc.name)) == victim.offset
    assert Journal(path).verify().problems == []
    assert list(Journal(path).records()) == small.messages[:-2]
    assert recover(path) == pyseq.journal.RecoveryReport(victim.seq - 1, len(small.segments), None)


def test_recover_truncates_a_bad_crc_at_the_end(small: Built, tmp_path: Any) -> None:
    path = small.copy_to(str(tmp_path / "j"))
    doc = small.segments[-1]
    victim = doc.records[-1]
    p = os.path.join(path, doc.name)
    raw = bytearray(open(p, "rb").read())
    raw[victim.offset + 9] ^= 0x10  # in the sequence field: covered by the CRC
    open(p, "wb").write(raw)
    report = recover(path)
    t = report.torn_tail
    assert t is not None and (t.offset, t.sequence, t.bytes) == (victim.offset, victim.seq, victim.record_length)
    assert "checksum" in t.reason
    assert report.last_sequence == small.last - 1
    assert list(Journal(path).records()) == small.messages[:-1]


@pytest.mark.parametrize("zeros", [8, 40, 4096, 65536])
def test_recover_truncates_zeros_appended_by_a_power_cut(small: Built, tmp_path: Any, zeros: int) -> None:
    path = small.copy_to(str(tmp_path / "j"))
    doc = small.segments[-1]
    with open(os.path.join(path, doc.name), "ab") as f:
        f.write(bytes(zeros))
    report = recover(path)
    t = report.torn_tail
    assert report.last_sequence == small.last
    assert t is not None and (t.segment, t.offset, t.sequence, t.bytes) == (doc.name, doc.size, small.last + 1, zeros)
    assert list(Journal(path).records()) == small.messages


def test_recover_a_partial_record_followed_by_zeros(small: Built, tmp_path: Any) -> None:
    """What a power cut typically leaves: the file extended, the last write half there, zeros after."""
    path = small.copy_to(str(tmp_path / "j"))
    doc = small.segments[-1]
    victim = doc.records[-3]
    p = os.path.join(path, doc.name)
    raw = bytearray(open(p, "rb").read())
    raw[victim.offset + 44:] = bytes(len(raw) - victim.offset - 44)
    open(p, "wb").write(raw)
    report = recover(path)
    t = report.torn_tail
    assert t is not None and (t.offset, t.sequence, t.bytes) == (victim.offset, victim.seq, doc.size - victim.offset)
    assert list(Journal(path).records()) == small.messages[:victim.seq - 1]


def test_a_bad_record_with_valid_records_after_it_is_corruption(small: Built, tmp_path: Any) -> None:
    path = small.copy_to(str(tmp_path / "j"))
    doc = small.segments[-1]
    victim = doc.records[1]
    p = os.path.join(path, doc.name)
    raw = bytearray(open(p, "rb").read())
    raw[victim.offset + 20] ^= 0x80  # the timestamp
    open(p, "wb").write(raw)
    before = bytes(raw)
    with pytest.raises(JournalCorruptError) as e:
        recover(path)
    assert (e.value.segment, e.value.offset, e.value.sequence) == (doc.name, victim.offset, victim.seq)
    assert doc.name in str(e.value) and str(victim.offset) in str(e.value) and str(victim.seq) in str(e.value)
    assert open(p, "rb").read() == before, "recover must not touch a journal it refuses"
    v = Journal(path).verify()
    assert not v.ok and [(q.segment, q.offset, q.sequence, q.torn_tail) for q in v.problems] == \
        [(doc.name, victim.offset, victim.seq, False)]
    assert v.records == len(small.messages) - 1, "verify resynchronises after the bad record"
    got, err = collect(Journal(path).records())
    assert got == small.messages[:victim.seq - 1]
    assert err is not None and (err.segment, err.offset, err.sequence) == (doc.name, victim.offset, victim.seq)
    with pytest.raises(JournalError):  # a sequencer refuses to start on it
        pyseq.Sequencer(fresh_ring_name(), capacity=64, slot_size=SLOT_SIZE, journal=path)


def test_a_bad_record_in_an_earlier_segment_is_corruption_for_readers(small: Built, tmp_path: Any) -> None:
    path = small.copy_to(str(tmp_path / "j"))
    doc = small.segments[2]
    victim = doc.records[-1]  # the last record of a segment before the last: never a torn tail
    p = os.path.join(path, doc.name)
    raw = bytearray(open(p, "rb").read())
    raw[victim.offset + 25] ^= 0x01  # the payload length: record_length no longer matches it
    open(p, "wb").write(raw)
    v = Journal(path).verify()
    assert not v.ok and (v.problems[0].segment, v.problems[0].offset, v.problems[0].sequence) == \
        (doc.name, victim.offset, victim.seq)
    assert not any(q.torn_tail for q in v.problems)  # (and the next segment's start is reported too)
    got, err = collect(Journal(path).records())
    assert got == small.messages[:victim.seq - 1]
    assert err is not None and (err.segment, err.offset, err.sequence) == (doc.name, victim.offset, victim.seq)
    got, err = collect(Journal(path).records(victim.seq + 1))  # reading after it is fine
    assert err is None and got == small.messages[victim.seq:]


def test_a_last_segment_holding_only_its_header(small: Built, tmp_path: Any) -> None:
    path = small.copy_to(str(tmp_path / "j"))
    doc = small.segments[-1]
    os.truncate(os.path.join(path, doc.name), 128)
    report = recover(path)
    assert (report.last_sequence, report.torn_tail) == (doc.first - 1, None)
    assert Journal(path).verify().problems == []
    assert Journal(path).last_sequence() == doc.first - 1
    assert list(Journal(path).records()) == small.messages[:doc.first - 1]


@pytest.mark.parametrize("size", [0, 1, 60, 127, 128])
def test_a_torn_last_segment_header_is_removed(small: Built, tmp_path: Any, size: int) -> None:
    """A crash while a segment was created: its header short (or whole but zeros: never synced)."""
    path = small.copy_to(str(tmp_path / "j"))
    doc = small.segments[-1]
    p = os.path.join(path, doc.name)
    with open(p, "r+b") as f:
        f.truncate(size)
        if size == 128:
            f.write(bytes(128))
    report = recover(path)
    t = report.torn_tail
    assert t is not None and (t.segment, t.offset, t.sequence, t.bytes) == (doc.name, 0, doc.first, size)
    assert "segment header" in t.reason
    assert report.last_sequence == doc.first - 1 and report.segments == len(small.segments) - 1
    assert not os.path.exists(p) and not os.path.exists(p[:-4] + ".idx")
    assert Journal(path).verify().problems == []


def test_a_torn_header_of_the_only_segment(tmp_path: Any) -> None:
    path = str(tmp_path / "j")
    os.makedirs(path)
    with open(os.path.join(path, seg_name(1)), "wb") as f:
        f.write(doc_segment_header(1, 96, b"r")[:50])
    report = recover(path)
    assert (report.last_sequence, report.segments) == (0, 0) and report.torn_tail is not None
    assert Journal(path).segment_files() == []


def test_a_bad_last_segment_header_with_data_after_it_is_corruption(small: Built, tmp_path: Any) -> None:
    path = small.copy_to(str(tmp_path / "j"))
    doc = small.segments[-1]
    p = os.path.join(path, doc.name)
    raw = bytearray(open(p, "rb").read())
    raw[41] ^= 0xFF  # max_payload
    open(p, "wb").write(raw)
    with pytest.raises(JournalCorruptError) as e:
        recover(path)
    assert (e.value.segment, e.value.offset, e.value.sequence) == (doc.name, 0, doc.first)
    assert open(p, "rb").read() == bytes(raw)
    with pytest.raises(JournalCorruptError):
        list(Journal(path).records())


def test_recover_drops_index_entries_past_the_cut(big: Built, tmp_path: Any) -> None:
    path = big.copy_to(str(tmp_path / "j"))
    doc = big.segments[-1]
    assert doc.index is not None and len(doc.index) >= 2
    cut_seq, cut_offset = doc.index[1]
    os.truncate(os.path.join(path, doc.name), cut_offset + 3)
    report = recover(path)
    assert report.last_sequence == cut_seq - 1
    segs = read_by_the_doc(path)  # strict: the index now holds exactly the entries before the cut
    assert segs[-1].index == doc.index[:1]


def plan_for(client: str, n: int, seed: int) -> Plan:
    rnd = random.Random(seed)
    return [(client, rnd.choice(TYPES), rnd.randbytes(rnd.choice([0, MAX_PAYLOAD, rnd.randrange(MAX_PAYLOAD)])),
             0) for _ in range(n)]


def test_numbering_resumes_after_the_recovered_tail(tmp_path: Any, ring: str) -> None:
    """Run, tear the tail, lose the ring (a reboot), run again: the new run starts at the last whole
    record + 1; no sequence reused, none skipped; the whole journal verifies dense."""
    path = str(tmp_path / "j")
    _, first = run_sequencer(path, ring, plan_for("one", 300, 1), segment_bytes=4096, capacity=1024)
    doc = read_by_the_doc(path)[-1]
    victim = doc.records[len(doc.records) // 2]
    os.truncate(os.path.join(path, doc.name), victim.offset + 45)
    pyseq.Ring.remove(ring)  # /dev/shm is gone after a reboot: nothing to re-journal from
    seq = pyseq.Sequencer(ring, capacity=1024, slot_size=SLOT_SIZE, journal=path, segment_bytes=4096)
    try:
        assert seq.recovery is not None and seq.recovery.last_sequence == victim.seq - 1
        t = seq.recovery.torn_tail
        assert t is not None and (t.segment, t.offset, t.sequence, t.bytes) == (doc.name, victim.offset, victim.seq, 45)
        assert seq.ring.next_sequence == victim.seq
    finally:
        seq.close()
    pyseq.Ring.remove(ring)
    _, second = run_sequencer(path, ring, plan_for("two", 300, 2), segment_bytes=4096, capacity=1024)
    assert second[0].seq == victim.seq + 1, "the END_OF_STREAM of the probe run took victim.seq"
    j = Journal(path)
    v = j.verify()
    assert v.problems == [] and (v.first_seq, v.last_seq, v.records) == (1, second[-1].seq, second[-1].seq)
    got = list(j.records())
    assert [m.seq for m in got] == list(range(1, second[-1].seq + 1))
    assert got[:victim.seq - 1] == first[:victim.seq - 1]
    assert got[victim.seq - 1].msg_type == pyseq.END_OF_STREAM  # the probe sequencer's end of stream
    assert got[victim.seq:] == second
    read_by_the_doc(path, strict_index=False)


def test_a_restart_re_journals_the_torn_tail_from_the_old_ring(tmp_path: Any, ring: str) -> None:
    """The ring outlived the sequencer (same host, no reboot): what the torn tail lost is still in it
    and is journaled again, under the same sequences, before numbering resumes."""
    path = str(tmp_path / "j")
    _, first = run_sequencer(path, ring, plan_for("one", 300, 3), segment_bytes=4096, capacity=1024)
    doc = read_by_the_doc(path)[-1]
    victim = doc.records[1]
    os.truncate(os.path.join(path, doc.name), victim.offset + 3)
    _, second = run_sequencer(path, ring, plan_for("two", 50, 4), segment_bytes=4096, capacity=1024)
    assert second[0].seq == first[-1].seq + 1
    got = list(Journal(path).records())
    assert got == first + second
    assert Journal(path).verify().problems == []


def test_a_restart_on_a_header_only_last_segment_appends_to_it(small: Built, tmp_path: Any, ring: str) -> None:
    path = small.copy_to(str(tmp_path / "j"))
    doc = small.segments[-1]
    os.truncate(os.path.join(path, doc.name), 128)
    _, second = run_sequencer(path, ring, plan_for("two", 30, 5), segment_bytes=4096, capacity=1024)
    assert second[0].seq == doc.first
    assert list(Journal(path).records()) == small.messages[:doc.first - 1] + second
    assert Journal(path).verify().problems == []


def test_a_restart_with_another_slot_size_starts_a_new_segment(tmp_path: Any, ring: str) -> None:
    path = str(tmp_path / "j")
    _, first = run_sequencer(path, ring, plan_for("one", 40, 7), capacity=1024)
    rnd = random.Random(8)
    plan: Plan = [("two", 1, rnd.randbytes(rnd.choice([0, 480])), 0) for _ in range(40)]
    _, second = run_sequencer(path, ring, plan, capacity=1024, slot_size=512)
    segs = Journal(path).segments()
    assert [(s.first_sequence, s.max_payload) for s in segs] == [(1, 224), (second[0].seq, 480)]
    assert list(Journal(path).records()) == first + second
    assert Journal(path).verify().problems == []


def test_journal_schema_goes_into_every_segment_header(tmp_path: Any, ring: str) -> None:
    path = str(tmp_path / "j")
    run_sequencer(path, ring, plan_for("one", 100, 9), capacity=1024, segment_bytes=4096,
                  journal_schema=(0xABCDEF, 3))
    segs = Journal(path).segments()
    assert len(segs) > 2 and {(s.schema_id, s.schema_version) for s in segs} == {(0xABCDEF, 3)}
    assert [d.header["schema_id"] for d in read_by_the_doc(path)] == [0xABCDEF] * len(segs)


def test_a_first_sequence_that_conflicts_with_the_journal_is_refused(tmp_path: Any, ring: str) -> None:
    path = str(tmp_path / "j")
    _, first = run_sequencer(path, ring, plan_for("one", 10, 10), capacity=64)
    last = first[-1].seq
    with pytest.raises(JournalError, match=str(last + 1)):
        pyseq.Sequencer(ring, capacity=64, slot_size=SLOT_SIZE, journal=path, first_sequence=last + 5)
    s = pyseq.Sequencer(ring, capacity=64, slot_size=SLOT_SIZE, journal=path, first_sequence=last + 1)
    assert s.ring.next_sequence == last + 1
    s.close()
    assert [m.seq for m in Journal(path).records()] == list(range(1, last + 2))


# =========================================================================================================
# 6. Fsync policy, the writer lock
# =========================================================================================================


@pytest.mark.parametrize("text, mode, ms", [("never", "never", 0.0), ("batch", "batch", 0.0),
                                            ("interval:5", "interval", 5.0), ("interval:0.25", "interval", 0.25),
                                            ("interval:1e3", "interval", 1000.0)])
def test_fsync_policy_parse_accepts(text: str, mode: str, ms: float) -> None:
    p = FsyncPolicy.parse(text)
    assert (p.mode, p.interval_ms) == (mode, ms)
    assert FsyncPolicy.parse(str(p)) == p and FsyncPolicy.parse(p) is p
    assert p.code == {"never": lib.PYSEQ_FSYNC_NEVER, "interval": lib.PYSEQ_FSYNC_INTERVAL,
                      "batch": lib.PYSEQ_FSYNC_BATCH}[mode]


@pytest.mark.parametrize("text", ["", "always", "Never", " batch", "batch ", "interval", "interval:",
                                  "interval:0", "interval:-1", "interval:abc", "interval:nan", "interval:inf",
                                  "interval:5ms", "interval:1e9", "never:5", 5, None, b"batch", 1.5])
def test_fsync_policy_parse_rejects(text: Any) -> None:
    with pytest.raises(JournalError):
        FsyncPolicy.parse(text)


def test_a_bad_fsync_policy_stops_a_sequencer_before_it_starts(tmp_path: Any, ring: str) -> None:
    with pytest.raises(JournalError):
        pyseq.Sequencer(ring, capacity=64, journal=str(tmp_path / "j"), fsync="sometimes")
    assert not pyseq.Ring.exists(ring) and not os.path.exists(tmp_path / "j")


def test_the_journal_lock_is_exclusive(tmp_path: Any) -> None:
    path = str(tmp_path / "j")
    fd = lock_journal(path)
    try:
        with pytest.raises(JournalLockedError) as e:
            lock_journal(path)
        assert str(os.getpid()) in str(e.value)
    finally:
        os.close(fd)
    os.close(lock_journal(path))  # free again once the holder closed it


def test_a_second_sequencer_on_the_same_journal_is_refused(tmp_path: Any, ring_names: Callable[[], str]) -> None:
    path = str(tmp_path / "j")
    a, b = ring_names(), ring_names()
    first = pyseq.Sequencer(a, capacity=64, slot_size=SLOT_SIZE, journal=path, segment_bytes=4096)
    try:
        with pytest.raises(JournalLockedError):
            pyseq.Sequencer(b, capacity=64, slot_size=SLOT_SIZE, journal=path)
        assert not pyseq.Ring.exists(b), "the refused sequencer left a ring"
        with pytest.raises(JournalLockedError):
            lock_journal(path)
        first.ring.publish(5, b"still journaling")
    finally:
        first.close()
    second = pyseq.Sequencer(b, capacity=64, slot_size=SLOT_SIZE, journal=path)  # the lock went with it
    second.close()
    got = list(Journal(path).records())
    assert [(m.seq, m.msg_type) for m in got] == [(1, 5), (2, pyseq.END_OF_STREAM), (3, pyseq.END_OF_STREAM)]
    assert got[0].payload == b"still journaling"


def test_a_refused_segment_size_releases_the_lock(tmp_path: Any, ring: str) -> None:
    path = str(tmp_path / "j")
    with pytest.raises(JournalError):
        pyseq.Sequencer(ring, capacity=64, journal=path, segment_bytes=1000)
    s = pyseq.Sequencer(ring, capacity=64, journal=path)
    s.close()
    assert [m.msg_type for m in Journal(path).records()] == [pyseq.END_OF_STREAM]


# =========================================================================================================
# Bugs found while writing this file: regressions (fixed) and one strict xfail (a known limit)
# =========================================================================================================


def test_regression_a_damaged_index_entry_makes_records_skip_messages(big: Built, tmp_path: Any) -> None:
    """journal.py _seek: bisect picks entry k (sequence <= start); if it does not check out, the loop
    tries k-1, k-2, ... without checking that their sequence is <= start.  With the entries unsorted
    (one zeroed), entry k-1 can be a genuine entry past start: records(start) silently begins there.
    Repro: a segment with >= 4 index entries; zero entry 3 (bytes 80..95 of the .idx); records(8, 11)
    returns [] instead of 8..11 (and records(8) begins at the sequence of entry 2)."""
    path = big.copy_to(str(tmp_path / "j"))
    doc = big.segments[0]
    assert doc.index is not None and len(doc.index) >= 4
    p = os.path.join(path, doc.name[:-4] + ".idx")
    raw = bytearray(open(p, "rb").read())
    raw[32 + 3 * 16: 32 + 4 * 16] = bytes(16)
    open(p, "wb").write(raw)
    assert [m.seq for m in Journal(path).records(8, 11)] == [8, 9, 10, 11]


@pytest.mark.parametrize("how", ["cut-at-a-record-boundary", "segment-deleted"])
def test_records_fail_at_a_cut_or_missing_segment(small: Built, tmp_path: Any, how: str) -> None:
    """A segment before the last that ends early at a record boundary, or is missing: verify reports
    it and records() raises there instead of jumping over the hole.  (Found by this file as a bug:
    records() used to yield ..., Y, X, ... silently; fixed in 882e814.)"""
    path = small.copy_to(str(tmp_path / "j"))
    doc = small.segments[2]
    if how == "segment-deleted":
        os.unlink(os.path.join(path, doc.name))
        lost = [r.seq for r in doc.records]
    else:
        os.truncate(os.path.join(path, doc.name), doc.records[-1].offset)
        lost = [doc.records[-1].seq]
    v = Journal(path).verify()
    assert not v.ok and any("the previous one ended at" in p.reason for p in v.problems)
    for start, stop in [(lost[0] - 2, lost[-1] + 2), (None, None), (lost[0], lost[0]), (lost[-1], None)]:
        got, err = collect(Journal(path).records(start, stop))
        assert err is not None, (start, stop)
        assert [m.seq for m in got] == [s for s in range(1, lost[0]) if start is None or s >= start]
    assert list(Journal(path).records(lost[-1] + 1, lost[-1] + 5)) == small.messages[lost[-1]: lost[-1] + 5]
    assert list(Journal(path).records(None, lost[0] - 1)) == small.messages[:lost[0] - 1]


def test_regression_records_with_a_negative_stop_returns_records(small: Built) -> None:
    """_iterate passes stop + 1 as stop_sequence; for stop = -1 that is 0, which pyseq_journal_scan reads
    as 'no stop': records(stop=-1) yields the first segment's records (up to 4096 per segment)."""
    assert list(Journal(small.path).records(stop=-1)) == []


def test_regression_first_sequence_on_a_journal_whose_only_segment_is_empty(tmp_path: Any, ring: str) -> None:
    """recover() keeps a last segment that holds only its header (its docstring promised to remove it
    until 882e814, which changed the docstring).  Repro: a journal whose one segment 00..01.seg holds
    only its header (a crash before the first record, or its only records torn off as a torn tail);
    Sequencer(first_sequence=50, journal=...) is accepted
    (the journal counts as empty: last == 0), _open_last_or_new appends sequence 50 to 00..01.seg,
    verify() calls it a torn tail ('found 50, expected 1', ok=True), records() yields nothing, and the
    next recover() truncates the journaled (fsynced) messages away."""
    path = str(tmp_path / "j")
    os.makedirs(path)
    with open(os.path.join(path, seg_name(1)), "wb") as f:
        f.write(segment_header(1, SLOT_SIZE - 32, ring))
    s = pyseq.Sequencer(ring, capacity=64, slot_size=SLOT_SIZE, journal=path, first_sequence=50)
    s.ring.publish(1, b"durable")
    s.close()  # (sequence 51: END_OF_STREAM)
    # today: verify reports 'a record out of sequence: found 50, expected 1', records() raises, and
    # recover() raises too: no sequencer can start on this journal any more (with a single record
    # after the header, recover would instead truncate it as a torn tail: a durable message lost)
    assert Journal(path).verify().problems == []
    assert [m.seq for m in Journal(path).records()] == [50, 51]
    assert recover(path).last_sequence == 51


def test_regression_a_header_only_last_segment_blocks_a_new_slot_size(small: Built, tmp_path: Any, ring: str) -> None:
    """_open_last_or_new does not append to a segment of another max_payload and calls _new_segment(F)
    for the same first sequence F, whose file is that header-only segment."""
    path = small.copy_to(str(tmp_path / "j"))
    os.truncate(os.path.join(path, small.segments[-1].name), 128)
    s = pyseq.Sequencer(ring, capacity=64, slot_size=512, journal=path)
    s.close()
    assert Journal(path).verify().problems == []


def test_regression_a_restart_with_another_journal_schema_keeps_the_old_header(tmp_path: Any, ring: str) -> None:
    """_open_last_or_new reopens the last segment when max_payload matches and it has room, without
    comparing the schema: messages sequenced under journal_schema=(7, 2), or another application's
    (9, 1), land in a segment whose header says (7, 1).  (max_payload is compared, and a different
    one starts a new segment: test_a_restart_with_another_slot_size_starts_a_new_segment.)"""
    path = str(tmp_path / "j")
    for schema in [(7, 1), (7, 2), (9, 1)]:
        s = pyseq.Sequencer(ring, capacity=64, slot_size=SLOT_SIZE, journal=path, journal_schema=schema)
        s.ring.publish(1, repr(schema).encode())
        s.close()
    segs = Journal(path).segments()

    def schema_of(seq: int) -> tuple[int, int]:  # the header of the segment that holds seq
        seg = [s for s in segs if s.first_sequence <= seq][-1]
        return seg.schema_id, seg.schema_version

    found = {m.payload: schema_of(m.seq) for m in Journal(path).records() if m.msg_type == 1}
    assert found == {b"(7, 1)": (7, 1), b"(7, 2)": (7, 2), b"(9, 1)": (9, 1)}


def test_regression_record_length_overflow_with_a_huge_max_payload(tmp_path: Any) -> None:
    """The drawing says record_length == round_up(40 + length, 8); in C, (40 + length + 7) & ~7 wraps in
    uint32, and the CRC length 4 + 32 + length wraps too.  read_segment_header accepts any max_payload.
    Repro: header max_payload 0xFFFFFFFF; a record with length 0xFFFFFFF8, record_length 32 and a CRC
    over its 28 bytes: verify counts it, records() yields it with the rest of the file as payload."""
    path = str(tmp_path / "j")
    os.makedirs(path)
    covered = struct.pack("<I", 32) + FRAME.pack(1, 1, 0xFFFFFFF8, 7, 0, 9, 0)
    rec = struct.pack("<I", ref_crc32c(covered[:28])) + covered
    with open(os.path.join(path, seg_name(1)), "wb") as f:
        f.write(segment_header(1, 0xFFFFFFFF, "x") + rec + b"other bytes of the file")
    with pytest.raises(JournalCorruptError, match="max payload 4294967295 is larger"):
        list(Journal(path).records())  # the header is refused; and the C check never wraps:
    with open(os.path.join(path, seg_name(1)), "r+b") as f:
        f.write(segment_header(1, (1 << 24) - 32, "x"))
    assert list(Journal(path).records()) == []


@pytest.mark.xfail(
    strict=True, raises=JournalCorruptError,
    reason="BUG: recover and verify resynchronise on any CRC-valid bytes, "
           "including a client's payload: a genuine torn tail becomes corruption")
def test_bug_a_payload_that_looks_like_a_record_turns_a_torn_tail_into_corruption(tmp_path: Any, ring: str) -> None:
    """A client journals bytes that happen to be a record (a replicator forwarding journal records, or
    chance); the sequencer dies while writing that message; recover() finds the embedded 'record' after
    the torn one (find_record does not look at its sequence), raises JournalCorruptError, and no
    sequencer can start on the journal until someone edits it by hand."""
    path = str(tmp_path / "j")
    embedded = doc_record(999_999, 1, 1, 0, 1, b"12345678")  # 48 bytes, lands 8-aligned in the payload
    _, msgs = run_sequencer(path, ring, [("c", 1, embedded + bytes(100), 0)], capacity=64)
    doc = read_by_the_doc(path)[-1]
    rec = next(r for r in doc.records if r.length == len(embedded) + 100)
    os.truncate(os.path.join(path, doc.name), rec.offset + 40 + len(embedded) + 8)  # torn after the copy
    pyseq.Ring.remove(ring)
    report = recover(path)
    assert report.last_sequence == rec.seq - 1


def test_regression_rejournaling_from_the_old_ring_ignores_segment_bytes(tmp_path: Any, ring: str) -> None:
    """_journal_from_old_ring builds its _SegmentWriter with DEFAULT_SEGMENT_BYTES, so every message it
    recovers goes into the last segment however large that makes it."""
    path = str(tmp_path / "j")
    run_sequencer(path, ring, plan_for("one", 400, 6), segment_bytes=4096, capacity=1024)
    for p in Journal(path).segment_files()[-6:]:  # the journaler had fallen behind when it died
        os.unlink(p)
        os.unlink(p[:-4] + ".idx")
    s = pyseq.Sequencer(ring, capacity=1024, slot_size=SLOT_SIZE, journal=path, segment_bytes=4096)
    s.close()
    assert Journal(path).verify().problems == []
    assert max(os.path.getsize(p) for p in Journal(path).segment_files()) <= 4096


