"""The NATS JetStream bridge: messages/s into JetStream (one server, and a 3-node cluster with an R3
stream), end-to-end latency from submit to RemoteReader.read beside the local ring's, and the
sequencer's throughput with a bridge attached and NATS stopped.

    client ─submit─> sequencer ─ring─┬─> local reader (latency: ring)
    (payload: perf_counter_ns)       └─> Bridge ──> nats-server(s) ──> RemoteReader (latency: remote)
                                          (loopback; R1 or R3 file-storage stream)

1. bridge msgs/s: N messages are sequenced first (ring capacity >= N, journal on); then one Bridge
   publishes them all and the clock runs until the stream acks the last.  Before a number is
   printed, a RemoteReader reads the whole stream back and every message is compared with the
   journal's (its read rate is shown too).
2. latency: a client submits RATE msgs/s for S seconds, each stamped with perf_counter_ns
   (CLOCK_MONOTONIC, one clock for every process here); a ring reader process and the RemoteReader
   (this process) record now - stamp for every message.  Every process waits with back-off (this
   2-vCPU machine is shared): the ring's numbers are back-off numbers, not busy-spin ones.
3. sequencer msgs/s: a client submits 500,000 messages (submit_batch of 256) through the sequencer
   (journal on, a 65,536-slot ring): no bridge / a bridge attached and its NATS server killed / a
   bridge attached and publishing.  The rate is 500,000 over the time from the first submit to
   all sequenced (wait_sequenced); the bridge must show as a non-gating cursor of the ring.

    python bench/bridge_throughput.py --quick      # < 2 min
    python bench/bridge_throughput.py --json /tmp/bridge.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

import harness  # noqa: E402  (before numpy: it sets OPENBLAS_NUM_THREADS)
from harness import BenchFailed  # noqa: E402

os.environ["PYSEQ_IDLE"] = "backoff"
import natsproc  # noqa: E402  (the tests' nats-server starter: one server or a 3-node cluster)
import pyseq  # noqa: E402

MSG_TYPE = 7
SUBMIT_BATCH = 256
PAYLOAD = 64


def sequenced(ring: str, journal: str, count: int, capacity: int) -> int:
    """Sequence ``count`` 64-byte messages into ``ring`` (journal on); return the last sequence."""
    seq = pyseq.Sequencer(ring, journal=journal, fsync="never", capacity=capacity, idle=pyseq.BackoffIdle())
    thread = threading.Thread(target=seq.run, daemon=True)
    thread.start()
    try:
        client = pyseq.Client.connect(ring, "load", timeout=10)
        import numpy as np
        records = np.zeros(SUBMIT_BATCH, dtype=[("counter", "<i8"), ("pad", "u1", (PAYLOAD - 8,))])
        for start in range(0, count, SUBMIT_BATCH):
            records["counter"] = np.arange(start, start + SUBMIT_BATCH)
            client.submit_batch(MSG_TYPE, records[:min(SUBMIT_BATCH, count - start)], timeout=10)
        client.wait_sequenced(30)
        last = seq.ring.published_sequence
        client.close()
        return last
    finally:
        seq.stop()
        thread.join(10)


def bridge_rate(servers: list, tmp: Path, count: int, replicas: int) -> dict:
    ring = harness.shm_name("br")
    journal = str(tmp / f"journal-{ring}")
    stream = f"B{replicas}{os.getpid()}{time.monotonic_ns() % 100000}"
    url = natsproc.urls(servers)
    try:
        last = sequenced(ring, journal, count, capacity=1 << (count * 2 - 1).bit_length())
        bridge = pyseq.Bridge(ring, journal, url, stream, replicas=replicas)
        t0 = time.perf_counter()
        bridge.run(until_sequence=last)
        seconds = time.perf_counter() - t0
        if bridge.acked < last:
            raise BenchFailed(f"the bridge stopped at {bridge.acked} of {last}")
        t0 = time.perf_counter()
        got = []
        with pyseq.RemoteReader(url, stream, start=1) as reader:
            while len(got) < last:
                batch = reader.read_messages(4096, timeout=10)
                if not batch:
                    raise BenchFailed(f"the remote reader got {len(got)} of {last}")
                got.extend(batch)
        read_s = time.perf_counter() - t0
        if got[:last] != list(pyseq.Journal(journal).records(stop=last)):
            raise BenchFailed("the stream differs from the journal")
        return {"messages": last, "msgs_per_s": round(last / seconds), "remote_read_msgs_per_s": round(last / read_s),
                "from_ring": bridge.stats["from_ring"], "from_journal": bridge.stats["from_journal"]}
    finally:
        harness.unlink_ring_family(ring)
        shutil.rmtree(journal, ignore_errors=True)


# ---- latency ------------------------------------------------------------------------------------------

def sequencer_peer(ring: str, journal: str, ready, stop, seconds: float) -> dict:
    seq = pyseq.Sequencer(ring, journal=journal, fsync="never", capacity=65536, idle=pyseq.BackoffIdle())
    try:
        ready.set()
        deadline = time.monotonic() + seconds
        while not stop.is_set() and time.monotonic() < deadline:
            seq.step()
        return {"last": seq.ring.published_sequence}
    finally:
        seq.close()


def bridge_peer(ring: str, journal: str, url: str, stream: str, replicas: int, seconds: float) -> dict:
    bridge = pyseq.Bridge(ring, journal, url, stream, replicas=replicas)
    bridge.run(duration=seconds)
    return bridge.stats


def client_peer(ring: str, rate: float, seconds: float, go, reader_ready) -> int:
    client = pyseq.Client.connect(ring, "timed", timeout=10)
    if not go.wait(30) or not reader_ready.wait(30):
        raise TimeoutError("no go")
    sent, start = 0, time.monotonic()
    while time.monotonic() - start < seconds:
        due = int((time.monotonic() - start) * rate) - sent
        if due <= 0:
            time.sleep(0.0002)
            continue
        client.submit(MSG_TYPE, time.perf_counter_ns().to_bytes(8, "little") + bytes(PAYLOAD - 8))
        sent += 1
    client.wait_sequenced(10)
    client.close()
    return sent


def ring_reader_peer(ring: str, seconds: float, ready) -> list:
    with pyseq.Ring.attach(ring, timeout=10) as r, r.reader("lat", start="latest", idle=pyseq.BackoffIdle()) as rd:
        ready.set()
        out, end = [], time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                m = rd.read(timeout=0.2)
            except pyseq.TimeoutError:
                continue
            except pyseq.EndOfStreamError:
                break
            if m.msg_type == MSG_TYPE:
                out.append(time.perf_counter_ns() - int.from_bytes(m.payload[:8], "little"))
        return out


def latency(servers: list, tmp: Path, rate: float, seconds: float) -> dict:
    ring = harness.shm_name("lat")
    journal = str(tmp / f"journal-{ring}")
    stream = f"L{os.getpid()}{time.monotonic_ns() % 100000}"
    url = natsproc.urls(servers)
    ready, reader_ready, go, stop = (harness.CTX.Event() for _ in range(4))
    remote: list = []
    failure: list = []

    def remote_main() -> None:
        try:
            deadline = time.monotonic() + 30
            while True:  # the bridge makes the stream
                try:
                    reader = pyseq.RemoteReader(url, stream, start="latest")
                    break
                except pyseq.RemoteError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            with reader:
                go.set()
                end = time.monotonic() + seconds + 3
                while time.monotonic() < end:
                    for m in reader.read_messages(1024, timeout=0.2):
                        if m.msg_type == MSG_TYPE:
                            remote.append(time.perf_counter_ns() - int.from_bytes(m.payload[:8], "little"))
        except BaseException as e:
            failure.append(e)
            go.set()

    thread = threading.Thread(target=remote_main, daemon=True)
    try:
        peers_thread = threading.Thread(target=lambda: results.update(harness.run_peers([
            ("sequencer", None, sequencer_peer, (ring, journal, ready, stop, seconds + 20)),
            ("bridge", None, bridge_peer, (ring, journal, url, stream, len(servers), seconds + 8)),
            ("ring reader", None, ring_reader_peer, (ring, seconds + 6, reader_ready)),
            ("client", None, client_peer, (ring, rate, seconds, go, reader_ready)),
        ], deadline_s=seconds + 60)), daemon=True)
        results: dict = {}
        peers_thread.start()
        if not ready.wait(30):
            raise BenchFailed("the sequencer did not start")
        thread.start()
        peers_thread.join(seconds + 90)
        stop.set()
        thread.join(30)
        if failure:
            raise BenchFailed(f"remote reader: {failure[0]!r}")
        if "client" not in results:
            raise BenchFailed("the peers did not finish")
        sent = results["client"]
        if len(results["ring reader"]) != sent or len(remote) != sent:
            raise BenchFailed(f"sent {sent}, the ring reader got {len(results['ring reader'])}, the remote reader "
                              f"{len(remote)}")
        return {"sent": sent, "rate": rate, "ring": harness.summarize(harness.latency_histogram(results["ring reader"])),
                "remote": harness.summarize(harness.latency_histogram(remote))}
    finally:
        stop.set()
        harness.unlink_ring_family(ring)
        shutil.rmtree(journal, ignore_errors=True)


# ---- the sequencer with a bridge and NATS stopped ---------------------------------------------------

def sequencer_rate(tmp: Path, count: int, mode: str) -> dict:
    """The sequencer's own rate (its stamps) for ``count`` messages: mode none / nats-stopped / nats-up."""
    ring = harness.shm_name("sq")
    journal = str(tmp / f"journal-{ring}")
    server = None
    seq = pyseq.Sequencer(ring, journal=journal, fsync="never", capacity=65536, idle=pyseq.BackoffIdle())
    seq_thread = threading.Thread(target=seq.run, daemon=True)
    seq_thread.start()
    proc = None
    try:
        if mode != "none":
            server = natsproc.start_server(tmp / f"nats-{ring}")
            args = ["--ring", ring, "--journal", journal, "--nats", server.url, "--stream", "SQ"]
            import subprocess
            proc = subprocess.Popen([sys.executable, "-m", "pyseq.cli", "bridge", *args], stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, env={**os.environ, "PYSEQ_IDLE": "backoff"})
            line = proc.stdout.readline().decode()
            if "ready" not in line:
                raise BenchFailed(f"the bridge did not start: {line!r}")
            if mode == "nats-stopped":
                server.kill()
        t0 = time.perf_counter()
        sequenced_into(ring, count)
        seconds = time.perf_counter() - t0
        if mode != "none":
            readers = [x for x in seq.ring.readers() if x["name"] == "pyseq-bridge"]
            if any(x["gating"] for x in readers):  # (lapped, it reads the journal: no cursor at all)
                raise BenchFailed(f"the bridge is a gating reader of the ring: {readers}")
        return {"msgs_per_s": round(count / seconds)}
    finally:
        if proc is not None:
            proc.kill()
            proc.wait(10)
            proc.stdout.close()
        if server is not None:
            server.kill()
        seq.stop()
        seq_thread.join(10)
        harness.unlink_ring_family(ring)
        shutil.rmtree(journal, ignore_errors=True)


def sequenced_into(ring: str, count: int) -> int:
    import numpy as np
    client = pyseq.Client.connect(ring, "load", timeout=10)
    try:
        records = np.zeros(SUBMIT_BATCH, dtype=[("counter", "<i8"), ("pad", "u1", (PAYLOAD - 8,))])
        for start in range(0, count, SUBMIT_BATCH):
            records["counter"] = np.arange(start, start + SUBMIT_BATCH)
            client.submit_batch(MSG_TYPE, records[:min(SUBMIT_BATCH, count - start)], timeout=10)
        client.wait_sequenced(30)
        return client.sequenced.published_sequence
    finally:
        client.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", metavar="PATH")
    cfg = p.parse_args(argv)
    harness.start_bench()
    n = 30_000 if cfg.quick else 100_000
    runs = 2 if cfg.quick else 3
    tmp = Path(tempfile.mkdtemp(prefix="pyseq-bench-bridge-"))
    report: dict = {"bench": "bridge_throughput", "machine": harness.machine_info((None, None)), "messages": n}
    try:
        single = natsproc.start_server(tmp / "single")
        cluster = natsproc.start_cluster(tmp / "cluster")
        try:
            for label, servers, replicas in (("single", [single], 1), ("r3", cluster, 3)):
                rows = [bridge_rate(servers, tmp, n, replicas) for _ in range(runs)]
                med = harness.median([r["msgs_per_s"] for r in rows])
                read = harness.median([r["remote_read_msgs_per_s"] for r in rows])
                report[f"bridge_{label}"] = {"msgs_per_s": med, "remote_read_msgs_per_s": read, "runs": rows}
                print(f"bridge -> JetStream {label:>6}: {med:>9,.0f} msgs/s (runs {[r['msgs_per_s'] for r in rows]}); "
                      f"RemoteReader reads {read:,.0f} msgs/s; every message checked", flush=True)
            for label, servers in (("single", [single]), ("r3", cluster)):
                lat = latency(servers, tmp, rate=1000.0, seconds=5.0 if cfg.quick else 15.0)
                report[f"latency_{label}"] = lat
                r, m = lat["ring"], lat["remote"]
                print(f"latency submit -> read, {lat['sent']} msgs at 1,000/s ({label}): ring p50 {harness.fmt_ns(r['p50'])} "
                      f"p99 {harness.fmt_ns(r['p99'])}; RemoteReader p50 {harness.fmt_ns(m['p50'])} p99 "
                      f"{harness.fmt_ns(m['p99'])} max {harness.fmt_ns(m['max'])}", flush=True)
        finally:
            single.kill()
            for s in cluster:
                s.kill()
        rates: dict = {"none": [], "nats-stopped": [], "nats-up": []}
        for _ in range(runs + 1):
            for mode in rates:
                rates[mode].append(sequencer_rate(tmp, 500_000, mode)["msgs_per_s"])
        report["sequencer"] = {m: {"msgs_per_s": harness.median(v), "runs": v} for m, v in rates.items()}
        for mode, v in rates.items():
            print(f"sequencer, bridge {mode:>12}: {harness.median(v):>11,.0f} msgs/s (runs {v})", flush=True)
    except BenchFailed as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if cfg.json:
        with open(cfg.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        print(f"wrote {cfg.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
