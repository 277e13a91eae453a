"""A well-behaved client's submit -> read latency while another client floods the sequencer.

      CPU 0                                                        CPU 1
    +-----------------------------------+                    +-----------------------------+
    | good client + reader (one process)|  <ring>.in.good    | sequencer (pyseq.Sequencer) |
    |   t0; client.submit(1, i.pattern) | -----------------> |  C loop, busy-spin:         |
    |   read_batch(4096) until message i|                    |  each round moves <= 256    |
    |   of this client is in; t1        |  <ring>.in.flood   |  per client, fewer if its   |
    |   check every message read        |    +-------------> |  token bucket says so       |
    +-----------------------------------+    |               +-----------------------------+
                   ^  sequenced ring <ring>  |                             |
                   +-------------------------|-----------------------------+
    +-----------------------------------+    |   (the reader reads the flood too: one total order)
    | flooder (--flooder-cpu)           | ---+
    |   submit_batch(256) in a loop,    |
    |   as fast as its ring takes them  |
    +-----------------------------------+

Three cases, interleaved, the same closed loop in each (one good message in flight, latency =
t1 - t0, one way through the sequencer, not halved):
  quiet            no flooder
  flood, no limit  the flooder has no rate limit (only the per-round batch of 256 and its own
                   ring's back-pressure hold it)
  flood, limited   the flooder's client name has a rate limit in the sequencer's Limits
                   (--flood-rate msg/s, burst 1,024): the sequencer leaves the excess in the
                   flooder's own ring, and the flooder's submit_batch waits

Each good message's latency is also split at the sequencing time the sequencer stamps in it
(CLOCK_REALTIME, read with time.time_ns() at submit): submit -> sequenced is what the sequencer's
round robin and the flooder's limit decide; the rest is the queue in the sequenced ring and the
reader.

The reader is a gating reader of the whole sequenced stream, so the good client's message comes
after every flood message sequenced before it: an unlimited flood that the reader cannot drain
as fast as the sequencer fills the ring shows up as queueing in the sequenced ring.  The reader
uses read_batch (up to 4,096 messages a call) to get through the flood; the quiet case uses the
same reader, so the three rows compare like with like (client_sequencer_reader_latency.py has
the single-message read).

Checked before any number is printed, for every message read: sequence numbers dense, the good
client's counters 0, 1, 2, ... and its payloads, the flooder's counters 0, 1, 2, ... (each
client's order kept, nothing lost), and at the end, after the flooder stopped and the sequencer
drained its ring and published END_OF_STREAM, that the reader saw every message the flooder
submitted.

Two CPUs, three busy processes: the flooder shares a CPU (by default CPU 0, with the good
client+reader; --flooder-cpu 1 puts it with the sequencer).  It waits for room in its ring with
SpinYield, so it gives its CPU away while it is back-pressured; the 'preempt' column shows how
often the good client+reader was pushed off its CPU.

    python bench/flooding_client_latency.py --quick          # < 60 s
    python bench/flooding_client_latency.py                  # < 3 min
    python bench/flooding_client_latency.py --flood-rate 200000 --json /tmp/flood.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402  (before numpy: it sets OPENBLAS_NUM_THREADS)
import numpy as np  # noqa: E402
from harness import BenchFailed, Unavailable  # noqa: E402
from sequencer_peer import (MSG_TYPE, Flag, StreamCheck, batch_records, code_version,  # noqa: E402
                            import_pyseq, message, sequencer_main, sequencer_row_stats)

GOOD, FLOOD = "good", "flood"
FLOOD_BATCH = 256
READ_BATCH = 4096
CASES = ("quiet", "unlimited", "limited")


# ============================================================================================
# The good client + reader process, and the flooder
# ============================================================================================


def good_main(ring: str, cfg: dict, flooding: bool, ready, go, started, flood_stop, flood_done,
              seq_stop) -> dict:
    pyseq = import_pyseq()
    try:
        if not ready.wait(cfg["timeout"]):
            raise TimeoutError(f"the sequencer did not start within {cfg['timeout']} s")
        client = pyseq.Client.connect(ring, GOOD, timeout=cfg["timeout"])
        try:
            reader = client.sequenced.reader("good-reader", gating=True, start="latest",
                                             idle=pyseq.BusySpin())
            try:
                return measure(pyseq, client, reader, cfg, flooding, go, started, flood_stop, flood_done,
                               seq_stop)
            finally:
                reader.close()
        finally:
            client.close()
    finally:
        flood_stop.set()
        seq_stop.set()


def measure(pyseq, client, reader, cfg, flooding, go, started, flood_stop, flood_done, seq_stop) -> dict:
    good = client.source
    flood = pyseq.sequencer.source_id(FLOOD)
    check = StreamCheck(client.sequenced.dtype, {good: GOOD, flood: FLOOD}, check_pattern={good})
    out = np.empty(READ_BATCH, dtype=client.sequenced.dtype)
    out.view(np.uint8).fill(0)  # fault the destination in before the clock
    submit, read_batch, clock, wall = client.submit, reader.read_batch, time.perf_counter_ns, time.time_ns
    timeout = cfg["timeout"]
    payloads = [message(i) for i in range(cfg["warmup"] + cfg["count"])]
    counters = check.next_counter

    def closed_loop(first: int, n: int):
        lat = np.zeros(n, dtype=np.int64)
        to_stamp = np.zeros(n, dtype=np.int64)
        for k in range(n):
            w0 = wall()
            t0 = clock()
            submit(MSG_TYPE, payloads[first + k], timeout=timeout)
            while True:
                batch = read_batch(READ_BATCH, timeout, out)
                t1 = clock()
                if len(batch) == 0:
                    raise TimeoutError(f"message {first + k} of the good client not read within {timeout} s")
                check.check(batch)
                if counters[good] > first + k:
                    break
            lat[k] = t1 - t0
            to_stamp[k] = check.last_ts[good] - w0  # its sequencing time (CLOCK_REALTIME, as time_ns)
        return lat, to_stamp

    closed_loop(0, cfg["warmup"])
    if flooding:
        go.set()
        if not started.wait(timeout):
            raise TimeoutError(f"the flooder did not start within {timeout} s")
    preempted = harness.preemptions()
    flood_before = counters[flood]
    start = clock()
    lat, to_stamp = closed_loop(cfg["warmup"], cfg["count"])
    seconds = (clock() - start) / 1e9
    flood_read = counters[flood] - flood_before
    preempted = harness.preemptions() - preempted

    # stop the flooder (reading on: it may be waiting for room that only reading makes), then the
    # sequencer (it drains the inbound rings, publishes END_OF_STREAM); check everything up to that
    flood_stop.set()
    deadline = time.monotonic() + timeout
    while flooding and not flood_done.is_set():
        check.check(read_batch(READ_BATCH, 0.001, out))
        if time.monotonic() > deadline:
            raise TimeoutError(f"the flooder did not stop within {timeout} s")
    seq_stop.set()
    deadline = time.monotonic() + timeout
    while not check.end_of_stream:
        check.check(read_batch(READ_BATCH, 0.1, out))
        if time.monotonic() > deadline:
            raise TimeoutError(f"no END_OF_STREAM within {timeout} s of stopping the sequencer")
    return {"latency": lat, "to_stamp": to_stamp, "seconds": seconds, "preempted": preempted,
            "flood_read_measuring": flood_read, "good_total": counters[good], "flood_total": counters[flood],
            "system": check.system}


def flooder_main(ring: str, cfg: dict, go, started, stop, done) -> dict:
    pyseq = import_pyseq()
    try:
        if not go.wait(cfg["timeout"] + 60):
            raise TimeoutError("the good client never asked for the flood")
        client = pyseq.Client.connect(ring, FLOOD, timeout=cfg["timeout"], idle=pyseq.SpinYield())
        try:
            records = batch_records(0, FLOOD_BATCH)
            counter = records.view("<i8")[:, 0]  # the first 8 bytes of each row
            submit_batch = client.submit_batch
            submitted = 0
            preempted = harness.preemptions()
            start = time.perf_counter_ns()
            while not stop.is_set():
                submit_batch(MSG_TYPE, records, timeout=cfg["timeout"])
                counter += FLOOD_BATCH
                submitted += FLOOD_BATCH
                if submitted == 16 * FLOOD_BATCH:
                    started.set()
            seconds = (time.perf_counter_ns() - start) / 1e9
            held = [r["held_count"] for r in client.readers() if r["name"] == "sequencer"]
            return {"submitted": submitted, "seconds": seconds, "preempted": harness.preemptions() - preempted,
                    "held_count": held[0] if held else None}
        finally:
            client.close()
    finally:
        done.set()


# ============================================================================================
# Runs and rows
# ============================================================================================


def run_once(case: str, cfg, cpus) -> dict:
    ring = harness.shm_name("flood")
    ev = {k: harness.CTX.Event() for k in ("ready", "go", "started", "flood_done")}
    ev.update(flood_stop=Flag(), seq_stop=Flag())  # polled in loops: a flag is cheaper than an Event
    limits = {"clients": {FLOOD: {"rate": cfg.flood_rate, "burst": 1024}}} if case == "limited" else {}
    peer_cfg = {"timeout": cfg.timeout, "warmup": cfg.warmup, "count": cfg.count}
    flooding = case != "quiet"
    peers = [("sequencer", cpus[1], sequencer_main, (ring, "busy-spin", limits, ev["ready"], ev["seq_stop"],
                                                      cfg.run_cap)),
             ("good", cpus[0], good_main, (ring, peer_cfg, flooding, ev["ready"], ev["go"], ev["started"],
                                           ev["flood_stop"], ev["flood_done"], ev["seq_stop"]))]
    if flooding:
        peers.append(("flooder", cfg.flooder_cpu, flooder_main,
                      (ring, peer_cfg, ev["go"], ev["started"], ev["flood_stop"], ev["flood_done"])))
    try:
        results = harness.run_peers(peers, deadline_s=cfg.run_cap + 30)
    finally:
        harness.unlink_ring_family(ring)
    g, s = results["good"], results["sequencer"]
    total = cfg.warmup + cfg.count
    if g["good_total"] != total:
        raise BenchFailed(f"the reader saw {g['good_total']} messages of the good client, it sent {total}")
    f = results.get("flooder")
    if f is not None and g["flood_total"] != f["submitted"]:
        raise BenchFailed(f"the flooder submitted {f['submitted']} messages, the reader saw {g['flood_total']}")
    return {"good": g, "sequencer": s, "flooder": f}


def add(hists: dict, key, values_ns):
    """One run's histogram, kept with the others of its series."""
    hist = harness.latency_histogram(values_ns)
    hists.setdefault(key, []).append(hist)
    return hist


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer messages and runs (whole run < 60 s)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--count", type=int, help="good messages measured per run")
    p.add_argument("--warmup", type=int, default=70_000,
                   help="good messages not recorded (default: one lap of the 65,536-slot ring)")
    p.add_argument("--flood-rate", type=float, default=100_000.0,
                   help="the flooder's rate limit in the 'limited' case, msg/s (default 100,000)")
    p.add_argument("--flooder-cpu", default="0", help="CPU of the flooder: 0, 1 or none (default 0)")
    p.add_argument("--repeat", type=int, help="runs per case, interleaved")
    p.add_argument("--timeout", type=float, default=5.0, help="longest wait for any one message (s)")
    cfg = p.parse_args(argv)
    cfg.count = cfg.count or (10_000 if cfg.quick else 30_000)
    cfg.repeat = cfg.repeat or (2 if cfg.quick else 4)
    cfg.run_cap = 90.0
    cfg.flooder_cpu = None if cfg.flooder_cpu == "none" else int(cfg.flooder_cpu)

    harness.start_bench()
    cpus = harness.cpu_pair()
    if cpus[0] is None:
        print("one CPU: not measured", file=sys.stderr)
        return 1
    print(f"good client+reader on CPU {cpus[0]}, sequencer (busy-spin) on CPU {cpus[1]}, flooder on "
          f"{'no fixed CPU' if cfg.flooder_cpu is None else f'CPU {cfg.flooder_cpu}'}; warm-up {cfg.warmup:,}, "
          f"{cfg.count:,} good messages measured per run; {cfg.repeat} runs per case, interleaved", flush=True)

    labels = {"quiet": "quiet (no flooder)", "unlimited": "flood, no rate limit",
              "limited": f"flood, limited to {cfg.flood_rate / 1000:,.0f}k/s"}
    runs = {case: [] for case in CASES}
    hists: dict = {}
    failed = None
    try:
        for rep in range(cfg.repeat):
            for case in CASES:
                started = time.monotonic()
                try:
                    out = run_once(case, cfg, cpus)
                except Unavailable as exc:
                    print(f"skipped: {exc}", file=sys.stderr)
                    return 1
                g, s, f = out["good"], out["sequencer"], out["flooder"]
                hist = add(hists, (case, "total"), g["latency"])
                stamp = add(hists, (case, "to_stamp"), g["to_stamp"])
                flood_stats = s["clients"].get(FLOOD, {})
                run = {"p50_ns": hist.get_value_at_percentile(50), "p99_ns": hist.get_value_at_percentile(99),
                       "to_sequenced_p50_ns": stamp.get_value_at_percentile(50),
                       "to_sequenced_p99_ns": stamp.get_value_at_percentile(99),
                       "good_preempted": g["preempted"], "sequencer_preempted": s["preempted"],
                       "flooder_preempted": f["preempted"] if f else 0,
                       "flood_read_per_s": round(g["flood_read_measuring"] / g["seconds"]),
                       "flood_submitted": f["submitted"] if f else 0,
                       "flood_held_count": f["held_count"] if f else 0,
                       "flood_deferred_last_seen": flood_stats.get("deferred", 0),
                       "out_full_rounds": s["out_full"], "sequencer": sequencer_row_stats(s),
                       "seconds": round(time.monotonic() - started, 1)}
                runs[case].append(run)
                print(f"  run {rep + 1}/{cfg.repeat} {labels[case]:<26} p50 {harness.fmt_ns(run['p50_ns']):>9} "
                      f"p99 {harness.fmt_ns(run['p99_ns']):>9}; to sequenced p50 "
                      f"{harness.fmt_ns(run['to_sequenced_p50_ns']):>9} p99 "
                      f"{harness.fmt_ns(run['to_sequenced_p99_ns']):>9}; flood read {run['flood_read_per_s']:>10,}/s; "
                      f"preempted good {g['preempted']}, sequencer {s['preempted']}"
                      + (f", flooder {f['preempted']}" if f else "") + f"; {run['seconds']} s", flush=True)
    except BenchFailed as exc:
        failed = str(exc)
        print(f"FAILED: {exc}", file=sys.stderr)

    print()
    print("the good client's latency.  submit -> read: one way through the sequencer to the reader (not\n"
          "halved).  submit -> sequenced: to the sequencing time stamped in the message (CLOCK_REALTIME in\n"
          "both processes): what the sequencer's round robin and the flooder's limit decide, before any\n"
          "queue in the sequenced ring.  p50 .. p99.9: median over runs of each run's percentile; max: the\n"
          "highest; ranges: lowest and highest run; 'x quiet': median p50 and p99 over the quiet case's;\n"
          "flood/s: flood messages the reader got per second while the good client was measured (median\n"
          "run); preempt: involuntary context switches of the good client+reader in each run.")
    heads = " ".join(f"{h:>9}" for h in ("p50", "p90", "p99", "p99.9", "max"))
    summary = {}
    for part, title in (("total", "submit -> read"), ("to_stamp", "submit -> sequenced")):
        print(f"\n{title:<26} {heads} {'p50 over runs':>22} {'p99 over runs':>22} {'x quiet':>11} "
              f"{'flood/s':>10}   preempt")
        quiet = harness.summarize_runs(hists[("quiet", part)]) if ("quiet", part) in hists else None
        for case in CASES:
            if (case, part) not in hists:
                continue
            sm = harness.summarize_runs(hists[(case, part)])
            merged = harness.latency_histogram([])
            for h in hists[(case, part)]:
                merged.add(h)
            summary.setdefault(case, {})[part] = {"median_of_runs": sm, "merged": harness.summarize(merged)}
            cells = " ".join(f"{harness.fmt_ns(sm[k]['median']):>9}" for k in ("p50", "p90", "p99", "p99.9"))
            spread = " ".join(f"{harness.fmt_ns(sm[k]['min']) + '..' + harness.fmt_ns(sm[k]['max']):>22}"
                              for k in ("p50", "p99"))
            factor = (f"{sm['p50']['median'] / quiet['p50']['median']:.1f} / "
                      f"{sm['p99']['median'] / quiet['p99']['median']:.1f}") if quiet else "-"
            flood_rate = round(harness.median([r["flood_read_per_s"] for r in runs[case]]))
            preempted = " ".join(str(r["good_preempted"]) for r in runs[case])
            print(f"{labels[case]:<26} {cells} {harness.fmt_ns(sm['max']['max']):>9} {spread} {factor:>11} "
                  f"{flood_rate:>10,}   {preempted}")

    if cfg.json:
        report = {"bench": "flooding_client_latency", "message_length": 64, "machine": harness.machine_info(cpus),
                  "code": code_version(),
                  "config": {"quick": cfg.quick, "warmup": cfg.warmup, "count": cfg.count,
                             "flood_rate_limit": cfg.flood_rate, "flood_burst": 1024, "flood_batch": FLOOD_BATCH,
                             "read_batch": READ_BATCH, "flooder_cpu": cfg.flooder_cpu, "repeat": cfg.repeat},
                  "results": {case: {"label": labels[case], "submit_to_read_ns": summary.get(case, {}).get("total"),
                                     "submit_to_sequenced_ns": summary.get(case, {}).get("to_stamp"),
                                     "runs": runs[case]} for case in CASES},
                  "failed": failed}
        with open(cfg.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        print(f"wrote {cfg.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
