"""The blocking idle strategy: a reader sleeps on a futex in the ring and the writer wakes it.

Real processes: a writer here, blocking readers in spawned children.  What is asserted is what the
strategy promises: every message arrives, the sleeping reader uses a small fraction of a CPU, it is
woken by the publish (not by its own timeout: a ratio against that timeout), the ring-wide counters
in cursor entry 0 come back to zero, and a reader SIGKILLed while asleep does not make the writer
fail or hang.
"""
from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

import pyseq
from pyseq._native import ffi
from childproc import Children
from cliproc import wait_for

pytestmark = pytest.mark.timeout(120)

MSG_TYPE = 7
PARK_BOUND_NS = 1_000_000_000  # one sleep's bound (a read's wait is cut in 100 ms slices too)
TIMED_OUT_NS = 100_000_000     # so a reader never woken by the writer would wait ~100 ms a message


def park_counters(ring: pyseq.Ring) -> tuple[int, int, int]:
    """(blocking_readers, parked_readers, park_seq): the ring-wide words in cursor entry 0."""
    c = ffi.cast("pyseq_cursor_t *", ring._mapping().cursors_ptr)
    return int(c.blocking_readers), int(c.parked_readers), int(c.park_seq)


def blocking_reader(name: str, count: int, ready: Any, start: str = "earliest") -> dict[str, Any]:
    idle = pyseq.BlockingIdle(yields=0, max_park_ns=PARK_BOUND_NS)  # (no sched_yield: parks at once)
    with pyseq.Ring.attach(name, timeout=30) as ring, ring.reader("blocker", idle=idle, start=start) as r:
        ready.set()
        cpu0, wall0 = time.process_time(), time.monotonic()
        delays, seqs = [], []
        for _ in range(count):
            m = r.read(timeout=30)
            delays.append(time.clock_gettime_ns(time.CLOCK_REALTIME) - m.timestamp_ns)
            seqs.append(m.seq)
            assert m.payload == m.seq.to_bytes(8, "little"), m
        return {"seqs": seqs, "median_delay_ns": sorted(delays)[len(delays) // 2],
                "cpu_share": (time.process_time() - cpu0) / (time.monotonic() - wall0)}


def test_a_blocking_reader_gets_every_message_of_a_slow_writer_woken_by_each_publish_and_sleeps_between(
        ring_name: str, children: Children) -> None:
    count = 150
    with pyseq.Ring.create(ring_name, capacity=64, slot_size=64) as ring:
        ready = children.event()
        children.start("reader", blocking_reader, ring_name, count, ready)
        assert ready.wait(30)
        parks_before = park_counters(ring)[2]
        for s in range(1, count + 1):
            time.sleep(0.004)  # the reader is asleep in the kernel by now
            assert ring.publish(MSG_TYPE, s.to_bytes(8, "little")) == s
        got = children.result("reader", timeout=60)
        assert got["seqs"] == list(range(1, count + 1))
        # asleep between messages (the ring counts its parks), and woken by the publish: a reader
        # woken only by its timeout would show a median delay near 100 ms, a spinning one a CPU
        # share near 1
        assert park_counters(ring)[2] - parks_before > count // 2, park_counters(ring)
        assert got["median_delay_ns"] < TIMED_OUT_NS / 5, got["median_delay_ns"]
        assert got["cpu_share"] < 0.5, got["cpu_share"]
        wait_for(lambda: park_counters(ring)[:2] == (0, 0), "the reader's counters to come back to 0", 30)


def test_a_blocking_read_with_nothing_published_times_out_and_leaves_no_count(ring_names: Any) -> None:
    ring_name = ring_names()
    with pyseq.Ring.create(ring_name, capacity=64, slot_size=64) as ring, \
            ring.reader("idle", idle=pyseq.BlockingIdle(max_park_ns=50_000_000)) as r:
        start = time.monotonic()
        with pytest.raises(pyseq.TimeoutError):
            r.read(timeout=0.3)
        assert time.monotonic() - start >= 0.3
        assert park_counters(ring)[0] == 1 and park_counters(ring)[1] == 0  # registered, not asleep
        ring.publish(MSG_TYPE, b"late")
        assert r.read(timeout=5).payload == b"late"
    with pyseq.Ring.create(ring_names(), capacity=64, slot_size=64) as other:
        assert park_counters(other) == (0, 0, 0)  # a new ring starts at zero


def sleeper(name: str, ready: Any) -> None:
    with pyseq.Ring.attach(name, timeout=30) as ring, \
            ring.reader("sleeper", idle=pyseq.BlockingIdle(max_park_ns=PARK_BOUND_NS)) as r:
        ready.set()
        r.read(timeout=60)  # killed while asleep here


def test_a_blocking_reader_killed_while_asleep_leaves_the_writer_publishing_and_others_woken(
        ring_name: str, children: Children) -> None:
    with pyseq.Ring.create(ring_name, capacity=4096, slot_size=64) as ring:
        ready = children.event()
        children.start("sleeper", sleeper, ring_name, ready)
        assert ready.wait(30)
        wait_for(lambda: park_counters(ring)[1] == 1, "the reader to fall asleep", 30)
        os.kill(children.pid("sleeper"), signal.SIGKILL)
        assert children.join("sleeper") == -signal.SIGKILL
        assert park_counters(ring)[:2] == (1, 1)  # a dead sleeper's counts stay (documented)
        for s in range(1, 2001):  # the writer goes on: one wake finds nobody, the rest are skipped
            assert ring.publish(MSG_TYPE, s.to_bytes(8, "little")) == s
        assert ring._w.woke_nobody_at == park_counters(ring)[2] + 1
        # a live blocking reader that parks later is still woken by the publishes
        ready2 = children.event()
        children.start("reader", blocking_reader, ring_name, 40, ready2, "latest")
        assert ready2.wait(30)
        for s in range(2001, 2041):
            time.sleep(0.004)
            ring.publish(MSG_TYPE, s.to_bytes(8, "little"))
        got = children.result("reader", timeout=60)
        assert got["seqs"] == list(range(2001, 2041))
        assert got["median_delay_ns"] < TIMED_OUT_NS / 5, got["median_delay_ns"]


def durable_blocking_reader(name: str, count: int, ready: Any) -> list[int]:
    with pyseq.Ring.attach(name, timeout=30) as ring, \
            ring.reader("durable", durable=True, idle=pyseq.BlockingIdle(max_park_ns=PARK_BOUND_NS)) as r:
        ready.set()
        out = []
        while len(out) < count:
            m = r.read(timeout=30)
            if m.msg_type == MSG_TYPE:
                out.append(int.from_bytes(m.payload[:8], "little"))
                assert m.seq <= ring.journaled_sequence
        return out


def test_a_durable_blocking_reader_is_woken_by_the_journaler(ring_name: str, tmp_path: Any,
                                                              children: Children) -> None:
    import threading
    seq = pyseq.Sequencer(ring_name, journal=str(tmp_path / "journal"), fsync="never", capacity=1024,
                          idle=pyseq.BackoffIdle())
    thread = threading.Thread(target=seq.run, daemon=True)
    thread.start()
    try:
        ready = children.event()
        children.start("durable", durable_blocking_reader, ring_name, 50, ready)
        assert ready.wait(30)
        with pyseq.Client.connect(ring_name, "pub", timeout=10) as client:
            for i in range(50):
                time.sleep(0.004)
                client.submit(MSG_TYPE, i.to_bytes(8, "little"))
            assert children.result("durable", timeout=60) == list(range(50))
    finally:
        seq.stop()
        thread.join(15)
        assert not thread.is_alive()
