"""Throughput from one writer process to one reader process, 64-byte messages.

      CPU a                                                     CPU b
    +----------------------------+                         +-----------------------------+
    | writer                     |   one channel, A -> B   | reader                      |
    |  wait until reader ready   | ----------------------> |  attach, signal ready       |
    |  t0 = perf_counter_ns()    |                         |  for i in 0..N-1:           |
    |  for i in 0..N-1:          |                         |    m = recv()               |
    |    send(index i . pattern) |                         |    assert m == (i . pattern)|
    |                            |                         |  t1 = perf_counter_ns()     |
    +----------------------------+                         +-----------------------------+
        msgs/s = N / (t1 - t0)   (perf_counter_ns is CLOCK_MONOTONIC: one clock for both)
        MB/s   = msgs/s * 64 bytes of payload / 1e6
        each channel runs --repeat times, interleaved with the others; the table shows the
        median run and the range (on a 2-vCPU VM the spread is wide: see the note below)

Channels: the pure-Python shared-memory ring (bench/pure_python_ring.py, one message per call),
pyseq one message per call (publish / read), pyseq in batches (publish_batch / read_batch,
BATCH messages per call), multiprocessing.Pipe and multiprocessing.Queue for scale, and the C
floor (bench/floor/cacheline_pingpong.c, mode throughput: the same ring protocol in C).  The
reader checks every message: its index (so count and order) and every payload byte.  The
writer is held back by the reader on every channel (ring back-pressure, a full pipe), so
nothing is dropped and nothing is measured twice.

A busy-spinning reader that keeps up with the writer polls the very slot the writer is filling,
so that cache line moves between the cores for every message; a reader that falls behind reads
slots written long ago and the writer, at the wrap point, is the one that waits.  Which of the
two regimes a run settles in depends on small speed differences between the peers (and, on a VM,
on where the host puts the two vCPUs), so rates of a single ring can differ by 2-3x between runs.

    python bench/throughput.py --quick          # < 60 s
    python bench/throughput.py                  # < 3 min
    python bench/throughput.py --only pyring,floor --json /tmp/throughput.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import queue
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import BenchFailed, Unavailable  # noqa: E402
from pure_python_ring import PyRing  # noqa: E402

MESSAGE_LENGTH = 64
MSG_TYPE = 1
BATCH = 1024
PATTERN = bytes(range(0x40, 0x40 + MESSAGE_LENGTH - 8))
PATTERN_U8 = np.frombuffer(PATTERN, dtype=np.uint8)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def message(index: int) -> bytes:
    return index.to_bytes(8, "little") + PATTERN


def batch_records(first_index: int, n: int) -> np.ndarray:
    """n messages as a (n, 64) uint8 array: little-endian index, then PATTERN."""
    records = np.empty((n, MESSAGE_LENGTH), dtype=np.uint8)
    records[:, 8:] = PATTERN_U8
    records[:, :8] = np.arange(first_index, first_index + n, dtype="<u8").view(np.uint8).reshape(n, 8)
    return records


# ============================================================================================
# PYSEQ - the only code in this file that imports or calls pyseq.
# ============================================================================================


def pyseq_throughput(role: str, name: str = "", timeout: float = 5.0):
    """One end of a pyseq throughput run on ring `name`.

    "writer":       create the ring (this process its only writer); return
                    (publish(bytes), publish_batch((n, 64) uint8 array), close)
    "reader":       attach (waiting up to timeout) with a busy-spinning reader that holds the
                    writer back; return (read() -> bytes,
                    read_batch(n) -> (seq int64[k], length[k], msg_type[k], payload uint8[k, 64]),
                    close)
    "probe":        None if pyseq can run here, else raise harness.Unavailable
    "remove":       remove the ring if it exists (cleanup backstop)"""
    try:
        if REPO_ROOT not in sys.path:
            sys.path.append(REPO_ROOT)  # an installed pyseq wins; else the in-tree build
        import pyseq
    except ImportError as exc:
        raise Unavailable(f"pyseq is not importable ({exc})") from None
    if not hasattr(pyseq, "Ring"):
        raise Unavailable(f"pyseq at {getattr(pyseq, '__path__', '?')} has no Ring yet")
    if role == "probe":
        return None
    if role == "remove":
        try:
            pyseq.Ring.remove(name)
        except Exception:  # not there (the writer unlinked it): fine
            pass
        return None

    if role == "writer":
        ring = pyseq.Ring.create(name, capacity=4096, slot_size=128)

        def close():
            ring.close()
            ring.unlink()

        return (functools.partial(ring.publish, MSG_TYPE),
                functools.partial(ring.publish_batch, MSG_TYPE), close)

    att = pyseq.Ring.attach(name, timeout=timeout)
    try:
        # The reader must hold the writer back (never be lapped).  If gating is not the default,
        # the keyword below names it; without such a keyword, the default reader is used.
        try:
            reader = att.reader(idle=pyseq.BusySpin(), gating=True)
        except TypeError:
            reader = att.reader(idle=pyseq.BusySpin())
    except BaseException:
        att.close()
        raise
    read, read_batch = reader.read, reader.read_batch
    received = {"all": None, "got": 0}

    def read_one() -> bytes:
        return read(timeout=timeout).payload

    def read_many(n, total):
        """Copy up to n messages straight into one preallocated array of `total` slots; return k.
        read_many(0, total) allocates that array and touches every page of it (call it before the
        clock starts: page faults are not what this bench measures)."""
        if received["all"] is None:
            received["all"] = np.empty(total, dtype=att.dtype)
            received["all"].view(np.uint8).fill(0)
        if n == 0:
            return 0
        got = received["got"]
        k = len(read_batch(n, timeout=timeout, out=received["all"][got:got + n]))
        received["got"] = got + k
        return k

    def collected():
        arr = received["all"][:received["got"]]
        return (arr["seq"], arr["length"], arr["msg_type"], arr["payload"])

    read_many.collected = collected

    def close():
        closer = getattr(reader, "close", None)
        if closer is not None:
            closer()
        att.close()

    return read_one, read_many, close


def pyseq_writer_alone(count: int, repeat: int) -> dict:
    """The cost of the publish calls themselves: one process publishes `count` 64-byte messages
    into a ring nobody reads (no gating reader, so nothing holds it back), by single `publish`
    calls and by `publish_batch` of BATCH; then checks the last message and the count.
    Returns {label: [msgs/s of each run]}."""
    try:
        if REPO_ROOT not in sys.path:
            sys.path.append(REPO_ROOT)
        import pyseq
    except ImportError as exc:
        raise Unavailable(f"pyseq is not importable ({exc})") from None
    name = harness.shm_name("pyseq-alone")
    records = batch_records(0, count)
    payloads = [message(i) for i in range(count)]
    out: dict = {"pyseq publish, writer alone": [], f"pyseq publish_batch of {BATCH}, writer alone": []}
    for _ in range(repeat):
        for label in out:
            ring = pyseq.Ring.create(name, capacity=4096, slot_size=128)
            try:
                publish, publish_batch = ring.publish, ring.publish_batch
                start = time.perf_counter_ns()
                if "batch" in label:
                    for i in range(0, count, BATCH):
                        publish_batch(MSG_TYPE, records[i:i + BATCH])
                else:
                    for p in payloads:
                        publish(MSG_TYPE, p)
                elapsed = time.perf_counter_ns() - start
                reader = ring.reader(start=ring.published_sequence)
                last = reader.read(timeout=1.0)
                if ring.published_sequence != count or last.payload != message(count - 1):
                    raise BenchFailed(f"{label}: published {ring.published_sequence}, last payload "
                                      f"{last.payload[:8].hex()}; expected {count} and index {count - 1}")
                reader.close()
                out[label].append(round(count / (elapsed / 1e9)))
            finally:
                ring.close()
                ring.unlink()
    return out


# ============================================================================================
# Channels: prepare() in the bench process before the peers fork; open_writer() / open_reader()
# in the peers; cleanup() in the bench's finally.  `batched` channels move BATCH per call.
# ============================================================================================


class PyRingChannel:
    key, label, batched = "pyring", "pure-Python shm ring", False

    def prepare(self):
        self.name = harness.shm_name("pyring")

    def open_writer(self, timeout):
        writer = PyRing.create(self.name, capacity=4096, slot_size=128)

        def close():
            writer.close()
            writer.unlink()

        return functools.partial(writer.publish, MSG_TYPE), close

    def open_reader(self, timeout):
        reader = PyRing.attach(self.name, timeout=timeout)
        read = reader.read

        def recv():  # the ring itself only returns the next sequence; the index checks order
            return read(timeout)[2]

        return recv, reader.close

    def cleanup(self):
        harness.unlink_shm(self.name)


class PyseqChannel:
    key, label, batched = "pyseq", "pyseq publish/read", False

    def prepare(self):
        pyseq_throughput("probe")
        self.name = harness.shm_name(self.key)

    def open_writer(self, timeout):
        publish, _, close = pyseq_throughput("writer", self.name, timeout)
        return publish, close

    def open_reader(self, timeout):
        read, _, close = pyseq_throughput("reader", self.name, timeout)
        return read, close

    def cleanup(self):
        if hasattr(self, "name"):
            pyseq_throughput("remove", self.name)


class PyseqBatchChannel(PyseqChannel):
    key, label, batched = "pyseq-batch", f"pyseq batch of {BATCH}", True

    def open_writer(self, timeout):
        _, publish_batch, close = pyseq_throughput("writer", self.name, timeout)
        return publish_batch, close

    def open_reader(self, timeout):
        _, read_batch, close = pyseq_throughput("reader", self.name, timeout)
        return read_batch, close


class PipeChannel:
    key, label, batched = "pipe", "multiprocessing.Pipe", False

    def prepare(self):
        self.conns = harness.CTX.Pipe(duplex=False)  # (receive end, send end)

    def open_writer(self, timeout):
        return self.conns[1].send_bytes, lambda: None

    def open_reader(self, timeout):
        poll, recv_bytes = self.conns[0].poll, self.conns[0].recv_bytes

        def recv():
            if not poll(timeout):
                raise TimeoutError(f"nothing on the Pipe for {timeout} s")
            return recv_bytes()

        return recv, lambda: None

    def cleanup(self):
        for conn in self.conns:
            conn.close()


class QueueChannel:
    key, label, batched = "queue", "multiprocessing.Queue", False

    def prepare(self):
        self.queue = harness.CTX.Queue()

    def open_writer(self, timeout):
        return self.queue.put, lambda: None

    def open_reader(self, timeout):
        get = self.queue.get

        def recv():
            try:
                return get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"nothing on the Queue for {timeout} s") from None

        return recv, lambda: None

    def cleanup(self):
        self.queue.cancel_join_thread()
        self.queue.close()


CHANNELS = [PyRingChannel, PyseqChannel, PyseqBatchChannel, PipeChannel, QueueChannel]


# ============================================================================================
# The two peers
# ============================================================================================


def writer_peer(channel, count, timeout, ready, done, done_timeout):
    send, close = channel.open_writer(timeout)
    records = batch_records(0, count) if channel.batched else None  # built before the clock starts
    try:
        if not ready.wait(timeout):
            raise TimeoutError(f"the reader did not attach within {timeout} s")
        preempted = harness.preemptions()
        start = time.perf_counter_ns()
        if channel.batched:
            for i in range(0, count, BATCH):
                send(records[i:i + BATCH])
        else:
            for i in range(count):
                send(message(i))
        publish_ns = time.perf_counter_ns() - start
        preempted = harness.preemptions() - preempted
        # keep the channel open until the reader has everything
        if not done.wait(done_timeout):
            raise TimeoutError(f"the reader did not finish within {done_timeout:.0f} s")
        return {"sent": count, "start_ns": start, "publish_ns": publish_ns, "preempted": preempted}
    finally:
        close()


def reader_peer(channel, count, timeout, ready, done):
    recv, close = channel.open_reader(timeout)
    try:
        if channel.batched:
            recv(0, count)  # allocate and fault in the destination before the clock starts
        preempted = harness.preemptions()
        ready.set()
        if channel.batched:
            # the timed loop only moves messages (into one preallocated array); every one of them
            # is checked below, after the clock stops
            got = 0
            stalled_since = None
            while got < count:
                k = recv(min(BATCH, count - got), count)
                if k == 0:  # read_batch returns empty on timeout instead of raising
                    stalled_since = stalled_since or time.monotonic()
                    if time.monotonic() - stalled_since > timeout:
                        raise TimeoutError(f"no message {got} within {timeout} s")
                    continue
                stalled_since = None
                got += k
            end = time.perf_counter_ns()
            seqs, lengths, msg_types, payload = recv.collected()
            want = batch_records(0, count)
            first = int(seqs[0])
            if (len(seqs) != count or not np.array_equal(seqs, np.arange(first, first + count))
                    or not np.all(lengths == MESSAGE_LENGTH) or not np.all(msg_types == MSG_TYPE)
                    or not np.array_equal(payload[:, :MESSAGE_LENGTH], want)):
                bad = np.flatnonzero(np.any(payload[:, :MESSAGE_LENGTH] != want, axis=1))
                raise BenchFailed(f"batch check failed: {len(seqs)} messages, first bad at "
                                  f"{int(bad[0]) if len(bad) else '?'}: wrong sequence, length, type or payload")
            return {"received": count, "end_ns": end, "preempted": harness.preemptions() - preempted}
        else:
            for i in range(count):
                m = recv()
                if m != message(i):
                    want = message(i)
                    got_index = int.from_bytes(m[:8], "little") if len(m) >= 8 else None
                    raise BenchFailed(f"message {i}: got {len(m)} bytes with index {got_index}"
                                      f"{'' if m[8:] == want[8:] else ' and a corrupt pattern'}, "
                                      f"expected index {i}")
        end = time.perf_counter_ns()
        return {"received": count, "end_ns": end, "preempted": harness.preemptions() - preempted}
    finally:
        done.set()
        close()


def run_channel(cls, count, cfg, cpus) -> dict:
    """One run of one channel, checked: messages, seconds, msgs/s."""
    channel = cls()
    ready, done = harness.CTX.Event(), harness.CTX.Event()
    deadline = 90.0  # a stuck peer is caught by the other's per-message timeout long before
    try:
        channel.prepare()
        results = harness.run_peers(
            [("writer", cpus[0], writer_peer, (channel, count, cfg.timeout, ready, done, deadline)),
             ("reader", cpus[1], reader_peer, (channel, count, cfg.timeout, ready, done))],
            deadline_s=deadline)
    finally:
        channel.cleanup()
    w, r = results["writer"], results["reader"]
    if w["sent"] != count or r["received"] != count:
        raise BenchFailed(f"sent {w['sent']}, received {r['received']}, expected {count}")
    seconds = (r["end_ns"] - w["start_ns"]) / 1e9
    return {"messages": count, "seconds": round(seconds, 4), "msgs_per_s": round(count / seconds),
            "preempted": w["preempted"] + r["preempted"]}


def run_floor(floor, count, cfg, cpus) -> dict:
    values, _ = floor.run("throughput", count, 0, cpus, cfg.timeout)
    if int(values["messages"]) != count:
        raise BenchFailed(f"C floor moved {values['messages']} messages, expected {count}")
    return {"messages": count, "seconds": round(float(values["seconds"]), 4),
            "msgs_per_s": round(float(values["msgs_per_s"])),
            "preempted": int(values["preempted_a"]) + int(values["preempted_b"])}


class Row:
    """One channel's runs: the median run's rate, and the range."""

    def __init__(self, label):
        self.label = label
        self.status, self.reason = "ok", ""
        self.runs = []

    def as_dict(self):
        d = {"status": self.status, "runs": self.runs}
        if self.status != "ok":
            d["reason"] = self.reason
        elif self.runs:
            rates = sorted(r["msgs_per_s"] for r in self.runs)
            median = rates[len(rates) // 2] if len(rates) % 2 else round(
                (rates[len(rates) // 2 - 1] + rates[len(rates) // 2]) / 2)
            d.update({"messages_per_run": self.runs[0]["messages"], "msgs_per_s": median,
                      "mb_per_s": round(median * MESSAGE_LENGTH / 1e6, 1),
                      "msgs_per_s_min": rates[0], "msgs_per_s_max": rates[-1]})
        return d

    def print(self):
        if self.status != "ok":
            print(f"{self.label:<26} {self.status}: {self.reason}", flush=True)
            return
        d = self.as_dict()
        spread = f"{d['msgs_per_s_min']:,} .. {d['msgs_per_s_max']:,}"
        preempted = sum(r["preempted"] for r in self.runs)
        print(f"{self.label:<26} {d['messages_per_run']:>11,} {d['msgs_per_s']:>13,} "
              f"{d['mb_per_s']:>9,.1f} {preempted:>7,}   {spread}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="few messages (whole run < 60 s)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--only", metavar="KEYS",
                   help="comma-separated subset of: pyring,pyseq,pyseq-batch,pipe,queue,floor")
    p.add_argument("--repeat", type=int, help="runs per channel, interleaved across channels")
    p.add_argument("--timeout", type=float, default=5.0,
                   help="longest wait for any one message before the run fails (s)")
    cfg = p.parse_args(argv)
    cfg.repeat = cfg.repeat or (3 if cfg.quick else 5)
    scale = 1 if cfg.quick else 4
    counts = {"pyring": 200_000 * scale, "pyseq": 200_000 * scale, "pyseq-batch": 1_000_000 * scale,
              "pipe": 50_000 * scale, "queue": 50_000 * scale, "floor": 5_000_000 * scale}
    only = set(cfg.only.split(",")) if cfg.only else None
    channels = [cls for cls in CHANNELS if not only or cls.key in only]
    floor_label = "C floor: C ring" if not only or "floor" in only else None

    harness.start_bench()
    cpus = harness.cpu_pair()
    pinned = f"writer on CPU {cpus[0]}, reader on CPU {cpus[1]}" if cpus[0] is not None else "not pinned"
    print(f"throughput, one writer -> one reader, {MESSAGE_LENGTH}-byte messages, every message "
          f"checked; {pinned}; {cfg.repeat} runs per channel, interleaved", flush=True)

    rows = {cls.label: Row(cls.label) for cls in channels}
    if floor_label:
        rows[floor_label] = Row(floor_label)
    floor = harness.Floor() if floor_label else None
    try:
        for rep in range(cfg.repeat):
            jobs = [(cls.label, functools.partial(run_channel, cls, counts[cls.key], cfg, cpus))
                    for cls in channels]
            if floor_label:
                jobs.append((floor_label, functools.partial(run_floor, floor, counts["floor"], cfg, cpus)))
            for label, job in jobs:
                row = rows[label]
                if row.status != "ok":
                    continue
                try:
                    run = job()
                    row.runs.append(run)
                    print(f"  run {rep + 1}/{cfg.repeat} {label:<26} {run['msgs_per_s']:>13,} msgs/s",
                          flush=True)
                except Unavailable as exc:
                    row.status, row.reason = "skipped", str(exc)
                    print(f"  {label}: skipped: {exc}", flush=True)
                except Exception as exc:  # BenchFailed, or a channel that broke in the bench process
                    reason = str(exc) if isinstance(exc, BenchFailed) else f"{type(exc).__name__}: {exc}"
                    row.status, row.reason = "FAILED", reason
                    print(f"  {label}: FAILED: {reason}", flush=True)
    finally:
        if floor is not None:
            floor.close()

    print()
    print("msgs/s: the median run.  preempt: involuntary context switches of the two peers while\n"
          "measuring; more than a few means other processes wanted those CPUs (multiprocessing.Queue's\n"
          "own feeder thread counts too).")
    print(f"{'channel':<26} {'msgs/run':>11} {'msgs/s':>13} {'MB/s':>9} {'preempt':>7}   "
          "msgs/s range over runs")
    for row in rows.values():
        row.print()

    alone = {}
    if any(cls.key.startswith("pyseq") for cls in channels):
        try:
            alone = pyseq_writer_alone(counts["pyseq-batch"], cfg.repeat)
        except Unavailable as exc:
            print(f"writer alone: skipped: {exc}")
        print("\nthe publish calls alone (one process, nobody reading, every run checked): median msgs/s")
        for label, runs in alone.items():
            med = sorted(runs)[len(runs) // 2]
            print(f"{label:<44} {med:>13,}   range {min(runs):,} .. {max(runs):,}")

    failed = any(row.status == "FAILED" for row in rows.values())
    if cfg.json:
        report = {"bench": "throughput", "message_length": MESSAGE_LENGTH, "batch": BATCH,
                  "machine": harness.machine_info(cpus),
                  "config": {"quick": cfg.quick, "counts": counts, "repeat": cfg.repeat,
                             "timeout_s": cfg.timeout},
                  "results": {label: row.as_dict() for label, row in rows.items()},
                  "writer_alone_msgs_per_s": alone}
        with open(cfg.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        print(f"wrote {cfg.json}")
    if failed:
        print("FAILED: see the rows above", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
