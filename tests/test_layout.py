"""The shared-memory layout the C core and Python see equals the one drawn in csrc/ring_layout.h.

The expected numbers below are copied from the diagrams in that header, not computed: if the
structs drift from the document, these tests say which field moved.
"""
from __future__ import annotations

import mmap
import struct

import numpy as np
import pytest

import pyseq
from pyseq._native import ffi, lib

# Offsets as drawn in ring_layout.h ("The header page", "A cursor", "A slot").
HEADER_OFFSETS = {
    "magic": 0, "layout_version": 8, "slot_size": 12, "capacity": 16, "max_readers": 24, "flags": 28,
    "cursors_offset": 32, "slots_offset": 40, "file_length": 48, "created_ns": 56, "first_sequence": 64,
    "name": 72, "writer_pid": 128, "writer_heartbeat_ns": 136, "eviction_count": 144, "writer_state": 152,
    "published_sequence": 256, "journaled_sequence": 384, "journal_state": 392, "journal_fsync": 396,
    "journal_errors": 400, "journal_id": 408, "wake_seq": 512,
}
CURSOR_OFFSETS = {"sequence": 0, "state": 8, "gating": 12, "pid": 16, "heartbeat_ns": 24, "name": 32,
                  "held_count": 64, "park_seq": 116, "blocking_readers": 120, "parked_readers": 124}
FRAME_OFFSETS = {"sequence": 0, "timestamp_ns": 8, "length": 16, "msg_type": 20, "schema_version": 22,
                 "source": 24, "origin": 28}
FIELD_SIZES = {
    "pyseq_ring_header_t": {"magic": 8, "layout_version": 4, "slot_size": 4, "capacity": 8, "max_readers": 4,
                            "flags": 4, "cursors_offset": 8, "slots_offset": 8, "file_length": 8, "created_ns": 8,
                            "first_sequence": 8, "name": 56, "writer_pid": 8, "writer_heartbeat_ns": 8,
                            "eviction_count": 8, "writer_state": 4, "published_sequence": 8,
                            "journaled_sequence": 8, "journal_state": 4, "journal_fsync": 4,
                            "journal_errors": 8, "journal_id": 8, "wake_seq": 4},
    "pyseq_cursor_t": {"sequence": 8, "state": 4, "gating": 4, "pid": 8, "heartbeat_ns": 8, "name": 32,
                       "held_count": 8, "park_seq": 4, "blocking_readers": 4, "parked_readers": 4},
    "pyseq_frame_t": {"sequence": 8, "timestamp_ns": 8, "length": 4, "msg_type": 2, "schema_version": 2,
                      "source": 4, "origin": 4},
}


@pytest.mark.parametrize("field, offset", sorted(HEADER_OFFSETS.items(), key=lambda kv: kv[1]))
def test_each_header_field_is_at_its_documented_offset(field: str, offset: int) -> None:
    assert ffi.offsetof("pyseq_ring_header_t", field) == offset


@pytest.mark.parametrize("field, offset", sorted(CURSOR_OFFSETS.items(), key=lambda kv: kv[1]))
def test_each_cursor_field_is_at_its_documented_offset(field: str, offset: int) -> None:
    assert ffi.offsetof("pyseq_cursor_t", field) == offset


@pytest.mark.parametrize("field, offset", sorted(FRAME_OFFSETS.items(), key=lambda kv: kv[1]))
def test_each_frame_field_is_at_its_documented_offset(field: str, offset: int) -> None:
    assert ffi.offsetof("pyseq_frame_t", field) == offset


@pytest.mark.parametrize("struct_name", sorted(FIELD_SIZES))
def test_each_field_has_its_documented_width(struct_name: str) -> None:
    widths = {name: ffi.sizeof(field.type) for name, field in ffi.typeof(struct_name).fields}
    assert {k: widths[k] for k in FIELD_SIZES[struct_name]} == FIELD_SIZES[struct_name]


def test_the_header_is_one_page_a_cursor_two_cache_lines_and_a_frame_32_bytes() -> None:
    assert ffi.sizeof("pyseq_ring_header_t") == 4096
    assert ffi.sizeof("pyseq_cursor_t") == 128
    assert ffi.sizeof("pyseq_frame_t") == 32
    assert pyseq.FRAME_LENGTH == lib.PYSEQ_FRAME_LENGTH == 32


def test_the_layout_constants_are_the_documented_ones() -> None:
    assert lib.PYSEQ_RING_MAGIC == int.from_bytes(b"PYSEQRNG", "little")
    assert lib.PYSEQ_RING_CURSORS_OFFSET == lib.PYSEQ_RING_HEADER_LENGTH == 4096
    assert lib.PYSEQ_RING_NAME_LENGTH == 56
    assert lib.PYSEQ_CURSOR_NAME_LENGTH == 32
    assert lib.PYSEQ_SLOT_ALIGN == 64
    assert lib.PYSEQ_RING_LAYOUT_VERSION == (lib.PYSEQ_RING_LAYOUT_MAJOR << 16) | lib.PYSEQ_RING_LAYOUT_MINOR
    assert lib.PYSEQ_RING_LAYOUT_MAJOR == 1
    assert (lib.PYSEQ_WRITER_NONE, lib.PYSEQ_WRITER_OPEN, lib.PYSEQ_WRITER_CLOSED) == (0, 1, 2)
    assert (lib.PYSEQ_CURSOR_FREE, lib.PYSEQ_CURSOR_CLAIMED, lib.PYSEQ_CURSOR_ACTIVE,
            lib.PYSEQ_CURSOR_EVICTED) == (0, 1, 2, 3)


@pytest.mark.parametrize("slot_size", [64, 128, 192, 4096])
def test_the_batch_dtype_field_offsets_are_the_frame_offsets(slot_size: int) -> None:
    dtype = pyseq.batch_dtype(slot_size)
    names = {"seq": "sequence", "timestamp_ns": "timestamp_ns", "length": "length", "msg_type": "msg_type",
             "schema_version": "schema_version", "source": "source", "origin": "origin"}
    for dtype_field, frame_field in names.items():
        assert dtype.fields[dtype_field][1] == FRAME_OFFSETS[frame_field], dtype_field
        assert dtype.fields[dtype_field][0].itemsize == FIELD_SIZES["pyseq_frame_t"][frame_field], dtype_field
    assert dtype.fields["payload"][1] == 32
    assert dtype.fields["payload"][0].shape == (slot_size - 32,)
    assert dtype.itemsize == slot_size


def test_the_bytes_of_a_ring_file_are_where_the_diagram_puts_them(ring_name: str) -> None:
    page = mmap.PAGESIZE
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=128, max_readers=40, first_sequence=5) as ring:
        seq = ring.publish(513, b"payload!", source=77, schema_version=3, timestamp_ns=123456789)
    with open(f"/dev/shm/pyseq.{ring_name}", "rb") as f:
        raw = f.read()
    cursors_bytes = -(-40 * 128 // page) * page  # max_readers x 128 B, page-rounded
    slots_offset = 4096 + cursors_bytes
    assert len(raw) == -(-(slots_offset + 8 * 128) // page) * page
    assert raw[0:8] == b"PYSEQRNG"
    assert struct.unpack_from("<IIQII", raw, 8) == (lib.PYSEQ_RING_LAYOUT_VERSION, 128, 8, 40, 0)
    assert struct.unpack_from("<QQQ", raw, 32) == (4096, slots_offset, len(raw))
    assert struct.unpack_from("<q", raw, 64) == (5,)
    assert raw[72:72 + len(ring_name) + 1] == ring_name.encode() + b"\0"
    assert struct.unpack_from("<q", raw, 128)[0] > 0  # writer_pid
    assert struct.unpack_from("<QI", raw, 144) == (0, lib.PYSEQ_WRITER_CLOSED)  # closed by the with
    assert struct.unpack_from("<q", raw, 256) == (seq,)
    assert seq == 5
    slot = slots_offset + (seq & 7) * 128
    assert struct.unpack_from("<qqIHHII", raw, slot) == (5, 123456789, 8, 513, 3, 77, 0)
    assert raw[slot + 32:slot + 40] == b"payload!"


def test_a_batch_read_is_the_slot_bytes_as_they_lie_in_the_file(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=4, slot_size=64) as ring:
        reader = ring.reader()
        ring.publish(9, b"abc", source=1)
        batch = reader.read_batch(4)
        with open(f"/dev/shm/pyseq.{ring_name}", "rb") as f:
            raw = f.read()
    (slots_offset,) = struct.unpack_from("<Q", raw, 40)
    assert batch.dtype == ring.dtype
    assert batch.tobytes() == raw[slots_offset + 64:slots_offset + 128]
    assert np.frombuffer(raw, dtype=ring.dtype, count=1, offset=slots_offset + 64)[0]["seq"] == 1
