"""Lifetimes: end of stream, dropped readers, removing a ring, and the misuses a newcomer tried first."""
from __future__ import annotations

import gc
import os
import time
from typing import Any

import numpy as np
import pytest

import pyseq
from pyseq.schema import f64, u64
from childproc import Children


class Tick(pyseq.Record, msg_type=60950, version=2):
    instrument: u64
    price: f64


def publish_and_exit(name: str, count: int) -> int:
    ring = pyseq.Ring.create(name, capacity=64, slot_size=64)
    for i in range(count):
        ring.publish(1, i.to_bytes(8, "little"))
    return count  # exits without close(): the writer process is simply gone


def publish_then_wait_to_be_killed(name: str, count: int, ready: Any) -> None:
    ring = pyseq.Ring.create(name, capacity=64, slot_size=64)
    for i in range(count):
        ring.publish(1, i.to_bytes(8, "little"))
    ready.set()
    time.sleep(120)  # killed long before this


def test_a_blocking_read_returns_what_is_left_then_raises_end_of_stream_after_the_writer_closes(
        ring_name: str) -> None:
    ring = pyseq.Ring.create(ring_name, capacity=8, slot_size=64)
    reader = pyseq.Ring.attach(ring_name).reader()
    ring.publish(1, b"last words")
    ring.close()
    assert reader.read(timeout=None).payload == b"last words"
    t0 = time.monotonic()
    with pytest.raises(pyseq.EndOfStreamError, match="writer is gone"):
        reader.read(timeout=None)
    with pytest.raises(pyseq.EndOfStreamError):
        reader.read_seq(timeout=5.0)
    with pytest.raises(pyseq.EndOfStreamError):
        reader.read_batch(4, timeout=None)
    assert len(reader.read_batch(4, timeout=0)) == 0  # a poll stays a poll
    assert reader.poll() is None
    assert time.monotonic() - t0 < 5.0  # none of them waited for its timeout
    reader.ring.close()


def test_a_blocking_read_raises_end_of_stream_when_the_writer_process_is_killed(
        ring_name: str, children: Children) -> None:
    ready = children.event()
    children.start("writer", publish_then_wait_to_be_killed, ring_name, 3, ready)
    assert ready.wait(30)
    with pyseq.Ring.attach(ring_name) as attached:
        reader = attached.reader()
        assert [reader.read(timeout=5).seq for _ in range(3)] == [1, 2, 3]
        children.kill("writer")
        with pytest.raises(pyseq.EndOfStreamError):
            reader.read(timeout=None)
        with pytest.raises(pyseq.EndOfStreamError):
            reader.read_batch(8, timeout=None)


def test_a_reader_of_a_writer_that_exited_without_closing_reads_everything_then_ends(
        ring_name: str, children: Children) -> None:
    children.start("writer", publish_and_exit, ring_name, 5)
    assert children.result("writer", 30) == 5
    assert children.join("writer") == 0
    with pyseq.Ring.attach(ring_name) as attached:
        got = [int.from_bytes(m.payload, "little") for m in attached.reader()]
        assert got == [0, 1, 2, 3, 4]


def test_a_dropped_reader_gives_its_cursor_back(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64, max_readers=2) as ring, \
            pyseq.Ring.attach(ring_name) as attached:
        for i in range(10):
            r = attached.reader(f"r{i}", gating=True)
            del r
            gc.collect()
        assert ring.readers() == []
        for _ in range(20):  # nothing holds the writer back any more
            ring.publish(1, b"x", timeout=0)


def test_remove_refuses_a_ring_whose_writer_lives_in_another_process(ring_name: str,
                                                                      children: Children) -> None:
    ready = children.event()
    children.start("writer", publish_then_wait_to_be_killed, ring_name, 1, ready)
    assert ready.wait(30)
    with pytest.raises(pyseq.RingExistsError, match="live writer"):
        pyseq.Ring.remove(ring_name)
    with pytest.raises(pyseq.RingExistsError):
        pyseq.Ring.create(ring_name)
    assert pyseq.Ring.exists(ring_name)
    assert pyseq.Ring.remove(ring_name, force=True)
    assert not pyseq.Ring.exists(ring_name)


def test_a_writer_unlinks_only_its_own_ring_not_a_newer_one_of_the_same_name(ring_name: str) -> None:
    old = pyseq.Ring.create(ring_name, capacity=8, slot_size=64)
    assert pyseq.Ring.remove(ring_name)  # the writer's own process may remove it
    new = pyseq.Ring.create(ring_name, capacity=8, slot_size=64)
    assert old.unlink() is False
    assert pyseq.Ring.exists(ring_name)
    assert new.publish(1, b"new") == 1
    old.close()
    assert new.unlink() is True
    new.close()


def test_forward_of_a_reader_that_has_read_nothing_is_refused(ring_names: Any) -> None:
    a, b = ring_names(), ring_names()
    with pyseq.Ring.create(a, capacity=8, slot_size=64) as src, \
            pyseq.Ring.create(b, capacity=8, slot_size=64) as dst:
        reader = src.reader()
        with pytest.raises(ValueError, match="has not read a message"):
            dst.forward(reader)
        assert dst.published_sequence == 0
        src.publish(3, b"hop")
        reader.read_seq(timeout=1)
        assert dst.forward(reader) == 1
        out = dst.reader(start=1).read(timeout=1)
        assert (out.msg_type, out.payload) == (3, b"hop")


def test_publishing_a_record_class_instead_of_an_instance_says_so(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64) as ring:
        with pytest.raises(TypeError, match="not the class Tick"):
            ring.publish(Tick)


def test_a_schema_version_that_contradicts_the_record_is_refused(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64) as ring:
        with pytest.raises(ValueError, match="conflicts"):
            ring.publish(Tick(instrument=1, price=2.0), schema_version=5)
        assert ring.publish(Tick(instrument=1, price=2.0), schema_version=2) == 1


def test_publish_batch_of_a_record_class_stamps_its_type_and_version(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64) as ring:
        reader = ring.reader()
        ring.publish_batch(Tick, Tick.to_array([Tick(instrument=i, price=i / 4) for i in range(3)]))
        batch = reader.read_batch(8)
        assert batch["msg_type"].tolist() == [Tick.msg_type] * 3
        assert batch["schema_version"].tolist() == [2, 2, 2]
        assert Tick.from_array(pyseq.batch_payloads(batch, Tick.dtype)) == \
            [Tick(instrument=i, price=i / 4) for i in range(3)]


@pytest.mark.parametrize("timeout", [-1, -0.5, "soon"])
def test_a_bad_publish_timeout_is_refused_even_when_there_is_room(ring_name: str, timeout: Any) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64) as ring:
        with pytest.raises(ValueError, match="timeout"):
            ring.publish(1, b"x", timeout=timeout)
        assert ring.published_sequence == 0


@pytest.mark.parametrize("limit", [0, -1, 2.5])
def test_a_bad_batch_limit_is_a_value_error(ring_name: str, limit: Any) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64) as ring:
        with pytest.raises(ValueError, match="limit"):
            ring.reader().read_batch(limit)


def test_create_over_a_file_that_is_not_a_ring_is_refused_not_replaced(ring_name: str) -> None:
    path = f"/dev/shm/pyseq.{ring_name}"
    with open(path, "wb") as f:
        f.write(b"somebody else's data".ljust(8192, b"!"))
    try:
        with pytest.raises(pyseq.RingExistsError, match="not a pyseq ring"):
            pyseq.Ring.create(ring_name)
        with open(path, "rb") as f:
            assert f.read(20) == b"somebody else's data"
    finally:
        os.unlink(path)


def test_a_reader_starting_ahead_of_the_writer_shows_no_negative_lag(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64) as ring:
        reader = ring.reader(start=100)
        assert [r["lag"] for r in ring.readers()] == [0]
        assert reader.next_sequence == 100


def test_back_pressure_on_a_reader_that_has_read_nothing_says_so(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=4, slot_size=64) as ring:
        gate = ring.reader("gate", gating=True)
        for _ in range(4):
            ring.publish(1, b"x")
        with pytest.raises(pyseq.BackPressureError, match="has read nothing yet"):
            ring.publish(1, b"x", timeout=0.05)
        gate.read(timeout=1)
        with pytest.raises(pyseq.BackPressureError, match="has read up to sequence 1"):
            ring.publish_batch(1, np.zeros((2, 8), np.uint8), timeout=0.05)
