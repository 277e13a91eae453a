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

Channels: the pure-Python shared-memory ring (bench/pure_python_ring.py, one message per call),
pyseq one message per call (publish / read), pyseq in batches (publish_batch / read_batch,
BATCH messages per call), multiprocessing.Pipe and multiprocessing.Queue for scale, and the C
floor (bench/floor/cacheline_pingpong.c, mode throughput: the same ring protocol in C).  The
reader checks every message: its index (so count and order) and every payload byte.  The
writer is held back by the reader on every channel (ring back-pressure, a full pipe), so
nothing is dropped and nothing is measured twice.

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
BATCH = 256
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

    def read_one() -> bytes:
        return read(timeout=timeout).payload

    def read_many(n):
        arr = read_batch(n, timeout=timeout)
        k = len(arr)
        payload = arr["payload"]
        if not (payload.dtype == np.uint8 and payload.ndim == 2):
            payload = np.ascontiguousarray(payload).view(np.uint8).reshape(k, -1)
        return (arr["seq"], arr["length"], arr["msg_type"], payload)

    def close():
        closer = getattr(reader, "close", None)
        if closer is not None:
            closer()
        att.close()

    return read_one, read_many, close


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
        expected = [1]

        def recv():
            seq, msg_type, payload = read(timeout)
            if seq != expected[0] or msg_type != MSG_TYPE:
                raise BenchFailed(f"sequence {seq} type {msg_type}, expected {expected[0]}")
            expected[0] = seq + 1
            return payload

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
    try:
        if not ready.wait(timeout):
            raise TimeoutError(f"the reader did not attach within {timeout} s")
        start = time.perf_counter_ns()
        if channel.batched:
            for i in range(0, count, BATCH):
                send(batch_records(i, min(BATCH, count - i)))
        else:
            for i in range(count):
                send(message(i))
        publish_ns = time.perf_counter_ns() - start
        # keep the channel open until the reader has everything
        if not done.wait(done_timeout):
            raise TimeoutError(f"the reader did not finish within {done_timeout:.0f} s")
        return {"sent": count, "start_ns": start, "publish_ns": publish_ns}
    finally:
        close()


def reader_peer(channel, count, timeout, ready, done):
    recv, close = channel.open_reader(timeout)
    try:
        ready.set()
        if channel.batched:
            got = 0
            next_seq = None
            stalled_since = None
            while got < count:
                seqs, lengths, msg_types, payload = recv(min(BATCH, count - got))
                k = len(seqs)
                if k == 0:  # read_batch may return empty on timeout instead of raising
                    stalled_since = stalled_since or time.monotonic()
                    if time.monotonic() - stalled_since > timeout:
                        raise TimeoutError(f"no message {got} within {timeout} s")
                    continue
                stalled_since = None
                if next_seq is None:
                    next_seq = int(seqs[0])
                want = batch_records(got, k)
                if (not np.array_equal(seqs, np.arange(next_seq, next_seq + k))
                        or not np.all(lengths == MESSAGE_LENGTH) or not np.all(msg_types == MSG_TYPE)
                        or not np.array_equal(payload[:, :MESSAGE_LENGTH], want)):
                    raise BenchFailed(f"batch at message {got} ({k} messages): wrong sequence, "
                                      "length, type or payload")
                next_seq += k
                got += k
        else:
            for i in range(count):
                m = recv()
                if m != message(i):
                    raise BenchFailed(f"message {i}: got {m[:8].hex()}.., expected "
                                      f"{message(i)[:8].hex()}..")
        end = time.perf_counter_ns()
        return {"received": count, "end_ns": end}
    finally:
        done.set()
        close()


def run_channel(cls, count, cfg, cpus) -> dict:
    channel = cls()
    ready, done = harness.CTX.Event(), harness.CTX.Event()
    deadline = cfg.time_limit + 30
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
    rate = count / seconds
    return {"messages": count, "seconds": round(seconds, 4), "msgs_per_s": round(rate),
            "mb_per_s": round(rate * MESSAGE_LENGTH / 1e6, 1)}


def print_row(label, row):
    if row.get("status") != "ok":
        print(f"{label:<30} {row['status']}: {row['reason']}", flush=True)
        return
    print(f"{label:<30} {row['messages']:>12,} {row['msgs_per_s']:>14,} {row['mb_per_s']:>10,.1f}"
          f" {row['seconds']:>9.2f}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="few messages (whole run < 60 s)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--only", metavar="KEYS",
                   help="comma-separated subset of: pyring,pyseq,pyseq-batch,pipe,queue,floor")
    p.add_argument("--timeout", type=float, default=5.0,
                   help="longest wait for any one message before the run fails (s)")
    cfg = p.parse_args(argv)
    cfg.time_limit = 60.0
    scale = 1 if cfg.quick else 5
    counts = {"pyring": 300_000 * scale, "pyseq": 300_000 * scale, "pyseq-batch": 2_000_000 * scale,
              "pipe": 100_000 * scale, "queue": 100_000 * scale, "floor": 10_000_000 * scale}
    only = set(cfg.only.split(",")) if cfg.only else None

    harness.exit_on_sigterm()
    stale = harness.sweep_stale_shm()
    if stale:
        print(f"removed {len(stale)} stale shared-memory objects left by killed runs", flush=True)
    cpus = harness.cpu_pair()
    report = {"bench": "throughput", "message_length": MESSAGE_LENGTH, "batch": BATCH,
              "machine": harness.machine_info(cpus),
              "config": {"quick": cfg.quick, "counts": counts, "timeout_s": cfg.timeout},
              "results": {}}
    pinned = f"writer on CPU {cpus[0]}, reader on CPU {cpus[1]}" if cpus[0] is not None else "not pinned"
    print(f"throughput, one writer -> one reader, {MESSAGE_LENGTH}-byte messages, every message "
          f"checked; {pinned}")
    print(f"{'channel':<30} {'messages':>12} {'msgs/s':>14} {'MB/s':>10} {'seconds':>9}", flush=True)

    failed = False
    for cls in CHANNELS:
        if only and cls.key not in only:
            continue
        try:
            row = {"status": "ok", **run_channel(cls, counts[cls.key], cfg, cpus)}
        except Unavailable as exc:
            row = {"status": "skipped", "reason": str(exc)}
        except BenchFailed as exc:
            row = {"status": "FAILED", "reason": str(exc)}
            failed = True
        report["results"][cls.label] = row
        print_row(cls.label, row)

    if not only or "floor" in only:
        label = "C floor: C ring"
        floor = harness.Floor()
        try:
            values, _ = floor.run("throughput", counts["floor"], 0, cpus, cfg.timeout)
            row = {"status": "ok", "messages": int(values["messages"]),
                   "seconds": round(float(values["seconds"]), 4),
                   "msgs_per_s": round(float(values["msgs_per_s"])),
                   "mb_per_s": float(values["mb_per_s"])}
        except Unavailable as exc:
            row = {"status": "skipped", "reason": str(exc)}
        except BenchFailed as exc:
            row = {"status": "FAILED", "reason": str(exc)}
            failed = True
        finally:
            floor.close()
        report["results"][label] = row
        print_row(label, row)

    if cfg.json:
        with open(cfg.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        print(f"wrote {cfg.json}")
    if failed:
        print("FAILED: see the rows above", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
