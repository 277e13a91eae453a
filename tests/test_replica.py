"""State machine replication with real processes: replicas of the reference data from sequence 1, a
late joiner from another replica's snapshot, a replica killed with SIGKILL and restarted, all while
clients keep publishing; every one must reach the same digest at the same sequence.

Every child is SIGKILLed and joined after its test; every wait has a deadline.
"""
from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

import pyseq
from childproc import Children, Deadline
from pyseq import snapshot
from pyseq.refdata import AddInstrument, Halt, ReferenceData, Resume, UpdateInstrument
from pyseq.sequencer import inbound_clients

SYMBOLS = [f"SYM{i}" for i in range(300)]


def op(rng: random.Random) -> Any:
    s = rng.choice(SYMBOLS)
    k = rng.randrange(10)
    if k < 3:
        return AddInstrument(symbol=s, tick_size=rng.choice([0.01, 0.05, 0.25]), lot_size=rng.choice([1, 10, 100]),
                             currency=rng.choice(["USD", "EUR"]))
    if k < 6:
        return UpdateInstrument(symbol=s, tick_size=rng.choice([0.0, 0.01, 0.1]), lot_size=rng.choice([0, 1, 50]))
    if k < 8:
        return Halt(symbol=s, reason=rng.choice(["", "news", "volatility"]))
    return Resume(symbol=s)


# ---- children ----------------------------------------------------------------------------------


def run_sequencer(ring: str, journal: str, stop: Any) -> None:
    seq = pyseq.Sequencer(ring, journal=journal, fsync="never", capacity=1 << 16, slot_size=128)
    try:
        while not stop.is_set():
            seq.step()
    finally:
        seq.close()


def publish_ops(ring: str, name: str, seed: int, stop: Any, rate: float, calm: Any = None,
                calm_rate: float = 0.0) -> int:
    """Submit reference-data changes at about ``rate`` a second (``calm_rate`` once ``calm`` is set)
    until ``stop``; the count."""
    rng = random.Random(seed)
    client = pyseq.Client.connect(ring, name, timeout=20.0)
    sent, start, base = 0, time.monotonic(), 0
    while not stop.is_set():
        if calm is not None and calm.is_set() and rate != calm_rate:
            rate, start, base = calm_rate, time.monotonic(), sent
        due = base + int((time.monotonic() - start) * rate) - sent
        if due <= 0:
            time.sleep(0.001)
            continue
        for _ in range(min(due, 512)):
            client.submit(op(rng))
            sent += 1
    client.close()
    return sent


def run_replica(ring: str, journal: str, snapshots: str, snapshot_from: str, final: Any, ready: Any) -> dict:
    """Catch up, then follow until the final sequence (set by the test) is applied."""
    replica = pyseq.Replica(ReferenceData(), ring=ring, journal=journal, snapshots=snapshots,
                            snapshot_from=snapshot_from, name=os.path.basename(snapshots))
    replica.run_until_caught_up(timeout=120)
    caught_up_at = replica.last_applied
    ready.set()
    d = Deadline(120, "the final sequence")
    while final.value == 0:
        d.check()
        replica.follow(duration=0.1)
    replica.follow(until_sequence=final.value)
    d.check()
    result = {"last_applied": replica.last_applied, "digest": replica.digest(), "started_from": replica.started_from,
              "caught_up_at": caught_up_at, "instruments": len(replica.state),
              "rejected": replica.state.rejected, "snapshots": replica.snapshots_written}
    replica.close()
    return result


# ---- helpers -----------------------------------------------------------------------------------


def attach(ring: str) -> pyseq.Ring:
    d = Deadline(20, f"ring {ring}")
    while True:
        try:
            r = pyseq.Ring.attach(ring)
            if r.journal_state == "running":
                return r
            r.close()
        except (pyseq.RingNotFoundError, pyseq.RingNotReadyError):
            pass
        d.check()
        time.sleep(0.01)


def wait_until(predicate: Any, seconds: float, what: str) -> None:
    d = Deadline(seconds, what)
    while not predicate():
        d.check()
        time.sleep(0.02)


def take_snapshot(admin: pyseq.Client, ring: pyseq.Ring, label: str) -> int:
    """Submit a TakeSnapshot; its sequence (found in the ring)."""
    start = ring.published_sequence + 1
    admin.submit(pyseq.TakeSnapshot(label=label))
    with ring.reader(f"find-{label}"[:31], start=start) as reader:
        d = Deadline(30, f"snapshot {label} to be sequenced")
        while True:
            d.check()
            m = reader.read(timeout=d.left)
            if m.msg_type == pyseq.TakeSnapshot.msg_type and pyseq.TakeSnapshot.decode(m.payload).label == label:
                return m.seq


def stop_clients_and_mark_the_end(stop: Any, children: Children, labels: list[str], ring_name: str,
                                  admin: pyseq.Client, ring: pyseq.Ring, final: Any) -> int:
    stop.set()
    for label in labels:
        children.result(label, 30)
    wait_until(lambda: inbound_clients(ring_name) == ["admin"], 30, "the clients' rings to be drained")
    final.value = take_snapshot(admin, ring, "final")
    return final.value


def _value() -> Any:
    from childproc import SPAWN
    return SPAWN.Value("q", 0)


# ---- tests -------------------------------------------------------------------------------------


@pytest.mark.timeout(280)
def test_two_replicas_and_a_late_joiner_from_a_snapshot_at_500000_reach_the_same_digest(
        children: Children, ring_name: str, tmp_path: Path) -> None:
    journal = str(tmp_path / "journal")
    snaps = {name: str(tmp_path / name) for name in ("a", "b", "late")}
    stop_seq, stop_clients = children.event(), children.event()
    final = _value()
    children.start("sequencer", run_sequencer, ring_name, journal, stop_seq)
    ring = attach(ring_name)
    admin = pyseq.Client.connect(ring_name, "admin", timeout=20.0)
    ready = {name: children.event() for name in snaps}
    for name in ("a", "b"):
        children.start(name, run_replica, ring_name, journal, snaps[name], snaps[name], final, ready[name])
    clients = [f"client{i}" for i in range(4)]
    calm = children.event()  # as fast as they can up to 500,000, then 2,000 a second each
    for i, label in enumerate(clients):
        children.start(label, publish_ops, ring_name, label, 1000 + i, stop_clients, 1e6, calm, 2000.0)
    wait_until(lambda: ring.published_sequence >= 500_000, 120, "500,000 messages sequenced")
    calm.set()
    at = take_snapshot(admin, ring, "bootstrap")
    assert at > 500_000
    wait_until(lambda: os.path.exists(os.path.join(snaps["a"], snapshot.snapshot_name(at))), 120,
               "replica a to write its snapshot")
    # the late joiner (the Institutional OMS) starts from a's snapshot while the clients keep publishing
    children.start("late", run_replica, ring_name, journal, snaps["late"], snaps["a"], final, ready["late"])
    if not ready["late"].wait(120):
        children.result("late", 1)  # its traceback, if it failed
        raise AssertionError(f"the late joiner did not catch up in 120 s (published {ring.published_sequence})")
    published_when_late_caught_up = ring.published_sequence
    end = stop_clients_and_mark_the_end(stop_clients, children, clients, ring_name, admin, ring, final)
    results = {name: children.result(name, 120) for name in snaps}
    admin.close()
    stop_seq.set()
    children.result("sequencer", 30)
    ring.close()

    assert published_when_late_caught_up > at  # it caught up while messages kept coming
    assert results["late"]["started_from"] == at and results["a"]["started_from"] is None
    assert {r["last_applied"] for r in results.values()} == {end}
    digests = {name: r["digest"] for name, r in results.items()}
    assert len(set(digests.values())) == 1, digests
    assert results["a"]["instruments"] > 100 and results["a"]["rejected"] > 1000  # a real workload
    # every replica wrote the same snapshot bytes at the same sequences
    finals = [Path(snaps[n], snapshot.snapshot_name(end)).read_bytes() for n in snaps]
    assert finals[0] == finals[1] == finals[2]
    assert Path(snaps["a"], snapshot.snapshot_name(at)).read_bytes() == \
        Path(snaps["b"], snapshot.snapshot_name(at)).read_bytes()


@pytest.mark.timeout(200)
def test_a_replica_killed_and_restarted_from_its_snapshot_and_the_journal_reaches_the_same_digest(
        children: Children, ring_name: str, tmp_path: Path) -> None:
    journal = str(tmp_path / "journal")
    stop_seq, stop_clients = children.event(), children.event()
    final = _value()
    children.start("sequencer", run_sequencer, ring_name, journal, stop_seq)
    ring = attach(ring_name)
    admin = pyseq.Client.connect(ring_name, "admin", timeout=20.0)
    ready = {name: children.event() for name in ("steady", "victim", "restarted")}
    for name in ("steady", "victim"):
        children.start(name, run_replica, ring_name, journal, str(tmp_path / name), str(tmp_path / name), final,
                       ready[name])
    clients = [f"client{i}" for i in range(2)]
    for i, label in enumerate(clients):
        children.start(label, publish_ops, ring_name, label, 7 + i, stop_clients, 10_000.0)
    wait_until(lambda: ring.published_sequence >= 60_000, 90, "60,000 messages sequenced")
    at = take_snapshot(admin, ring, "s1")
    wait_until(lambda: os.path.exists(tmp_path / "victim" / snapshot.snapshot_name(at)), 60, "the victim's snapshot")
    wait_until(lambda: ring.published_sequence >= at + 30_000, 60, "30,000 more messages")
    os.kill(children.pid("victim"), signal.SIGKILL)
    children.join("victim")
    # restart it from its own last snapshot, then the journal, then the live ring, clients still publishing
    children.start("restarted", run_replica, ring_name, journal, str(tmp_path / "victim"), str(tmp_path / "victim"),
                   final, ready["restarted"])
    assert ready["restarted"].wait(120)
    end = stop_clients_and_mark_the_end(stop_clients, children, clients, ring_name, admin, ring, final)
    steady, restarted = children.result("steady", 120), children.result("restarted", 120)
    admin.close()
    stop_seq.set()
    children.result("sequencer", 30)
    ring.close()
    assert restarted["started_from"] == at
    assert steady["last_applied"] == restarted["last_applied"] == end
    assert steady["digest"] == restarted["digest"]


def test_a_replica_refuses_a_journal_that_starts_after_its_snapshot(tmp_path: Path, ring_name: str) -> None:
    journal = str(tmp_path / "journal")
    with pyseq.Sequencer(ring_name, journal=journal, fsync="never", capacity=256, first_sequence=100) as seq:
        seq.ring.publish(AddInstrument(symbol="X", tick_size=0.5))
    pyseq.Ring.remove(ring_name)
    replica = pyseq.Replica(ReferenceData(), journal=journal)
    with pytest.raises(pyseq.ReplicaError, match="1..99 are missing"):
        replica.run_until_caught_up(timeout=5)


class HaltKeepsNoReason(ReferenceData):
    """A deliberately divergent replica: it drops halt reasons."""

    def apply(self, msg: pyseq.Message) -> None:
        if msg.msg_type == Halt.msg_type:
            h = Halt.decode(msg.payload)
            msg = msg._replace(payload=Halt(symbol=h.symbol).encode())
        super().apply(msg)


@pytest.mark.parametrize("diverge", [False, True])
def test_replicas_publish_their_digests_and_a_monitor_raises_the_alarm_on_divergence(
        ring_name: str, tmp_path: Path, diverge: bool) -> None:
    import threading

    seq = pyseq.Sequencer(ring_name, journal=str(tmp_path / "journal"), fsync="never", capacity=1024)
    thread = threading.Thread(target=seq.run, daemon=True)
    thread.start()
    clients: list[pyseq.Client] = []
    try:
        admin = pyseq.Client.connect(ring_name, "admin", timeout=10)
        clients.append(admin)
        machines = {"a": ReferenceData(), "b": HaltKeepsNoReason() if diverge else ReferenceData()}
        replicas = {}
        for name, machine in machines.items():
            c = pyseq.Client.connect(ring_name, f"rep-{name}", timeout=10)
            clients.append(c)
            replicas[name] = pyseq.Replica(machine, ring=ring_name, name=name, digest_client=c)
        monitor = pyseq.DigestMonitor()
        ring = pyseq.Ring.attach(ring_name)
        reader = ring.reader("monitor", start=1)
        admin.submit(AddInstrument(symbol="AAPL", tick_size=0.01))
        admin.submit(Halt(symbol="AAPL", reason="news"))
        admin.submit(pyseq.TakeSnapshot(label="check"))
        d = Deadline(20, "two digests")
        seen = 0
        while seen < 2:
            for r in replicas.values():
                r.follow(duration=0.02)
            m = reader.poll()
            while m is not None:
                monitor.apply(m)
                seen += m.msg_type == pyseq.ReplicaDigest.msg_type
                m = reader.poll()
            d.check()
        assert len(monitor.seen) == 1
        if diverge:
            assert monitor.divergences and monitor.divergences[0][1] == "refdata"
            with pytest.raises(pyseq.DivergenceError, match="diverged at sequence"):
                monitor.check()
        else:
            assert monitor.divergences == []
            monitor.check()
        reader.close()
        ring.close()
        for r in replicas.values():
            r.close()
    finally:
        for c in clients:
            c.close()
        seq.stop()
        thread.join(10)


def test_the_readme_example_wait_sequenced_then_a_late_joiner_from_a_snapshot(ring_name: str,
                                                                              tmp_path: Path) -> None:
    import threading

    journal, snap_a, snap_late = (str(tmp_path / n) for n in ("journal", "snap-a", "snap-late"))
    seq = pyseq.Sequencer(ring_name, journal=journal, fsync="batch", capacity=1024)
    thread = threading.Thread(target=seq.run, daemon=True)
    thread.start()
    try:
        admin = pyseq.Client.connect(ring_name, "admin", timeout=10)
        admin.submit(AddInstrument(symbol="AAPL", tick_size=0.01, lot_size=1, currency="USD"))
        admin.submit(Halt(symbol="AAPL"))
        admin.submit(pyseq.TakeSnapshot())
        admin.wait_sequenced()  # without it, a replica may catch up before these are sequenced
        with pyseq.Replica(ReferenceData(), ring=ring_name, journal=journal, snapshots=snap_a) as replica:
            replica.run_until_caught_up()
            assert replica.state.validate_order("AAPL", 187.01, 100) == "AAPL is halted"
            assert len(replica.snapshots_written) == 1
            with pyseq.Replica(ReferenceData(), ring=ring_name, journal=journal, snapshots=snap_late,
                               snapshot_from=snap_a) as late:
                late.run_until_caught_up()
                assert late.started_from == 4  # CLIENT_JOINED, add, halt, snapshot
                assert late.digest() == replica.digest() and late.last_applied == replica.last_applied
        admin.close()
    finally:
        seq.stop()
        thread.join(10)
