"""Ping-pong latency between two co-located processes, one channel each way.

      CPU a                                                         CPU b
    +------------------------------+     channel 1: A -> B     +------------------------------+
    | initiator (A)                | ------------------------> | echoer (B)                   |
    |   m  = index . pattern (64B) |                           |   m = recv(channel 1)        |
    |   t0 = perf_counter_ns()     |                           |   send(channel 2, m)         |
    |   send(channel 1, m)         |     channel 2: B -> A     |                              |
    |   r  = recv(channel 2)       | <------------------------ |                              |
    |   rtt = perf_counter_ns()-t0 |                           |                              |
    |   assert r == m              |                           |                              |
    +------------------------------+                           +------------------------------+
        one-way latency = rtt / 2, recorded (after the run, warm-up excluded) into an HdrHistogram

Channels: multiprocessing.Queue, multiprocessing.Pipe (send_bytes/recv_bytes, one pipe per
direction), the pure-Python shared-memory ring (bench/pure_python_ring.py, one ring per
direction), pyseq (one ring per direction; see pyseq_pingpong below), and the C floor
(bench/floor/cacheline_pingpong.c: one cache line bounced between two processes, and 64-byte
messages through two C rings).  The two peers are pinned to two different CPUs when there are
two.  Every round trip is checked (the reply must equal what was sent, and the echoer must have
echoed exactly as many messages as were sent) before any number is printed.

msgs/s is messages delivered (two per round trip) over the wall-clock time of the measured
loop, which includes the bench's own per-round-trip work (building and comparing the payload,
about 0.3 us in Python).

    python bench/ping_pong_latency.py --quick          # < 60 s
    python bench/ping_pong_latency.py                  # < 3 min
    python bench/ping_pong_latency.py --only pyring,floor --json /tmp/pingpong.json
"""

from __future__ import annotations

import argparse
import array
import functools
import json
import os
import queue
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import BenchFailed, Unavailable  # noqa: E402
from pure_python_ring import PyRing  # noqa: E402

MESSAGE_LENGTH = 64
MSG_TYPE = 1
PATTERN = bytes(range(0x40, 0x40 + MESSAGE_LENGTH - 8))
STOP = b"\xff" * 8 + PATTERN
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def message(index: int) -> bytes:
    return index.to_bytes(8, "little") + PATTERN


def describe_difference(got, want) -> str:
    got = bytes(got)
    if len(got) != len(want):
        return f"{len(got)} bytes, expected {len(want)}"
    at = next(k for k in range(len(want)) if got[k] != want[k])
    return (f"first difference at byte {at}: got {got[at:at + 8].hex()}, "
            f"expected {want[at:at + 8].hex()}")


# ============================================================================================
# PYSEQ - the only code in this file that imports or calls pyseq.
# ============================================================================================


def pyseq_pingpong(role: str, out_name: str = "", in_name: str = "", timeout: float = 5.0,
                   forward: bool = False):
    """One peer's end of a pyseq ping-pong: (send, recv, close), plus echo() for the echoer when
    `forward`: the zero-object echo, read_seq() then Ring.forward(), no Python object built.

    role "initiator" / "echoer": create ring `out_name` (this process is its only writer) and
    attach to `in_name` (created by the other peer); recv() busy-spins.
    role "probe": return None if pyseq can run here, else raise harness.Unavailable.
    role "remove": remove the rings out_name and in_name if they exist (cleanup backstop)."""
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
        for name in (out_name, in_name):
            try:
                pyseq.Ring.remove(name)
            except Exception:  # not there (the peers unlinked it): fine
                pass
        return None

    ring = pyseq.Ring.create(out_name, capacity=4096, slot_size=128)
    try:
        att = pyseq.Ring.attach(in_name, timeout=timeout)
        reader = att.reader(idle=pyseq.BusySpin())
    except BaseException:
        ring.close()
        ring.unlink()
        raise
    publish = functools.partial(ring.publish, MSG_TYPE)
    read = reader.read

    def recv() -> bytes:
        return read(timeout=timeout).payload

    def close() -> None:
        for obj in (reader, att):
            closer = getattr(obj, "close", None)
            if closer is not None:
                closer()
        ring.close()
        ring.unlink()

    if forward and role == "echoer":
        read_seq, fwd = reader.read_seq, ring.forward
        words = reader.buffer.cast("q")  # word 4 = the first 8 payload bytes (after the 32-byte frame)

        def echo() -> bool:
            """Echo one message; True if it was STOP."""
            read_seq(timeout)
            fwd(reader)
            return words[4] == -1

        return publish, recv, close, echo
    return publish, recv, close


# ============================================================================================
# Channels: prepare() in the bench process before the peers fork; open(role) in each peer
# returns (send(bytes), recv() -> bytes, close()); cleanup() in the bench's finally.
# ============================================================================================


class QueueChannel:
    key, label = "queue", "multiprocessing.Queue"

    def prepare(self):
        self.queues = (harness.CTX.Queue(), harness.CTX.Queue())

    def open(self, role, timeout):
        ab, ba = self.queues
        out, inp = (ab, ba) if role == "initiator" else (ba, ab)
        get = inp.get

        def recv():
            try:
                return get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"{role}: nothing on the Queue for {timeout} s") from None

        return out.put, recv, lambda: None

    def cleanup(self):
        for q in self.queues:
            q.cancel_join_thread()
            q.close()


class PipeChannel:
    key, label = "pipe", "multiprocessing.Pipe"

    def prepare(self):
        self.ab = harness.CTX.Pipe(duplex=False)  # (receive end, send end)
        self.ba = harness.CTX.Pipe(duplex=False)

    def open(self, role, timeout):
        (ab_r, ab_w), (ba_r, ba_w) = self.ab, self.ba
        out, inp = (ab_w, ba_r) if role == "initiator" else (ba_w, ab_r)
        poll, recv_bytes = inp.poll, inp.recv_bytes

        def recv():
            if not poll(timeout):
                raise TimeoutError(f"{role}: nothing on the Pipe for {timeout} s")
            return recv_bytes()

        return out.send_bytes, recv, lambda: None

    def cleanup(self):
        for conn in (*self.ab, *self.ba):
            conn.close()


class PyRingChannel:
    key, label = "pyring", "pure-Python shm ring"

    def prepare(self):
        self.names = (harness.shm_name("pyring-ab"), harness.shm_name("pyring-ba"))

    def open(self, role, timeout):
        ab, ba = self.names
        out_name, in_name = (ab, ba) if role == "initiator" else (ba, ab)
        writer = PyRing.create(out_name, capacity=4096, slot_size=128)
        try:
            reader = PyRing.attach(in_name, timeout=timeout)
        except BaseException:
            writer.close()
            writer.unlink()
            raise
        publish = functools.partial(writer.publish, MSG_TYPE)
        read = reader.read

        def recv():
            return read(timeout)[2]

        def close():
            reader.close()
            writer.close()
            writer.unlink()

        return publish, recv, close

    def cleanup(self):
        harness.unlink_shm(*self.names)


class PyseqChannel:
    key, label = "pyseq", "pyseq"

    def prepare(self):
        pyseq_pingpong("probe")
        self.names = (harness.shm_name("pyseq-ab"), harness.shm_name("pyseq-ba"))

    def open(self, role, timeout):
        ab, ba = self.names
        out_name, in_name = (ab, ba) if role == "initiator" else (ba, ab)
        return pyseq_pingpong(role, out_name, in_name, timeout)

    def cleanup(self):
        if hasattr(self, "names"):
            pyseq_pingpong("remove", *self.names)


class PyseqForwardChannel(PyseqChannel):
    key, label = "pyseq-fwd", "pyseq read_seq+forward"

    def open(self, role, timeout):
        ab, ba = self.names
        out_name, in_name = (ab, ba) if role == "initiator" else (ba, ab)
        return pyseq_pingpong(role, out_name, in_name, timeout, forward=True)


CHANNELS = [QueueChannel, PipeChannel, PyRingChannel, PyseqChannel, PyseqForwardChannel]


# ============================================================================================
# The two peers
# ============================================================================================


def initiator(channel, warmup: int, count: int, time_cap_s: float, timeout: float) -> dict:
    send, recv, close = channel.open("initiator", timeout)
    try:
        for i in range(warmup):
            m = message(i)
            send(m)
            r = recv()
            if r != m:
                raise BenchFailed(f"warm-up round trip {i}: reply differs from the message sent "
                                  f"({describe_difference(r, m)})")
        rtts = array.array("q", bytes(8 * count))
        clock = time.perf_counter_ns
        preempted = harness.preemptions()
        start = clock()
        cap = start + int(time_cap_s * 1e9)
        measured = 0
        for i in range(count):
            m = message(warmup + i)
            t0 = clock()
            send(m)
            r = recv()
            t1 = clock()
            if r != m:
                raise BenchFailed(f"round trip {warmup + i}: reply differs from the message sent "
                                  f"({describe_difference(r, m)})")
            rtts[i] = t1 - t0
            measured = i + 1
            if t1 > cap:
                break
        elapsed = clock() - start
        preempted = harness.preemptions() - preempted
        send(STOP)
        if recv() != STOP:
            raise BenchFailed("the echo of the stop message differs")
        return {"rtts": rtts[:measured], "elapsed_ns": elapsed, "sent": warmup + measured,
                "capped": measured < count, "preempted": preempted}
    finally:
        close()


def echoer(channel, timeout: float) -> dict:
    opened = channel.open("echoer", timeout)
    send, recv, close = opened[:3]
    try:
        echoed = 0
        preempted = harness.preemptions()
        if len(opened) > 3:  # the channel's own echo (pyseq's zero-object forward)
            echo = opened[3]
            while not echo():
                echoed += 1
            return {"echoed": echoed, "preempted": harness.preemptions() - preempted}
        while True:
            m = recv()
            send(m)
            if m == STOP:
                return {"echoed": echoed, "preempted": harness.preemptions() - preempted}
            echoed += 1
    finally:
        close()


def run_channel(cls, cfg, cpus) -> dict:
    """One run of one channel: the raw round trips, checked."""
    channel = cls()
    try:
        channel.prepare()
        # A stuck peer is caught by the other's per-message timeout long before this deadline.
        results = harness.run_peers(
            [("initiator", cpus[0], initiator, (channel, cfg.warmup, cfg.count, cfg.time_cap, cfg.timeout)),
             ("echoer", cpus[1], echoer, (channel, cfg.timeout))],
            deadline_s=cfg.time_cap + 60)
    finally:
        channel.cleanup()
    a, b = results["initiator"], results["echoer"]
    if b["echoed"] != a["sent"]:
        raise BenchFailed(f"initiator sent {a['sent']} messages but the echoer echoed {b['echoed']}")
    return {"rtts": a["rtts"], "elapsed_ns": a["elapsed_ns"], "capped": a["capped"],
            "preempted": a["preempted"] + b["preempted"]}


def run_floor(floor, mode, cfg, cpus) -> dict:
    values, rtts = floor.run(mode, cfg.floor_count, cfg.floor_warmup, cpus, cfg.timeout,
                             want_samples=True)
    return {"rtts": rtts, "elapsed_ns": float(values["seconds"]) * 1e9, "capped": False,
            "preempted": int(values["preempted_a"]) + int(values["preempted_b"])}


class Row:
    """One channel's runs, merged: one HdrHistogram, total messages over total measured time."""

    def __init__(self, label):
        self.label = label
        self.status, self.reason = "ok", ""
        self.hist = None
        self.round_trips = 0
        self.elapsed_ns = 0.0
        self.runs = []

    def add(self, run):
        hist = harness.one_way_histogram(run["rtts"])
        if self.hist is None:
            self.hist = hist
        else:
            self.hist.add(hist)
        n = len(run["rtts"])
        self.round_trips += n
        self.elapsed_ns += run["elapsed_ns"]
        p50 = hist.get_value_at_percentile(50)
        self.runs.append({"round_trips": n, "one_way_p50_ns": p50,
                          "msgs_per_s": round(2 * n / (run["elapsed_ns"] / 1e9)),
                          "preempted": run["preempted"],
                          **({"note": "stopped at the time cap"} if run["capped"] else {})})
        return p50

    def fail(self, status, reason):
        self.status, self.reason = status, reason

    def as_dict(self):
        if self.status != "ok":
            return {"status": self.status, "reason": self.reason, "runs": self.runs}
        return {"status": "ok", "round_trips": self.round_trips,
                "one_way_ns": harness.summarize(self.hist),
                "msgs_per_s": round(2 * self.round_trips / (self.elapsed_ns / 1e9)),
                "runs": self.runs}

    def print(self):
        if self.status != "ok":
            print(f"{self.label:<26} {self.status}: {self.reason}", flush=True)
            return
        d = self.as_dict()
        s = d["one_way_ns"]
        cells = [harness.fmt_ns(s[k]) for k in ("p50", "p90", "p99", "p99.9", "max")]
        runs = " ".join(harness.fmt_ns(r["one_way_p50_ns"]).replace(" ", "") for r in self.runs)
        preempted = sum(r["preempted"] for r in self.runs)
        print(f"{self.label:<26} {d['round_trips']:>11,} " + " ".join(f"{c:>10}" for c in cells)
              + f" {d['msgs_per_s']:>11,} {preempted:>7,}   {runs}", flush=True)


# ============================================================================================


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="few iterations (whole run < 60 s)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--only", metavar="KEYS",
                   help="comma-separated subset of: queue,pipe,pyring,pyseq,floor")
    p.add_argument("--count", type=int, help="measured round trips per channel per run")
    p.add_argument("--warmup", type=int, help="warm-up round trips per run (not recorded)")
    p.add_argument("--repeat", type=int, help="runs per channel, interleaved across channels")
    p.add_argument("--timeout", type=float, default=5.0,
                   help="longest wait for any one message before the run fails (s)")
    cfg = p.parse_args(argv)
    cfg.count = cfg.count or (10_000 if cfg.quick else 100_000)
    # Warm-up passes every ring slot at least once (4096-slot rings), so first-touch page faults
    # on the shared memory are not measured, for any of the rings.
    cfg.warmup = cfg.warmup if cfg.warmup is not None else (5_000 if cfg.quick else 10_000)
    cfg.repeat = cfg.repeat or (2 if cfg.quick else 3)
    cfg.time_cap = 4.0 if cfg.quick else 15.0
    cfg.floor_count = 200_000 if cfg.quick else 1_000_000
    cfg.floor_warmup = 10_000 if cfg.quick else 100_000
    only = set(cfg.only.split(",")) if cfg.only else None
    channels = [cls for cls in CHANNELS if not only or cls.key in only]
    floor_modes = [("cacheline", "C floor: one cache line"), ("ring", "C floor: 2 C rings, 64B"),
                   ("pyseq", "pyseq C path (no Python)")]
    if only and "floor" not in only:
        floor_modes = []

    harness.start_bench()
    cpus = harness.cpu_pair()
    pinned = f"pinned to CPUs {cpus[0]} and {cpus[1]}" if cpus[0] is not None else "not pinned (1 CPU)"
    print(f"ping-pong, {MESSAGE_LENGTH}-byte messages, one-way = round trip / 2, peers {pinned}; "
          f"{cfg.repeat} runs per channel, interleaved", flush=True)

    rows = {cls.label: Row(cls.label) for cls in channels}
    rows.update({label: Row(label) for _, label in floor_modes})
    floor = harness.Floor() if floor_modes else None
    try:
        for rep in range(cfg.repeat):
            jobs = [(cls.label, functools.partial(run_channel, cls, cfg, cpus)) for cls in channels]
            jobs += [(label, functools.partial(run_floor, floor, mode, cfg, cpus))
                     for mode, label in floor_modes]
            for label, job in jobs:
                row = rows[label]
                if row.status != "ok":
                    continue
                try:
                    p50 = row.add(job())
                    print(f"  run {rep + 1}/{cfg.repeat} {label:<26} p50 {harness.fmt_ns(p50)}",
                          flush=True)
                except Unavailable as exc:
                    row.fail("skipped", str(exc))
                    print(f"  {label}: skipped: {exc}", flush=True)
                except Exception as exc:  # BenchFailed, or a channel that broke in the bench process
                    reason = str(exc) if isinstance(exc, BenchFailed) else f"{type(exc).__name__}: {exc}"
                    row.fail("FAILED", reason)
                    print(f"  {label}: FAILED: {reason}", flush=True)
    finally:
        if floor is not None:
            floor.close()

    print()
    print("preempt: involuntary context switches of the two peers while measuring; more than a few\n"
          "means other processes wanted those CPUs, and the tail numbers show that load, not the channel\n"
          "(multiprocessing.Queue's own feeder threads count too).")
    heads = " ".join(f"{h:>10}" for h in ("p50", "p90", "p99", "p99.9", "max"))
    print(f"{'channel':<26} {'round trips':>11} {heads} {'msgs/s':>11} {'preempt':>7}   p50 per run")
    for row in rows.values():
        row.print()

    failed = any(row.status == "FAILED" for row in rows.values())
    if cfg.json:
        report = {"bench": "ping_pong_latency", "message_length": MESSAGE_LENGTH,
                  "machine": harness.machine_info(cpus),
                  "config": {"quick": cfg.quick, "count": cfg.count, "warmup": cfg.warmup,
                             "repeat": cfg.repeat, "time_cap_s": cfg.time_cap,
                             "floor_count": cfg.floor_count, "timeout_s": cfg.timeout},
                  "results": {label: row.as_dict() for label, row in rows.items()}}
        with open(cfg.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        print(f"wrote {cfg.json}")
    if failed:
        print("FAILED: see the rows above", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
