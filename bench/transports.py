"""The channels bench/run.py compares, behind one interface, and the messages they carry.

    writer process                         reader process(es)
    +----------------------+   channel    +--------------------------+
    | send(payload)        | -----------> | recv() -> payload        |   x readers: one channel each
    | send_batch(records)  |              | recv_batch(n) -> k       |   (point-to-point peers), or one
    +----------------------+              +--------------------------+   ring read by all (pyseq)

A transport is prepared in the bench process (before the peers fork): prepare(size, readers,
capacity); then writer() in the writer's process returns (send, close) and reader(i) in reader
i's process returns (recv, close).  `send` delivers one message to every reader; `recv` waits
(at most the timeout) for the next one and returns its payload.  Batched transports move numpy
(n, size) uint8 arrays instead: send(records), and recv(n) copies up to n messages into the
reader's own array (recv.collected() gives it back for the check, after the clock).
cleanup() runs in the bench's finally.  A transport whose package is missing raises
harness.Unavailable from probe(), naming the pip command.

Idle strategies: "busy-spin", "spin-yield" (spin, then sched_yield), "backoff" (spin, yield,
then sleep, doubling): pyseq's own (pyseq.idle), and the same three for the pure-Python ring.
The kernel-blocking peers (Queue, Pipe, faster-fifo, ZeroMQ) have no idle choice: they sleep in
the kernel until a message comes.
"""

from __future__ import annotations

import os
import queue
import struct
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402  (before numpy: it sets OPENBLAS_NUM_THREADS)
import numpy as np  # noqa: E402
from harness import BenchFailed, Unavailable  # noqa: E402
from pure_python_ring import PyRing  # noqa: E402

MESSAGE_LENGTH = 64  # the default size; run.py also runs 256
MSG_TYPE = 1
SLOT_OVERHEAD = 32  # pyseq's frame header; the slot must hold header + payload
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A message: a little-endian index (8 bytes), then the pattern.  Latency messages carry two
# perf_counter_ns stamps (intended send, actual send) in bytes 8..23, over the pattern.
STAMPS = struct.Struct("<qqq")  # index, intended send ns, actual send ns


_PATTERNS: dict = {}


def pattern(size: int) -> bytes:
    """The bytes after the index in a message of `size` bytes (made once per size)."""
    p = _PATTERNS.get(size)
    if p is None:
        p = _PATTERNS[size] = bytes((0x40 + k) & 0xFF for k in range(size - 8))
    return p


PATTERN = pattern(MESSAGE_LENGTH)


def message(index: int, size: int = MESSAGE_LENGTH) -> bytes:
    return index.to_bytes(8, "little") + (PATTERN if size == MESSAGE_LENGTH else pattern(size))


def batch_records(first_index: int, n: int, size: int = MESSAGE_LENGTH) -> np.ndarray:
    """n messages as an (n, size) uint8 array: little-endian index, then the pattern."""
    records = np.empty((n, size), dtype=np.uint8)
    records[:, 8:] = np.frombuffer(pattern(size), dtype=np.uint8)
    records[:, :8] = np.arange(first_index, first_index + n, dtype="<u8").view(np.uint8).reshape(n, 8)
    return records


def slot_size_for(size: int) -> int:
    """The smallest pyseq slot (a multiple of 64) holding a frame header and `size` bytes."""
    return -(-(size + SLOT_OVERHEAD) // 64) * 64


def import_pyseq():
    try:
        if REPO_ROOT not in sys.path:
            sys.path.append(REPO_ROOT)  # an installed pyseq wins; else the in-tree build
        import pyseq
    except ImportError as exc:
        raise Unavailable(f"pyseq is not importable ({exc}): pip install -e .") from None
    return pyseq


def pyseq_idle(name: str):
    return import_pyseq().idle.idle_named(name)


def _require(module: str, package: str) -> None:
    try:
        __import__(module)
    except ImportError as exc:
        raise Unavailable(f"{package} is not installed ({exc}): pip install {package}") from None


def _timeout_error(what: str, timeout: float) -> TimeoutError:
    return TimeoutError(f"nothing on the {what} for {timeout} s")


class Transport:
    key = label = ""
    batched = False
    point_to_point = True  # one channel per reader; False: one ring all readers read
    pip = None  # the package a missing peer needs

    def __init__(self, idle: str = "busy-spin", timeout: float = 5.0):
        self.idle, self.timeout = idle, timeout

    def probe(self) -> None:
        """Raise Unavailable if this transport cannot run here."""

    def prepare(self, size: int, readers: int = 1, capacity: int = 4096) -> None:
        self.size, self.readers, self.capacity = size, readers, capacity

    def extra_peers(self, cpus) -> list:
        """More processes this transport needs (the sequencer), as harness.run_peers entries."""
        return []

    def cleanup(self) -> None:
        pass


class QueueTransport(Transport):
    key, label = "queue", "multiprocessing.Queue"

    def prepare(self, size, readers=1, capacity=4096):
        super().prepare(size, readers, capacity)
        self.queues = [harness.CTX.Queue(capacity) for _ in range(readers)]

    def writer(self):
        timeout = self.timeout
        puts = [q.put for q in self.queues]

        def send(m):
            for put in puts:
                put(m, timeout=timeout)

        return send, lambda: None

    def reader(self, i):
        get, timeout, label = self.queues[i].get, self.timeout, self.label

        def recv():
            try:
                return get(timeout=timeout)
            except queue.Empty:
                raise _timeout_error(label, timeout) from None

        return recv, lambda: None

    def cleanup(self):
        for q in getattr(self, "queues", []):
            q.cancel_join_thread()
            q.close()


class PipeTransport(Transport):
    key, label = "pipe", "multiprocessing.Pipe"

    def prepare(self, size, readers=1, capacity=4096):
        super().prepare(size, readers, capacity)
        self.pipes = [harness.CTX.Pipe(duplex=False) for _ in range(readers)]  # (receive, send)

    def writer(self):
        sends = [w.send_bytes for _, w in self.pipes]
        if len(sends) == 1:
            return sends[0], lambda: None

        def send(m):
            for s in sends:
                s(m)

        return send, lambda: None

    def reader(self, i):
        conn, timeout = self.pipes[i][0], self.timeout
        poll, recv_bytes = conn.poll, conn.recv_bytes

        def recv():
            if not poll(timeout):
                raise _timeout_error("Pipe", timeout)
            return recv_bytes()

        return recv, lambda: None

    def cleanup(self):
        for pair in getattr(self, "pipes", []):
            for conn in pair:
                conn.close()


class FasterFifoTransport(QueueTransport):
    """Its queues have multiprocessing.Queue's put/get; only making and closing them differ."""

    key, label, pip = "faster-fifo", "faster-fifo", "faster-fifo"

    def probe(self):
        _require("faster_fifo", self.pip)

    def prepare(self, size, readers=1, capacity=4096):
        Transport.prepare(self, size, readers, capacity)
        import faster_fifo
        # bytes in, bytes out, no pickling: the fastest faster-fifo moves bytes (get() hands out a
        # view of its own buffer, which the next get() reuses: loads=bytes copies it out)
        self.queues = [faster_fifo.Queue(max_size_bytes=capacity * (size + 8), loads=bytes, dumps=bytes)
                       for _ in range(readers)]

    def cleanup(self):
        for q in getattr(self, "queues", []):
            q.close()


class ZmqTransport(Transport):
    key, label, pip = "zmq", "ZeroMQ ipc:// (pyzmq)", "pyzmq"

    def probe(self):
        _require("zmq", self.pip)

    def prepare(self, size, readers=1, capacity=4096):
        super().prepare(size, readers, capacity)
        self.dir = tempfile.mkdtemp(prefix="pyseq-bench-zmq-")
        self.addresses = [f"ipc://{self.dir}/r{i}" for i in range(readers)]

    def _socket(self, kind):
        import zmq
        ctx = zmq.Context()  # one per process, made after the fork
        sock = ctx.socket(kind)
        ms = int(self.timeout * 1000)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, 1)  # a PULL that connects before the PUSH binds retries in 1 ms
        sock.setsockopt(zmq.SNDTIMEO, ms)
        sock.setsockopt(zmq.RCVTIMEO, ms)
        sock.setsockopt(zmq.SNDHWM, self.capacity)
        sock.setsockopt(zmq.RCVHWM, self.capacity)
        return ctx, sock

    def writer(self):
        import zmq
        opened = [self._socket(zmq.PUSH) for _ in self.addresses]
        for (_, sock), address in zip(opened, self.addresses):
            sock.bind(address)
        sends = [sock.send for _, sock in opened]

        def send(m):
            try:
                for s in sends:
                    s(m, copy=True)
            except zmq.Again:
                raise TimeoutError(f"ZeroMQ: no room to send for {self.timeout} s") from None

        def close():
            for ctx, sock in opened:
                sock.close(0)
                ctx.term()

        return send, close

    def reader(self, i):
        import zmq
        ctx, sock = self._socket(zmq.PULL)
        sock.connect(self.addresses[i])
        recv_raw = sock.recv

        def recv():
            try:
                return recv_raw(copy=True)
            except zmq.Again:
                raise _timeout_error("ZeroMQ socket", self.timeout) from None

        def close():
            sock.close(0)
            ctx.term()

        return recv, close

    def cleanup(self):
        import shutil
        if hasattr(self, "dir"):
            shutil.rmtree(self.dir, ignore_errors=True)


class PyRingTransport(Transport):
    key, label = "pyring", "pure-Python shm ring"

    def prepare(self, size, readers=1, capacity=4096):
        super().prepare(size, readers, capacity)
        self.names = [harness.shm_name(f"pyring{i}") for i in range(readers)]

    def writer(self):
        slot = slot_size_for(self.size)
        writers = []
        try:
            for name in self.names:
                writers.append(PyRing.create(name, capacity=self.capacity, slot_size=slot, idle=self.idle))
        except BaseException:
            self._close_writers(writers)
            raise
        timeout = self.timeout
        publishes = [w.publish for w in writers]

        def send(m):
            for publish in publishes:
                publish(MSG_TYPE, m, timeout)

        return send, lambda: self._close_writers(writers)

    @staticmethod
    def _close_writers(writers):
        for w in writers:
            w.close()
            w.unlink()

    def reader(self, i):
        r = PyRing.attach(self.names[i], timeout=self.timeout, idle=self.idle)
        read, timeout = r.read, self.timeout

        def recv():
            return read(timeout)[2]

        return recv, r.close

    def cleanup(self):
        harness.unlink_shm(*getattr(self, "names", []))


class PyseqTransport(Transport):
    """One pyseq ring; every reader is a gating reader of it (nothing is lost, nobody is lapped)."""

    key, label, point_to_point = "pyseq", "pyseq publish/read", False

    def probe(self):
        import_pyseq()

    def prepare(self, size, readers=1, capacity=4096):
        super().prepare(size, readers, capacity)
        self.name = harness.shm_name(self.key)

    def _ring(self):
        pyseq = import_pyseq()
        return pyseq, pyseq.Ring.create(self.name, capacity=self.capacity, slot_size=slot_size_for(self.size),
                                        idle=pyseq_idle(self.idle))

    def _close_ring(self, ring):
        ring.close()
        ring.unlink()

    def writer(self):
        _, ring = self._ring()
        publish, timeout = ring.publish, self.timeout

        def send(m):
            publish(MSG_TYPE, m, timeout=timeout)

        return send, lambda: self._close_ring(ring)

    def _reader(self, i):
        pyseq = import_pyseq()
        att = pyseq.Ring.attach(self.name, timeout=self.timeout)
        try:
            reader = att.reader(f"bench{i}", gating=True, idle=pyseq_idle(self.idle))
        except BaseException:
            att.close()
            raise

        def close():
            reader.close()
            att.close()

        return att, reader, close

    def reader(self, i):
        _, reader, close = self._reader(i)
        read, timeout = reader.read, self.timeout

        def recv():
            return read(timeout).payload

        return recv, close

    def cleanup(self):
        if hasattr(self, "name"):
            try:
                import_pyseq().Ring.remove(self.name)
            except Exception:  # not there (the writer unlinked it): fine
                pass


class PyseqBatchTransport(PyseqTransport):
    key, label, batched = "pyseq-batch", "pyseq publish_batch/read_batch", True

    def writer(self):
        _, ring = self._ring()
        publish_batch, timeout = ring.publish_batch, self.timeout

        def send(records):
            publish_batch(MSG_TYPE, records, timeout=timeout)

        return send, lambda: self._close_ring(ring)

    def reader(self, i):
        att, reader, close = self._reader(i)
        read_batch, timeout = reader.read_batch, self.timeout
        state = {"all": None, "got": 0}

        def recv(n, total):
            """Copy up to n messages into one array of `total` messages; return how many came.
            recv(0, total) allocates that array and touches its pages (before the clock)."""
            if state["all"] is None:
                state["all"] = np.empty(total, dtype=att.dtype)
                state["all"].view(np.uint8).fill(0)
            if n == 0:
                return 0
            got = state["got"]
            k = len(read_batch(n, timeout=timeout, out=state["all"][got:got + n]))
            state["got"] = got + k
            return k

        def collected():
            arr = state["all"][:state["got"]]
            return arr["seq"], arr["length"], arr["msg_type"], arr["payload"]

        recv.collected = collected
        return recv, close


class PyseqSequencerTransport(Transport):
    """Client.submit -> the sequencer process -> a reader of the sequenced ring.  One reader only.
    In latency runs the client and the reader are one process (`loopback`): one clock times the
    way through the sequencer, one way, not halved."""

    key, label, point_to_point, loopback = "pyseq-seq", "pyseq via sequencer", False, True

    def probe(self):
        if not hasattr(import_pyseq(), "Sequencer"):
            raise Unavailable("this pyseq has no Sequencer")

    def prepare(self, size, readers=1, capacity=4096):
        if readers != 1:
            raise Unavailable("through the sequencer: one reader in this bench")
        super().prepare(size, readers, capacity)
        from sequencer_peer import Flag
        self.name = harness.shm_name("seq")
        self.ready, self.stop = harness.CTX.Event(), Flag()

    def extra_peers(self, cpus):
        from sequencer_peer import sequencer_main
        options = {"capacity": max(self.capacity, 65536), "slot_size": slot_size_for(self.size)}
        return [("sequencer", cpus[1], sequencer_main,
                 (self.name, self.idle, {}, self.ready, self.stop, 600.0, options))]

    def _wait_sequencer(self):
        if not self.ready.wait(self.timeout):
            raise TimeoutError(f"the sequencer did not start within {self.timeout} s")

    def writer(self):
        pyseq = import_pyseq()
        self._wait_sequencer()
        client = pyseq.Client.connect(self.name, "bench", timeout=self.timeout, idle=pyseq_idle(self.idle))
        submit, timeout = client.submit, self.timeout

        def send(m):
            submit(MSG_TYPE, m, timeout=timeout)

        self.source = client.source
        return send, client.close

    def reader(self, i):
        pyseq = import_pyseq()
        self._wait_sequencer()
        att = pyseq.Ring.attach(self.name, timeout=self.timeout)
        try:
            reader = att.reader("bench", gating=True, idle=pyseq_idle(self.idle))
        except BaseException:
            att.close()
            raise
        read, poll, timeout, system = reader.read, reader.poll, self.timeout, pyseq.SYSTEM_FIRST

        def payload(m):
            if m.msg_type != MSG_TYPE:
                raise BenchFailed(f"sequence {m.seq}: type {m.msg_type}, expected {MSG_TYPE}")
            return m.payload

        def recv():
            m = read(timeout)
            while m.msg_type >= system:  # CLIENT_JOINED and the like are sequenced too
                m = read(timeout)
            return payload(m)

        def try_recv():
            """The next message's payload, or None if none has come (never waits)."""
            m = poll()
            while m is not None and m.msg_type >= system:
                m = poll()
            return None if m is None else payload(m)

        recv.poll = try_recv

        def close():
            try:
                reader.close()
                att.close()
            finally:
                self.stop.set()

        return recv, close

    def loopback_pair(self):
        """(send, recv, close) for one process that submits and reads its own messages."""
        return open_pair(self, self)

    def cleanup(self):
        if hasattr(self, "stop"):
            self.stop.set()
        if hasattr(self, "name"):
            harness.unlink_ring_family(self.name)


def open_pair(out: Transport, inp: Transport):
    """(send, recv, close): the writer end of `out` and reader 0 of `inp`, in this process."""
    send, close_writer = out.writer()
    try:
        recv, close_reader = inp.reader(0)
    except BaseException:
        close_writer()
        raise

    def close():
        try:
            close_reader()
        finally:
            close_writer()

    return send, recv, close


TRANSPORTS = [QueueTransport, PipeTransport, FasterFifoTransport, ZmqTransport, PyRingTransport,
              PyseqTransport, PyseqBatchTransport, PyseqSequencerTransport]
BY_KEY = {cls.key: cls for cls in TRANSPORTS}
