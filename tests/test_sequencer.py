"""The sequencer with real processes and real shared memory: clients in their own processes submit
through their own inbound rings, one sequencer process stamps and publishes, readers in other processes
check every message.

Topology of the main test (the others are smaller cuts of it):

    client c0 ─┐                                           ┌─> reader r0 (gating, read_batch)
    client c1 ─┤  pyseq.<ring>.in.<client>   SEQUENCER      │
    client c2 ─┼──── (one writer each) ────>  (one writer) ─┤  pyseq.<ring>
    client c3 ─┘                                           └─> reader r1 (gating, read_batch)

The sequencer runs ``pyseq.Sequencer(...).run()`` in a child that turns SIGTERM into ``stop()``.  Every
child is SIGKILLed and joined after its test (the ``children`` fixture), every wait has a deadline, and
the ``ring`` fixture below also removes the inbound rings ``pyseq.<ring>.in.*`` a test leaves behind
(a sequencer that was killed cannot reclaim them; the tests of reclaiming look before the fixture
cleans).  Nothing asserts an absolute time or rate: latency is compared with a quiet run of the same
client in the same test, and detection times only with generous upper bounds.
"""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import signal
import struct
import time
from typing import Any, Callable, Optional

import numpy as np
import pytest

import pyseq
from childproc import SPAWN, Children, Deadline
from pyseq.sequencer import inbound_name, source_id

DATA = 1                                # the message type of every client message here
REC = np.dtype([("client", "<u4"), ("counter", "<u8"), ("t_ns", "<i8")])  # 20 bytes, packed
PACK = struct.Struct("<IQq")
assert PACK.size == REC.itemsize
SYSTEM = {pyseq.CLIENT_JOINED: "JOINED", pyseq.CLIENT_LEFT: "LEFT", pyseq.END_OF_STREAM: "END"}
SEQUENCER_LIFETIME_S = 280.0            # run(duration=...) as a last resort; the tests stop it long before


def wait_until(predicate: Callable[[], Any], seconds: float, what: str, step: float = 0.005) -> Any:
    deadline = Deadline(seconds, what)
    while True:
        value = predicate()
        if value:
            return value
        deadline.check()
        time.sleep(step)


def inbound_path(ring: str, client: str) -> str:
    return f"/dev/shm/pyseq.{inbound_name(ring, client)}"


def inbound_paths(ring: str) -> list[str]:
    return sorted(glob.glob(f"/dev/shm/pyseq.{glob.escape(inbound_name(ring, ''))}*"))


@pytest.fixture
def ring(ring_name: str, children: Children) -> Any:
    """The name of the sequenced ring; after the test every child is killed, then what a killed
    sequencer leaves beside its ring (``pyseq.<ring>.*``: the inbound rings) is removed too
    (``ring_name`` removes the sequenced ring itself)."""
    yield ring_name
    children.close()  # idempotent; the children fixture calls it again
    for path in glob.glob(f"/dev/shm/pyseq.{glob.escape(ring_name)}.*"):
        os.unlink(path)


# ---- child processes --------------------------------------------------------------------------------------


def sequencer_main(name: str, ready: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A sequencer until SIGTERM (then ``stop()``: drain, END_OF_STREAM, close); returns what it logged
    at WARNING and above.  ``max_park_ns`` in ``kwargs``: idle by back-off with that longest sleep."""
    logged: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            logged.append(f"{record.levelname} {record.name}: {record.getMessage()}")

    log = logging.getLogger("pyseq")
    log.addHandler(Keep(logging.WARNING))
    log.setLevel(logging.WARNING)
    if "max_park_ns" in kwargs:
        kwargs = dict(kwargs, idle=pyseq.BackoffIdle(max_park_ns=kwargs.pop("max_park_ns")))
    seq = pyseq.Sequencer(name, **kwargs)
    signal.signal(signal.SIGTERM, lambda signum, frame: seq.stop())
    ready.set()
    t0 = time.monotonic()
    seq.run(duration=SEQUENCER_LIFETIME_S)
    return {"log": logged, "seconds": time.monotonic() - t0}


def start_sequencer(children: Children, name: str, label: str = "sequencer", **kwargs: Any) -> int:
    ready = children.event()
    children.start(label, sequencer_main, name, ready, kwargs)
    if not ready.wait(60):
        children.result(label, timeout=1)  # its traceback, if it failed
        raise AssertionError("the sequencer did not start within 60 s")
    return children.pid(label)


def stop_sequencer(children: Children, label: str = "sequencer", timeout: float = 60) -> dict[str, Any]:
    os.kill(children.pid(label), signal.SIGTERM)
    result = children.result(label, timeout=timeout)
    assert children.join(label) == 0
    return result


def submitting_client(name: str, client: str, index: int, count: int, how: str) -> dict[str, Any]:
    """Connect, submit ``count`` messages (payload: client index, counter 0.., submit time), close."""
    c = pyseq.Client.connect(name, client, timeout=30)
    try:
        assert c.source == source_id(client)
        t0 = time.monotonic()
        if how == "submit":
            pack = PACK.pack
            submit = c.submit
            for i in range(count):
                submit(DATA, pack(index, i, 0), timeout=30)
        else:
            chunk = 1024
            recs = np.zeros(count, REC)
            recs["client"] = index
            recs["counter"] = np.arange(count)
            for i in range(0, count, chunk):
                c.submit_batch(DATA, recs[i:i + chunk], timeout=30)
        seconds = time.monotonic() - t0
        submitted = c.published_sequence - c.first_sequence + 1
    finally:
        c.close()
    return {"client": client, "submitted": submitted, "seconds": seconds}


def stream_checker(name: str, label: str, clients: list[str], per_client: int) -> dict[str, Any]:
    """A gating reader of the sequenced ring from sequence 1 to the end of the stream, with read_batch.

    Checks as it goes: sequences dense from 1; every client message has its client's source id and
    the next counter of that client; system messages are kept.  Returns the counts, the system
    messages and a digest of the whole stream (every frame field and the payload bytes)."""
    ring = pyseq.Ring.attach(name, timeout=30)
    try:
        reader = ring.reader(label, gating=True, start=1)
        source_of = np.array([source_id(c) for c in clients], dtype="<u4")
        next_counter = np.zeros(len(clients), dtype=np.int64)
        out = np.empty(4096, dtype=ring.dtype)
        width = ring.slot_size - pyseq.FRAME_LENGTH
        columns = np.arange(width)[None, :]
        digest = hashlib.blake2b()
        system: list[tuple[int, str, int, str]] = []
        expected = 1
        deadline = Deadline(200, f"reader {label}: the end of the stream")
        t0 = None
        while True:
            try:
                batch = reader.read_batch(len(out), timeout=0.5, out=out)
            except pyseq.EndOfStreamError:
                break
            n = len(batch)
            if n == 0:
                deadline.check()
                continue
            if t0 is None:
                t0 = time.monotonic()
            seqs = batch["seq"]
            if not (seqs == np.arange(expected, expected + n)).all():
                bad = int(np.nonzero(seqs != np.arange(expected, expected + n))[0][0])
                raise AssertionError(f"{label}: sequence {int(seqs[bad])} where {expected + bad} was due")
            expected += n
            types = batch["msg_type"]
            is_system = types >= pyseq.SYSTEM_FIRST
            for row in batch[is_system]:
                text = bytes(row["payload"][:row["length"]]).decode()
                system.append((int(row["seq"]), SYSTEM.get(int(row["msg_type"]), hex(int(row["msg_type"]))),
                               int(row["source"]), text))
            data = batch[~is_system]
            if len(data):
                if not ((data["msg_type"] == DATA).all() and (data["length"] == REC.itemsize).all()):
                    raise AssertionError(f"{label}: unexpected frame fields near sequence {int(seqs[0])}")
                recs = np.ascontiguousarray(data["payload"][:, :REC.itemsize]).view(REC).reshape(-1)
                if (recs["client"] >= len(clients)).any():
                    raise AssertionError(f"{label}: a client index out of range near sequence {int(seqs[0])}")
                if not (data["source"] == source_of[recs["client"]]).all():
                    raise AssertionError(f"{label}: a message with the wrong source near sequence {int(seqs[0])}")
                for c in range(len(clients)):
                    got = recs["counter"][recs["client"] == c]
                    want = np.arange(next_counter[c], next_counter[c] + len(got))
                    if not (got == want).all():
                        at = int(np.nonzero(got != want)[0][0])
                        raise AssertionError(f"{label}: client {clients[c]} counter {int(got[at])} where "
                                             f"{int(want[at])} was due")
                    next_counter[c] += len(got)
            rows = batch.copy()
            rows["payload"][columns >= rows["length"][:, None]] = 0  # bytes past the message are not its
            digest.update(rows.tobytes())
        return {"label": label, "last_seq": expected - 1, "per_client": next_counter.tolist(), "system": system,
                "digest": digest.hexdigest(), "seconds": time.monotonic() - (t0 or time.monotonic())}
    finally:
        ring.close()


# ---- 1. many clients, two readers: exactly once, dense, per-client order ---------------------------------


@pytest.mark.parametrize("how", ["submit", "submit_batch"])
def test_four_clients_send_a_hundred_thousand_each_and_two_readers_see_every_message_once_in_one_dense_order(
        ring: str, children: Children, how: str) -> None:
    clients, per_client = ["c0", "c1", "c2", "c3"], 100_000
    t0 = time.monotonic()
    start_sequencer(children, ring)
    for r in ("r0", "r1"):
        children.start(r, stream_checker, ring, r, clients, per_client)
    with pyseq.Ring.attach(ring, timeout=10) as seq_ring:
        wait_until(lambda: sum(r["state"] == "active" for r in seq_ring.readers()) == 2, 60,
                   "the two readers registering")
    t_clients = time.monotonic()
    for i, c in enumerate(clients):
        children.start(c, submitting_client, ring, c, i, per_client, how)
    sent = [children.result(c, timeout=150) for c in clients]
    wait_until(lambda: not inbound_paths(ring), 20, "every client leaving (its inbound ring removed)")
    t_sent = time.monotonic()
    stop_sequencer(children)
    readers = [children.result(r, timeout=60) for r in ("r0", "r1")]
    total = time.monotonic() - t0

    assert [s["submitted"] for s in sent] == [per_client] * len(clients)
    r0, r1 = readers
    n_system = 2 * len(clients) + 1
    for r in readers:
        assert r["per_client"] == [per_client] * len(clients), r["label"]
        assert r["last_seq"] == len(clients) * per_client + n_system, r["label"]
        assert len(r["system"]) == n_system, r["system"]
        assert r["system"][-1][:2] == (r["last_seq"], "END"), r["system"][-1]
        for c in clients:
            mine = [(kind, text) for _, kind, source, text in r["system"] if source == source_id(c)]
            assert mine == [("JOINED", c), ("LEFT", c)], (c, r["system"])
    assert r0["system"] == r1["system"]
    assert r0["digest"] == r1["digest"], "the two readers saw different streams"
    for c in clients:
        assert children.join(c) == 0
    for r in ("r0", "r1"):
        assert children.join(r) == 0
    rate = len(clients) * per_client / (t_sent - t_clients)
    print(f"\n{len(clients)} clients x {per_client} ({how}) -> sequencer -> 2 gating readers: "
          f"clients {', '.join('%.2f' % s['seconds'] for s in sent)} s, readers "
          f"{r0['seconds']:.2f}/{r1['seconds']:.2f} s, end to end {rate / 1e3:.0f} k msg/s with process starts; "
          f"whole test {total:.1f} s")


# ---- 2. a flooding client is limited; a well-behaved one is not slowed ------------------------------------


def paced_client(name: str, client: str, index: int, count: int, interval: float, go: Optional[Any],
                 done: Optional[Any]) -> dict[str, Any]:
    """Connect; after ``go`` (if any), submit ``count`` messages ``interval`` s apart, each carrying its
    submit time; close."""
    c = pyseq.Client.connect(name, client, timeout=30)
    try:
        if go is not None:
            assert go.wait(60), "never told to go"
        start = time.monotonic()
        for i in range(count):
            pause = start + i * interval - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            c.submit(DATA, PACK.pack(index, i, time.time_ns()), timeout=30)
        return {"submitted": c.published_sequence - c.first_sequence + 1}
    finally:
        if done is not None:
            done.set()
        c.close()


def flooding_client(name: str, client: str, index: int, capacity: int, min_seconds: float, flooding: Any,
                    until: Any) -> dict[str, Any]:
    """Submit as fast as the sequencer lets it for at least ``min_seconds`` and until ``until`` is set:
    try_submit, and when that is refused (back-pressure) count it and wait in submit, by the idle
    strategy, as a flooding client does.  (A client spinning on try_submit would also take a whole
    CPU from the others: on a 2-CPU machine that measures the scheduler, not the sequencer.)"""
    c = pyseq.Client.connect(name, client, capacity=capacity, timeout=30)
    try:
        accepted = refused = i = 0
        t_start = time.time_ns()
        flooding.set()
        end = time.monotonic() + min_seconds
        give_up = time.monotonic() + 60
        try_submit, submit, pack = c.try_submit, c.submit, PACK.pack
        while True:
            for _ in range(256):
                if try_submit(DATA, pack(index, i, 0)) is None:
                    refused += 1
                    submit(DATA, pack(index, i, 0), timeout=30)
                accepted += 1
                i += 1
            now = time.monotonic()
            if now >= end and until.is_set() or now >= give_up:
                break
        t_end = time.time_ns()
        [cursor] = [r for r in c.readers() if r["name"] == pyseq.sequencer.SEQUENCER_CURSOR]
        return {"t_start_ns": t_start, "t_end_ns": t_end, "accepted": accepted, "refused": refused,
                "full_count": c.info()["full_count"], "held_count": cursor["held_count"]}
    finally:
        c.close()


def latency_reader(name: str, ready: Any, clients: list[str], max_park_ns: int) -> dict[str, Any]:
    """Read message by message to the end of the stream; per client: the counters seen, the latency
    (time seen here minus the submit time in the payload) and the sequencing timestamps."""
    ring = pyseq.Ring.attach(name, timeout=30)
    try:
        reader = ring.reader("latency", start="latest", idle=pyseq.BackoffIdle(max_park_ns=max_park_ns))
        ready.set()
        by_source = {source_id(c): c for c in clients}
        seen: dict[str, dict[str, list[int]]] = {c: {"counter": [], "latency_ns": [], "sequenced_ns": []}
                                                 for c in clients}
        deadline = Deadline(200, "the latency reader: end of stream")
        while True:
            try:
                m = reader.read(timeout=0.5)
            except pyseq.TimeoutError:
                deadline.check()
                continue
            except pyseq.EndOfStreamError:
                break
            now = time.time_ns()
            if m.msg_type != DATA:
                continue
            client, counter, t_ns = PACK.unpack(m.payload)
            mine = seen[by_source[m.source]]
            mine["counter"].append(counter)
            mine["sequenced_ns"].append(m.timestamp_ns)
            if t_ns:
                mine["latency_ns"].append(now - t_ns)
        return seen
    finally:
        ring.close()


def test_a_flooding_client_is_held_to_its_rate_while_a_paced_client_loses_nothing_and_keeps_its_quiet_latency(
        ring: str, children: Children) -> None:
    rate, burst, count, interval = 2_000, 100, 500, 0.003
    # back-off whose longest sleep is 50 us (not 1 ms) in the sequencer and the reader, so the quiet
    # latency is the path's and not mostly the idle sleep's; still no busy-spin on two cores
    max_park_ns = 50_000
    limits = pyseq.Limits(clients={"flood": pyseq.Limit(rate=rate, burst=burst, capacity=256)})
    start_sequencer(children, ring, limits=limits, max_park_ns=max_park_ns)
    ready = children.event()
    children.start("reader", latency_reader, ring, ready, ["quiet", "good", "flood"], max_park_ns)
    assert ready.wait(60)

    children.start("quiet", paced_client, ring, "quiet", 0, count, interval, None, None)  # alone
    assert children.result("quiet", timeout=60)["submitted"] == count

    flooding, good_done = children.event(), children.event()
    children.start("good", paced_client, ring, "good", 1, count, interval, flooding, good_done)
    children.start("flood", flooding_client, ring, "flood", 2, 256, 2.0, flooding, good_done)
    assert children.result("good", timeout=90)["submitted"] == count
    flood = children.result("flood", timeout=90)
    wait_until(lambda: not inbound_paths(ring), 20, "every client leaving (the flood's backlog drained)")
    stop_sequencer(children)
    seen = children.result("reader", timeout=60)

    for c in ("quiet", "good"):
        assert seen[c]["counter"] == list(range(count)), f"{c}: messages lost or out of order"
    assert seen["flood"]["counter"] == list(range(flood["accepted"])), "the flood's own messages: lost or reordered"
    assert flood["refused"] > 0 and flood["full_count"] > 0, flood
    assert flood["held_count"] > 0, "the sequencer counts what its rate limit held back (held_count)"
    window_s = (flood["t_end_ns"] - flood["t_start_ns"]) / 1e9
    in_window = sum(flood["t_start_ns"] <= t <= flood["t_end_ns"] for t in seen["flood"]["sequenced_ns"])
    allowed = burst + rate * window_s
    quiet_p50 = float(np.percentile(seen["quiet"]["latency_ns"], 50))
    good_p50 = float(np.percentile(seen["good"]["latency_ns"], 50))
    good_p99 = float(np.percentile(seen["good"]["latency_ns"], 99))
    quiet_p99 = float(np.percentile(seen["quiet"]["latency_ns"], 99))
    print(f"\nflood: {flood['accepted']} accepted, {flood['refused']} refused (try_submit None), ring full "
          f"{flood['full_count']} times; sequenced during the {window_s:.2f} s flood: {in_window} "
          f"(rate x time + burst = {allowed:.0f}); paced client latency p50/p99: quiet "
          f"{quiet_p50 / 1e3:.0f}/{quiet_p99 / 1e3:.0f} us, beside the flood "
          f"{good_p50 / 1e3:.0f}/{good_p99 / 1e3:.0f} us")
    assert 0.75 <= in_window / allowed <= 1.25, (in_window, allowed)
    assert good_p50 / quiet_p50 < 5, (good_p50, quiet_p50)


def test_a_client_connected_without_a_capacity_gets_the_inbound_capacity_configured_for_its_name(
        ring: str, children: Children) -> None:
    # rate 1 msg/s, burst 1: the sequencer takes almost nothing, so what try_submit accepts is what the
    # client's inbound ring holds
    small = 64
    limits = pyseq.Limits(clients={"small": pyseq.Limit(rate=1, burst=1, capacity=small)})
    start_sequencer(children, ring, limits=limits)
    client = pyseq.Client.connect(ring, "small", timeout=10)
    try:
        accepted = sum(client.try_submit(DATA, PACK.pack(0, i, 0)) is not None for i in range(4 * small))
    finally:
        client.close()
    assert accepted <= small + 2, f"the client held {accepted} messages; its configured capacity is {small}"


# ---- 3. a client killed mid-stream ------------------------------------------------------------------------


def endless_client(name: str, client: str, index: int, capacity: int, connected: Any, counter: Any) -> None:
    """Submit counters 0, 1, ... as fast as the inbound ring takes them until killed; ``counter`` is
    the number of submits that returned."""
    c = pyseq.Client.connect(name, client, capacity=capacity, timeout=30)
    connected.set()
    end = time.monotonic() + 120
    i = 0
    while time.monotonic() < end:
        c.submit(DATA, PACK.pack(index, i, 0), timeout=30)
        i += 1
        counter.value = i
    c.close()


def read_until(reader: pyseq.Reader, stop: Callable[[pyseq.Message], bool], seconds: float,
               what: str) -> list[pyseq.Message]:
    """Messages from ``reader`` up to and including the first for which ``stop`` is true."""
    got: list[pyseq.Message] = []
    deadline = Deadline(seconds, what)
    while True:
        try:
            m = reader.read(timeout=min(0.2, max(deadline.left, 0.01)))
        except pyseq.TimeoutError:
            deadline.check()
            continue
        got.append(m)
        if stop(m):
            return got


def is_system(kind: int, client: str) -> Callable[[pyseq.Message], bool]:
    return lambda m: m.msg_type == kind and m.source == source_id(client) and m.payload == client.encode()


def test_a_client_killed_mid_stream_has_every_message_it_submitted_sequenced_then_leaves_and_its_ring_is_reclaimed(
        ring: str, children: Children) -> None:
    limits = pyseq.Limits(clients={"victim": pyseq.Limit(rate=5_000, burst=100)})
    start_sequencer(children, ring, limits=limits)
    with pyseq.Ring.attach(ring, timeout=10) as seq_ring:
        reader = seq_ring.reader("test", start=1)
        connected, counter = children.event(), SPAWN.RawValue("q", 0)
        children.start("victim", endless_client, ring, "victim", 0, 1024, connected, counter)
        assert connected.wait(60)
        with pyseq.Ring.attach(inbound_name(ring, "victim"), timeout=10) as inbound:
            wait_until(lambda: counter.value > 3_000, 60, "the victim submitting")
            children.kill("victim")
            assert children.procs["victim"].exitcode == -signal.SIGKILL
            submitted = inbound.published_sequence - inbound.first_sequence + 1
            [cursor] = [r for r in inbound.readers() if r["name"] == pyseq.sequencer.SEQUENCER_CURSOR]
            backlog = inbound.published_sequence - cursor["sequence"]
        assert counter.value <= submitted <= counter.value + 1
        assert backlog > 0, "the victim should die with messages still in its ring (its rate limit holds them)"

        got = read_until(reader, is_system(pyseq.CLIENT_LEFT, "victim"), 30, "CLIENT_LEFT of the victim")
        counters = [PACK.unpack(m.payload)[1] for m in got if m.msg_type == DATA]
        assert counters == list(range(submitted)), f"{len(counters)} of {submitted} sequenced"
        assert all(m.source == source_id("victim") for m in got if m.msg_type == DATA)
        wait_until(lambda: not os.path.exists(inbound_path(ring, "victim")), 5, "the victim's ring removed")

        assert children.procs["sequencer"].is_alive()
        again = pyseq.Client.connect(ring, "victim", timeout=10)  # the name is free again
        try:
            again.submit(DATA, PACK.pack(0, 10**9, 0), timeout=10)
        finally:
            again.close()
        got = read_until(reader, is_system(pyseq.CLIENT_LEFT, "victim"), 30, "the second victim leaving")
        assert [(m.msg_type, m.source) for m in got] == [(pyseq.CLIENT_JOINED, source_id("victim")),
                                                         (DATA, source_id("victim")),
                                                         (pyseq.CLIENT_LEFT, source_id("victim"))]
        assert PACK.unpack(got[1].payload)[1] == 10**9
        reader.close()
    stop_sequencer(children)


# ---- 4. the sequencer killed or stopped --------------------------------------------------------------------


def kill_sequencer_after(children: Children, delay: float) -> float:
    time.sleep(delay)
    t = time.monotonic()
    children.kill("sequencer")  # SIGKILL and reap (a zombie's pid still answers kill(pid, 0))
    return t


@pytest.mark.parametrize("stale_after", [None, 0.5])
def test_a_reader_gets_end_of_stream_soon_after_the_sequencer_is_killed(
        ring: str, children: Children, stale_after: Optional[float]) -> None:
    start_sequencer(children, ring)
    with pyseq.Ring.attach(ring, timeout=10) as seq_ring:
        reader = seq_ring.reader("test", start="latest", stale_after=stale_after)
        with pytest.raises(pyseq.TimeoutError):
            reader.read(timeout=0.3)  # alive and beating: nothing to read, no error
        killed = kill_sequencer_after(children, 0)
        with pytest.raises(pyseq.EndOfStreamError):
            reader.read(timeout=10)
        detected = time.monotonic() - killed
        reader.close()
    assert children.procs["sequencer"].exitcode == -signal.SIGKILL
    assert detected < 2.0, f"the end of the stream took {detected:.2f} s to see"


def test_read_batch_gets_end_of_stream_soon_after_the_sequencer_is_killed(ring: str, children: Children) -> None:
    start_sequencer(children, ring)
    with pyseq.Ring.attach(ring, timeout=10) as seq_ring:
        reader = seq_ring.reader("test", start="latest", stale_after=0.5)
        assert len(reader.read_batch(16, timeout=0.3)) == 0
        killed = kill_sequencer_after(children, 0)
        with pytest.raises(pyseq.EndOfStreamError):
            reader.read_batch(16, timeout=10)
        detected = time.monotonic() - killed
        reader.close()
    assert detected < 2.0, f"the end of the stream took {detected:.2f} s to see"


def submit_until_error(client: pyseq.Client, seconds: float, how: str = "submit") -> tuple[BaseException, int]:
    """Submit every 2 ms until an exception (returned, with the number of submits before it).  At that
    pace a 4096-slot inbound ring that nobody drains fills in about 8 s: a submit that raises only
    when the ring is full shows up as a detection time of about 8 s."""
    deadline = Deadline(seconds, "submit raising")
    n = 0
    while True:
        try:
            if how == "submit":
                client.submit(DATA, PACK.pack(0, n, 0), timeout=seconds)
            elif how == "try_submit":
                client.try_submit(DATA, PACK.pack(0, n, 0))
            else:
                client.submit_batch(DATA, np.zeros(1, REC), timeout=seconds)
        except Exception as e:  # noqa: BLE001 - the caller checks which
            return e, n
        n += 1
        deadline.check()
        time.sleep(0.002)


@pytest.mark.parametrize("how", ["submit", "try_submit", "submit_batch"])
def test_a_clients_submit_raises_sequencer_stopped_soon_after_the_sequencer_is_killed(
        ring: str, children: Children, how: str) -> None:
    start_sequencer(children, ring)
    client = pyseq.Client.connect(ring, "alice", watch_interval=0.05, stale_after=0.5, timeout=10)
    try:
        for i in range(10):
            client.submit(DATA, PACK.pack(0, i, 0), timeout=5)
        killed = kill_sequencer_after(children, 0.1)
        error, _ = submit_until_error(client, 15, how)
        detected = time.monotonic() - killed
    finally:
        client.close()
    assert isinstance(error, pyseq.SequencerStoppedError), repr(error)
    assert detected < 3.0, f"submit noticed the dead sequencer after {detected:.2f} s"


@pytest.mark.parametrize("how", ["read", "read_batch", "iterate"])
def test_a_reader_with_stale_after_gets_writer_stalled_when_the_sequencer_is_sigstopped(
        ring: str, children: Children, how: str) -> None:
    pid = start_sequencer(children, ring)
    with pyseq.Ring.attach(ring, timeout=10) as seq_ring:
        reader = seq_ring.reader("test", start="latest", stale_after=0.5)
        os.kill(pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(pyseq.WriterStalledError):
                if how == "read":
                    reader.read(timeout=8)
                elif how == "read_batch":
                    reader.read_batch(16, timeout=8)
                else:
                    deadline = Deadline(8, "iteration raising")
                    for _ in reader:
                        deadline.check()
            detected = time.monotonic() - t0
        finally:
            os.kill(pid, signal.SIGCONT)
        reader.close()
    assert detected < 3.0, f"the stall took {detected:.2f} s to see (stale_after 0.5 s)"
    stop_sequencer(children)


@pytest.mark.parametrize("how", ["submit", "submit_batch"])
def test_a_clients_submit_raises_sequencer_stopped_when_the_sequencer_is_sigstopped(
        ring: str, children: Children, how: str) -> None:
    pid = start_sequencer(children, ring)
    client = pyseq.Client.connect(ring, "alice", watch_interval=0.05, stale_after=0.5, timeout=10)
    try:
        for i in range(10):
            client.submit(DATA, PACK.pack(0, i, 0), timeout=5)
        os.kill(pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            error, _ = submit_until_error(client, 15, how)
            detected = time.monotonic() - t0
        finally:
            os.kill(pid, signal.SIGCONT)
    finally:
        client.close()
    assert isinstance(error, pyseq.SequencerStoppedError), repr(error)
    assert detected < 3.0, f"submit noticed the stopped sequencer after {detected:.2f} s (stale_after 0.5 s)"
    stop_sequencer(children)


def test_a_client_blocked_on_a_full_inbound_ring_raises_sequencer_stopped_when_the_sequencer_is_killed(
        ring: str, children: Children) -> None:
    limits = pyseq.Limits(clients={"alice": pyseq.Limit(rate=1, burst=1)})  # the ring fills and stays full
    start_sequencer(children, ring, limits=limits)
    client = pyseq.Client.connect(ring, "alice", capacity=16, watch_interval=0.05, stale_after=0.5, timeout=10)
    try:
        accepted = sum(client.try_submit(DATA, PACK.pack(0, i, 0)) is not None for i in range(64))
        assert accepted < 64, "the ring should be full"
        killed = kill_sequencer_after(children, 0.1)
        with pytest.raises(pyseq.SequencerStoppedError):
            client.submit(DATA, PACK.pack(0, 99, 0), timeout=10)
        detected = time.monotonic() - killed
    finally:
        client.close()
    assert detected < 3.0, f"a blocked submit noticed the dead sequencer after {detected:.2f} s"


def test_a_reader_gets_end_of_stream_soon_after_the_sequencer_is_killed_even_before_its_parent_reaps_it(
        ring: str, children: Children) -> None:
    pid = start_sequencer(children, ring)
    with pyseq.Ring.attach(ring, timeout=10) as seq_ring:
        reader = seq_ring.reader("test", start="latest")
        os.kill(pid, signal.SIGKILL)  # dead, but a zombie until children.kill/join reaps it
        killed = time.monotonic()
        wait_until(lambda: not pyseq.ring.pid_alive(pid), 5, "the sequencer dying")
        try:
            with pytest.raises(pyseq.EndOfStreamError):
                reader.read(timeout=8)
            detected = time.monotonic() - killed
        finally:
            reader.close()
            children.kill("sequencer")
    assert detected < 2.0, f"the end of the stream took {detected:.2f} s to see (the read's whole timeout)"


def doomed_gating_reader(name: str, ready: Any) -> None:
    ring = pyseq.Ring.attach(name, timeout=30)
    reader = ring.reader("doomed", gating=True, start=1)
    ready.set()
    time.sleep(120)  # killed long before this
    reader.close()


def test_a_gating_reader_of_the_sequenced_ring_killed_by_sigkill_is_evicted_and_the_sequencer_goes_on(
        ring: str, children: Children) -> None:
    capacity, count = 1024, 3_000
    start_sequencer(children, ring, capacity=capacity)
    ready = children.event()
    children.start("doomed", doomed_gating_reader, ring, ready)
    assert ready.wait(60)
    children.kill("doomed")
    client = pyseq.Client.connect(ring, "alice", timeout=10)
    try:
        with pyseq.Ring.attach(ring, timeout=10) as seq_ring:
            recs = np.zeros(count, REC)
            recs["counter"] = np.arange(count)
            client.submit_batch(DATA, recs, timeout=10)  # fits the inbound ring: never blocks
            give_up = time.monotonic() + 10
            while seq_ring.published_sequence < count + 1 and time.monotonic() < give_up:
                time.sleep(0.01)
            published, evictions = seq_ring.published_sequence, seq_ring.info()["eviction_count"]
    finally:
        client.close()
    assert published == count + 1, \
        f"the sequencer stopped at sequence {published} of {count + 1} (capacity {capacity}): the dead " \
        f"gating reader holds it; evictions: {evictions}"
    assert evictions == 1
    stopped = stop_sequencer(children)
    assert any("doomed" in line and "evict" in line for line in stopped["log"]), stopped["log"]


# ---- 5. clean shutdown ------------------------------------------------------------------------------------


def backlog_client(name: str, client: str, count: int, capacity: int, go: Optional[Any], submitted: Any,
                   hold: Optional[Any]) -> int:
    """After ``go`` (None: at once), submit ``count`` messages at once (a rate limit, or a stopped
    sequencer, keeps them in the inbound ring), say so, then stay connected until ``hold`` is set
    (None: close at once)."""
    c = pyseq.Client.connect(name, client, capacity=capacity, timeout=30)
    try:
        if go is not None:
            assert go.wait(60)
        for i in range(count):
            c.submit(DATA, PACK.pack(0, i, 0), timeout=30)
        submitted.set()
        if hold is not None:
            assert hold.wait(60)
        return count
    finally:
        c.close()


def read_to_the_end(reader: pyseq.Reader, seconds: float) -> list[pyseq.Message]:
    got = []
    deadline = Deadline(seconds, "reading to the end of the stream")
    for m in reader:  # ends at the end of the stream
        got.append(m)
        if len(got) % 256 == 0:
            deadline.check()
    return got


@pytest.mark.parametrize("rate", [0, 500], ids=["unlimited", "rate-limited"])
def test_sigterm_drains_the_inbound_rings_then_end_of_stream_is_the_last_message_and_readers_end(
        ring: str, children: Children, rate: int) -> None:
    count = 3_000
    limits = pyseq.Limits(default=pyseq.Limit(rate=rate, burst=10))
    pid = start_sequencer(children, ring, limits=limits)
    with pyseq.Ring.attach(ring, timeout=10) as seq_ring:
        reader = seq_ring.reader("test", start=1)
        go, submitted, hold = children.event(), children.event(), children.event()
        children.start("client", backlog_client, ring, "alice", count, 4096, go, submitted, hold)
        wait_until(lambda: seq_ring.published_sequence >= 1, 60, "the client joining")
        if rate == 0:  # no rate limit: stop the sequencer while the client fills its ring
            os.kill(pid, signal.SIGSTOP)
        go.set()
        try:
            assert submitted.wait(60)
            with pyseq.Ring.attach(inbound_name(ring, "alice")) as inbound:
                [cursor] = [r for r in inbound.readers() if r["name"] == pyseq.sequencer.SEQUENCER_CURSOR]
                backlog = inbound.published_sequence - cursor["sequence"]
            os.kill(pid, signal.SIGTERM)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert backlog > count // 2, f"only {backlog} messages were left in the inbound ring at SIGTERM"
        stopped = children.result("sequencer", timeout=30)
        got = read_to_the_end(reader, 30)
        with pytest.raises(pyseq.EndOfStreamError):
            reader.read(timeout=5)
        with pytest.raises(pyseq.EndOfStreamError):
            reader.read_batch(16, timeout=5)
        reader.close()
    hold.set()
    assert children.result("client", timeout=30) == count
    counters = [PACK.unpack(m.payload)[1] for m in got if m.msg_type == DATA]
    assert counters == list(range(count)), f"{len(counters)} of {count} sequenced before the end; " \
                                           f"the sequencer logged {stopped['log']}"
    assert got[-1].msg_type == pyseq.END_OF_STREAM
    assert [m.seq for m in got] == list(range(1, len(got) + 1))
    assert stopped["log"] == [], "a clean stop with everything drained warns about nothing"


def test_sigterm_after_a_client_closed_with_a_backlog_sequences_it_and_removes_the_clients_ring(
        ring: str, children: Children) -> None:
    count = 500
    limits = pyseq.Limits(default=pyseq.Limit(rate=1_000, burst=10))  # half a second of backlog
    start_sequencer(children, ring, limits=limits)
    with pyseq.Ring.attach(ring, timeout=10) as seq_ring:
        reader = seq_ring.reader("test", start=1)
        submitted = children.event()
        children.start("client", backlog_client, ring, "alice", count, 1024, None, submitted, None)
        assert children.result("client", timeout=60) == count
        assert children.join("client") == 0
        stopped = stop_sequencer(children)
        got = read_to_the_end(reader, 30)
        reader.close()
    assert [PACK.unpack(m.payload)[1] for m in got if m.msg_type == DATA] == list(range(count)), stopped["log"]
    assert not os.path.exists(inbound_path(ring, "alice")), "the closed client's inbound ring was left behind"


def test_a_sequencer_restarted_after_a_clean_stop_does_not_sequence_again_what_its_predecessor_sequenced(
        ring: str, children: Children) -> None:
    """The first sequencer sequences alice's ten messages and stops (END_OF_STREAM); alice closes after
    it, so nobody removes her inbound ring.  The second sequencer continues the stream (first_sequence
    after the first one's last) and must not publish alice's messages a second time."""
    start_sequencer(children, ring, label="first")
    with pyseq.Ring.attach(ring, timeout=10) as first_ring:
        reader = first_ring.reader("test", start=1)
        alice = pyseq.Client.connect(ring, "alice", timeout=10)
        try:
            for i in range(10):
                alice.submit(DATA, PACK.pack(0, i, 0), timeout=5)
            stop_sequencer(children, "first")
        finally:
            alice.close()
        first = read_to_the_end(reader, 30)
        reader.close()
    assert [PACK.unpack(m.payload)[1] for m in first if m.msg_type == DATA] == list(range(10))
    assert first[-1].msg_type == pyseq.END_OF_STREAM

    start_sequencer(children, ring, label="second", first_sequence=first[-1].seq + 1)
    with pyseq.Ring.attach(ring, timeout=10) as second_ring:
        reader = second_ring.reader("test", start="earliest")
        bob = pyseq.Client.connect(ring, "bob", timeout=10)
        try:
            bob.submit(DATA, PACK.pack(1, 0, 0), timeout=5)
        finally:
            bob.close()
        second = read_until(reader, is_system(pyseq.CLIENT_LEFT, "bob"), 30, "bob leaving")
        reader.close()
    stop_sequencer(children, "second")
    again = [PACK.unpack(m.payload)[1] for m in second if m.msg_type == DATA and m.source == source_id("alice")]
    assert again == [], f"alice's messages {again} were sequenced a second time, at sequences " \
                        f"{[m.seq for m in second if m.msg_type == DATA and m.source == source_id('alice')]}"


# ---- 6. client names, joining and leaving -------------------------------------------------------------------


def holding_client(name: str, client: str, connected: Any, release: Any) -> None:
    c = pyseq.Client.connect(name, client, timeout=30)
    try:
        connected.set()
        assert release.wait(60)
    finally:
        c.close()


def test_a_client_name_in_use_by_a_live_process_is_refused(ring: str, children: Children) -> None:
    start_sequencer(children, ring)
    connected, release = children.event(), children.event()
    children.start("holder", holding_client, ring, "alice", connected, release)
    assert connected.wait(60)
    with pytest.raises(pyseq.ClientNameInUseError, match="alice"):
        pyseq.Client.connect(ring, "alice", timeout=5)
    assert os.path.exists(inbound_path(ring, "alice")), "the refused connect must not remove the holder's ring"
    other = pyseq.Client.connect(ring, "bob", timeout=10)  # the sequencer still takes others
    other.close()
    release.set()
    children.result("holder", timeout=30)
    stop_sequencer(children)


def test_connect_with_no_sequenced_ring_raises_sequencer_not_running_at_once(ring: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(pyseq.SequencerNotRunningError):
        pyseq.Client.connect(ring, "alice", timeout=10)
    assert time.monotonic() - t0 < 1.0
    assert not inbound_paths(ring)


@pytest.mark.parametrize("end", ["killed", "stopped"])
def test_connect_to_a_ring_whose_sequencer_is_gone_raises_sequencer_not_running_at_once(
        ring: str, children: Children, end: str) -> None:
    start_sequencer(children, ring)
    if end == "killed":
        children.kill("sequencer")
    else:
        stop_sequencer(children)
    assert os.path.exists(f"/dev/shm/pyseq.{ring}")
    t0 = time.monotonic()
    with pytest.raises(pyseq.SequencerNotRunningError):
        pyseq.Client.connect(ring, "alice", timeout=10)
    assert time.monotonic() - t0 < 1.0
    assert not inbound_paths(ring), "a refused connect leaves no inbound ring behind"


@pytest.mark.parametrize("bad", ["", "a.b", "a/b", ".hidden", "-dash", "a b", "é", "x" * 200, 42, None])
def test_a_bad_client_name_is_refused_with_ring_name_error(ring: str, children: Children, bad: Any) -> None:
    start_sequencer(children, ring)
    with pytest.raises(pyseq.RingNameError):
        pyseq.Client.connect(ring, bad, timeout=5)
    assert not inbound_paths(ring)
    stop_sequencer(children)


def join_submit_leave(name: str, client: str, index: int, count: int) -> int:
    c = pyseq.Client.connect(name, client, timeout=30)
    try:
        for i in range(count):
            c.submit(DATA, PACK.pack(index, i, 0), timeout=10)
    finally:
        c.close()
    return count


def test_clients_join_and_leave_while_the_sequencer_runs_and_the_stream_says_so_with_their_source(
        ring: str, children: Children) -> None:
    names, count = ["a", "b", "c", "a"], 5  # "a" comes back after it left
    start_sequencer(children, ring)
    with pyseq.Ring.attach(ring, timeout=10) as seq_ring:
        reader = seq_ring.reader("test", start=1)
        stay = pyseq.Client.connect(ring, "stay", timeout=10)  # connected the whole time
        try:
            for k, name in enumerate(names):
                label = f"{name}{k}"
                children.start(label, join_submit_leave, ring, name, k, count)
                assert children.result(label, timeout=60) == count
                stay.submit(DATA, PACK.pack(99, k, 0), timeout=5)
                got = read_until(reader, is_system(pyseq.CLIENT_LEFT, name), 30, f"{label} leaving")
                mine = [m for m in got if m.source == source_id(name)]
                assert [m.msg_type for m in mine] == [pyseq.CLIENT_JOINED] + [DATA] * count + [pyseq.CLIENT_LEFT]
                assert mine[0].payload == mine[-1].payload == name.encode()
                assert [PACK.unpack(m.payload)[:2] for m in mine[1:-1]] == [(k, i) for i in range(count)]
                wait_until(lambda: not os.path.exists(inbound_path(ring, name)), 5, f"{label}'s ring removed")
        finally:
            stay.close()
        got = read_until(reader, is_system(pyseq.CLIENT_LEFT, "stay"), 30, "stay leaving")
        stay_msgs = [m for m in got if m.source == source_id("stay")]
        assert stay_msgs[-1].msg_type == pyseq.CLIENT_LEFT
        reader.close()
    stop_sequencer(children)


# ---- 7. limits, in one process ------------------------------------------------------------------------------


def test_limits_from_a_mapping_give_every_client_the_default_and_override_only_the_fields_named() -> None:
    limits = pyseq.Limits.from_mapping({
        "default": {"rate": 1000, "burst": 50, "capacity": 1024},
        "clients": {"flood": {"rate": 10}, "big": {"capacity": 8192, "burst": 500}},
    })
    assert limits.for_client("anyone") == pyseq.Limit(rate=1000, burst=50, capacity=1024)
    assert limits.for_client("flood") == pyseq.Limit(rate=10, burst=50, capacity=1024)
    assert limits.for_client("big") == pyseq.Limit(rate=1000, burst=500, capacity=8192)
    assert pyseq.Limits.from_mapping({}).for_client("x") == pyseq.Limit()
    assert pyseq.Limit() == pyseq.Limit(rate=0, burst=1024, capacity=4096)  # 0: unlimited


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_limits_from_a_file_match_limits_from_the_same_mapping(tmp_path: Any, suffix: str) -> None:
    path = tmp_path / f"limits{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps({"default": {"rate": 500}, "clients": {"oms": {"burst": 7, "capacity": 64}}}))
    else:
        path.write_text('[default]\nrate = 500\n\n[clients.oms]\nburst = 7\ncapacity = 64\n')
    limits = pyseq.Limits.from_file(str(path))
    assert limits == pyseq.Limits.from_mapping({"default": {"rate": 500},
                                                "clients": {"oms": {"burst": 7, "capacity": 64}}})
    assert limits.for_client("oms") == pyseq.Limit(rate=500, burst=7, capacity=64)
    assert limits.for_client("other") == pyseq.Limit(rate=500)


@pytest.mark.parametrize("mapping", [
    {"defaults": {}},                                   # unknown top-level key
    {"default": {"rat": 5}},                            # unknown field
    {"clients": {"x": {"speed": 5}}},
    {"default": {"rate": -1}},
    {"default": {"burst": 0}},
    {"clients": {"x": {"capacity": 1000}}},             # not a power of two
    {"default": {"capacity": 1}},
    {"default": {"rate": "fast"}},
    {"default": {"rate": float("inf")}},                # json.loads reads Infinity and NaN
    {"default": {"rate": float("nan")}},
    {"default": {"burst": 1.5}},
], ids=lambda m: json.dumps(m))
def test_bad_limits_are_refused_when_they_are_loaded(mapping: dict[str, Any]) -> None:
    with pytest.raises((ValueError, TypeError)):
        pyseq.Limits.from_mapping(mapping)


def test_limits_from_a_json_file_with_infinity_are_refused(tmp_path: Any) -> None:
    path = tmp_path / "limits.json"
    path.write_text('{"default": {"rate": Infinity}}')
    with pytest.raises(ValueError):
        pyseq.Limits.from_file(str(path))


def stepped_sequencer_with_one_client(name: str, limit: pyseq.Limit, backlog: int,
                                     seconds: float) -> tuple[int, float, dict[str, Any], float]:
    """In one process: this process writes an inbound ring (as a client would) with ``backlog``
    messages, and steps a Sequencer for ``seconds`` from the step that joined the ring.  Returns what
    was sequenced in that step and how long it took, the client's stats at the end, and the seconds
    stepped."""
    seq = pyseq.Sequencer(name, capacity=8192, limits=pyseq.Limits(default=limit))
    inbound = None
    try:
        inbound = pyseq.Ring.create(inbound_name(name, "c"), 4096, seq.ring.slot_size, max_readers=2)
        for i in range(backlog):
            inbound.publish(DATA, PACK.pack(0, i, 0))
        deadline = Deadline(5, "the sequencer joining the inbound ring")
        while "c" not in seq.clients:
            t0 = time.monotonic()
            seq.step()  # joins the ring first, then runs one slice of the C loop
            deadline.check()
        joined_s = time.monotonic() - t0
        at_join = seq.stats()["clients"]["c"]["sequenced"]
        while time.monotonic() - t0 < seconds:
            seq.step()
        elapsed = time.monotonic() - t0
        return at_join, joined_s, seq.stats()["clients"]["c"], elapsed
    finally:
        if inbound is not None:
            inbound.close()
            inbound.unlink()
        seq.close(drain_timeout=0.1)


def test_a_rate_limited_client_gets_its_burst_then_about_rate_times_time(ring_names: Callable[[], str]) -> None:
    rate, burst = 1_000, 50
    at_join, joined_s, stats, elapsed = stepped_sequencer_with_one_client(
        ring_names(), pyseq.Limit(rate=rate, burst=burst), 2_000, 0.5)
    expected = burst + rate * elapsed
    assert burst <= at_join <= burst + rate * joined_s + 1, (at_join, joined_s)
    assert 0.75 <= stats["sequenced"] / expected <= 1.25, (stats, expected)
    assert stats["deferred"] > 0, "what the limit held back is counted"


def test_a_rate_below_one_message_per_second_is_refused_or_enforced_never_unlimited(
        ring_names: Callable[[], str]) -> None:
    """rate=0.5 means one message every two seconds.  Refusing it when the limits are loaded is one
    right answer; enforcing it is the other; letting everything through is wrong."""
    try:
        limit = pyseq.Limit(rate=0.5, burst=1)
    except ValueError as e:
        assert "rate" in str(e)
        return
    _, _, stats, elapsed = stepped_sequencer_with_one_client(ring_names(), limit, 10, 0.3)
    assert stats["sequenced"] <= 2, \
        f"rate 0.5 msg/s and burst 1, yet {stats['sequenced']} of 10 messages went through in {elapsed:.2f} s"


def test_a_client_that_closes_after_its_sequencer_stopped_removes_its_drained_ring(ring: str,
                                                                                    children: Children) -> None:
    start_sequencer(children, ring)
    client = pyseq.Client.connect(ring, "orphan", timeout=30)
    try:
        for i in range(5):
            client.submit(DATA, PACK.pack(0, i, 0))
        wait_until(lambda: client.readers()[0]["sequence"] >= 5, 10, "the sequencer taking all 5")
        stop_sequencer(children)
    finally:
        client.close()
    assert not pyseq.Ring.exists(inbound_name(ring, "orphan"))


def test_a_client_ring_still_holding_unsequenced_messages_stays_for_the_next_sequencer(ring: str,
                                                                                       children: Children) -> None:
    start_sequencer(children, ring)
    client = pyseq.Client.connect(ring, "holder", timeout=30)
    try:
        os.kill(children.pid("sequencer"), signal.SIGSTOP)  # it takes nothing more
        try:
            client._w.watch_ns = 0  # submit without noticing: the messages wait in the ring
            for i in range(3):
                client.submit(DATA, PACK.pack(0, i, 0))
        finally:
            os.kill(children.pid("sequencer"), signal.SIGKILL)
            os.kill(children.pid("sequencer"), signal.SIGCONT)
        children.join("sequencer")
    finally:
        client.close()
    assert pyseq.Ring.exists(inbound_name(ring, "holder"))  # nothing it submitted is lost


def test_a_client_cannot_forge_the_sequencers_own_system_messages(ring_name: str) -> None:
    import threading

    seq = pyseq.Sequencer(ring_name, capacity=256)
    thread = threading.Thread(target=seq.run, daemon=True)
    thread.start()
    try:
        ring = pyseq.Ring.attach(ring_name)
        reader = ring.reader("check", start=1)
        client = pyseq.Client.connect(ring_name, "mallory", timeout=10)
        client.submit(pyseq.END_OF_STREAM, b"")  # forged: only the sequencer ends the stream
        client.submit(pyseq.CLIENT_LEFT, b"alice")
        client.submit(pyseq.TakeSnapshot(label="ok"))  # admin messages are for clients to send
        client.submit(7, b"order")
        types = []
        while len(types) < 3:
            types.append(reader.read(timeout=10).msg_type)
        assert types == [pyseq.CLIENT_JOINED, pyseq.TakeSnapshot.msg_type, 7]
        assert reader.poll() is None
        assert seq.stats()["clients"]["mallory"]["refused"] == 2
        client.close()
        reader.close()
        ring.close()
    finally:
        seq.stop()
        thread.join(10)
