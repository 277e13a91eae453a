"""Latency from `submit` in one process to `read` in another, through the sequencer process.

      CPU 0                                                            CPU 1
    +------------------------------------+   inbound ring     +------------------------------+
    | client + reader (one process)      |  <ring>.in.lat     | sequencer (pyseq.Sequencer)  |
    |   t0 = perf_counter_ns()           | -----------------> |   C loop, GIL released:      |
    |   client.submit(1, i . pattern)    |                    |   poll inbound, stamp seq,   |
    |                                    |  sequenced ring    |   time, source; publish      |
    |   m = reader.read()   (busy-spin)  | <----------------- |   idle: busy-spin or         |
    |   t1 = perf_counter_ns()           |  <ring>            |         spin-yield           |
    |   check m: seq dense, source, i,   |                    |                              |
    |            pattern                 |                    |                              |
    +------------------------------------+                    +------------------------------+
        submit -> read = t1 - t0: the message crosses two processes (client -> sequencer ->
        reader); the client and the reader share a process so that one clock times it.  That is
        the one-way latency through the sequencer, not a round trip: it is not halved.

Three processes' worth of work on two CPUs: the client+reader process is pinned to CPU 0, the
sequencer to CPU 1, and both busy-wait (a reader in C spinning on the next slot; the sequencer's
C loop by its idle strategy).  The sequencer runs twice, with its default idle (busy-spin) and
with SpinYield (1,000 empty rounds, ~0.1 ms here, then sched_yield between rounds: messages
20 us apart never let it reach the yields, messages 200 us apart do).

Modes, in the same run after one warm-up:
  closed loop   one message in flight: submit, read it, record t1 - t0.  Also split at the
                sequencing time stamped in the message (CLOCK_REALTIME, the same clock in both
                processes): submit -> sequenced, and sequenced -> read.
  open loop     submit at a fixed rate (--rates: 50,000 and 5,000 msg/s) whatever the replies do,
                poll the reader between sends; the latency runs from the *intended* send time of each
                message (coordinated-omission corrected: a stall delays every message behind it,
                and all of them count).  The uncorrected figure (from the actual send) is shown
                beside it.  One Python thread does both, so each receipt is noticed at the next
                poll: the loop adds ~0.2-0.4 us.

Every message is checked (its sequence follows the previous one, its source is this client's,
its counter is the next one, its payload is the pattern) before any number is printed.  The
warm-up (not recorded) covers one lap of the sequenced ring (65,536 slots): every first touch
of a page of the shared memory is a page fault, 10-30 us on this VM, one every 32 messages.

    python bench/client_sequencer_reader_latency.py --quick          # < 60 s
    python bench/client_sequencer_reader_latency.py                  # < 3 min
    python bench/client_sequencer_reader_latency.py --idle busy-spin --rates 50000 --json /tmp/lat.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402  (before numpy: it sets OPENBLAS_NUM_THREADS)
import numpy as np  # noqa: E402
from harness import BenchFailed, Unavailable  # noqa: E402
from sequencer_peer import (COUNTER, MSG_TYPE, SYSTEM_FIRST, Flag, code_version,  # noqa: E402
                            import_pyseq, message, sequencer_main, sequencer_row_stats)

CLIENT = "lat"
CAPACITY = 65536  # the sequenced ring (the Sequencer's default)
IDLES = ("busy-spin", "spin-yield")


# ============================================================================================
# The client + reader process
# ============================================================================================


def client_reader_main(ring: str, cfg: dict, ready, stop) -> dict:
    pyseq = import_pyseq()
    try:
        if not ready.wait(cfg["timeout"]):
            raise TimeoutError(f"the sequencer did not start within {cfg['timeout']} s")
        client = pyseq.Client.connect(ring, CLIENT, timeout=cfg["timeout"])
        try:
            reader = client.sequenced.reader("lat-reader", gating=True, start="latest",
                                             idle=pyseq.BusySpin())
            try:
                return measure(pyseq, client, reader, cfg)
            finally:
                reader.close()
        finally:
            client.close()
    finally:
        stop.set()


class Expect:
    """The next message this process must read: every sequence, its own counter, its source."""

    def __init__(self, source: int, payloads: list):
        self.source = source
        self.payloads = payloads
        self.next_seq = None
        self.system = 0

    def check(self, m, counter: int) -> bool:
        """True if `m` is this client's message `counter`; False for a system message (skip it)."""
        if self.next_seq is not None and m.seq != self.next_seq:
            raise BenchFailed(f"sequence {m.seq} read after {self.next_seq - 1}: not dense")
        self.next_seq = m.seq + 1
        if m.msg_type >= SYSTEM_FIRST:
            self.system += 1
            return False
        if m.msg_type != MSG_TYPE or m.source != self.source:
            raise BenchFailed(f"sequence {m.seq}: type {m.msg_type} from source {m.source}; expected "
                              f"type {MSG_TYPE} from this client ({self.source})")
        if m.payload != self.payloads[counter]:
            got = COUNTER.unpack_from(m.payload)[0] if len(m.payload) >= 8 else None
            raise BenchFailed(f"sequence {m.seq}: counter {got}, expected {counter}"
                              f"{'' if got != counter else ' (payload corrupt)'}")
        return True


def measure(pyseq, client, reader, cfg: dict) -> dict:
    submit, read, poll = client.submit, reader.read, reader.poll
    clock, wall = time.perf_counter_ns, time.time_ns
    timeout = cfg["timeout"]
    open_counts = [int(rate * cfg["open_seconds"]) for rate in cfg["rates"]]
    payloads = [message(i) for i in range(cfg["warmup"] + cfg["count"] + sum(open_counts))]
    expect = Expect(client.source, payloads)
    gc.freeze()  # the bench's own big lists out of the collector's way (a full pass over them: ms)

    def closed_loop(first: int, n: int, record: bool):
        lat = np.zeros(n, dtype=np.int64)
        to_stamp = np.zeros(n, dtype=np.int64)
        for k in range(n):
            p = payloads[first + k]
            w0 = wall()
            t0 = clock()
            submit(MSG_TYPE, p, timeout=timeout)
            m = read(timeout)
            while m.msg_type >= SYSTEM_FIRST:  # CLIENT_JOINED and the like: sequenced too
                expect.check(m, first + k)
                m = read(timeout)
            t1 = clock()
            expect.check(m, first + k)
            if record:
                lat[k] = t1 - t0
                to_stamp[k] = m.timestamp_ns - w0
        return lat, to_stamp

    def open_loop(first: int, n: int, rate: float) -> dict:
        """Send message k at start + k / rate whatever has come back; poll between sends."""
        interval = 1e9 / rate
        offsets = [int(k * interval) for k in range(n)]
        sent = [0] * n
        received = [0] * n
        i = j = 0
        limit_ns = int(timeout * 1e9)
        gc.freeze()
        preempted = harness.preemptions()
        start = clock() + 1_000_000
        next_send = start
        last_progress = start
        while j < n:
            now = clock()
            if i < n and now >= next_send:
                submit(MSG_TYPE, payloads[first + i], timeout=timeout)
                sent[i] = now
                i += 1
                next_send = start + offsets[i] if i < n else 0
                continue
            m = poll()
            if m is None:
                if now - last_progress > limit_ns and j < i:
                    raise TimeoutError(f"open loop: message {first + j} not read within {timeout} s")
                continue
            t = clock()
            if expect.check(m, first + j):
                received[j] = t
                j += 1
                last_progress = t
        received_a = np.array(received, dtype=np.int64)
        sent_a = np.array(sent, dtype=np.int64)
        intended_a = start + np.array(offsets, dtype=np.int64)
        return {"co": received_a - intended_a, "raw": received_a - sent_a,
                "preempted": harness.preemptions() - preempted,
                "late_sends": int(np.count_nonzero(sent_a - intended_a > 10_000))}

    closed_loop(0, cfg["warmup"], False)
    preempted = harness.preemptions()
    start = clock()
    lat, to_stamp = closed_loop(cfg["warmup"], cfg["count"], True)
    closed_s = (clock() - start) / 1e9
    out = {"closed": lat, "to_stamp": to_stamp, "closed_s": closed_s,
           "closed_preempted": harness.preemptions() - preempted, "open": {}}
    first = cfg["warmup"] + cfg["count"]
    for rate, n in zip(cfg["rates"], open_counts):
        out["open"][rate] = open_loop(first, n, rate)
        first += n
    out["read"], out["system"], out["sent"] = expect.next_seq, expect.system, first
    return out


# ============================================================================================
# Runs and rows
# ============================================================================================


def run_once(idle_name: str, cfg, cpus) -> dict:
    ring = harness.shm_name("lat")
    ready, stop = harness.CTX.Event(), Flag()
    peer_cfg = {"timeout": cfg.timeout, "warmup": cfg.warmup, "count": cfg.count, "rates": cfg.rates,
                "open_seconds": cfg.open_seconds}
    try:
        results = harness.run_peers(
            [("sequencer", cpus[1], sequencer_main, (ring, idle_name, {}, ready, stop, cfg.run_cap,
                                                     cfg.sequencer_options)),
             ("client+reader", cpus[0], client_reader_main, (ring, peer_cfg, ready, stop))],
            deadline_s=cfg.run_cap + 30)
    finally:
        harness.unlink_ring_family(ring)
    return {"client+reader": results["client+reader"], "sequencer": results["sequencer"]}


class Row:
    """One latency series over several runs: a histogram per run (and all merged)."""

    def __init__(self, label: str):
        self.label = label
        self.hists = []
        self.runs = []

    def add(self, values_ns, preempted: int, extra: dict | None = None) -> int:
        hist = harness.latency_histogram(values_ns)
        self.hists.append(hist)
        self.runs.append({**harness.summarize(hist), "preempted": preempted, **(extra or {})})
        return hist.get_value_at_percentile(50)

    def merged(self):
        hist = harness.latency_histogram([])
        for h in self.hists:
            hist.add(h)
        return hist

    def as_dict(self) -> dict:
        return {"median_of_runs_ns": harness.summarize_runs(self.hists),
                "merged_ns": harness.summarize(self.merged()), "runs": self.runs}

    def print(self):
        if not self.hists:
            return
        s = harness.summarize_runs(self.hists)
        cells = " ".join(f"{harness.fmt_ns(s[k]['median']):>9}" for k in ("p50", "p90", "p99", "p99.9"))
        spread = " ".join(f"{harness.fmt_ns(s[k]['min']) + ' .. ' + harness.fmt_ns(s[k]['max']):>24}"
                          for k in ("p50", "p99"))
        preempted = " ".join(str(r["preempted"]) for r in self.runs)
        count = sum(r["count"] for r in self.runs)
        print(f"{self.label:<38} {count:>9,} {cells} {harness.fmt_ns(s['max']['max']):>9} {spread}   {preempted}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer messages and runs (whole run < 60 s)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--idle", metavar="NAMES", default=",".join(IDLES),
                   help="the sequencer's idle strategies, comma-separated (default: busy-spin,spin-yield)")
    p.add_argument("--count", type=int, help="closed-loop messages measured per run")
    p.add_argument("--rates", default="50000,5000",
                   help="open-loop send rates, msg/s, comma-separated (default 50000,5000)")
    p.add_argument("--open-seconds", type=float, help="open-loop seconds per rate per run")
    p.add_argument("--warmup", type=int, default=70_000,
                   help="closed-loop messages not recorded (default: one lap of the 65,536-slot ring)")
    p.add_argument("--repeat", type=int, help="runs per idle strategy, interleaved")
    p.add_argument("--timeout", type=float, default=5.0, help="longest wait for any one message (s)")
    p.add_argument("--scan-interval", type=float, metavar="S",
                   help="the sequencer's housekeeping interval (pyseq.Sequencer scan_interval_s; default "
                        "pyseq's): its C loop stops for the scan, ~0.1 ms per live client process here")
    cfg = p.parse_args(argv)
    cfg.sequencer_options = {} if cfg.scan_interval is None else {"scan_interval_s": cfg.scan_interval}
    cfg.count = cfg.count or (50_000 if cfg.quick else 200_000)
    cfg.open_seconds = cfg.open_seconds or (1.0 if cfg.quick else 2.0)
    cfg.rates = [float(r) for r in cfg.rates.split(",") if r.strip()]
    cfg.repeat = cfg.repeat or (2 if cfg.quick else 5)
    cfg.run_cap = 60.0
    idles = [name.strip() for name in cfg.idle.split(",") if name.strip()]
    unknown = set(idles) - set(IDLES)
    if unknown:
        p.error(f"unknown idle strategies {sorted(unknown)}; choose from {', '.join(IDLES)}")

    harness.start_bench()
    cpus = harness.cpu_pair()
    if cpus[0] is None:
        print("one CPU: the sequencer and the client+reader would take turns; not measured", file=sys.stderr)
        return 1
    rates = ", ".join(f"{r:,.0f}" for r in cfg.rates)
    print(f"submit -> sequencer -> read, 64-byte messages; client+reader on CPU {cpus[0]}, sequencer on "
          f"CPU {cpus[1]}; warm-up {cfg.warmup:,}, closed loop {cfg.count:,}, open loop {cfg.open_seconds:g} s "
          f"at each of {rates} msg/s; {cfg.repeat} runs per idle, interleaved", flush=True)

    rows = {}
    for name in idles:
        rows[(name, "closed")] = Row(f"closed loop, sequencer {name}")
        rows[(name, "to_stamp")] = Row("  of which submit -> sequenced")
        rows[(name, "from_stamp")] = Row("  of which sequenced -> read")
        for rate in cfg.rates:
            rows[(name, f"open_co@{rate:.0f}")] = Row(f"open {rate / 1000:,.0f}k/s CO-corrected, {name}")
            rows[(name, f"open_raw@{rate:.0f}")] = Row("  uncorrected (from actual send)")
    seq_runs = {name: [] for name in idles}
    failed = None
    try:
        for rep in range(cfg.repeat):
            for name in idles:
                try:
                    out = run_once(name, cfg, cpus)
                except Unavailable as exc:
                    print(f"skipped: {exc}", file=sys.stderr)
                    return 1
                r, s = out["client+reader"], out["sequencer"]
                p50 = rows[(name, "closed")].add(r["closed"], r["closed_preempted"],
                                                 {"msgs_per_s": round(cfg.count / r["closed_s"])})
                rows[(name, "to_stamp")].add(r["to_stamp"], r["closed_preempted"])
                rows[(name, "from_stamp")].add(r["closed"] - r["to_stamp"], r["closed_preempted"])
                opened = []
                for rate, o in r["open"].items():
                    co = rows[(name, f"open_co@{rate:.0f}")].add(o["co"], o["preempted"],
                                                                {"late_sends_over_10us": o["late_sends"]})
                    rows[(name, f"open_raw@{rate:.0f}")].add(o["raw"], o["preempted"])
                    opened.append(f"open {rate / 1000:,.0f}k/s p50 {harness.fmt_ns(co)} (preempted {o['preempted']})")
                seq_runs[name].append(sequencer_row_stats(s))
                print(f"  run {rep + 1}/{cfg.repeat} {name:<10} closed p50 {harness.fmt_ns(p50)} (preempted "
                      f"{r['closed_preempted']}); {'; '.join(opened)}; sequencer preempted {s['preempted']}, "
                      f"{s['rounds'] / s['seconds']:,.0f} rounds/s", flush=True)
    except BenchFailed as exc:
        failed = str(exc)
        print(f"FAILED: {exc}", file=sys.stderr)

    print()
    print("latency of one message from submit to read, through the sequencer process (one way, not halved).\n"
          "p50 .. p99.9: the median over runs of each run's percentile (one HdrHistogram per run); max: the\n"
          "highest of all; the ranges: lowest and highest run; preempt: involuntary context switches of the\n"
          "client+reader process in each run (a few dozen is quiet; thousands: other load took the CPU).")
    heads = " ".join(f"{h:>9}" for h in ("p50", "p90", "p99", "p99.9", "max"))
    print(f"{'series':<38} {'messages':>9} {heads} {'p50 over runs':>24} {'p99 over runs':>24}   preempt")
    for row in rows.values():
        row.print()

    if cfg.json:
        report = {"bench": "client_sequencer_reader_latency", "message_length": 64,
                  "machine": harness.machine_info(cpus), "code": code_version(),
                  "config": {"quick": cfg.quick, "warmup": cfg.warmup, "count": cfg.count, "rates": cfg.rates,
                             "open_seconds": cfg.open_seconds, "repeat": cfg.repeat, "idles": idles,
                             "sequenced_ring_capacity": CAPACITY, "sequencer_options": cfg.sequencer_options},
                  "results": {f"{name}/{key}": row.as_dict() for (name, key), row in rows.items()
                              if row.hists},
                  "sequencer": seq_runs, "failed": failed}
        with open(cfg.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        print(f"wrote {cfg.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
