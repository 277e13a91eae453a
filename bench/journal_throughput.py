"""The journal: write throughput per fsync mode beside a plain write of the same bytes, and what a
durable reader waits.

Three parts, each per fsync mode (never, interval:MS, batch):

1. Throughput, two ways, each next to the plain floor (bench/floor/plain_write.c, compiled at run
   time: the same total bytes, to a new file in the same directory, in chunks of the journaler's
   average write, with the matching fdatasync: none / every MS / after every write):

   journaler alone   one process: a pyseq.Ring with a pyseq.journaler.Journaler attached; the
                     main thread publish_batch()es N messages (4,096 a call) while the journaler
                     thread writes them; t0 before the first publish, t1 when ring.journaled_sequence
                     reaches the last one.  The journaler's own ceiling (encode + CRC32C + pwrite
                     + fdatasync), the publisher taking the other CPU.

       +----------------------------------------------------------+
       | publisher thread:  ring.publish_batch(4096 records) ...  |   ring: 65,536 slots
       | journaler thread:  gather -> CRC32C -> pwrite (<= 1 MiB) |   back-off idle both
       |                    -> fdatasync per policy -> journaled  |   (no pinning: 2 CPUs)
       +----------------------------------------------------------+

   through the sequencer   the journal as it runs: pyseq.Sequencer(journal=DIR, fsync=MODE) in
                     one process, a client in another submit_batch()ing N messages (256 a call);
                     t0 before the client's first submit, t1 when the sequenced ring's
                     journaled_sequence reaches the client's last message.  Sequencer, journaler
                     and client wait with back-off; 3 threads share the 2 CPUs (nothing pinned).

       client --inbound--> sequencer C loop --sequenced ring--> journaler thread --> DIR
       (process 1)         (process 2, thread 1)                (process 2, thread 2)

   MB/s counts the bytes the journal wrote (records: 40-byte header + payload, 8-aligned); the
   plain write writes exactly that many.  journal/plain is the figure: 1.0 is the disk's (or the
   page cache's) speed.  Every run's journal is checked after the clock: Journal.verify() (every
   CRC, sequences dense) and every client record's counter and payload bytes.

2. Latency of a durable reader: submit -> read, one way, closed loop (one message in flight), in
   one process with one clock, as bench/client_sequencer_reader_latency.py, through a sequencer
   with a journal in each fsync mode (and none):

       CPU 0                                            CPU 1
       client + reader process                          sequencer process
         t0; submit(i)                  -- inbound -->    C loop (back-off)     --+
         m = normal.read()  (busy-spin) <- sequenced --                          |
         t1  (normal reader)                              journaler thread  <----+
         ... then, in a second phase:                     (back-off; pwrite,
         t0; submit(i); m = durable.read(); t1            fdatasync, journaled_sequence)

   The sequencer and its journaler thread share CPU 1 and both wait with back-off: a journaler
   that must preempt a spinning sequencer answers in 0.1-4 ms (the scheduler's slice), not in
   microseconds.  The durable rows are split at the sequencing time stamped in each message
   (CLOCK_REALTIME, the same clock in both processes): submit -> sequenced (the back-off
   sequencer's wake-up after a quiet spell: ~1 us when messages come back to back, up to its
   1 ms park when they are 10 ms apart) and sequenced -> durable read (the journal's own part).

   The normal reader's phase (warm-up: one lap of the ring, then --count messages) comes first;
   then a durable reader (ring.reader(durable=True)) reads each message as soon as the journal
   holds it as its policy promises, for --count messages or --durable-seconds, whichever is first
   (interval and batch take 0.1-10 ms a message).  Closed loop is the worst case for interval:MS:
   each message arrives just after the previous fdatasync, so it waits about MS.

3. fdatasync of 4 KiB on this file system: an appending pwrite + fdatasync (what the journal
   does: the file grows, so the file system's metadata goes too), and an overwrite + fdatasync.

Journals go to a temporary directory under --dir (default: the repository's parent directory, on
the same disk as the repository); the file system of each is printed (/tmp may be tmpfs, where
fdatasync costs nothing).  Every directory, process and /dev/shm object is removed at the end,
and what a killed run left is swept at the start.

    python bench/journal_throughput.py --quick           # < 60 s
    python bench/journal_throughput.py                   # ~2 min
    python bench/journal_throughput.py --only latency --modes batch --json /tmp/journal.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402  (before numpy: it sets OPENBLAS_NUM_THREADS)
import numpy as np  # noqa: E402
from client_sequencer_reader_latency import Expect, Row  # noqa: E402
from harness import BenchFailed, Unavailable  # noqa: E402
from sequencer_peer import (MSG_TYPE, SYSTEM_FIRST, Flag, code_version, import_pyseq,  # noqa: E402
                            message)

REPO_ROOT = os.path.dirname(harness.HERE)
PLAIN_SOURCE = os.path.join(harness.HERE, "floor", "plain_write.c")
DIR_PREFIX = "pyseq-bench-journal-"
CLIENT = "jnl"
CAPACITY = 65536          # the rings' slots (the sequencer's default)
PUBLISH_CHUNK = 4096      # journaler alone: messages per publish_batch
SUBMIT_BATCH = 256        # through the sequencer: messages per submit_batch
RECORD_OVERHEAD = 40      # csrc/journal_format.h: crc, record_length, the 32-byte frame
SEGMENT_HEADER = 128


# ============================================================================================
# Messages, records, directories
# ============================================================================================


def record_length(payload: int) -> int:
    return (RECORD_OVERHEAD + payload + 7) & ~7


def slot_size(payload: int) -> int:
    return (32 + payload + 63) // 64 * 64


def pattern(payload: int) -> bytes:
    """Payload bytes 8.. of every message (for 64 bytes: throughput.py's PATTERN)."""
    return bytes((0x40 + i) & 0xFF for i in range(payload - 8))


def make_records(first: int, n: int, payload: int) -> np.ndarray:
    """n messages as an (n, payload) uint8 array: a little-endian counter, then pattern()."""
    records = np.empty((n, payload), dtype=np.uint8)
    records[:, 8:] = np.frombuffer(pattern(payload), dtype=np.uint8)
    records[:, :8] = np.arange(first, first + n, dtype="<u8").view(np.uint8).reshape(n, 8)
    return records


def make_idle(pyseq, name: str):
    return {"busy-spin": pyseq.BusySpin, "spin-yield": pyseq.SpinYield, "backoff": pyseq.BackoffIdle}[name]()


def filesystem(path: str) -> dict:
    """The mount holding `path`: file system type, device, mount point (from /proc/self/mountinfo)."""
    real = os.path.realpath(path)
    best = {"fstype": "?", "source": "?", "mount": "?"}
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return best
    length = -1
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 2:
            continue
        mount = fields[4].replace("\\040", " ")
        inside = real == mount or real.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > length:
            length = len(mount)
            best = {"fstype": tail[0], "source": tail[1], "mount": mount}
    return best


def sweep_stale_dirs(base: str) -> list[str]:
    """Remove <base>/pyseq-bench-journal-<pid>-* directories whose bench process is gone."""
    removed = []
    try:
        entries = os.listdir(base)
    except OSError:
        return removed
    for entry in entries:
        m = re.fullmatch(re.escape(DIR_PREFIX) + r"(\d+)-[A-Za-z0-9_]+", entry)
        if m is None or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(os.path.join(base, entry), ignore_errors=True)
        removed.append(entry)
    return removed


class WorkDir:
    """One temporary directory for a run's journal and plain file; removed on exit."""

    def __init__(self, base: str):
        self.path = tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-", dir=base)

    def __enter__(self) -> str:
        return self.path

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def check_journal(path: str, payload: int, count: int) -> dict:
    """After a run: every record valid (Journal.verify: CRC, length, sequences dense across
    segments), and the data records (MSG_TYPE) exactly counters 0..count-1 in order, each with the
    pattern.  Returns the sequences of the first and last data record."""
    import_pyseq()
    from pyseq._native import lib
    from pyseq.journal import Journal

    if (lib.PYSEQ_RECORD_OVERHEAD, lib.PYSEQ_SEGMENT_HEADER_LENGTH) != (RECORD_OVERHEAD, SEGMENT_HEADER):
        raise BenchFailed("the journal's record layout changed: update journal_throughput.py")

    report = Journal(path).verify()
    if report.problems:  # a torn tail too: the journaler stopped cleanly
        raise BenchFailed(f"journal {path}: {'; '.join(str(p) for p in report.problems[:3])}")
    rl = record_length(payload)
    want = np.frombuffer(pattern(payload), dtype=np.uint8)
    counter, first_seq, last_seq = 0, None, None
    for seg in Journal(path).segment_files():
        data = np.fromfile(seg, dtype=np.uint8)
        off = SEGMENT_HEADER
        while off + RECORD_OVERHEAD <= len(data):
            head = data[off:off + RECORD_OVERHEAD]
            length, msg_type = int(head[24:28].view("<u4")[0]), int(head[28:30].view("<u2")[0])
            if msg_type != MSG_TYPE:
                if msg_type < SYSTEM_FIRST:
                    raise BenchFailed(f"journal {path}: a record of type {msg_type} (not the bench's)")
                off += int(head[4:8].view("<u4")[0])
                continue
            if length != payload:
                raise BenchFailed(f"journal {path}: a record of {length} bytes, {payload} were sent")
            k = (len(data) - off) // rl
            rows = data[off:off + k * rl].reshape(k, rl)
            is_data = (rows[:, 28:30].copy().view("<u2")[:, 0] == MSG_TYPE) & \
                      (rows[:, 24:28].copy().view("<u4")[:, 0] == payload)
            k = int(np.argmin(is_data)) if not bool(is_data.all()) else k  # rows after a system record are misaligned
            rows = rows[:k]
            counters = rows[:, 40:48].copy().view("<u8")[:, 0]
            if not bool((counters == np.arange(counter, counter + k, dtype=np.uint64)).all()):
                bad = int(np.flatnonzero(counters != np.arange(counter, counter + k, dtype=np.uint64))[0])
                raise BenchFailed(f"journal {path}: counter {int(counters[bad])} where {counter + bad} was next")
            if not bool((rows[:, 48:40 + payload] == want).all()):
                raise BenchFailed(f"journal {path}: a payload differs from the one sent")
            seqs = rows[:, 8:16].copy().view("<i8")[:, 0]
            first_seq = int(seqs[0]) if first_seq is None else first_seq
            last_seq = int(seqs[-1])
            counter += k
            off += k * rl
    if counter != count:
        raise BenchFailed(f"journal {path}: {counter} messages, {count} were sent")
    return {"first_seq": first_seq, "last_seq": last_seq, "records": report.records, "segments": report.segments,
            "bytes": report.bytes}


# ============================================================================================
# The plain write (C) and the fdatasync probe
# ============================================================================================


class PlainWriter:
    """bench/floor/plain_write.c compiled with gcc -O2 into a temporary directory."""

    def __init__(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="pyseq-bench-plain-")
        self.binary, self.error = None, None
        cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
        if cc is None:
            self.error = "no C compiler (gcc) on PATH"
            return
        binary = os.path.join(self.tmp.name, "plain_write")
        try:
            out = subprocess.run([cc, "-O2", "-std=gnu11", "-Wall", "-Wextra", "-o", binary, PLAIN_SOURCE],
                                 capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            self.error = "compiling plain_write.c took over 60 s"
            return
        if out.returncode != 0:
            self.error = f"compiling plain_write.c failed:\n{out.stderr.strip()}"
            return
        self.binary = binary

    def close(self):
        self.tmp.cleanup()

    def run(self, path: str, total: int, chunk: int, policy: str, timeout_s: float) -> dict:
        if self.binary is None:
            raise Unavailable(self.error)
        if policy.startswith("interval:"):
            mode = f"interval:{int(float(policy.split(':', 1)[1]) * 1e6)}"
        else:
            mode = policy
        proc = subprocess.Popen([self.binary, path, str(total), str(chunk), mode], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise BenchFailed(f"plain_write ({policy}) did not finish within {timeout_s:.0f} s; killed") from None
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if proc.returncode != 0:
            raise BenchFailed(f"plain_write ({policy}) exited {proc.returncode}: {err.strip()}")
        values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        if values.get("check") != "ok" or int(values["bytes"]) != total:
            raise BenchFailed(f"plain_write ({policy}) did not report check=ok:\n{out}")
        return {"seconds": float(values["seconds"]), "bytes": total, "writes": int(values["writes"]),
                "syncs": int(values["syncs"]), "chunk": chunk}


def fsync_probe(base: str, n: int) -> dict:
    """pwrite 4 KiB + fdatasync, n times: appending (the file grows) and overwriting one block."""
    out = {}
    with WorkDir(base) as d:
        path = os.path.join(d, "probe")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            block = bytes(range(256)) * 16
            for kind in ("append", "overwrite"):
                lat = np.zeros(n, dtype=np.int64)
                for i in range(n + 5):
                    os.pwrite(fd, block, i * 4096 if kind == "append" else 0)
                    t0 = time.perf_counter_ns()
                    os.fdatasync(fd)
                    if i >= 5:
                        lat[i - 5] = time.perf_counter_ns() - t0
                out[kind] = harness.summarize(harness.latency_histogram(lat))
        finally:
            os.close(fd)
    return out


# ============================================================================================
# Part 1: throughput
# ============================================================================================


def journaler_alone_main(ring_name: str, path: str, policy: str, payload: int, count: int, timeout: float) -> dict:
    """One process: a ring, a Journaler, this thread publishing.  Returns the timing and the
    journaler's counts."""
    pyseq = import_pyseq()
    from pyseq.journaler import Journaler

    ring = pyseq.Ring.create(ring_name, CAPACITY, slot_size(payload), idle=pyseq.BackoffIdle())
    journaler = None
    try:
        journaler = Journaler(path, ring, fsync=policy, idle=pyseq.BackoffIdle())
        ring.never_evict.add(journaler._reader.index)  # as the Sequencer does
        records = make_records(0, PUBLISH_CHUNK, payload)
        counters = records.view("<u8")[:, 0]  # a view: += moves every record's counter
        journaler.start()
        first = ring.next_sequence
        last = first + count - 1
        clock = time.perf_counter_ns
        t0 = clock()
        done = 0
        while done < count:
            k = min(PUBLISH_CHUNK, count - done)
            ring.publish_batch(MSG_TYPE, records[:k], timeout=timeout)
            counters += k
            done += k
        published = clock()
        deadline = time.monotonic() + timeout
        while ring.journaled_sequence < last:
            if journaler.failure is not None:
                raise BenchFailed(f"the journaler failed: {journaler.failure!r}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"journaled_sequence {ring.journaled_sequence} < {last} after {timeout} s")
            time.sleep(0.0001)
        t1 = clock()
        stats = journaler.stats()
        left = journaler.stop()
        journaler = None
        if left:
            raise BenchFailed(f"{left} messages were not journaled at stop")
        return {"seconds": (t1 - t0) / 1e9, "publish_seconds": (published - t0) / 1e9, "count": count,
                "journal": stats}
    finally:
        if journaler is not None:
            journaler.stop(1.0)
        ring.close()
        pyseq.Ring.remove(ring_name, force=True)


def sequencer_proc(ring: str, opts: dict, ready, stop: Flag, run_cap_s: float) -> dict:
    """The sequencer process: pyseq.Sequencer (with a journal if opts["journal"]) until `stop`.
    The journaler thread is started on opts["journal_cpus"] (None: wherever the process may run),
    then this thread is pinned to opts["seq_cpu"] (None: not pinned)."""
    pyseq = import_pyseq()
    if opts.get("timer_slack_ns"):
        # this thread's timer slack (the journaler inherits it): how late a back-off sleep may end
        import ctypes

        pr_set_timerslack = 29
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_timerslack, ctypes.c_ulong(opts["timer_slack_ns"]), 0, 0, 0)
    if opts.get("journal_cpus") is not None:
        os.sched_setaffinity(0, opts["journal_cpus"])  # this thread only: the journaler inherits it
    kwargs = {}
    if opts.get("journal"):
        kwargs = {"journal": opts["journal"], "fsync": opts["fsync"],
                  "journal_idle": make_idle(pyseq, opts["journal_idle"])}
    seq = pyseq.Sequencer(ring, idle=make_idle(pyseq, opts["idle"]), slot_size=opts.get("slot_size", 128), **kwargs)
    if opts.get("seq_cpu") is not None:
        os.sched_setaffinity(0, {opts["seq_cpu"]})
    closed = False
    try:
        preempted = harness.preemptions()
        start = time.monotonic()
        ready.set()
        while not stop.is_set():
            seq.step()
            if time.monotonic() - start > run_cap_s:
                raise BenchFailed(f"the sequencer was not stopped within {run_cap_s:.0f} s")
        stats = seq.stats()
        stats["preempted"] = harness.preemptions() - preempted
        stats["seconds"] = round(time.monotonic() - start, 3)
        seq.close()
        closed = True
        if seq.journal is not None:
            stats["journal"] = seq.journal.stats()  # after the final write and fdatasync
        return {k: stats[k] for k in ("rounds", "idle_rounds", "out_full", "preempted", "seconds", "journal")}
    finally:
        if not closed:
            seq.close()


def submit_client_main(ring: str, payload: int, count: int, timeout: float, ready, stop: Flag) -> dict:
    """The client: submit_batch `count` messages, then wait until the journal holds the last."""
    pyseq = import_pyseq()
    try:
        if not ready.wait(timeout):
            raise TimeoutError(f"the sequencer did not start within {timeout} s")
        client = pyseq.Client.connect(ring, CLIENT, timeout=timeout, idle=pyseq.BackoffIdle())
        try:
            sequenced = client.sequenced
            deadline = time.monotonic() + timeout
            while sequenced.published_sequence < 1:  # CLIENT_JOINED (published just after we were taken)
                if time.monotonic() > deadline:
                    raise TimeoutError("no CLIENT_JOINED")
                time.sleep(0.0005)
            base = sequenced.published_sequence
            target = base + count  # the only client: its messages are base+1 .. base+count
            records = make_records(0, SUBMIT_BATCH, payload)
            counters = records.view("<u8")[:, 0]
            clock = time.perf_counter_ns
            t0 = clock()
            for _ in range(count // SUBMIT_BATCH):
                client.submit_batch(MSG_TYPE, records, timeout=timeout)
                counters += SUBMIT_BATCH
            submitted = clock()
            deadline = time.monotonic() + timeout
            while sequenced.journaled_sequence < target:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"journaled_sequence {sequenced.journaled_sequence} < {target} "
                                       f"after {timeout} s (journal {sequenced.journal_state})")
                time.sleep(0.0001)
            t1 = clock()
            return {"seconds": (t1 - t0) / 1e9, "submit_seconds": (submitted - t0) / 1e9, "count": count,
                    "target": target}
        finally:
            client.close()
    finally:
        stop.set()


def run_alone(policy: str, payload: int, count: int, cfg) -> dict:
    ring = harness.shm_name("jal")
    with WorkDir(cfg.dir) as d:
        path = os.path.join(d, "journal")
        try:
            r = harness.run_peers([("journaler", None, journaler_alone_main,
                                    (ring, path, policy, payload, count, cfg.timeout))],
                                  deadline_s=cfg.run_cap)["journaler"]
        finally:
            harness.unlink_ring_family(ring)
        checked = check_journal(path, payload, count)
        if (checked["first_seq"], checked["last_seq"]) != (1, count):
            raise BenchFailed(f"journaler alone: data records {checked['first_seq']}..{checked['last_seq']}, "
                              f"expected 1..{count}")
        shutil.rmtree(path)  # before the plain write: same free space, no dirty pages left behind
        r["plain"] = plain_for(r["journal"], policy, d, cfg)
    return r


def run_through_sequencer(policy: str, payload: int, count: int, cfg) -> dict:
    ring = harness.shm_name("jsq")
    ready, stop = harness.CTX.Event(), Flag()
    with WorkDir(cfg.dir) as d:
        path = os.path.join(d, "journal")
        opts = {"idle": "backoff", "journal": path, "fsync": policy, "journal_idle": "backoff",
                "seq_cpu": None, "journal_cpus": None, "slot_size": slot_size(payload)}
        try:
            results = harness.run_peers(
                [("sequencer", None, sequencer_proc, (ring, opts, ready, stop, cfg.run_cap)),
                 ("client", None, submit_client_main, (ring, payload, count, cfg.timeout, ready, stop))],
                deadline_s=cfg.run_cap + 10)
        finally:
            harness.unlink_ring_family(ring)
        r = results["client"]
        checked = check_journal(path, payload, count)
        if checked["last_seq"] != r["target"] or checked["first_seq"] != r["target"] - count + 1:
            raise BenchFailed(f"through the sequencer: data records {checked['first_seq']}..{checked['last_seq']}, "
                              f"expected {r['target'] - count + 1}..{r['target']}")
        r["journal"] = results["sequencer"]["journal"]
        r["sequencer"] = {k: v for k, v in results["sequencer"].items() if k != "journal"}
        shutil.rmtree(path)
        r["plain"] = plain_for(r["journal"], policy, d, cfg)
    return r


def plain_for(journal: dict, policy: str, d: str, cfg) -> dict:
    """The plain write of the bytes the journaler wrote, in its average write."""
    total, writes = int(journal["bytes"]), max(1, int(journal["writes"]))
    chunk = -(-total // writes)
    path = os.path.join(d, "plain")
    try:
        return cfg.plain.run(path, total, chunk, policy, cfg.run_cap)
    finally:
        if os.path.exists(path):
            os.unlink(path)


class TpRow:
    """Throughput runs of one (path, policy, payload)."""

    def __init__(self, path: str, policy: str, payload: int):
        self.path, self.policy, self.payload = path, policy, payload
        self.runs = []

    def add(self, r: dict) -> dict:
        j, p = r["journal"], r["plain"]
        run = {"msgs_per_s": r["count"] / r["seconds"], "mb_per_s": j["bytes"] / r["seconds"] / 1e6,
               "plain_mb_per_s": p["bytes"] / p["seconds"] / 1e6, "seconds": r["seconds"],
               "plain_seconds": p["seconds"], "bytes": j["bytes"], "writes": j["writes"], "syncs": j["syncs"],
               "avg_write": j["bytes"] / max(1, j["writes"]), "plain_syncs": p["syncs"], "count": r["count"]}
        run["ratio"] = run["mb_per_s"] / run["plain_mb_per_s"]
        if "submit_seconds" in r:
            run["submit_seconds"] = r["submit_seconds"]
        if "publish_seconds" in r:
            run["publish_seconds"] = r["publish_seconds"]
        self.runs.append(run)
        return run

    def med(self, key: str) -> float:
        return harness.median([run[key] for run in self.runs])

    def span(self, key: str) -> tuple:
        values = [run[key] for run in self.runs]
        return min(values), max(values)


def fmt_rate(value: float) -> str:
    return f"{value / 1e6:,.2f} M" if value >= 1e6 else f"{value / 1e3:,.0f} k"


def fmt_bytes(value: float) -> str:
    return f"{value / 1024:,.0f} KiB" if value >= 1024 else f"{value:,.0f} B"


# ============================================================================================
# Part 2: latency
# ============================================================================================


def latency_main(ring: str, cfg: dict, durable_phase: bool, ready, stop: Flag) -> dict:
    pyseq = import_pyseq()
    try:
        if not ready.wait(cfg["timeout"]):
            raise TimeoutError(f"the sequencer did not start within {cfg['timeout']} s")
        client = pyseq.Client.connect(ring, CLIENT, timeout=cfg["timeout"])
        try:
            sequenced = client.sequenced
            normal = sequenced.reader("lat-normal", gating=True, start="latest", idle=pyseq.BusySpin())
            try:
                return measure_latency(pyseq, client, sequenced, normal, cfg, durable_phase)
            finally:
                normal.close()
        finally:
            client.close()
    finally:
        stop.set()


def measure_latency(pyseq, client, sequenced, normal, cfg: dict, durable_phase: bool) -> dict:
    submit, clock, timeout = client.submit, time.perf_counter_ns, cfg["timeout"]
    n_durable = cfg["count"] if durable_phase else 0
    payloads = [message(i) for i in range(cfg["warmup"] + cfg["count"] + n_durable)]
    expect = Expect(client.source, payloads)
    gc.freeze()

    def read_data(reader, exp, counter):
        m = reader.read(timeout)
        while not exp.check(m, counter):  # a system message (CLIENT_JOINED): sequenced too
            m = reader.read(timeout)
        return m

    def closed_loop(first: int, n: int) -> np.ndarray:
        lat = np.zeros(n, dtype=np.int64)
        read = normal.read
        for k in range(n):
            t0 = clock()
            submit(MSG_TYPE, payloads[first + k], timeout=timeout)
            m = read(timeout)
            while m.msg_type >= SYSTEM_FIRST:
                expect.check(m, first + k)
                m = read(timeout)
            t1 = clock()
            expect.check(m, first + k)
            lat[k] = t1 - t0
        return lat

    closed_loop(0, cfg["warmup"])
    preempted = harness.preemptions()
    start = clock()
    out = {"normal": closed_loop(cfg["warmup"], cfg["count"])}
    out["normal_s"] = (clock() - start) / 1e9
    out["normal_preempted"] = harness.preemptions() - preempted
    if not durable_phase:
        return out

    # the durable phase: let the journal catch up first, then one message in flight, read durably
    deadline = time.monotonic() + timeout
    while sequenced.journaled_sequence < sequenced.published_sequence:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the journal did not catch up within {timeout} s ({sequenced.journal_state})")
        time.sleep(0.001)
    durable = sequenced.reader("lat-durable", gating=True, start="latest", idle=make_idle(pyseq, cfg["durable_idle"]),
                               durable=True)
    try:
        expect_d = Expect(client.source, payloads)
        expect_d.next_seq = expect.next_seq
        first = cfg["warmup"] + cfg["count"]
        lat = np.zeros(n_durable, dtype=np.int64)
        preempted = harness.preemptions()
        start = clock()
        budget = start + int(cfg["durable_seconds"] * 1e9)
        k = 0
        to_stamp = np.zeros(n_durable, dtype=np.int64)
        wall = time.time_ns
        while k < n_durable:
            w0 = wall()
            t0 = clock()
            if t0 > budget:
                break
            submit(MSG_TYPE, payloads[first + k], timeout=timeout)
            m = read_data(durable, expect_d, first + k)
            t1 = clock()
            to_stamp[k] = m.timestamp_ns - w0
            read_data(normal, expect, first + k)  # keeps the gating normal reader moving; not timed
            lat[k] = t1 - t0
            k += 1
        out["durable"] = lat[:k]
        out["durable_to_stamp"] = to_stamp[:k]
        out["durable_s"] = (clock() - start) / 1e9
        out["durable_preempted"] = harness.preemptions() - preempted
    finally:
        durable.close()
    return out


def run_latency(policy: str, cfg, cpus) -> dict:
    ring = harness.shm_name("jlat")
    ready, stop = harness.CTX.Event(), Flag()
    peer_cfg = {"timeout": cfg.timeout, "warmup": cfg.warmup, "count": cfg.count,
                "durable_seconds": cfg.durable_seconds, "durable_idle": cfg.durable_idle}
    with WorkDir(cfg.dir) as d:
        journal = None if policy == "none" else os.path.join(d, "journal")
        journal_cpus = {cpus[1]} if cfg.journal_cpu == "sequencer" else set(harness.usable_cpus())
        opts = {"idle": cfg.sequencer_idle, "journal": journal, "fsync": policy, "journal_idle": cfg.journal_idle,
                "seq_cpu": cpus[1], "journal_cpus": journal_cpus, "timer_slack_ns": cfg.timer_slack_ns}
        try:
            results = harness.run_peers(
                [("sequencer", None, sequencer_proc, (ring, opts, ready, stop, cfg.run_cap)),
                 ("client+reader", cpus[0], latency_main, (ring, peer_cfg, journal is not None, ready, stop))],
                deadline_s=cfg.run_cap + 10)
        finally:
            harness.unlink_ring_family(ring)
    return results


# ============================================================================================
# main
# ============================================================================================


def print_tables(cfg, fs, probe, tp_rows, lat_rows) -> None:
    print()
    print(f"journal directory: {cfg.dir} on {fs['fstype']} ({fs['source']}, mounted at {fs['mount']})")
    if probe:
        a, o = probe["append"], probe["overwrite"]
        print(f"fdatasync of 4 KiB there ({a['count']} each): after an appending pwrite p50 "
              f"{harness.fmt_ns(a['p50'])}, "
              f"p99 {harness.fmt_ns(a['p99'])}, max {harness.fmt_ns(a['max'])}; after an overwrite p50 "
              f"{harness.fmt_ns(o['p50'])}, p99 {harness.fmt_ns(o['p99'])}")
    if tp_rows:
        print()
        print("Journal write throughput (median of runs; range of the journal's MB/s; journal/plain: median of the\n"
              "per-run ratios, the plain write doing the same bytes in the same writes with the matching fdatasync)")
        print()
        print("| fsync | payload | path | msgs/s | journal MB/s | range | plain MB/s | journal/plain | ratio range | "
              "avg write | fdatasyncs/s |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for row in tp_rows.values():
            if not row.runs:
                continue
            lo, hi = row.span("mb_per_s")
            rlo, rhi = row.span("ratio")
            syncs = harness.median([run["syncs"] / run["seconds"] for run in row.runs])
            print(f"| {row.policy} | {row.payload} B | {row.path} | {fmt_rate(row.med('msgs_per_s'))} | "
                  f"{row.med('mb_per_s'):,.0f} | {lo:,.0f} .. {hi:,.0f} | {row.med('plain_mb_per_s'):,.0f} | "
                  f"{row.med('ratio'):.2f} | {rlo:.2f} .. {rhi:.2f} | {fmt_bytes(row.med('avg_write'))} | "
                  f"{syncs:,.0f} |")
    if lat_rows:
        print()
        print("submit -> read, one way, closed loop, 64-byte messages (median over runs of each run's percentile;\n"
              "max: the highest of all runs)")
        print()
        print("| journal fsync | reader | messages | p50 | p90 | p99 | p99.9 | max |")
        print("|---|---|---|---|---|---|---|---|")
        for (policy, kind), row in lat_rows.items():
            if not row.hists:
                continue
            s = harness.summarize_runs(row.hists)
            count = sum(r["count"] for r in row.runs)
            cells = " | ".join(harness.fmt_ns(s[k]["median"]) for k in ("p50", "p90", "p99", "p99.9"))
            print(f"| {policy} | {kind} | {count:,} | {cells} | {harness.fmt_ns(s['max']['max'])} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="less data, fewer runs (whole run < 60 s)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--dir", metavar="DIR", default=os.path.dirname(REPO_ROOT),
                   help="where the temporary journal directories go (default: the repository's parent)")
    p.add_argument("--only", default="fsync,alone,sequencer,latency",
                   help="parts, comma-separated: fsync, alone, sequencer, latency (default: all)")
    p.add_argument("--modes", default="never,interval,batch", help="fsync modes (default never,interval,batch)")
    p.add_argument("--interval-ms", type=float, default=10.0, help="MS of interval:MS (default 10)")
    p.add_argument("--payloads", default="64,256", help="payload bytes for the throughput rows (default 64,256)")
    p.add_argument("--mib", type=float, help="journal MiB per throughput run (default 128, quick 32)")
    p.add_argument("--repeat", type=int, help="runs per row, interleaved (default 3, quick 1)")
    p.add_argument("--count", type=int, help="latency: normal-reader messages per run, and the most durable ones "
                                             "(default 100,000, quick 30,000)")
    p.add_argument("--warmup", type=int, default=70_000,
                   help="latency: messages not recorded (default: one lap of the 65,536-slot ring)")
    p.add_argument("--durable-seconds", type=float,
                   help="latency: longest durable phase per run (default 5, quick 2)")
    p.add_argument("--sequencer-idle", default="backoff", choices=("busy-spin", "spin-yield", "backoff"),
                   help="latency: the sequencer's idle strategy (default backoff: the journaler shares its CPU)")
    p.add_argument("--journal-idle", default="backoff", choices=("busy-spin", "spin-yield", "backoff"),
                   help="latency: the journaler's idle strategy (default backoff)")
    p.add_argument("--durable-idle", default="busy-spin", choices=("busy-spin", "spin-yield", "backoff"),
                   help="latency: the durable reader's idle strategy (default busy-spin, as the normal reader)")
    p.add_argument("--journal-cpu", default="sequencer", choices=("sequencer", "any"),
                   help="latency: the journaler thread on the sequencer's CPU (default) or on any CPU")
    p.add_argument("--timer-slack-ns", type=int, default=0,
                   help="latency: the sequencer process's timer slack (PR_SET_TIMERSLACK; the journaler thread "
                        "inherits it; default: leave Linux's 50 us, which is how late a back-off park may end)")
    p.add_argument("--timeout", type=float, default=20.0, help="longest wait for any one step (s)")
    cfg = p.parse_args(argv)
    parts = {x.strip() for x in cfg.only.split(",") if x.strip()}
    if parts - {"fsync", "alone", "sequencer", "latency"}:
        p.error("--only takes fsync, alone, sequencer, latency")
    modes = []
    for m in (x.strip() for x in cfg.modes.split(",") if x.strip()):
        if m == "interval":
            m = f"interval:{cfg.interval_ms:g}"
        if m not in ("never", "batch") and not m.startswith("interval:"):
            p.error(f"unknown fsync mode {m!r}")
        modes.append(m)
    payloads = [int(x) for x in cfg.payloads.split(",") if x.strip()]
    cfg.mib = cfg.mib or (32 if cfg.quick else 128)
    cfg.repeat = cfg.repeat or (1 if cfg.quick else 3)
    cfg.count = cfg.count or (30_000 if cfg.quick else 100_000)
    cfg.durable_seconds = cfg.durable_seconds or (2.0 if cfg.quick else 5.0)
    cfg.run_cap = 120.0
    cfg.dir = os.path.abspath(cfg.dir)

    harness.start_bench()
    stale = sweep_stale_dirs(cfg.dir)
    if stale:
        print(f"removed {len(stale)} stale journal directories left by killed runs", flush=True)
    cpus = harness.cpu_pair()
    fs = filesystem(cfg.dir)
    print(f"journal directory {cfg.dir}: {fs['fstype']} on {fs['source']} (mount {fs['mount']}); "
          f"CPUs {harness.usable_cpus()}", flush=True)
    if fs["fstype"] in ("tmpfs", "ramfs"):
        print(f"WARNING: {cfg.dir} is {fs['fstype']}: fdatasync does nothing there; use --dir on a disk",
              flush=True)

    probe = None
    tp_rows: dict = {}
    lat_rows: dict = {}
    lat_runs: list = []
    failed = None
    cfg.plain = PlainWriter() if parts & {"alone", "sequencer"} else None
    try:
        if "fsync" in parts:
            probe = fsync_probe(cfg.dir, 50 if cfg.quick else 200)
            print(f"fdatasync 4 KiB: append p50 {harness.fmt_ns(probe['append']['p50'])}, overwrite p50 "
                  f"{harness.fmt_ns(probe['overwrite']['p50'])}", flush=True)
        paths = [x for x in ("alone", "sequencer") if x in parts]
        if paths:
            label = {"alone": "journaler alone", "sequencer": "through the sequencer"}
            for path in paths:
                for policy in modes:
                    for payload in payloads:
                        tp_rows[(path, policy, payload)] = TpRow(label[path], policy, payload)
            print(f"throughput: {cfg.mib:g} MiB of journal per run, {cfg.repeat} runs per row, interleaved",
                  flush=True)
            for rep in range(cfg.repeat):
                for policy in modes:
                    for payload in payloads:
                        count = int(cfg.mib * (1 << 20)) // record_length(payload)
                        for path in paths:
                            if path == "alone":
                                r = run_alone(policy, payload, count, cfg)
                            else:
                                r = run_through_sequencer(policy, payload, count - count % SUBMIT_BATCH, cfg)
                            run = tp_rows[(path, policy, payload)].add(r)
                            print(f"  run {rep + 1}/{cfg.repeat} {label[path]:<22} {policy:<12} {payload:>4} B: "
                                  f"{fmt_rate(run['msgs_per_s'])} msg/s, {run['mb_per_s']:,.0f} MB/s; plain "
                                  f"{run['plain_mb_per_s']:,.0f} MB/s; ratio {run['ratio']:.2f}; "
                                  f"{run['writes']} writes of {fmt_bytes(run['avg_write'])}, {run['syncs']} "
                                  f"fdatasyncs; all {'published' if path == 'alone' else 'submitted'} at "
                                  f"{run.get('publish_seconds', run.get('submit_seconds', 0)):.3f} of "
                                  f"{run['seconds']:.3f} s", flush=True)
        if "latency" in parts:
            if cpus[0] is None:
                raise Unavailable("one CPU: the latency part needs two")
            policies = ["none"] + modes
            for policy in policies:
                lat_rows[(policy, "normal")] = Row(f"{policy} normal")
                if policy != "none":
                    lat_rows[(policy, "durable")] = Row(f"{policy} durable")
                    lat_rows[(policy, "… submit → sequenced")] = Row(f"{policy} durable, submit -> sequenced")
                    lat_rows[(policy, "… sequenced → durable read")] = Row(f"{policy} durable, sequenced -> read")
            print(f"latency: client+reader on CPU {cpus[0]} (busy-spin), sequencer on CPU {cpus[1]} "
                  f"({cfg.sequencer_idle}), journaler ({cfg.journal_idle}) on "
                  f"{'CPU ' + str(cpus[1]) if cfg.journal_cpu == 'sequencer' else 'any CPU'}; warm-up "
                  f"{cfg.warmup:,}, {cfg.count:,} normal, durable up to {cfg.count:,} or {cfg.durable_seconds:g} s; "
                  f"{cfg.repeat} runs, interleaved", flush=True)
            for rep in range(cfg.repeat):
                for policy in policies:
                    res = run_latency(policy, cfg, cpus)
                    r, s = res["client+reader"], res["sequencer"]
                    p50 = lat_rows[(policy, "normal")].add(r["normal"], r["normal_preempted"])
                    line = f"normal p50 {harness.fmt_ns(p50)} (preempted {r['normal_preempted']})"
                    if "durable" in r:
                        d50 = lat_rows[(policy, "durable")].add(r["durable"], r["durable_preempted"])
                        lat_rows[(policy, "… submit → sequenced")].add(r["durable_to_stamp"],
                                                                       r["durable_preempted"])
                        lat_rows[(policy, "… sequenced → durable read")].add(r["durable"] - r["durable_to_stamp"],
                                                                             r["durable_preempted"])
                        line += (f"; durable p50 {harness.fmt_ns(d50)} over {len(r['durable']):,} messages "
                                 f"(preempted {r['durable_preempted']})")
                    lat_runs.append({"policy": policy, "sequencer": s})
                    print(f"  run {rep + 1}/{cfg.repeat} {policy:<12} {line}; sequencer preempted "
                          f"{s['preempted']}", flush=True)
    except (BenchFailed, Unavailable) as exc:
        failed = str(exc)
        print(f"FAILED: {exc}", file=sys.stderr)
    finally:
        if cfg.plain is not None:
            cfg.plain.close()

    print_tables(cfg, fs, probe, tp_rows, lat_rows)

    if cfg.json:
        report = {"bench": "journal_throughput", "machine": harness.machine_info(cpus), "code": code_version(),
                  "filesystem": {"dir": cfg.dir, **fs},
                  "config": {"quick": cfg.quick, "modes": modes, "payloads": payloads, "mib": cfg.mib,
                             "repeat": cfg.repeat, "count": cfg.count, "warmup": cfg.warmup,
                             "durable_seconds": cfg.durable_seconds, "sequencer_idle": cfg.sequencer_idle,
                             "journal_idle": cfg.journal_idle, "journal_cpu": cfg.journal_cpu,
                             "publish_chunk": PUBLISH_CHUNK, "submit_batch": SUBMIT_BATCH, "capacity": CAPACITY},
                  "fdatasync_4k": probe,
                  "throughput": [{"path": row.path, "fsync": row.policy, "payload": row.payload, "runs": row.runs}
                                 for row in tp_rows.values() if row.runs],
                  "latency": {f"{policy}/{kind}": row.as_dict() for (policy, kind), row in lat_rows.items()
                              if row.hists},
                  "latency_sequencer_runs": lat_runs, "failed": failed}
        with open(cfg.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        print(f"wrote {cfg.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
