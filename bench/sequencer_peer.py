"""What the benches through pyseq.Sequencer share: the sequencer process, the check of a
sequenced stream, the message format, and the removal of a sequencer's rings.

Used by client_sequencer_reader_latency.py, flooding_client_latency.py, run.py (transports.py) and
sequencer_throughput.py.  Messages are transports.py's: 64 bytes, a little-endian counter
(per client, from 0) and then PATTERN, message type MSG_TYPE.  Every wait here has a timeout;
the benches start and kill the processes with harness.run_peers and remove the rings with
harness.unlink_ring_family in a finally.
"""

from __future__ import annotations

import os
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402  (before numpy: it sets OPENBLAS_NUM_THREADS)
import numpy as np  # noqa: E402
from harness import BenchFailed, Unavailable  # noqa: E402
import transports  # noqa: E402
from transports import MESSAGE_LENGTH, MSG_TYPE, PATTERN, batch_records, message  # noqa: E402,F401

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYSTEM_FIRST = 0xFF00  # pyseq.SYSTEM_FIRST; system messages (CLIENT_JOINED, ...) are sequenced too
END_OF_STREAM = 0xFFFF
PATTERN_WORDS = np.frombuffer(PATTERN, dtype="<i8")  # payload bytes 8..63 as 7 words
DATA_WORD = MESSAGE_LENGTH | MSG_TYPE << 32  # frame word 2 of a bench message: length, type, schema 0
COUNTER = struct.Struct("<q")
STATS_EVERY_S = 0.2


def import_pyseq():
    pyseq = transports.import_pyseq()
    if not hasattr(pyseq, "Sequencer"):
        raise Unavailable(f"pyseq at {getattr(pyseq, '__path__', '?')} has no Sequencer yet")
    if (pyseq.SYSTEM_FIRST, pyseq.END_OF_STREAM) != (SYSTEM_FIRST, END_OF_STREAM):
        raise BenchFailed("pyseq's system message types changed: update sequencer_peer.py")
    return pyseq


def idle(name: str):
    """busy-spin | spin-yield | backoff (run.py --smoke: its sleeps are the latency, so the
    sequencer benches themselves do not use it)."""
    pyseq = import_pyseq()
    return {"busy-spin": pyseq.BusySpin, "spin-yield": pyseq.SpinYield, "backoff": pyseq.BackoffIdle}[name]()


class Flag:
    """A stop flag the sequencer can look at between its 10 ms slices for ~1 us: a byte of shared
    memory (multiprocessing.Event.is_set takes a lock: ~10 us in a process whose caches the C loop
    has just filled)."""

    def __init__(self):
        self._value = harness.CTX.RawValue("b", 0)

    def set(self) -> None:
        self._value.value = 1

    def is_set(self) -> bool:
        return self._value.value != 0


def sequencer_main(ring: str, idle_name: str, limits: dict, ready, stop: Flag, run_cap_s: float,
                   options: dict | None = None) -> dict:
    """The sequencer process: pyseq.Sequencer on `ring` until `stop` is set (at most run_cap_s),
    then close() (drain, END_OF_STREAM).  `options`: more keyword arguments for Sequencer.
    Returns its counts; those of a client that left are the last seen (every STATS_EVERY_S: a
    client's counts leave Sequencer.stats() with it), so they may miss its last messages."""
    pyseq = import_pyseq()
    seq = pyseq.Sequencer(ring, idle=idle(idle_name), limits=pyseq.Limits.from_mapping(limits),
                          **(options or {}))
    clients: dict = {}
    try:
        preempted = harness.preemptions()
        start = last_stats = time.monotonic()
        ready.set()
        while not stop.is_set():
            seq.step()
            now = time.monotonic()
            if now - last_stats >= STATS_EVERY_S:
                last_stats = now
                clients.update(seq.stats()["clients"])
            if now - start > run_cap_s:
                raise BenchFailed(f"the sequencer was not stopped within {run_cap_s:.0f} s")
        stats = seq.stats()
        clients.update(stats["clients"])
        stats["clients"] = clients
        stats["preempted"] = harness.preemptions() - preempted
        stats["seconds"] = round(time.monotonic() - start, 3)
        return stats
    finally:
        seq.close()


class StreamCheck:
    """Checks a sequenced stream batch by batch (arrays from Reader.read_batch): sequence numbers
    dense; only MSG_TYPE messages (64 bytes, schema 0) and system messages; every
    message of a known source carrying that source's next counter (each client's order kept,
    nothing lost, nothing twice); optionally the payload pattern.  Counts per source.

    Numpy calls cost microseconds each here, so a batch is checked with a fixed handful of them
    whatever its size: the frame is read as 64-bit words (seq, timestamp, length|type|schema,
    source|origin, counter), and each client's messages, which the sequencer moves in runs, are
    checked run by run: consecutive within a run (one vector test), each run continuing where
    that client's last run ended (a Python loop over the runs)."""

    FRAME_OFFSETS = {"seq": 0, "timestamp_ns": 8, "length": 16, "msg_type": 20, "schema_version": 22,
                     "source": 24, "origin": 28, "payload": 32}

    def __init__(self, ring_dtype: np.dtype, sources: dict, check_pattern=True):
        """`sources`: {source id: client name}; `check_pattern`: True (every message's payload is
        compared with PATTERN), "last" (the last message of each batch: the full comparison costs
        more than the reader's whole share of a throughput run), a set of source ids, or False."""
        f = ring_dtype.fields
        moved = {k: v for k, v in self.FRAME_OFFSETS.items() if f[k][1] != v}
        if moved or ring_dtype.itemsize % 8:
            raise BenchFailed(f"the frame layout is not the one this check reads: {moved}")
        self.words = ring_dtype.itemsize // 8
        self.names = dict(sources)  # source id -> client name
        self.next_counter = {s: 0 for s in sources}
        self.check_pattern = check_pattern
        self.next_seq = None
        self.system = 0
        self.end_of_stream = False
        self.first_ts = {}  # source -> sequencing time of its first message
        self.last_ts = {}
        self._arange = np.arange(4096, dtype=np.int64)

    def count(self, source: int) -> int:
        return self.next_counter[source]

    def check(self, batch: np.ndarray) -> None:
        k = len(batch)
        if k == 0:
            return
        if self.end_of_stream:
            raise BenchFailed(f"{k} messages after END_OF_STREAM")
        if k > len(self._arange):
            self._arange = np.arange(k, dtype=np.int64)
        words = batch.view("<i8").reshape(k, self.words)
        g = words[:, :5]  # seq, timestamp, length|type|schema, source|origin, counter (a view: a copy costs more)
        first = int(g[0, 0]) if self.next_seq is None else self.next_seq
        if not bool((g[:, 0] - self._arange[:k] == first).all()):
            raise BenchFailed(f"sequence numbers not dense: expected {first}..{first + k - 1}, "
                              f"got {int(g[0, 0])}..{int(g[-1, 0])}")
        self.next_seq = first + k
        data = g[:, 2] == DATA_WORD
        pw = words
        if not bool(data.all()):
            types = (g[:, 2] >> 32) & 0xFFFF
            system = types >= SYSTEM_FIRST
            bad = np.flatnonzero(~(data | system))
            if len(bad):
                w = int(g[bad[0], 2])
                raise BenchFailed(f"sequence {int(g[bad[0], 0])}: type {(w >> 32) & 0xFFFF}, length "
                                  f"{w & 0xFFFFFFFF}, schema {w >> 48}: not a message this bench sent")
            self.system += int(np.count_nonzero(system))
            ends = np.flatnonzero(types == END_OF_STREAM)
            if len(ends):
                if int(ends[0]) != k - 1:
                    raise BenchFailed(f"messages after END_OF_STREAM (sequence {int(g[ends[0], 0])})")
                self.end_of_stream = True
            g, pw = g[data], words[data]
        n = len(g)
        if n == 0:
            return
        src, cnt = g[:, 3] & 0xFFFFFFFF, g[:, 4]  # the low half of word 3 is the source
        if n > 1:
            same = src[1:] == src[:-1]
            if not bool(((cnt[1:] - cnt[:-1] == 1) | ~same).all()):
                at = int(np.flatnonzero(same & (cnt[1:] - cnt[:-1] != 1))[0])
                raise BenchFailed(f"client {self.names.get(int(src[at]), int(src[at]))!r}: counter "
                                  f"{int(cnt[at + 1])} after {int(cnt[at])} (sequence {int(g[at + 1, 0])})")
            bounds = [0, *(np.flatnonzero(~same) + 1).tolist(), n]
        else:
            bounds = [0, 1]
        pattern = self.check_pattern
        if pattern is True and not bool((pw[:, 5:5 + len(PATTERN_WORDS)] == PATTERN_WORDS).all()):
            raise BenchFailed("a payload differs from the pattern sent")
        if pattern == "last" and not bool((pw[n - 1, 5:5 + len(PATTERN_WORDS)] == PATTERN_WORDS).all()):
            raise BenchFailed(f"the payload of sequence {int(g[n - 1, 0])} differs from the pattern sent")
        for a, b in zip(bounds, bounds[1:]):
            s = int(src[a])
            expected = self.next_counter.get(s)
            if expected is None:
                raise BenchFailed(f"sequence {int(g[a, 0])}: message from unknown source {s}")
            if int(cnt[a]) != expected:
                raise BenchFailed(f"client {self.names[s]!r}: counter {int(cnt[a])} where {expected} was "
                                  f"next (sequence {int(g[a, 0])}): lost, repeated or out of order")
            self.next_counter[s] = int(cnt[b - 1]) + 1
            self.first_ts.setdefault(s, int(g[a, 1]))
            self.last_ts[s] = int(g[b - 1, 1])
            if isinstance(pattern, (set, frozenset)) and s in pattern and not bool(
                    (pw[a:b, 5:5 + len(PATTERN_WORDS)] == PATTERN_WORDS).all()):
                raise BenchFailed(f"client {self.names[s]!r}: a payload differs from the pattern sent")


def code_version() -> dict:
    """The commit the benched pyseq comes from, and the files changed since (the tree is shared)."""
    import subprocess

    def git(*args):
        try:
            out = subprocess.run(["git", "-C", REPO_ROOT, *args], capture_output=True, text=True, timeout=10)
            return out.stdout.strip() if out.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired):
            return None

    changed = git("status", "--porcelain", "--", "pyseq", "csrc")
    return {"commit": git("rev-parse", "HEAD"), "changed": changed.splitlines() if changed else []}


def sequencer_row_stats(stats: dict) -> dict:
    """The sequencer's loop counts in a form for the JSON report."""
    return {k: stats[k] for k in ("rounds", "idle_rounds", "out_full", "preempted", "seconds") if k in stats} | {
        "clients": {name: {k: c[k] for k in ("submitted", "sequenced", "deferred")}
                    for name, c in stats.get("clients", {}).items()}}
