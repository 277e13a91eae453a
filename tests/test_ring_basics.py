"""Publishing and reading: one process, and two; sequence numbers, waits, batches, start positions,
the zero-object path, back-pressure, and hypothesis round trips of every payload length."""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pyseq
from childproc import Children
from conftest import unique_ring_name

FRAME = pyseq.message.FRAME  # the frame header of ring_layout.h


def payload_of(seq: int, repeat: int = 4) -> bytes:
    return seq.to_bytes(8, "little") * repeat


# ---- one process ---------------------------------------------------------------------------------


def test_a_published_message_reads_back_with_every_frame_field(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64) as ring:
        reader = ring.reader("r")
        before = time.time_ns()
        seq = ring.publish(7, b"hello", source=42, schema_version=3)
        after = time.time_ns()
        m = reader.read(timeout=1.0)
    assert isinstance(m, pyseq.Message)
    assert (m.seq, m.msg_type, m.source, m.schema_version, m.payload) == (seq, 7, 42, 3, b"hello")
    assert before <= m.timestamp_ns <= after


def test_a_given_timestamp_is_kept_instead_of_the_sequencing_time(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64) as ring:
        reader = ring.reader()
        ring.publish(1, b"x", timestamp_ns=1_234_567_890)
        assert reader.read(timeout=1.0).timestamp_ns == 1_234_567_890


@pytest.mark.parametrize("make", [bytes, bytearray, memoryview, lambda b: np.frombuffer(b, dtype=np.uint8)],
                         ids=["bytes", "bytearray", "memoryview", "numpy"])
def test_a_payload_can_be_any_contiguous_buffer(ring_name: str, make: Callable[[bytes], Any]) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64) as ring:
        reader = ring.reader()
        ring.publish(2, make(b"buffer payload"))
        assert reader.read(timeout=1.0).payload == b"buffer payload"


def test_sequences_start_at_first_sequence_and_are_consecutive(ring_names: Callable[[], str]) -> None:
    with pyseq.Ring.create(ring_names(), capacity=16, slot_size=64, first_sequence=1000) as ring:
        assert ring.first_sequence == 1000
        assert ring.published_sequence == 999
        assert ring.next_sequence == 1000
        reader = ring.reader()
        assert reader.next_sequence == 1000
        seqs = [ring.publish(1, payload_of(i)) for i in range(40)]
        assert seqs == list(range(1000, 1040))
        assert ring.published_sequence == 1039
        assert ring.next_sequence == 1040
    with pyseq.Ring.create(ring_names(), capacity=16, slot_size=64) as ring:
        assert ring.first_sequence == 1
        assert ring.published_sequence == 0
        assert ring.publish(1, b"") == 1


def test_a_reader_gets_every_sequence_once_and_in_order(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=16, slot_size=64, first_sequence=1000) as ring:
        reader = ring.reader()
        got = []
        for i in range(100):
            seq = ring.publish(1, payload_of(1000 + i))
            m = reader.read(timeout=1.0)
            assert m.seq == seq and m.payload == payload_of(seq)
            got.append(m.seq)
    assert got == list(range(1000, 1100))


def test_poll_returns_none_when_nothing_is_published(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64) as ring:
        reader = ring.reader()
        assert reader.poll() is None
        ring.publish(1, b"a")
        assert reader.poll().payload == b"a"
        assert reader.poll() is None
        assert reader.poll_seq() == 0


@pytest.mark.parametrize("timeout", [0.0, 0.05, 0.3])
def test_read_with_a_timeout_raises_pyseq_timeout_error_which_is_a_builtin_timeout_error(
        ring_name: str, timeout: float) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64) as ring:
        reader = ring.reader()
        t0 = time.monotonic()
        with pytest.raises(pyseq.TimeoutError) as info:
            reader.read(timeout=timeout)
        elapsed = time.monotonic() - t0
        assert isinstance(info.value, TimeoutError)
        assert isinstance(info.value, pyseq.PyseqError)
        assert timeout * 0.9 <= elapsed < timeout + 2.0
        with pytest.raises(TimeoutError):
            reader.read_seq(timeout=timeout)


def test_read_returns_a_message_published_while_it_waits(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64) as ring:
        reader = ring.reader()
        timer = threading.Timer(0.2, lambda: ring.publish(3, b"late"))
        timer.start()
        try:
            t0 = time.monotonic()
            m = reader.read(timeout=5.0)
            assert m.payload == b"late"
            assert time.monotonic() - t0 < 4.0
        finally:
            timer.cancel()
            timer.join(5)


def test_a_negative_timeout_is_a_value_error(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64) as ring:
        reader = ring.reader()
        with pytest.raises(ValueError):
            reader.read(timeout=-1)
        with pytest.raises(ValueError):
            reader.read_batch(4, timeout=-1)


def test_read_batch_returns_a_structured_array_of_the_messages(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=16, slot_size=64) as ring:
        reader = ring.reader()
        empty = reader.read_batch(8)
        assert len(empty) == 0 and empty.dtype == ring.dtype
        for i in range(10):
            ring.publish(100 + i, payload_of(i + 1, 3), source=i, schema_version=2)
        batch = reader.read_batch(8)
        assert batch.dtype == ring.dtype == pyseq.batch_dtype(64)
        assert list(batch["seq"]) == list(range(1, 9))
        assert list(batch["msg_type"]) == list(range(100, 108))
        assert list(batch["source"]) == list(range(8))
        assert set(batch["schema_version"]) == {2}
        assert set(batch["length"]) == {24}
        for row in batch:
            assert row["payload"][:24].tobytes() == payload_of(int(row["seq"]), 3)
        rest = reader.read_batch(8)
        assert list(rest["seq"]) == [9, 10]
        assert reader.poll() is None


def test_read_batch_into_a_given_array_reuses_it(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=16, slot_size=64) as ring:
        reader = ring.reader()
        out = np.zeros(8, dtype=ring.dtype)
        for i in range(5):
            ring.publish(1, payload_of(i + 1))
        got = reader.read_batch(8, out=out)
        assert len(got) == 5 and np.shares_memory(got, out)
        assert list(out["seq"][:5]) == [1, 2, 3, 4, 5]
        with pytest.raises(ValueError):
            reader.read_batch(8, out=np.zeros(8, dtype=np.uint8))
        with pytest.raises(ValueError):
            reader.read_batch(8, out=np.zeros(4, dtype=ring.dtype))


def test_read_batch_across_the_end_of_the_slots_keeps_the_order(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64) as ring:
        reader = ring.reader()
        for i in range(6):
            ring.publish(1, payload_of(i + 1))
        assert list(reader.read_batch(6)["seq"]) == [1, 2, 3, 4, 5, 6]
        for i in range(6, 14):
            ring.publish(1, payload_of(i + 1))
        batch = reader.read_batch(100)  # slots 7, 0..5: wraps
        assert list(batch["seq"]) == list(range(7, 15))
        assert [row["payload"][:32].tobytes() for row in batch] == [payload_of(s) for s in range(7, 15)]


def test_read_batch_waits_up_to_its_timeout_for_the_first_message(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64) as ring:
        reader = ring.reader()
        t0 = time.monotonic()
        assert len(reader.read_batch(4, timeout=0.3)) == 0
        assert 0.27 <= time.monotonic() - t0 < 2.5
        with pytest.raises(ValueError):
            reader.read_batch(0)


@pytest.mark.timeout(30)
def test_iteration_ends_after_the_writer_closes_the_ring(ring_name: str) -> None:
    ring = pyseq.Ring.create(ring_name, capacity=16, slot_size=64)
    with pyseq.Ring.attach(ring_name) as attached:
        reader = attached.reader()
        for i in range(5):
            ring.publish(1, payload_of(i + 1))
        assert not attached.writer_closed
        ring.close()
        assert attached.writer_closed
        assert [(m.seq, m.payload) for m in reader] == [(s, payload_of(s)) for s in range(1, 6)]


@pytest.mark.timeout(30)
def test_iteration_waits_for_messages_until_the_writer_closes(ring_name: str) -> None:
    ring = pyseq.Ring.create(ring_name, capacity=16, slot_size=64)
    try:
        def write() -> None:
            for i in range(20):
                ring.publish(1, payload_of(i + 1))
                time.sleep(0.005)
            ring.close()

        with pyseq.Ring.attach(ring_name) as attached:
            reader = attached.reader()
            t = threading.Thread(target=write)
            t.start()
            try:
                assert [m.seq for m in reader] == list(range(1, 21))
            finally:
                t.join(10)
    finally:
        ring.close()


def test_start_latest_reads_only_what_is_published_after(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=16, slot_size=64) as ring:
        for i in range(3):
            ring.publish(1, payload_of(i + 1))
        reader = ring.reader(start="latest")
        assert reader.next_sequence == 4
        assert reader.poll() is None
        ring.publish(1, payload_of(4))
        ring.publish(1, payload_of(5))
        assert [m.seq for m in (reader.read(timeout=1), reader.read(timeout=1))] == [4, 5]


def test_start_at_a_sequence_reads_from_that_sequence(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=16, slot_size=64) as ring:
        for i in range(6):
            ring.publish(1, payload_of(i + 1))
        reader = ring.reader(start=3)
        assert reader.next_sequence == 3
        assert [(m.seq, m.payload) for m in iter(reader.poll, None)] == [(s, payload_of(s)) for s in range(3, 7)]


def test_a_reader_starting_at_a_future_sequence_gets_it_when_published(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=16, slot_size=64) as ring:
        reader = ring.reader(start=3)
        for i in range(4):
            ring.publish(1, payload_of(i + 1))
        assert [m.seq for m in iter(reader.poll, None)] == [3, 4]


def test_start_earliest_is_the_oldest_message_still_in_the_ring(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64) as ring:
        assert ring.reader().next_sequence == 1
        for i in range(20):
            ring.publish(1, payload_of(i + 1))
        reader = ring.reader(start="earliest")
        assert [m.seq for m in iter(reader.poll, None)] == list(range(13, 21))


@pytest.mark.parametrize("start", [0, -1, True, "newest", 1.5, None])
def test_a_bad_start_is_a_value_error(ring_name: str, start: Any) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64) as ring:
        with pytest.raises(ValueError):
            ring.reader(start=start)
        assert ring.readers() == []


def test_read_seq_copies_the_message_into_the_reader_buffer_without_building_it(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64) as ring:
        reader = ring.reader()
        ring.publish(5, b"zero-object", source=9, schema_version=4, timestamp_ns=777)
        assert reader.read_seq(timeout=1.0) == 1
        assert FRAME.unpack_from(reader.buffer) == (1, 777, 11, 5, 4, 9, 0)
        assert bytes(reader.buffer[32:43]) == b"zero-object"
        assert reader.last == pyseq.Message(1, 777, 5, 4, 9, b"zero-object")
        ring.publish(6, b"second")
        assert reader.poll_seq() == 2
        assert reader.last.payload == b"second"
        assert reader.poll_seq() == 0
        with pytest.raises(pyseq.TimeoutError):
            reader.read_seq(timeout=0.01)


def test_forward_republishes_the_last_read_message_into_another_ring(ring_names: Callable[[], str]) -> None:
    with pyseq.Ring.create(ring_names(), capacity=8, slot_size=128) as inbound, \
            pyseq.Ring.create(ring_names(), capacity=8, slot_size=128, first_sequence=500) as outbound:
        downstream = outbound.reader()
        reader = inbound.reader()
        inbound.publish(11, b"order 1", source=3, schema_version=2, timestamp_ns=1000)
        inbound.publish(12, b"order 2", source=4, schema_version=1, timestamp_ns=2000)
        assert reader.read_seq(timeout=1.0) == 1
        assert outbound.forward(reader) == 500
        assert reader.read_seq(timeout=1.0) == 2
        assert outbound.forward(reader, keep_timestamp=True) == 501
        first, second = downstream.read(timeout=1.0), downstream.read(timeout=1.0)
    assert (first.seq, first.msg_type, first.source, first.schema_version, first.payload) == (500, 11, 3, 2,
                                                                                              b"order 1")
    assert first.timestamp_ns != 1000  # the new sequencing time
    assert (second.seq, second.msg_type, second.source, second.schema_version, second.payload,
            second.timestamp_ns) == (501, 12, 4, 1, b"order 2", 2000)


def test_try_publish_returns_none_while_a_gating_reader_holds_the_writer(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64) as ring:
        gate = ring.reader("gate", gating=True)
        seqs = [ring.try_publish(1, payload_of(i + 1)) for i in range(8)]
        assert seqs == list(range(1, 9))
        assert ring.try_publish(1, payload_of(9)) is None
        assert ring.next_sequence == 9
        assert gate.read(timeout=1.0).seq == 1
        assert ring.try_publish(1, payload_of(9)) == 9
        assert ring.try_publish(1, payload_of(10)) is None
        assert [m.seq for m in iter(gate.poll, None)] == list(range(2, 10))


def test_skip_to_on_a_gating_reader_releases_the_messages_it_skips(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64) as ring:
        gate = ring.reader("gate", gating=True)
        for i in range(8):
            ring.publish(1, payload_of(i + 1))
        assert ring.try_publish(1, payload_of(9)) is None
        gate.skip_to(9)  # gives up 1..8: holding the writer for them would wait for ever
        assert ring.try_publish(1, payload_of(9)) == 9
        assert gate.read(timeout=1.0).seq == 9


def test_a_non_gating_reader_does_not_hold_the_writer(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64) as ring:
        ring.reader("slow")
        assert [ring.try_publish(1, b"x") for _ in range(30)] == list(range(1, 31))


def test_publish_under_back_pressure_waits_its_timeout_then_names_the_gating_reader(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=4, slot_size=64) as ring:
        gate = ring.reader("the-gate", gating=True)  # held, never reads
        assert gate.gating
        for i in range(4):
            ring.publish(1, b"x")
        t0 = time.monotonic()
        with pytest.raises(pyseq.BackPressureError, match="the-gate") as info:
            ring.publish(1, b"x", timeout=0.3)
        assert 0.27 <= time.monotonic() - t0 < 3.0
        assert isinstance(info.value, pyseq.PyseqError)
        assert ring.next_sequence == 5
        assert ring.info()["eviction_count"] == 0  # alive and in this process: not evicted


def test_a_publish_blocked_by_a_gating_reader_goes_on_when_it_reads(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=4, slot_size=64) as ring:
        gate = ring.reader("gate", gating=True)
        for i in range(4):
            ring.publish(1, payload_of(i + 1))
        timer = threading.Timer(0.2, lambda: gate.read(timeout=1.0))
        timer.start()
        try:
            t0 = time.monotonic()
            assert ring.publish(1, payload_of(5), timeout=5.0) == 5
            assert 0.15 <= time.monotonic() - t0 < 4.0
        finally:
            timer.cancel()
            timer.join(5)


def test_a_closed_gating_reader_stops_holding_the_writer(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=4, slot_size=64) as ring:
        gate = ring.reader("gate", gating=True)
        for _ in range(4):
            ring.publish(1, b"x")
        assert ring.try_publish(1, b"x") is None
        gate.close()
        assert ring.try_publish(1, b"x") == 5


def test_publish_batch_of_a_2d_uint8_array_publishes_one_message_per_row(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=16, slot_size=64) as ring:
        reader = ring.reader()
        rows = np.arange(10 * 24, dtype=np.uint8).reshape(10, 24)
        assert ring.publish_batch(9, rows, source=5, schema_version=1) == 1
        assert ring.publish_batch(9, rows[:0]) == 11  # nothing published: the next sequence
        assert ring.published_sequence == 10
        got = [reader.read(timeout=1.0) for _ in range(10)]
    assert [m.seq for m in got] == list(range(1, 11))
    assert [m.payload for m in got] == [row.tobytes() for row in rows]
    assert {(m.msg_type, m.source, m.schema_version) for m in got} == {(9, 5, 1)}
    assert len({m.timestamp_ns for m in got}) == 1  # one sequencing time for the batch


def test_publish_batch_of_a_structured_array_publishes_one_message_per_record(ring_name: str) -> None:
    record = np.dtype([("price", "<f8"), ("qty", "<i4"), ("side", "u1")])
    records = np.zeros(6, dtype=record)
    records["price"] = np.linspace(100.0, 105.0, 6)
    records["qty"] = np.arange(6) * 10
    records["side"] = [0, 1, 0, 1, 0, 1]
    with pyseq.Ring.create(ring_name, capacity=16, slot_size=64) as ring:
        reader = ring.reader()
        ring.publish(1, b"before")
        assert ring.publish_batch(21, records) == 2
        assert reader.read(timeout=1.0).payload == b"before"
        batch = reader.read_batch(16)
    assert list(batch["seq"]) == list(range(2, 8))
    assert set(batch["length"]) == {record.itemsize}
    assert set(batch["msg_type"]) == {21}
    decoded = pyseq.batch_payloads(batch, record)
    assert decoded.tobytes() == records.tobytes()


def test_publish_batch_larger_than_the_ring_publishes_all_of_it_without_a_gating_reader(
        ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64) as ring:
        rows = np.repeat(np.arange(1, 31, dtype="<u8")[:, None], 4, axis=1).view(np.uint8)
        assert ring.publish_batch(1, rows) == 1
        assert ring.published_sequence == 30
        reader = ring.reader()
        assert [(m.seq, m.payload) for m in iter(reader.poll, None)] == [(s, payload_of(s)) for s in range(23, 31)]


def test_publish_batch_of_a_strided_array_publishes_its_rows(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=16, slot_size=64) as ring:
        reader = ring.reader()
        rows = np.arange(8 * 16, dtype=np.uint8).reshape(8, 16)
        ring.publish_batch(1, rows[::2, 4:12])
        assert [m.payload for m in iter(reader.poll, None)] == [row.tobytes() for row in rows[::2, 4:12]]


def test_publish_batch_under_back_pressure_says_how_much_was_published(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64) as ring:
        gate = ring.reader("gate", gating=True)  # held, never reads
        assert gate.gating
        rows = np.zeros((12, 8), dtype=np.uint8)
        with pytest.raises(pyseq.BackPressureError, match="8 of 12"):
            ring.publish_batch(1, rows, timeout=0.2)
        assert ring.published_sequence == 8


def test_a_payload_that_is_not_a_contiguous_buffer_is_a_type_error(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64) as ring:
        for bad in ("text", 12, np.arange(16, dtype=np.uint8)[::2], [1, 2, 3]):
            with pytest.raises(TypeError):
                ring.publish(1, bad)
        assert ring.published_sequence == 0


def test_publish_batch_refuses_arrays_that_are_not_records(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64) as ring:
        with pytest.raises(ValueError):
            ring.publish_batch(1, np.zeros((2, 2, 2), dtype=np.uint8))
        with pytest.raises(ValueError):
            ring.publish_batch(1, np.zeros((2, 4), dtype=np.int32))
        assert ring.published_sequence == 0


def test_a_lapped_reader_in_one_process_raises_lapped_error_with_the_gap(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64) as ring:
        reader = ring.reader()
        for i in range(3):
            ring.publish(1, payload_of(i + 1))
        assert reader.read(timeout=1.0).seq == 1
        for i in range(3, 30):
            ring.publish(1, payload_of(i + 1))
        with pytest.raises(pyseq.LappedError) as info:
            reader.read(timeout=1.0)
        e = info.value
        assert (e.first_missed, e.resume_at, e.missed) == (2, 23, 21)
        reader.skip_to(e.resume_at)
        assert [m.seq for m in iter(reader.poll, None)] == list(range(23, 31))


def test_a_lapped_reader_reading_batches_raises_lapped_error_with_the_gap(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64) as ring:
        reader = ring.reader()
        for i in range(20):
            ring.publish(1, payload_of(i + 1))
        with pytest.raises(pyseq.LappedError) as info:
            reader.read_batch(4)
        assert (info.value.first_missed, info.value.resume_at, info.value.missed) == (1, 13, 12)
        reader.skip_to(info.value.resume_at)
        assert list(reader.read_batch(100)["seq"]) == list(range(13, 21))


def test_the_cursor_table_shows_each_reader_and_its_position(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64) as ring:
        a = ring.reader("alpha")
        b = ring.reader("beta", gating=True)
        assert b.gating and not a.gating
        for _ in range(3):
            ring.publish(1, b"x")
        a.read(timeout=1.0)
        assert a.lag == 2
        table = {r["name"]: r for r in ring.readers()}
        assert set(table) == {"alpha", "beta"}
        assert (table["alpha"]["sequence"], table["alpha"]["gating"], table["alpha"]["lag"]) == (1, False, 2)
        assert (table["beta"]["sequence"], table["beta"]["gating"], table["beta"]["lag"]) == (0, True, 3)
        assert all(r["state"] == "active" and r["alive"] for r in table.values())
        a.close()
        assert [r["name"] for r in ring.readers()] == ["beta"]


def test_a_ring_handle_is_a_context_manager_that_closes_its_mappings(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64) as ring:
        ring.reader()
        assert not ring.closed
    assert ring.closed
    with pytest.raises(pyseq.RingClosedError):
        ring.readers()
    assert pyseq.Ring.exists(ring_name)  # closing never removes the ring
    assert pyseq.Ring.remove(ring_name) is True
    assert not pyseq.Ring.exists(ring_name)
    assert pyseq.Ring.remove(ring_name) is False


def test_unlink_removes_the_ring_while_open_handles_keep_working(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64) as ring:
        reader = ring.reader()
        assert ring.unlink() is True
        assert not pyseq.Ring.exists(ring_name)
        ring.publish(1, b"still mapped")
        assert reader.read(timeout=1.0).payload == b"still mapped"
        with pytest.raises(pyseq.RingNotFoundError):
            pyseq.Ring.attach(ring_name)


# ---- two processes --------------------------------------------------------------------------------


def read_messages_in_a_child(name: str, count: int, ready: Any) -> list[tuple[int, int, int, int, bytes]]:
    with pyseq.Ring.attach(name, timeout=30.0) as ring:
        reader = ring.reader("child")
        ready.set()
        out = []
        deadline = time.monotonic() + 60
        while len(out) < count and time.monotonic() < deadline:
            try:
                m = reader.read(timeout=0.1)
            except pyseq.TimeoutError:
                continue
            out.append((m.seq, m.msg_type, m.source, m.schema_version, m.payload))
        return out


def test_messages_published_in_one_process_are_read_in_another(ring_name: str, children: Children) -> None:
    with pyseq.Ring.create(ring_name, capacity=64, slot_size=64, first_sequence=10) as ring:
        ready = children.event()
        children.start("reader", read_messages_in_a_child, ring_name, 50, ready)
        assert ready.wait(30), "the reader did not register"
        for i in range(50):
            ring.publish(i % 3, payload_of(10 + i), source=i, schema_version=1)
        got = children.result("reader", timeout=60)
    assert got == [(10 + i, i % 3, i, 1, payload_of(10 + i)) for i in range(50)]


def attach_before_the_ring_exists(name: str, count: int, started: Any, ready: Any) -> list[int]:
    started.set()
    with pyseq.Ring.attach(name, timeout=30.0) as ring:
        reader = ring.reader("early", gating=True)
        ready.set()
        seqs = []
        deadline = time.monotonic() + 60
        while len(seqs) < count and time.monotonic() < deadline:
            batch = reader.read_batch(64, timeout=0.1)
            assert all(row["payload"][:32].tobytes() == payload_of(int(row["seq"])) for row in batch)
            seqs.extend(int(s) for s in batch["seq"])
        return seqs


def test_a_reader_waiting_in_attach_before_the_ring_exists_gets_every_message(
        ring_name: str, children: Children) -> None:
    started, ready = children.event(), children.event()
    children.start("early", attach_before_the_ring_exists, ring_name, 500, started, ready)
    assert started.wait(30)
    time.sleep(0.3)  # the child is now waiting in attach(timeout=...) for a ring that does not exist
    assert not pyseq.Ring.exists(ring_name)
    with pyseq.Ring.create(ring_name, capacity=16, slot_size=64) as ring:
        assert ready.wait(30), "the reader did not attach"
        for i in range(500):  # 31 ring-fulls: the gating reader holds the writer back
            ring.publish(1, payload_of(i + 1), timeout=30)
        assert children.result("early", timeout=60) == list(range(1, 501))


# ---- hypothesis -----------------------------------------------------------------------------------

CAPACITY, SLOT = 64, 256
MAX_PAYLOAD = SLOT - pyseq.FRAME_LENGTH


@pytest.fixture(scope="module")
def shared_ring() -> Iterator[tuple[pyseq.Ring, pyseq.Reader]]:
    name = unique_ring_name()
    try:
        with pyseq.Ring.create(name, capacity=CAPACITY, slot_size=SLOT) as ring:
            yield ring, ring.reader("hypothesis")
    finally:
        pyseq.Ring.remove(name)


def test_the_largest_payload_is_the_slot_less_its_frame(shared_ring: tuple[pyseq.Ring, pyseq.Reader]) -> None:
    ring, _ = shared_ring
    assert ring.max_payload == MAX_PAYLOAD == 224


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(min_size=0, max_size=MAX_PAYLOAD), msg_type=st.integers(0, 0xFFFF),
       schema_version=st.integers(0, 0xFFFF), source=st.integers(0, 0xFFFFFFFF),
       timestamp_ns=st.integers(1, 2**63 - 1))
def test_every_payload_up_to_the_slot_size_round_trips_through_publish_and_read(
        shared_ring: tuple[pyseq.Ring, pyseq.Reader], payload: bytes, msg_type: int, schema_version: int,
        source: int, timestamp_ns: int) -> None:
    ring, reader = shared_ring
    seq = ring.publish(msg_type, payload, source=source, schema_version=schema_version, timestamp_ns=timestamp_ns)
    m = reader.read(timeout=1.0)
    assert m == pyseq.Message(seq, timestamp_ns, msg_type, schema_version, source, payload)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), length=st.integers(0, MAX_PAYLOAD), count=st.integers(1, CAPACITY),
       msg_type=st.integers(0, 0xFFFF), source=st.integers(0, 0xFFFFFFFF))
def test_every_record_length_round_trips_through_publish_batch_and_read_batch(
        shared_ring: tuple[pyseq.Ring, pyseq.Reader], data: st.DataObject, length: int, count: int,
        msg_type: int, source: int) -> None:
    ring, reader = shared_ring
    raw = data.draw(st.binary(min_size=length * count, max_size=length * count))
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(count, length)
    first = ring.publish_batch(msg_type, rows, source=source)
    got = reader.read_batch(count, timeout=1.0)
    while len(got) < count:
        more = reader.read_batch(count - len(got), timeout=1.0)
        assert len(more), "messages published in the batch are missing"
        got = np.concatenate([got, more])
    assert list(got["seq"]) == list(range(first, first + count))
    assert set(got["length"]) == {length}
    assert set(got["msg_type"]) == {msg_type} and set(got["source"]) == {source}
    assert got["payload"][:, :length].tobytes() == raw


@settings(max_examples=100, deadline=None)
@given(records=st.lists(st.tuples(st.floats(allow_nan=False), st.integers(-2**31, 2**31 - 1),
                                  st.integers(0, 255)), min_size=1, max_size=CAPACITY))
def test_structured_records_round_trip_through_publish_batch_and_read_batch(
        shared_ring: tuple[pyseq.Ring, pyseq.Reader], records: list[tuple[float, int, int]]) -> None:
    ring, reader = shared_ring
    dtype = np.dtype([("price", "<f8"), ("qty", "<i4"), ("side", "u1")])
    arr = np.array(records, dtype=dtype)
    first = ring.publish_batch(3, arr)
    got = reader.read_batch(len(arr), timeout=1.0)
    assert list(got["seq"]) == list(range(first, first + len(arr)))
    assert pyseq.batch_payloads(got, dtype).tobytes() == arr.tobytes()
