"""Real processes, real shared memory: a writer and three readers moving a million messages, a lapped
reader, a killed and a stuck gating reader, and a reader overtaken while it copies.

Every child is SIGKILLed and joined after its test (the ``children`` fixture); every wait, in the
test and in the children, has a deadline.  Payloads are a function of the sequence, so each reader
checks every message it gets.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Optional

import numpy as np
import pytest

import pyseq
from childproc import Children, Deadline

CAPACITY = 1024
SLOT = 64        # a 32-byte frame header and a 32-byte payload: the sequence as four little-endian u64
WRITE_BATCH = 256
READ_BATCH = 512
MSG_TYPE, SOURCE = 7, 3


def payload_of(seq: int) -> bytes:
    return seq.to_bytes(8, "little") * 4


def payloads_of(first: int, count: int) -> np.ndarray:
    seqs = np.arange(first, first + count, dtype="<u8")
    return np.repeat(seqs[:, None], 4, axis=1).view(np.uint8)  # (count, 32)


# ---- (a) one writer, three readers (one gating), every message checked ----------------------------------


def paced_writer(name: str, count: int, readers: int, single: bool) -> dict[str, Any]:
    """Create the ring, wait for the readers, publish ``count`` messages, close.

    Before each batch of at most WRITE_BATCH messages the writer waits until every non-gating reader
    is within CAPACITY/2 of the head (it watches the cursor table), so a non-gating reader that keeps
    up is never lapped and any LappedError is a bug.  The gating reader holds the writer back inside
    publish/publish_batch by itself.
    """
    ring = pyseq.Ring.create(name, capacity=CAPACITY, slot_size=SLOT, reader_timeout=60)
    try:
        deadline = Deadline(60, "the readers registering")
        while sum(r["state"] == "active" for r in ring.readers()) < readers:
            deadline.check()
            time.sleep(0.01)
        deadline = Deadline(240, f"publishing {count} messages")
        t0 = time.monotonic()
        seq, pacing_waits, gating_limited = 1, 0, 0
        while seq <= count:
            n = min(WRITE_BATCH, count - seq + 1)
            while True:
                table = ring.readers()
                dead = [r for r in table if not r["alive"]]
                if dead:
                    raise AssertionError(f"a reader died: {dead}")
                behind = [r["sequence"] for r in table if not r["gating"]]
                if not behind or ring.published_sequence - min(behind) <= CAPACITY // 2:
                    break
                pacing_waits += 1
                deadline.check()
                time.sleep(0.0002)
            gating = [r["sequence"] for r in table if r["gating"] and r["state"] == "active"]
            if gating and seq + n - 1 - CAPACITY > min(gating):
                gating_limited += 1
            if single:
                for s in range(seq, seq + n):
                    got = ring.publish(MSG_TYPE, payload_of(s), source=SOURCE, timeout=30)
                    if got != s:
                        raise AssertionError(f"publish gave sequence {got}, expected {s}")
            else:
                first = ring.publish_batch(MSG_TYPE, payloads_of(seq, n), source=SOURCE, timeout=30)
                if first != seq:
                    raise AssertionError(f"publish_batch gave first sequence {first}, expected {seq}")
            seq += n
        seconds = time.monotonic() - t0
        info = ring.info()
        return {"published": ring.published_sequence, "seconds": seconds, "pacing_waits": pacing_waits,
                "gating_limited": gating_limited, "evictions": info["eviction_count"]}
    finally:
        ring.close()


def checking_reader(name: str, count: int, gating: bool, how: str) -> dict[str, Any]:
    """Read until ``count`` messages came, checking each: sequence 1, 2, ... exactly once, in order,
    with the payload of its sequence.  A LappedError propagates: it fails the test."""
    ring = pyseq.Ring.attach(name, timeout=60)
    try:
        reader = ring.reader(f"{how}{'-gating' if gating else ''}", gating=gating, start=1)
        deadline = Deadline(240, f"reader {reader.name} receiving {count} messages")
        expected = 1
        t0 = time.monotonic()
        if how == "batch":
            out = np.empty(READ_BATCH, dtype=ring.dtype)
            while expected <= count:
                batch = reader.read_batch(READ_BATCH, timeout=0.1, out=out)
                n = len(batch)
                if n == 0:
                    deadline.check()
                    continue
                seqs = batch["seq"]
                if seqs[0] != expected or (n > 1 and not (np.diff(seqs) == 1).all()):
                    raise AssertionError(f"expected {expected}.., got sequences {seqs[:8]}..")
                words = np.ascontiguousarray(batch["payload"]).view("<u8")
                if not (words == seqs[:, None]).all():
                    bad = int(seqs[np.nonzero(~(words == seqs[:, None]).all(axis=1))[0][0]])
                    raise AssertionError(f"wrong payload at sequence {bad}")
                if not ((batch["length"] == 32).all() and (batch["msg_type"] == MSG_TYPE).all()
                        and (batch["source"] == SOURCE).all()):
                    raise AssertionError(f"wrong frame fields in sequences {seqs[0]}..{seqs[-1]}")
                expected += n
        elif how in ("read", "read_seq"):
            while expected <= count:
                try:
                    if how == "read":
                        m = reader.read(timeout=0.1)
                    else:
                        reader.read_seq(timeout=0.1)
                        m = reader.last
                except pyseq.TimeoutError:
                    deadline.check()
                    continue
                if (m.seq, m.payload, m.msg_type, m.source) != (expected, payload_of(expected), MSG_TYPE, SOURCE):
                    raise AssertionError(f"expected sequence {expected}, got {m}")
                expected += 1
        elif how == "iterate":
            for m in reader:  # ends when the writer has closed the ring and everything was read
                if (m.seq, m.payload, m.msg_type, m.source) != (expected, payload_of(expected), MSG_TYPE, SOURCE):
                    raise AssertionError(f"expected sequence {expected}, got {m}")
                expected += 1
                if expected % 4096 == 0:
                    deadline.check()
        seconds = time.monotonic() - t0
        ended = Deadline(60, "the writer closing the ring")
        while not ring.writer_closed:
            ended.check()
            time.sleep(0.01)
        extra = reader.poll()
        if extra is not None:
            raise AssertionError(f"a message after the last one: {extra}")
        return {"name": reader.name, "received": expected - 1, "seconds": seconds}
    finally:
        ring.close()


def run_one_writer_three_readers(name: str, children: Children, count: int, single: bool,
                                 hows: list[tuple[bool, str]]) -> None:
    t0 = time.monotonic()
    for i, (gating, how) in enumerate(hows):
        children.start(f"reader{i}", checking_reader, name, count, gating, how)
    children.start("writer", paced_writer, name, count, len(hows), single)
    writer = children.result("writer", timeout=280)
    readers = [children.result(f"reader{i}", timeout=120) for i in range(len(hows))]
    total = time.monotonic() - t0
    assert writer["published"] == count
    assert writer["evictions"] == 0
    for r in readers:
        assert r["received"] == count, r
    seconds = ", ".join(f"{r['seconds']:.2f}" for r in readers)
    print(f"\n{count} messages, 1 writer ({'publish' if single else 'publish_batch'}) -> "
          f"{[r['name'] for r in readers]}: writer {writer['seconds']:.2f} s "
          f"({count / writer['seconds'] / 1e6:.2f} M msg/s), readers "
          f"{seconds} s, "
          f"whole test with process start {total:.2f} s; pacing waits {writer['pacing_waits']}, "
          f"batches held by the gating reader {writer['gating_limited']}")
    for label in ["writer"] + [f"reader{i}" for i in range(len(hows))]:
        assert children.join(label) == 0


def test_a_writer_and_three_reader_processes_move_a_million_messages_and_each_reader_gets_every_one(
        ring_name: str, children: Children) -> None:
    run_one_writer_three_readers(ring_name, children, 1_000_000, single=False,
                                 hows=[(True, "batch"), (False, "batch"), (False, "batch")])


def test_single_message_publish_and_read_move_a_hundred_thousand_messages_to_three_reader_processes(
        ring_name: str, children: Children) -> None:
    run_one_writer_three_readers(ring_name, children, 100_000, single=True,
                                 hows=[(True, "read"), (False, "read_seq"), (False, "iterate")])


# ---- (b) a slow non-gating reader is lapped, with the right gap ------------------------------------------


def slow_reader(name: str, ready: Any, caught_up: Any, go: Any, first_reads: int, total: int) -> dict[str, Any]:
    with pyseq.Ring.attach(name, timeout=30) as ring:
        reader = ring.reader("slow")
        ready.set()
        for s in range(1, first_reads + 1):
            m = reader.read(timeout=10)
            assert (m.seq, m.payload) == (s, payload_of(s)), m
        caught_up.set()
        assert go.wait(60), "the writer never said go"
        next_before = reader.next_sequence
        try:
            m = reader.read(timeout=10)
            return {"lapped": False, "got": m.seq}
        except pyseq.LappedError as e:
            lapped = {"lapped": True, "next_before": next_before, "first_missed": e.first_missed,
                      "missed": e.missed, "resume_at": e.resume_at, "message": str(e)}
        reader.skip_to(lapped["resume_at"])
        rest = []
        while not rest or rest[-1] < total:
            m = reader.read(timeout=10)
            assert m.payload == payload_of(m.seq), m
            rest.append(m.seq)
        lapped["after_skip"] = rest
        return lapped


def test_a_slow_non_gating_reader_gets_lapped_error_with_the_first_missed_sequence_and_the_gap(
        ring_name: str, children: Children) -> None:
    capacity, first_reads = 64, 10
    total = first_reads + 3 * capacity
    with pyseq.Ring.create(ring_name, capacity=capacity, slot_size=SLOT) as ring:
        ready, caught_up, go = children.event(), children.event(), children.event()
        children.start("slow", slow_reader, ring_name, ready, caught_up, go, first_reads, total)
        assert ready.wait(30)
        for s in range(1, first_reads + 1):
            ring.publish(MSG_TYPE, payload_of(s))
        assert caught_up.wait(30)
        for s in range(first_reads + 1, total + 1):  # three ring-fulls while the reader sleeps
            ring.publish(MSG_TYPE, payload_of(s))
        go.set()
        got = children.result("slow", timeout=60)
    resume_at = total - capacity + 1
    assert got["lapped"], got
    assert got["first_missed"] == got["next_before"] == first_reads + 1
    assert got["resume_at"] == resume_at
    assert got["missed"] == resume_at - got["first_missed"] == 2 * capacity
    assert str(first_reads + 1) in got["message"] and str(resume_at) in got["message"]
    assert got["after_skip"] == list(range(resume_at, total + 1))


# ---- (c) a gating reader killed -9 is evicted and the writer goes on ---------------------------------------


def gating_reader_that_stops(name: str, ready: Any, read_some: Any, reads: int) -> None:
    ring = pyseq.Ring.attach(name, timeout=30)
    reader = ring.reader("doomed", gating=True, start=1)
    ready.set()
    for s in range(1, reads + 1):
        m = reader.read(timeout=10)
        assert m.seq == s, m
    read_some.set()
    time.sleep(120)  # killed long before this


def test_a_killed_gating_reader_is_evicted_and_the_writer_goes_on(
        ring_name: str, children: Children, caplog: pytest.LogCaptureFixture) -> None:
    capacity, reads, total = 64, 10, 20 * 64
    with pyseq.Ring.create(ring_name, capacity=capacity, slot_size=SLOT, reader_timeout=60) as ring:
        ready, read_some = children.event(), children.event()
        children.start("doomed", gating_reader_that_stops, ring_name, ready, read_some, reads)
        assert ready.wait(30)
        pid = children.pid("doomed")
        for s in range(1, reads + 1):
            ring.publish(MSG_TYPE, payload_of(s))
        assert read_some.wait(30)
        s = reads + 1
        while ring.try_publish(MSG_TYPE, payload_of(s)) is not None:
            s += 1
            assert s < total
        assert s == reads + capacity + 1, "the gating reader holds the writer exactly a ring ahead of it"
        [entry] = ring.readers()
        assert (entry["pid"], entry["gating"], entry["state"], entry["alive"]) == (pid, True, "active", True)
        assert ring.info()["eviction_count"] == 0

        killer = threading.Timer(0.3, children.kill, args=("doomed",))
        with caplog.at_level(logging.WARNING, logger="pyseq"):
            killer.start()
            try:
                t0 = time.monotonic()
                assert ring.publish(MSG_TYPE, payload_of(s), timeout=20) == s  # blocked, then evicts
                blocked = time.monotonic() - t0
            finally:
                killer.join(30)
        assert 0.25 <= blocked < 10, f"publish waited {blocked:.2f} s (reader_timeout is 60 s)"
        assert children.procs["doomed"].exitcode == -9
        assert ring.info()["eviction_count"] == 1
        [entry] = ring.readers()
        assert (entry["pid"], entry["state"], entry["alive"]) == (pid, "evicted", False)
        assert any("doomed" in r.getMessage() and "evict" in r.getMessage() for r in caplog.records)
        for s in range(s + 1, total + 1):
            assert ring.try_publish(MSG_TYPE, payload_of(s)) == s
        assert ring.published_sequence == total
        assert ring.info()["eviction_count"] == 1


# ---- (d) a gating reader alive but stuck is evicted after reader_timeout ------------------------------------


def try_publish_after_a_gating_reader_is_killed_setup(name: str, ready: Any) -> None:
    ring = pyseq.Ring.attach(name, timeout=30)
    reader = ring.reader("killed-before-reading", gating=True, start=1)
    ready.set()
    time.sleep(120)  # killed long before this
    reader.close()


def test_try_publish_evicts_a_dead_gating_reader_instead_of_returning_none(ring_name: str,
                                                                          children: Children) -> None:
    capacity = 8
    with pyseq.Ring.create(ring_name, capacity=capacity, slot_size=SLOT, reader_timeout=60) as ring:
        ready = children.event()
        children.start("doomed", try_publish_after_a_gating_reader_is_killed_setup, ring_name, ready)
        assert ready.wait(30)
        for s in range(1, capacity + 1):
            assert ring.try_publish(MSG_TYPE, payload_of(s)) == s
        assert ring.try_publish(MSG_TYPE, payload_of(capacity + 1)) is None
        children.kill("doomed")
        assert ring.try_publish(MSG_TYPE, payload_of(capacity + 1)) == capacity + 1
        assert ring.info()["eviction_count"] == 1


def stuck_gating_reader(name: str, ready: Any, wake: Any) -> dict[str, Any]:
    with pyseq.Ring.attach(name, timeout=30) as ring:
        reader = ring.reader("stuck", gating=True, start=1)
        ready.set()
        assert wake.wait(60), "never woken"
        try:
            m = reader.read(timeout=5)
            return {"error": None, "got": m.seq}
        except pyseq.PyseqError as e:
            return {"error": type(e).__name__, "message": str(e), "first_missed": getattr(e, "first_missed", None)}


def test_a_gating_reader_that_stops_moving_is_evicted_after_reader_timeout(
        ring_name: str, children: Children, caplog: pytest.LogCaptureFixture) -> None:
    capacity = 16
    with pyseq.Ring.create(ring_name, capacity=capacity, slot_size=SLOT, reader_timeout=0.5) as ring:
        ready, wake = children.event(), children.event()
        children.start("stuck", stuck_gating_reader, ring_name, ready, wake)
        assert ready.wait(30)
        for s in range(1, capacity + 1):
            ring.publish(MSG_TYPE, payload_of(s))
        assert ring.try_publish(MSG_TYPE, payload_of(capacity + 1)) is None
        with caplog.at_level(logging.WARNING, logger="pyseq"):
            t0 = time.monotonic()
            assert ring.publish(MSG_TYPE, payload_of(capacity + 1), timeout=20) == capacity + 1
            blocked = time.monotonic() - t0
        assert 0.5 <= blocked < 10, f"publish waited {blocked:.2f} s with reader_timeout 0.5 s"
        assert ring.info()["eviction_count"] == 1
        [entry] = ring.readers()
        assert (entry["name"], entry["state"], entry["alive"]) == ("stuck", "evicted", True)
        assert any("stuck" in r.getMessage() and "evict" in r.getMessage() for r in caplog.records)
        for s in range(capacity + 2, 4 * capacity + 1):
            assert ring.try_publish(MSG_TYPE, payload_of(s)) == s
        wake.set()
        got = children.result("stuck", timeout=30)
    # the evicted reader learns it was overtaken, and why, on its next read
    assert got["error"] in ("LappedError", "ReaderEvictedError"), got
    assert "evicted" in got["message"], got


def busy_gating_reader_that_heartbeats(name: str, ready: Any, busy_for: float) -> int:
    with pyseq.Ring.attach(name, timeout=30) as ring:
        reader = ring.reader("busy", gating=True, start=1)
        ready.set()
        end = time.monotonic() + busy_for
        while time.monotonic() < end:  # working on something long, and saying so
            reader.heartbeat()
            time.sleep(0.05)
        return reader.read(timeout=5).seq


def test_a_gating_reader_that_heartbeats_while_busy_is_not_evicted(ring_name: str, children: Children) -> None:
    """Issue 2, point 5: a gating reader is evicted when its process died or its heartbeat is stale.
    This one is alive and heartbeats: the writer waits its timeout and reports back-pressure."""
    capacity = 8
    with pyseq.Ring.create(ring_name, capacity=capacity, slot_size=SLOT, reader_timeout=0.5) as ring:
        ready = children.event()
        children.start("busy", busy_gating_reader_that_heartbeats, ring_name, ready, 3.0)
        assert ready.wait(30)
        for s in range(1, capacity + 1):
            ring.publish(MSG_TYPE, payload_of(s))
        with pytest.raises(pyseq.BackPressureError, match="busy"):
            ring.publish(MSG_TYPE, payload_of(capacity + 1), timeout=1.5)
        assert ring.info()["eviction_count"] == 0
        [entry] = ring.readers()
        assert entry["state"] == "active"
        assert children.result("busy", timeout=30) == 1


def gating_reader_that_reads_slowly(name: str, ready: Any, count: int, pause: float) -> list[int]:
    with pyseq.Ring.attach(name, timeout=30) as ring:
        reader = ring.reader("slow-but-moving", gating=True, start=1)
        ready.set()
        seqs = []
        while len(seqs) < count:
            seqs.append(reader.read(timeout=20).seq)
            time.sleep(pause)
        return seqs


def test_a_gating_reader_that_is_slow_but_moving_is_not_evicted(ring_name: str, children: Children) -> None:
    capacity, count = 8, 8 + 10
    with pyseq.Ring.create(ring_name, capacity=capacity, slot_size=SLOT, reader_timeout=1.0) as ring:
        ready = children.event()
        children.start("slow", gating_reader_that_reads_slowly, ring_name, ready, count, 0.2)
        assert ready.wait(30)
        t0 = time.monotonic()
        for s in range(1, count + 1):
            assert ring.publish(MSG_TYPE, payload_of(s), timeout=20) == s
        assert time.monotonic() - t0 > 1.5  # held back 10 reads of 0.2 s: longer than reader_timeout in all
        assert children.result("slow", timeout=30) == list(range(1, count + 1))
        assert ring.info()["eviction_count"] == 0


# ---- a gating reader that joins a running stream ----------------------------------------------------------


def publish_until_stopped(name: str, capacity: int, ready: Any, stop: Any) -> int:
    with pyseq.Ring.create(name, capacity=capacity, slot_size=SLOT, reader_timeout=60) as ring:
        ready.set()
        end = time.monotonic() + 60
        s = 0
        while not stop.is_set() and time.monotonic() < end:
            for _ in range(100):
                s = ring.publish(MSG_TYPE, payload_of(s + 1), timeout=30)
        return s


def test_a_gating_reader_joining_at_latest_is_never_lapped(ring_name: str, children: Children) -> None:
    """Gating means the writer never overwrites what the reader has not read: that holds from the
    moment ``reader(gating=True, start="latest")`` returns, even while the writer runs flat out."""
    ready, stop = children.event(), children.event()
    children.start("writer", publish_until_stopped, ring_name, 8, ready, stop)
    assert ready.wait(30)
    joined = lapped = 0
    first_lap: Optional[str] = None
    with pyseq.Ring.attach(ring_name) as ring:
        end = time.monotonic() + 4.0
        while time.monotonic() < end:
            reader = ring.reader("joins-late", gating=True, start="latest")
            try:
                for _ in range(3 * ring.capacity):
                    m = reader.read(timeout=5)
                    assert m.payload == payload_of(m.seq)
                joined += 1
            except pyseq.LappedError as e:
                lapped += 1
                first_lap = first_lap or str(e)
            finally:
                reader.close()
    stop.set()
    published = children.result("writer", timeout=30)
    print(f"\n{joined + lapped} gating readers joined a stream of {published} messages; {lapped} were lapped")
    assert joined > 0
    assert lapped == 0, f"{lapped} of {joined + lapped} gating readers were lapped; the first: {first_lap}"


# ---- (e) a reader overtaken while copying never returns torn data ---------------------------------------


def publish_flat_out(name: str, capacity: int, slot: int, ready: Any, stop: Any) -> dict[str, Any]:
    """Publish as fast as possible: message s has length s % (max_payload + 1), every payload byte and
    the message type equal s % 251, and the source is s."""
    with pyseq.Ring.create(name, capacity=capacity, slot_size=slot) as ring:
        top = ring.max_payload + 1
        patterns = [bytes([v]) * ring.max_payload for v in range(251)]
        publish = ring.publish
        ready.set()
        end = time.monotonic() + 60
        s = 1
        while not stop.is_set() and time.monotonic() < end:
            for _ in range(2000):
                v = s % 251
                publish(v, patterns[v][:s % top], source=s)
                s += 1
        return {"published": s - 1}


def check_message(seq: int, length: int, msg_type: int, source: int, payload: bytes, top: int) -> None:
    v = seq % 251
    if length != seq % top or msg_type != v or source != seq or payload != bytes([v]) * length:
        raise AssertionError(f"torn message: sequence {seq}, length {length} (expected {seq % top}), "
                             f"type {msg_type}, source {source}, payload bytes {sorted(set(payload))[:8]}")


def read_while_overtaken(name: str, how: str, seconds: float) -> dict[str, Any]:
    """Read for ``seconds``, then on until 1000 messages and 10 laps were seen (at most 20 s more)."""
    with pyseq.Ring.attach(name, timeout=30) as ring:
        reader = ring.reader("overtaken", start="latest")
        top = ring.max_payload + 1
        expected = reader.next_sequence
        messages = laps = missed = 0
        out = np.empty(ring.capacity, dtype=ring.dtype)
        start = time.monotonic()
        while True:
            elapsed = time.monotonic() - start
            if elapsed > seconds and (messages >= 1000 and laps >= 10 or elapsed > seconds + 20):
                break
            try:
                if how == "read":
                    m = reader.read(timeout=0.05)
                    if m.seq != expected:
                        raise AssertionError(f"expected sequence {expected}, got {m.seq}")
                    check_message(m.seq, len(m.payload), m.msg_type, m.source, m.payload, top)
                    expected += 1
                    messages += 1
                else:
                    batch = reader.read_batch(ring.capacity, timeout=0.05, out=out)
                    for row in batch:
                        seq, length = int(row["seq"]), int(row["length"])
                        if seq != expected:
                            raise AssertionError(f"expected sequence {expected}, got {seq}")
                        check_message(seq, length, int(row["msg_type"]), int(row["source"]),
                                      row["payload"][:length].tobytes(), top)
                        expected += 1
                    messages += len(batch)
            except pyseq.LappedError as e:
                if e.first_missed != expected or e.resume_at <= expected or e.missed != e.resume_at - expected:
                    raise AssertionError(f"bad lap report at {expected}: {e.first_missed}, {e.missed}, "
                                         f"{e.resume_at}") from None
                laps += 1
                missed += e.missed
                reader.skip_to(e.resume_at)
                expected = e.resume_at
            except pyseq.TimeoutError:
                continue
        return {"messages": messages, "laps": laps, "missed": missed, "last": expected - 1}


@pytest.mark.parametrize("how", ["read", "read_batch"])
def test_a_reader_overtaken_while_copying_never_returns_torn_data(ring_name: str, children: Children,
                                                                  how: str) -> None:
    capacity, slot = 4, 256
    ready, stop = children.event(), children.event()
    children.start("writer", publish_flat_out, ring_name, capacity, slot, ready, stop)
    assert ready.wait(30)
    children.start("reader", read_while_overtaken, ring_name, how, 3.0)
    try:
        got = children.result("reader", timeout=60)
    finally:
        stop.set()
    wrote = children.result("writer", timeout=30)
    print(f"\n{how}: writer published {wrote['published']}; the reader got {got['messages']} whole messages, "
          f"was lapped {got['laps']} times and missed {got['missed']}")
    assert got["messages"] > 0, got
    assert got["laps"] > 0, got
    assert got["last"] <= wrote["published"]
