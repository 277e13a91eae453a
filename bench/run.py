"""pyseq beside what a Python user would pick instead: one harness, every transport, same run.

    latency (closed loop, ping-pong)                 throughput / readers / capacity
    +-----------------+  A -> B  +-----------------+  +----------+         +------------+
    | initiator       | -------> | echoer          |  | writer   | ------> | reader 0   |
    |  t0; stamp t0   |          |  t = clock()    |  | N msgs   |   ...   | reader 1..3|
    |  send; recv     | <------- |  send back      |  +----------+ ------> | check all  |
    |  rtt = now - t0 |  B -> A  |  one-way=t - t0 |      msgs/s = N / (last read - first send)
    +-----------------+          +-----------------+
    open loop: the sender sends at a fixed rate; the receiver records now - *intended* send time.

Transports (bench/transports.py): multiprocessing.Queue, multiprocessing.Pipe, faster-fifo,
ZeroMQ PUSH/PULL over ipc://, the pure-Python shared-memory ring (bench/pure_python_ring.py:
the baseline a user writes by hand), pyseq one message a call (publish / read), pyseq in
batches (publish_batch / read_batch), and pyseq through the sequencer (Client.submit -> the
sequencer process -> a reader), plus the C floor (bench/floor/cacheline_pingpong.c: one cache
line between two processes, two plain C rings, pyseq's C path).  Every round runs every
transport once, one after the other (interleaved), so ratios hold when the machine is noisy.

Latency: one-way from a perf_counter_ns (CLOCK_MONOTONIC, one clock on one host) stamped in the
payload, and the round trip; HdrHistogram, warm-up excluded.  Open loop: coordinated omission
is corrected by measuring from the intended send time of each message (not by
record_corrected_value); the latency from the actual send is kept beside it.  Through the
sequencer the client and the reader are one process (one clock; a third busy process would
have no CPU on a 2-CPU machine), so its figure is the one-way way through the sequencer; in its
open loop that process submits on schedule and polls the reader between sends.

Every message is checked (index, order, every payload byte; the echo equal to what was sent)
before a number is printed.  Output: bench/results.json, bench/plots/*.png, and the generated
part of bench/RESULTS.md (with --out DIR: DIR/...).

    python bench/run.py --quick        # < 2 minutes on 2 vCPUs
    python bench/run.py                # the full run, ~5 minutes
    python bench/run.py --smoke --out /tmp/b   # ~25 s; back-off idle, unpinned (the test's)
"""

from __future__ import annotations

import argparse
import array
import datetime
import os
import platform
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402  (before numpy: it sets OPENBLAS_NUM_THREADS)
import numpy as np  # noqa: E402
import report  # noqa: E402
import transports as tr  # noqa: E402
from harness import BenchFailed, Unavailable  # noqa: E402

BATCH = 1024
STOP = -1

# name: (repeat, latency count, warm-up, time cap s, open rate, open s, scale of throughput counts,
#        reader counts, capacities, floor round trips)
MODES = {
    "smoke": dict(repeat=1, count=2_000, warmup=500, cap=0.3, rate=5_000, open_s=0.1, scale=0.02,
                  readers=(1, 2, 4), capacities=(1 << 10, 1 << 12), floor=20_000),
    "quick": dict(repeat=2, count=30_000, warmup=5_000, cap=0.2, rate=10_000, open_s=0.2, scale=0.1,
                  readers=(1, 2, 4), capacities=(1 << 10, 1 << 14, 1 << 20), floor=200_000),
    "full": dict(repeat=3, count=100_000, warmup=5_000, cap=1.0, rate=10_000, open_s=1.0, scale=0.5,
                 readers=(1, 2, 4), capacities=tuple(1 << k for k in (10, 12, 14, 16, 18, 20)), floor=1_000_000),
}
# messages per throughput run at scale 1 (about a second each here)
TP_COUNTS = {"queue": 50_000, "pipe": 60_000, "faster-fifo": 200_000, "zmq": 200_000, "pyring": 400_000,
             "pyseq": 1_000_000, "pyseq-batch": 10_000_000, "pyseq-seq": 500_000, "floor": 10_000_000}


# ============================================================================================
# The peers (each in its own process, started by harness.run_peers)
# ============================================================================================


def _wait(event, timeout, what):
    if not event.wait(timeout):
        raise TimeoutError(f"{what} within {timeout} s")


def _check_echo(r, sent, i):
    if r != sent:
        raise BenchFailed(f"round trip {i}: the reply differs from the message sent")


def lat_initiator(ab, ba, size, warmup, count, cap_s, timeout):
    """Ping: stamp, send on ab, read the echo on ba; round trips and checks."""
    send, recv, close = tr.open_pair(ab, ba)
    try:
        r = round_trips(send, recv, size, warmup, count, cap_s)
        stop = bytearray(tr.message(0, size))
        tr.STAMPS.pack_into(stop, 0, STOP, 0, 0)
        send(stop)
        _check_echo(recv(), stop, STOP)
        return {"rtt": r["raw"], "sent": r["sent"], "preempted": r["preempted"]}
    finally:
        close()


def lat_echoer(ab, ba, size, warmup, count, timeout):
    """Pong: read on ab, send it back on ba at once; the one-way time from the stamp."""
    send, recv, close = tr.open_pair(ba, ab)
    try:
        one_way = np.zeros(count, dtype=np.int64)
        unpack, clock = tr.STAMPS.unpack_from, time.perf_counter_ns
        echoed = n = 0
        preempted = harness.preemptions()
        while True:
            m = recv()
            t = clock()
            send(m)
            i, _, sent = unpack(m)
            if i == STOP:
                break
            if i != echoed:
                raise BenchFailed(f"message {i} arrived where {echoed} was next")
            echoed += 1
            if i >= warmup:
                one_way[n] = t - sent
                n += 1
        return {"one_way": one_way[:n], "echoed": echoed, "preempted": harness.preemptions() - preempted}
    finally:
        close()


def round_trips(send, recv, size, warmup, count, cap_s):
    """Send message i, wait until it comes back (echoed, or read back through the sequencer), check
    it; the first `warmup` are not recorded; stop after `count` or `cap_s` seconds.  "one_way" and
    "raw" are both the time from the send to the return (the round trip, for an echo)."""
    buf = bytearray(tr.message(0, size))
    pack, clock = tr.STAMPS.pack_into, time.perf_counter_ns
    lat = np.zeros(count, dtype=np.int64)
    preempted = harness.preemptions()
    cap = clock() + int(cap_s * 1e9)
    n = 0
    for i in range(warmup + count):
        t0 = clock()
        pack(buf, 0, i, t0, t0)
        send(buf)
        r = recv()
        t1 = clock()
        _check_echo(r, buf, i)
        if i >= warmup:
            lat[n] = t1 - t0
            n += 1
            if t1 > cap:
                break
    return {"one_way": lat[:n], "raw": lat[:n], "sent": warmup + n, "preempted": harness.preemptions() - preempted}


def open_loopback(send, recv, size, warmup, count, rate, timeout):
    """Open loop in one process (through the sequencer): message i is submitted at start + i / rate
    whatever has come back, and the reader is polled between sends; each message is timed from its
    intended send time ("one_way") and from its actual send ("raw")."""
    buf = bytearray(tr.message(0, size))
    pack, unpack, clock, poll = tr.STAMPS.pack_into, tr.STAMPS.unpack_from, time.perf_counter_ns, recv.poll
    tail = tr.pattern(size)[16:]
    total = warmup + count
    co, raw = np.zeros(count, dtype=np.int64), np.zeros(count, dtype=np.int64)
    interval, limit = 1e9 / rate, int(timeout * 1e9)
    preempted = harness.preemptions()
    start = last = clock() + 1_000_000
    i = j = 0
    while j < total:
        now = clock()
        if i < total and now >= start + int(i * interval):
            pack(buf, 0, i, start + int(i * interval), now)
            send(buf)  # pyseq copies it into the ring before returning
            i += 1
            continue
        m = poll()
        if m is None:
            if now - last > limit and j < i:
                raise TimeoutError(f"open loop: message {j} not read within {timeout} s")
            continue
        t = clock()
        k, intended, sent = unpack(m)
        if k != j or m[24:] != tail:
            raise BenchFailed(f"message {j}: got index {k}{'' if k != j else ' with a corrupt payload'}")
        if j >= warmup:
            co[j - warmup], raw[j - warmup] = t - intended, t - sent
        j += 1
        last = t
    return {"one_way": co, "raw": raw, "sent": total, "preempted": harness.preemptions() - preempted}


def lat_loopback(t, size, warmup, count, cap_s, rate, timeout):
    """Through the sequencer: submit and read back in one process; rate None: closed loop."""
    send, recv, close = t.loopback_pair()
    try:
        if rate is None:
            return round_trips(send, recv, size, warmup, count, cap_s)
        return open_loopback(send, recv, size, warmup, count, rate, timeout)
    finally:
        close()


def open_sender(t, size, warmup, count, rate, cap_s, ready, done, timeout):
    """Send message k at start + k / rate, whatever the receiver does (never waits for it)."""
    send, close = t.writer()
    try:
        buf = bytearray(tr.message(0, size))
        pack, clock = tr.STAMPS.pack_into, time.perf_counter_ns
        pack(buf, 0, 0, 0, 0)
        send(bytes(buf))  # message 0 is the handshake: the schedule starts once it is through
        _wait(ready, timeout, "the receiver did not start")
        interval = 1e9 / rate
        total = 1 + warmup + min(count, int(rate * cap_s))
        start = clock() + 1_000_000 - int(interval)
        for k in range(1, total):
            intended = start + int(k * interval)
            # sleep through most of the gap (a Queue's feeder thread needs the GIL meanwhile; a
            # sleep overshoots by up to ~50 us here), spin the rest
            gap = intended - clock()
            if gap > 80_000:
                time.sleep((gap - 60_000) / 1e9)
            while clock() < intended:
                pass
            pack(buf, 0, k, intended, clock())
            send(bytes(buf))  # a copy: a Queue pickles it later, in its feeder thread
        pack(buf, 0, STOP, 0, 0)
        send(buf)
        _wait(done, timeout + total / rate, "the receiver did not finish")
        return {"sent": total}
    finally:
        close()


def open_receiver(t, size, warmup, ready, done, timeout):
    recv, close = t.reader(0)
    try:
        if tr.STAMPS.unpack_from(recv())[0] != 0:
            raise BenchFailed("the first message is not the handshake")
        ready.set()
        tail = tr.pattern(size)[16:]
        unpack, clock = tr.STAMPS.unpack_from, time.perf_counter_ns
        co, raw = array.array("q"), array.array("q")
        k = 1
        preempted = harness.preemptions()
        while True:
            m = recv()
            now = clock()
            i, intended, sent = unpack(m)
            if i == STOP:
                break
            if i != k or m[24:] != tail:
                raise BenchFailed(f"message {k}: got index {i}{'' if i != k else ' with a corrupt payload'}")
            if k > warmup:
                co.append(now - intended)
                raw.append(now - sent)
            k += 1
        done.set()
        return {"one_way": np.array(co, dtype=np.int64), "raw": np.array(raw, dtype=np.int64), "received": k,
                "preempted": harness.preemptions() - preempted}
    finally:
        close()


def tp_writer(t, size, warmup, count, ready, warmed, done, timeout):
    send, close = t.writer()
    try:
        total = warmup + count
        records = tr.batch_records(0, total, size) if t.batched else None  # before the clock
        for e in ready:
            _wait(e, timeout, "a reader did not attach")

        def send_range(a, b):
            if t.batched:
                for i in range(a, b, BATCH):
                    send(records[i:min(i + BATCH, b)])
            else:
                message = tr.message
                for i in range(a, b):
                    send(message(i, size))

        send_range(0, warmup)
        for e in warmed:
            _wait(e, timeout, "a reader did not read the warm-up")
        preempted = harness.preemptions()
        start = time.perf_counter_ns()
        send_range(warmup, total)
        preempted = harness.preemptions() - preempted
        for e in done:  # keep the channel open until every reader has everything
            _wait(e, timeout + count / 20_000, "a reader did not finish")
        return {"sent": count, "start_ns": start, "preempted": preempted}
    finally:
        close()


def tp_reader(t, i, size, warmup, count, ready, warmed, done, timeout):
    recv, close = t.reader(i)
    try:
        total = warmup + count
        if t.batched:
            recv(0, total)  # allocate and fault in the destination before the clock
        ready.set()
        preempted = harness.preemptions()
        if t.batched:
            got = 0
            for limit in (warmup, total):
                idle_since = None
                while got < limit:
                    k = recv(min(BATCH, limit - got), total)
                    if k:
                        got, idle_since = got + k, None
                    elif time.monotonic() - (idle_since := idle_since or time.monotonic()) > timeout:
                        raise TimeoutError(f"reader {i}: no message {got} within {timeout} s")
                if limit == warmup:
                    warmed.set()
            end = time.perf_counter_ns()
            check_batch(recv.collected(), total, size)
        else:
            message = tr.message
            for k in range(warmup):
                if recv() != message(k, size):
                    raise BenchFailed(f"reader {i}: warm-up message {k} differs from what was sent")
            warmed.set()
            for k in range(warmup, total):
                if recv() != message(k, size):
                    raise BenchFailed(f"reader {i}: message {k} differs from what was sent (lost, "
                                      "reordered or corrupt)")
            end = time.perf_counter_ns()
        done.set()
        return {"received": count, "end_ns": end, "preempted": harness.preemptions() - preempted}
    finally:
        close()


def check_batch(collected, total, size):
    seqs, lengths, types, payload = collected
    if len(seqs) != total:
        raise BenchFailed(f"read {len(seqs)} messages, expected {total}")
    if not bool((np.diff(seqs) == 1).all()):
        raise BenchFailed("sequence numbers not dense")
    if not bool((lengths == size).all()) or not bool((types == tr.MSG_TYPE).all()):
        raise BenchFailed("a message has the wrong length or type")
    want = tr.batch_records(0, total, size)
    if not np.array_equal(payload[:, :size], want):
        bad = int(np.flatnonzero((payload[:, :size] != want).any(axis=1))[0])
        raise BenchFailed(f"message {bad} differs from what was sent")


# ============================================================================================
# Runs (in the bench process): each returns the numbers of one run, checked
# ============================================================================================


class Variant:
    """One row: a transport with an idle strategy."""

    def __init__(self, cls, idle, cfg):
        self.cls, self.idle, self.cfg = cls, idle, cfg
        self.key = cls.key if idle in ("busy-spin", None) else f"{cls.key}/{idle}"
        kernel = cls.key in ("queue", "pipe", "faster-fifo", "zmq")
        self.label = cls.label + ("" if kernel or idle == "busy-spin" else f", {idle}")

    def make(self):
        return self.cls(idle=self.idle or "busy-spin", timeout=self.cfg.timeout)


def run_latency(v, size, cfg):
    ab, ba = v.make(), v.make()
    # a ring's warm-up covers a lap of its 4,096 slots (first-touch page faults); the kernel peers'
    # first 1,000 round trips are as many as they need, and cost them a second
    warmup = min(cfg.warmup, 1000) if v.cls.key in report.KERNEL_PEERS else cfg.warmup
    try:
        ab.probe()
        if getattr(ab, "loopback", False):
            ab.prepare(size)
            peers = [("client+reader", cfg.cpus[0], lat_loopback,
                      (ab, size, warmup, cfg.count, cfg.cap, None, cfg.timeout))] + ab.extra_peers(cfg.cpus)
            r = harness.run_peers(peers, cfg.deadline)["client+reader"]
            return {"one_way": r["one_way"], "rtt": None, "checked": r["sent"], "preempted": r["preempted"]}
        ab.prepare(size)
        ba.prepare(size)
        r = harness.run_peers(
            [("initiator", cfg.cpus[0], lat_initiator, (ab, ba, size, warmup, cfg.count, cfg.cap, cfg.timeout)),
             ("echoer", cfg.cpus[1], lat_echoer, (ab, ba, size, warmup, cfg.count, cfg.timeout))], cfg.deadline)
    finally:
        ab.cleanup()
        ba.cleanup()
    a, b = r["initiator"], r["echoer"]
    if b["echoed"] != a["sent"] or len(b["one_way"]) != len(a["rtt"]):
        raise BenchFailed(f"sent {a['sent']}, echoed {b['echoed']}")
    return {"one_way": b["one_way"], "rtt": a["rtt"], "checked": 2 * a["sent"],
            "preempted": a["preempted"] + b["preempted"]}


def run_open(v, size, cfg):
    t = v.make()
    try:
        t.probe()
        t.prepare(size)
        if getattr(t, "loopback", False):
            peers = [("client+reader", cfg.cpus[0], lat_loopback,
                      (t, size, cfg.warmup // 10, int(cfg.rate * cfg.open_s), 60.0, cfg.rate, cfg.timeout))]
            r = harness.run_peers(peers + t.extra_peers(cfg.cpus), cfg.deadline)["client+reader"]
            return {"one_way": r["one_way"], "raw": r["raw"], "checked": r["sent"], "preempted": r["preempted"]}
        ready, done = harness.CTX.Event(), harness.CTX.Event()
        warmup = cfg.warmup // 10
        r = harness.run_peers(
            [("sender", cfg.cpus[0], open_sender, (t, size, warmup, int(cfg.rate * cfg.open_s), cfg.rate,
                                                   cfg.open_s, ready, done, cfg.timeout)),
             ("receiver", cfg.cpus[1], open_receiver, (t, size, warmup, ready, done, cfg.timeout))], cfg.deadline)
    finally:
        t.cleanup()
    if r["receiver"]["received"] != r["sender"]["sent"]:
        raise BenchFailed(f"sent {r['sender']['sent']}, received {r['receiver']['received']}")
    return {"one_way": r["receiver"]["one_way"], "raw": r["receiver"]["raw"], "checked": r["sender"]["sent"],
            "preempted": r["receiver"]["preempted"]}


def run_throughput(v, size, cfg, readers=1, capacity=4096, count=None, pinned=True):
    t = v.make()
    count = count or max(1000, int(TP_COUNTS[t.key] * cfg.scale))
    warmup = min(capacity, count)
    cpus = cfg.cpus if pinned and readers == 1 else (None, None)
    try:
        t.probe()
        t.prepare(size, readers, capacity)
        ready = [harness.CTX.Event() for _ in range(readers)]
        warmed = [harness.CTX.Event() for _ in range(readers)]
        done = [harness.CTX.Event() for _ in range(readers)]
        peers = [("writer", cpus[0], tp_writer, (t, size, warmup, count, ready, warmed, done, cfg.timeout))]
        peers += [(f"reader{i}", cpus[1], tp_reader, (t, i, size, warmup, count, ready[i], warmed[i], done[i],
                                                     cfg.timeout)) for i in range(readers)]
        r = harness.run_peers(peers + t.extra_peers(cpus), cfg.deadline + count / 10_000)
    finally:
        t.cleanup()
    w = r["writer"]
    got = [r[f"reader{i}"]["received"] for i in range(readers)]
    if w["sent"] != count or any(g != count for g in got):
        raise BenchFailed(f"sent {w['sent']}, readers received {got}, expected {count} each")
    seconds = (max(r[f"reader{i}"]["end_ns"] for i in range(readers)) - w["start_ns"]) / 1e9
    return {"messages": count, "readers": readers, "seconds": round(seconds, 4),
            "msgs_per_s": round(count / seconds), "checked": (warmup + count) * readers,
            "preempted": w["preempted"] + sum(r[f"reader{i}"]["preempted"] for i in range(readers))}


def run_floor(floor, mode, cfg):
    iters = cfg.floor * (10 if mode == "throughput" else 1)
    values, rtts = floor.run(mode, iters, min(cfg.floor // 10, 10_000), cfg.cpus, cfg.timeout,
                             want_samples=mode != "throughput")
    if mode == "throughput":
        if int(values["messages"]) != iters:
            raise BenchFailed(f"the C floor moved {values['messages']} messages, expected {iters}")
        return {"messages": iters, "msgs_per_s": round(float(values["msgs_per_s"])),
                "checked": int(values["messages"]), "preempted": int(values["preempted_a"]) + int(values["preempted_b"])}
    return {"one_way": rtts // 2, "rtt": rtts, "checked": 2 * len(rtts),
            "preempted": int(values["preempted_a"]) + int(values["preempted_b"])}


# ============================================================================================
# Rows: one per figure, size and variant; runs accumulate across rounds
# ============================================================================================


class Row:
    def __init__(self, figure, label, key, size=None, **extra):
        self.figure, self.label, self.key, self.size, self.extra = figure, label, key, size, extra
        self.status, self.reason, self.pip = "ok", "", None
        self.runs, self.hists, self.checked = [], {}, 0

    def add(self, run):
        self.checked += run.pop("checked")
        summary = {"preempted": run.pop("preempted")}
        for series in ("one_way", "rtt", "raw"):
            values = run.pop(series, None)
            if values is None:
                continue
            if len(values) == 0:
                raise BenchFailed("no message measured")
            hist = harness.latency_histogram(values)
            self.hists.setdefault(series, []).append(hist)
            summary[f"{series}_p50_ns"] = hist.get_value_at_percentile(50)
        self.runs.append({**run, **summary})
        return summary

    def as_dict(self):
        d = {"figure": self.figure, "label": self.label, "transport": self.key, "size": self.size,
             **self.extra, "status": self.status}
        if self.status != "ok":
            d["reason"] = self.reason
            if self.pip:
                d["pip"] = f"pip install {self.pip}"
            return d
        d["messages_checked"] = self.checked
        d["runs"] = self.runs
        for series, hists in self.hists.items():
            merged = harness.latency_histogram([])
            for h in hists:
                merged.add(h)
            d[f"{series}_ns"] = harness.summarize(merged)
            d[f"{series}_ns"]["median_of_runs"] = {k: v["median"] for k, v in harness.summarize_runs(hists).items()}
            d[f"{series}_curve"] = report.percentile_curve(merged)
        rates = [r["msgs_per_s"] for r in self.runs if "msgs_per_s" in r]
        if rates:
            d["msgs_per_s"] = round(harness.median(rates))
            d["msgs_per_s_min"], d["msgs_per_s_max"] = min(rates), max(rates)
            d["mb_per_s"] = round(d["msgs_per_s"] * (self.size or tr.MESSAGE_LENGTH) / 1e6, 1)
        return d


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="under 2 minutes on 2 vCPUs")
    mode.add_argument("--smoke", action="store_true",
                      help="seconds: tiny counts, back-off idle everywhere, unpinned (what the test runs)")
    p.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)),
                   help="where results.json, plots/ and RESULTS.md go (default: bench/)")
    p.add_argument("--only", help=f"transports, comma-separated, of: {', '.join(tr.BY_KEY)},floor")
    p.add_argument("--figures", default="latency,open,floor,throughput,readers,capacity",
                   help="which figures (default: all)")
    p.add_argument("--sizes", default="64,256", help="message sizes in bytes (default 64,256)")
    p.add_argument("--repeat", type=int, help="interleaved rounds")
    p.add_argument("--idle", choices=("busy-spin", "backoff"),
                   help="backoff: every waiting peer backs off (the default for --smoke); busy-spin: the "
                        "back-off rows are left out")
    p.add_argument("--timeout", type=float, default=5.0, help="longest wait for any one message (s)")
    cfg = p.parse_args(argv)
    cfg.mode = "smoke" if cfg.smoke else "quick" if cfg.quick else "full"
    for k, v in MODES[cfg.mode].items():
        setattr(cfg, k, v)
    cfg.repeat = p.parse_args(argv).repeat or cfg.repeat
    cfg.sizes = [int(s) for s in cfg.sizes.split(",")]
    cfg.figures = [f.strip() for f in cfg.figures.split(",")]
    cfg.only = set(cfg.only.split(",")) if cfg.only else None
    cfg.idle = cfg.idle or ("backoff" if cfg.smoke else None)
    cfg.deadline = 60.0 + 3 * cfg.cap + cfg.open_s
    return cfg


def variants(cfg, figure):
    """The rows of a figure: which transports, and with which idle strategies."""
    keys = {"latency": ["queue", "pipe", "faster-fifo", "zmq", "pyring", "pyseq", "pyseq-seq"],
            "open": ["queue", "pipe", "faster-fifo", "zmq", "pyring", "pyseq", "pyseq-seq"],
            "throughput": ["queue", "pipe", "faster-fifo", "zmq", "pyring", "pyseq", "pyseq-batch", "pyseq-seq"],
            "readers": ["queue", "pipe", "faster-fifo", "zmq", "pyring", "pyseq", "pyseq-batch"],
            "capacity": ["pyring", "pyseq", "pyseq-batch"]}[figure]
    out = []
    for key in keys:
        if cfg.only and key not in cfg.only:
            continue
        cls = tr.BY_KEY[key]
        if figure == "readers":  # 5 processes on 2 CPUs: spinners must give the CPU away
            idles = [cfg.idle or "spin-yield"]
        elif figure == "throughput" and key == "pyseq-seq":  # 3 busy processes on 2 CPUs
            idles = [cfg.idle or "spin-yield"]
        elif cfg.idle:
            idles = [cfg.idle]
        elif figure in ("latency", "open") and key == "pyseq":
            idles = ["busy-spin", "backoff", "blocking"]  # every idle strategy shown
        elif figure in ("latency", "open") and key == "pyring":
            idles = ["busy-spin", "backoff"]  # both of its idle strategies shown
        else:
            idles = ["busy-spin"]
        out += [Variant(cls, idle, cfg) for idle in idles]
    return out


def build_jobs(cfg):
    """Every (row, run function) of one round, in the order a round runs them."""
    rows, jobs = {}, []

    def add(figure, v, size, fn, **extra):
        rid = (figure, v.key, size, *extra.values())
        if rid not in rows:
            rows[rid] = Row(figure, v.label, v.cls.key, size, idle=v.idle, **extra)
        jobs.append((rows[rid], fn))

    for size in cfg.sizes:
        if "latency" in cfg.figures:
            for v in variants(cfg, "latency"):
                add("latency", v, size, lambda v=v, size=size: run_latency(v, size, cfg))
        if "open" in cfg.figures:
            for v in variants(cfg, "open"):
                add("open", v, size, lambda v=v, size=size: run_open(v, size, cfg), rate=cfg.rate)
        if "throughput" in cfg.figures:
            for v in variants(cfg, "throughput"):
                add("throughput", v, size, lambda v=v, size=size: run_throughput(v, size, cfg))
    size = cfg.sizes[0]
    if "readers" in cfg.figures:
        for n in cfg.readers:
            for v in variants(cfg, "readers"):
                count = max(1000, int(TP_COUNTS[v.cls.key] * cfg.scale / 2))
                add("readers", v, size, lambda v=v, n=n, count=count: run_throughput(v, size, cfg, n, count=count),
                    readers=n)
    if "capacity" in cfg.figures:
        for cap in cfg.capacities:
            for v in variants(cfg, "capacity"):
                count = max(2 * cap, int(TP_COUNTS[v.cls.key] * cfg.scale))
                add("capacity", v, size, lambda v=v, cap=cap, count=count: run_throughput(
                    v, size, cfg, capacity=cap, count=count), capacity=cap)
    if "floor" in cfg.figures and (not cfg.only or "floor" in cfg.only):
        cfg.floor_build = harness.Floor()
        for mode, label in (("cacheline", "C floor: one cache line"), ("ring", "C floor: two plain C rings"),
                            ("pyseq", "pyseq C path (ring.c, no Python)"), ("throughput", "C floor: C ring")):
            key = f"floor-{mode}"
            fig = "throughput" if mode == "throughput" else "latency"
            rid = ("floor", key)
            rows[rid] = Row(fig, label, key, 64, idle="busy-spin", floor=True)
            jobs.append((rows[rid], lambda mode=mode: run_floor(cfg.floor_build, mode, cfg)))
    return rows, jobs


def load_now():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine(cfg):
    info = harness.machine_info(cfg.cpus)
    info["kernel"] = platform.release()
    try:
        with open("/proc/meminfo") as f:
            info["memory_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        out = subprocess.run(["gcc", "--version"], capture_output=True, text=True, timeout=10)
        info["gcc"] = out.stdout.splitlines()[0] if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, IndexError):
        info["gcc"] = None
    try:
        import pyseq
        info["pyseq"] = getattr(pyseq, "__version__", "?")
    except ImportError:
        info["pyseq"] = None
    from sequencer_peer import code_version
    info["code"] = code_version()
    return info


def main(argv=None) -> int:
    cfg = parse(argv)
    harness.start_bench()
    cfg.cpus = (None, None) if cfg.smoke else harness.cpu_pair()
    began = time.monotonic()
    load_before = load_now()
    pinned = f"peers on CPUs {cfg.cpus[0]} and {cfg.cpus[1]}" if cfg.cpus[0] is not None else "unpinned"
    print(f"bench/run.py --{cfg.mode}: {cfg.repeat} interleaved rounds, sizes {cfg.sizes}, {pinned}, "
          f"load {load_before}", flush=True)
    cfg.floor_build = None
    rows, jobs = build_jobs(cfg)
    try:
        for rnd in range(cfg.repeat):
            for row, job in jobs:
                if row.status != "ok":
                    continue
                try:
                    s = row.add(job())
                    p50 = s.get("one_way_p50_ns")
                    figure = f"{row.figure} {row.size} B" + "".join(f" {k}={v}" for k, v in row.extra.items()
                                                                  if k in ("readers", "capacity"))
                    what = (f"one-way p50 {harness.fmt_ns(p50)}" if p50 is not None
                            else f"{row.runs[-1]['msgs_per_s']:,} msgs/s")
                    print(f"  round {rnd + 1}/{cfg.repeat} {figure:<24} {row.label:<40} {what}", flush=True)
                except Unavailable as exc:
                    row.status, row.reason = "unavailable", str(exc)
                    row.pip = getattr(tr.BY_KEY.get(row.key), "pip", None)
                    print(f"  {row.label}: unavailable: {exc}", flush=True)
                except Exception as exc:  # BenchFailed, a timeout, a peer that broke
                    row.status = "FAILED"
                    row.reason = str(exc) if isinstance(exc, BenchFailed) else f"{type(exc).__name__}: {exc}"
                    print(f"  {row.label} ({row.figure} {row.size} B): FAILED: {row.reason}", flush=True)
    finally:
        if cfg.floor_build is not None:
            cfg.floor_build.close()

    results = {
        "bench": "run.py", "mode": cfg.mode,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(cfg),
        "load": {"before": load_before, "after": load_now()},
        "seconds": round(time.monotonic() - began, 1),
        "config": {k: getattr(cfg, k) for k in ("repeat", "count", "warmup", "cap", "rate", "open_s", "scale",
                                                  "readers", "capacities", "floor", "sizes", "figures", "idle",
                                                  "timeout")} | {"pinned_cpus": list(cfg.cpus), "batch": BATCH,
                                                                 "throughput_counts_at_scale_1": TP_COUNTS},
        "rows": [row.as_dict() for row in rows.values()],
    }
    results["unavailable"] = report.unavailable(results["rows"])
    results["ratios"] = report.ratios(results["rows"])
    report.write_all(results, cfg.out, cfg.mode)
    failed = [r for r in results["rows"] if r["status"] == "FAILED"]
    print(f"done in {results['seconds']:.0f} s; wrote {os.path.join(cfg.out, 'results.json')}")
    if failed:
        print("FAILED: " + "; ".join(f"{r['label']} ({r['figure']} {r['size']} B): {r['reason']}" for r in failed),
              file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
