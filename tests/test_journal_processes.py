"""The journal with real processes, real files and real faults: kill -9 of the sequencer mid-burst
and a restart (nothing lost, nothing repeated, numbering continued, durable readers never ahead of
the journal), a file-size limit that fills the "disk" (back-pressure, then a resume or a clean stop),
and durable readers.

Every child is SIGKILLed and joined after its test (the ``children`` fixture); every wait has a
deadline.  Sizes are small so the suite stays quick on two CPUs.
"""
from __future__ import annotations

import os
import resource
import signal
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import pytest

import pyseq
from childproc import Children, Deadline
from pyseq.journal import Journal
from pyseq.sequencer import CLIENT_JOINED, CLIENT_LEFT, END_OF_STREAM, inbound_clients, source_id

MSG = 7
FILLER = bytes(range(48))


def payload(i: int) -> bytes:
    return struct.pack("<Q", i) + FILLER


# ---- children ----------------------------------------------------------------------------------


def run_sequencer(ring: str, journal: str, fsync: str, stop: Any, fsize_limit: int = 0,
                  segment_bytes: int = 1 << 18) -> dict:
    seq = pyseq.Sequencer(ring, journal=journal, fsync=fsync, capacity=1024, segment_bytes=segment_bytes)
    if fsize_limit:  # from now on the "disk" of this process is full past this many bytes per file
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, resource.RLIM_INFINITY))
    try:
        while not stop.is_set():
            seq.step()
    finally:
        seq.close(drain_timeout=2.0)
    assert seq.journal is not None
    return seq.journal.stats()


def submit_many(ring: str, name: str, count: int) -> int:
    """Submit payload(0..count-1); the number submitted when the sequencer stops (or count)."""
    client = pyseq.Client.connect(ring, name, timeout=10.0, stale_after=1.0, watch_interval=0.05)
    for i in range(count):
        try:
            client.submit(MSG, payload(i))
        except pyseq.SequencerStoppedError:
            return i
    client.close()
    return count


def durable_reader(ring: str, ready: Any) -> list[tuple[int, int]]:
    """Read with a durable, gating reader until the stream ends; (seq, crc of payload) of each
    message, each checked against the journaled position when it was read."""
    r = pyseq.Ring.attach(ring)
    seen = []
    with r.reader("durable", durable=True, gating=True, start="earliest") as reader:
        ready.set()
        while True:
            try:
                m = reader.read(timeout=20.0)
            except pyseq.EndOfStreamError:
                break
            journaled = r.journaled_sequence
            assert m.seq <= journaled, f"durable reader saw {m.seq} while the journal held {journaled}"
            seen.append((m.seq, zlib.crc32(m.payload)))
            if m.msg_type == END_OF_STREAM:
                break
    r.close()
    return seen


# ---- helpers -----------------------------------------------------------------------------------


def wait_for(predicate: Any, seconds: float, what: str) -> None:
    d = Deadline(seconds, what)
    while not predicate():
        d.check()
        time.sleep(0.01)


def attach_when_ready(ring: str, seconds: float = 20.0) -> pyseq.Ring:
    d = Deadline(seconds, f"ring {ring} to appear")
    while True:
        try:
            r = pyseq.Ring.attach(ring)
            if r.journal_state != "none":
                return r
            r.close()
        except (pyseq.RingNotFoundError, pyseq.RingNotReadyError):
            pass
        d.check()
        time.sleep(0.01)


def client_counters(journal: str, source: int) -> list[int]:
    return [struct.unpack_from("<Q", m.payload)[0] for m in Journal(journal).records(types=[MSG])
            if m.source == source]


def drain_restarted(ring: str, journal: str, fsync: str, seconds: float = 30.0) -> pyseq.Sequencer:
    """Restart the sequencer in this process and run it until every client ring is drained."""
    seq = pyseq.Sequencer(ring, journal=journal, fsync=fsync, capacity=1024)
    d = Deadline(seconds, "the restarted sequencer to drain the clients' rings")
    seq.step()
    while seq.clients or inbound_clients(ring):
        d.check()
        seq.step()
    seq.close()
    return seq


# ---- tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fsync", ["batch", "interval:5", "never"])
def test_kill_9_mid_burst_then_restart_loses_nothing_repeats_nothing(children: Children, ring_name: str,
                                                                     tmp_path: Path, fsync: str) -> None:
    journal = str(tmp_path / "journal")
    stop, ready = children.event(), children.event()
    children.start("sequencer", run_sequencer, ring_name, journal, fsync, stop)
    ring = attach_when_ready(ring_name)
    children.start("reader", durable_reader, ring_name, ready)
    assert ready.wait(20)
    children.start("client", submit_many, ring_name, "oms", 10_000_000)
    wait_for(lambda: ring.journaled_sequence >= 30_000, 60, "30,000 messages journaled")
    os.kill(children.pid("sequencer"), signal.SIGKILL)  # mid-burst: the client is still submitting
    children.join("sequencer")
    published_at_kill = ring.published_sequence
    journaled_at_kill = ring.journaled_sequence
    ring.close()
    submitted = children.result("client", 30)
    seen = children.result("reader", 30)
    assert 30_000 <= journaled_at_kill <= published_at_kill
    assert submitted < 10_000_000

    seq = drain_restarted(ring_name, journal, fsync)
    # numbering resumes right after what the killed sequencer had sequenced: its unjournaled tail
    # was journaled from its ring on restart
    assert seq.ring.first_sequence == published_at_kill + 1
    report = Journal(journal).verify()
    assert report.ok and report.torn_tail is None, report.problems
    assert report.first_seq == 1 and report.records == report.last_seq
    # every message the client submitted is in the journal once, in its order
    assert client_counters(journal, source_id("oms")) == list(range(submitted))
    # every message a durable reader acted on is in the journal, unchanged
    journaled = {m.seq: zlib.crc32(m.payload) for m in Journal(journal).records(stop=seen[-1][0])}
    assert len(seen) > 1000
    assert all(journaled.get(s) == c for s, c in seen)
    assert seen == [(s, journaled[s]) for s in range(1, seen[-1][0] + 1)]  # dense, from the first


def test_a_full_disk_back_pressures_the_clients_then_the_journal_resumes(children: Children, ring_name: str,
                                                                          tmp_path: Path) -> None:
    journal = str(tmp_path / "journal")
    stop = children.event()
    children.start("sequencer", run_sequencer, ring_name, journal, "batch", stop, 64 << 10, 1 << 20)
    ring = attach_when_ready(ring_name)
    total = 8000  # 8000 * 104 bytes > the 64 KiB "disk"
    children.start("client", submit_many, ring_name, "oms", total)
    wait_for(lambda: ring.journal_state == "stalled", 30, "the journal to stall on the file-size limit")
    assert ring.info()["journal_errors"] >= 1
    stuck_at = ring.published_sequence
    time.sleep(0.5)
    # the sequencer took nothing more: the ring is full of messages the journal has not written
    assert ring.published_sequence == stuck_at
    assert ring.journaled_sequence < stuck_at
    assert ring.info()["full_count"] > 0 or ring.published_sequence - ring.journaled_sequence >= 1
    assert children.procs["client"].is_alive()  # back-pressured, not failed

    # room on the "disk" again: the journaler's retry goes through and everything flows
    resource.prlimit(children.pid("sequencer"), resource.RLIMIT_FSIZE,
                     (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert children.result("client", 60) == total
    wait_for(lambda: ring.journal_state == "running" and ring.journaled_sequence == ring.published_sequence and
             not inbound_clients(ring_name), 30, "the journal to catch up")
    stop.set()
    stats = children.result("sequencer", 30)
    ring.close()
    assert stats["stalls"] == 1 and stats["errors"] >= 1
    report = Journal(journal).verify()
    assert report.ok and report.torn_tail is None, report.problems
    assert client_counters(journal, source_id("oms")) == list(range(total))


def test_a_sequencer_stopped_while_the_disk_is_full_leaves_the_rest_for_its_successor(
        children: Children, ring_name: str, tmp_path: Path) -> None:
    journal = str(tmp_path / "journal")
    stop = children.event()
    children.start("sequencer", run_sequencer, ring_name, journal, "batch", stop, 64 << 10, 1 << 20)
    ring = attach_when_ready(ring_name)
    children.start("client", submit_many, ring_name, "oms", 3000)
    wait_for(lambda: ring.journal_state == "stalled", 30, "the journal to stall on the file-size limit")
    stop.set()  # stop while nothing can be written: close must return, and drop nothing
    children.result("sequencer", 30)
    published, journaled = ring.published_sequence, ring.journaled_sequence
    assert journaled < published
    assert ring.journal_state == "stalled"  # the header says the journal is behind
    ring.close()
    children.kill("client")  # it waits on back-pressure for a sequencer that is gone
    submitted = len(client_counters(journal, source_id("oms")))
    assert submitted < 3000

    seq = drain_restarted(ring_name, journal, "batch")  # no limit now
    assert seq.ring.first_sequence == published + 1
    report = Journal(journal).verify()
    assert report.ok and report.first_seq == 1 and report.records == report.last_seq, report.problems
    counters = client_counters(journal, source_id("oms"))
    assert counters == list(range(len(counters))) and len(counters) > submitted


def test_restarts_continue_the_numbering_and_system_messages_mark_them(ring_name: str, tmp_path: Path) -> None:
    journal = str(tmp_path / "journal")
    for run in range(3):
        with pyseq.Sequencer(ring_name, journal=journal, fsync="never", capacity=256) as seq:
            assert seq.ring.first_sequence == (0 if run == 0 else last) + 1  # noqa: F821 - set below
            for i in range(10):
                seq.ring.publish(MSG, payload(i))
        last = Journal(journal).last_sequence()
        pyseq.Ring.remove(ring_name)
    report = Journal(journal).verify()
    assert report.ok and report.records == 33 and report.last_seq == 33
    types = [m.msg_type for m in Journal(journal).records()]
    assert types.count(END_OF_STREAM) == 3 and types[10] == END_OF_STREAM
    assert not any(t in (CLIENT_JOINED, CLIENT_LEFT) for t in types)


def test_a_durable_reader_sees_only_what_is_journaled(ring_name: str) -> None:
    ring = pyseq.Ring.create(ring_name, 64, 128)
    try:
        with pytest.raises(pyseq.RingConfigError, match="no journal"):
            ring.reader(durable=True)
        header = ring._w.ring.header  # play the journaler: mark the ring journaled up to 3
        header.journal_state = 1
        for i in range(5):
            ring.publish(MSG, payload(i))
        durable = ring.reader("d", durable=True)
        plain = ring.reader("p")
        assert [plain.read(timeout=1).seq for _ in range(5)] == [1, 2, 3, 4, 5]
        assert durable.poll() is None  # nothing journaled yet
        header.journaled_sequence = 3
        assert [durable.read(timeout=1).seq for _ in range(3)] == [1, 2, 3]
        assert durable.poll() is None
        with pytest.raises(pyseq.TimeoutError):
            durable.read(timeout=0.05)
        assert len(durable.read_batch(10, timeout=0)) == 0
        header.journaled_sequence = 5
        batch = durable.read_batch(10, timeout=1)
        assert batch["seq"].tolist() == [4, 5]
    finally:
        ring.close()


def test_a_durable_reader_ends_at_the_journal_when_the_writer_is_gone(ring_name: str) -> None:
    ring = pyseq.Ring.create(ring_name, 64, 128)
    header = ring._w.ring.header
    header.journal_state = 1
    for i in range(5):
        ring.publish(MSG, payload(i))
    header.journaled_sequence = 3
    reader_ring = pyseq.Ring.attach(ring_name)
    try:
        durable = reader_ring.reader("d", durable=True)
        ring.close()  # the writer is gone; 4 and 5 were never journaled
        assert [m.seq for m in durable] == [1, 2, 3]  # iteration ends, it does not spin
        with pytest.raises(pyseq.EndOfStreamError):
            durable.read(timeout=1)
    finally:
        reader_ring.close()


def test_a_leftover_ring_journaled_elsewhere_is_not_copied_into_a_new_journal(ring_name: str,
                                                                             tmp_path: Path) -> None:
    with pyseq.Sequencer(ring_name, journal=str(tmp_path / "first"), fsync="never", capacity=64) as seq:
        for i in range(5):
            seq.ring.publish(MSG, payload(i))
    # the ring stays in /dev/shm (closed); a sequencer on another, new journal must not take it in
    with pyseq.Sequencer(ring_name, journal=str(tmp_path / "second"), fsync="never", capacity=64) as seq:
        assert seq.ring.first_sequence == 1
        seq.ring.publish(MSG, payload(99))
    assert [m.seq for m in Journal(str(tmp_path / "first")).records()] == [1, 2, 3, 4, 5, 6]
    second = list(Journal(str(tmp_path / "second")).records())
    assert [m.seq for m in second] == [1, 2] and second[0].payload == payload(99)
