"""The sequencer's throughput: messages per second from 1 or 4 client processes, through the
sequencer process, to a reader process.

    (--client-cpu, default CPU 0)                 CPU 1                        CPU 0
    +--------------------------+            +-----------------------+    +------------------------+
    | client c0                | -inbound-> | sequencer             |    | reader                 |
    |  submit_batch(256)       |            | (pyseq.Sequencer,     |    |  read_batch(4096)      |
    |  or submit(), as fast    |            |  busy-spin)           | -> |  checks every message, |
    |  as the ring takes them  |    ...     |  round robin over the |    |  counts until it has   |
    +--------------------------+            |  inbound rings, <= 256|    |  all N x M             |
    | client c1 .. c3 (4-client| -inbound-> |  per client per round |    |                        |
    |  rows)                   |            +-----------------------+    +------------------------+
    +--------------------------+
        msgs/s = N x M / (reader's last message - go), one clock (CLOCK_MONOTONIC) in both
        processes; 'stamped' = the same count over the sequencer's own time stamps from the
        first to the last client message (the sequencer's rate without the start and the tail)

Two CPUs, 3 or 6 busy processes: the sequencer has CPU 1 to itself; the reader and the clients
share CPU 0 (or, with --client-cpu none, wherever the scheduler puts the clients).  The clients
and the reader wait with SpinYield, so a client whose ring is full and a reader that has caught
up give the CPU to the others.  The 4-client rows oversubscribe the machine (5 processes on
CPU 0): they are reported as measured.

Also: the sequencer's C loop alone, in one process and on one CPU: the inbound rings of 1 or
4 clients are filled first (65,536 messages each), then the sequencer drains them; the rate
is taken from the sequencing time stamps (the first lap of every ring is a warm-up, so no
page faults are measured).  That is the ceiling the multi-process rows approach.

The reader checks every message as it reads (sequence numbers dense; type, length, schema;
each client's counter, the first 8 payload bytes, 0, 1, 2, ... in order: nothing lost, repeated
or reordered; the other 56 payload bytes of the last message of each batch: comparing them all
would cost more than the reader's whole share of the run) before any number is printed; each
run ends with the sequencer's END_OF_STREAM after every client message.  The C-loop-alone rows
check every byte, after the clock.

    python bench/sequencer_throughput.py --quick          # < 60 s
    python bench/sequencer_throughput.py                  # < 3 min
    python bench/sequencer_throughput.py --clients 4 --json /tmp/seq_tp.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402  (before numpy: it sets OPENBLAS_NUM_THREADS)
import numpy as np  # noqa: E402
from harness import BenchFailed, Unavailable  # noqa: E402
from sequencer_peer import (COUNTER, MSG_TYPE, Flag, StreamCheck, batch_records, code_version,  # noqa: E402
                            import_pyseq, message, sequencer_main, sequencer_row_stats)

SUBMIT_BATCH = 256
READ_BATCH = 4096
MODES = ("batch", "single")


def client_name(k: int) -> str:
    return f"c{k}"


# ============================================================================================
# The processes
# ============================================================================================


def client_main(ring: str, name: str, mode: str, count: int, cfg: dict, reader_ready, connected, go) -> dict:
    pyseq = import_pyseq()
    if not reader_ready.wait(cfg["timeout"]):
        raise TimeoutError(f"the reader did not start within {cfg['timeout']} s")
    client = pyseq.Client.connect(ring, name, timeout=cfg["timeout"], idle=pyseq.SpinYield())
    try:
        records = batch_records(0, SUBMIT_BATCH)
        counter = records.view("<i8")[:, 0]
        buf = bytearray(message(0))
        pack, submit, submit_batch, timeout = COUNTER.pack_into, client.submit, client.submit_batch, cfg["timeout"]
        connected.set()
        if not go.wait(timeout):
            raise TimeoutError(f"no go within {timeout} s")
        preempted = harness.preemptions()
        start = time.perf_counter_ns()
        if mode == "batch":
            for _ in range(count // SUBMIT_BATCH):
                submit_batch(MSG_TYPE, records, timeout=timeout)
                counter += SUBMIT_BATCH
        else:
            for i in range(count):
                pack(buf, 0, i)
                submit(MSG_TYPE, buf, timeout=timeout)
        seconds = (time.perf_counter_ns() - start) / 1e9
        return {"sent": count, "seconds": seconds, "preempted": harness.preemptions() - preempted}
    finally:
        client.close()


def reader_main(ring: str, names: list, per_client: int, cfg: dict, ready, reader_ready, connected, go,
                seq_stop) -> dict:
    pyseq = import_pyseq()
    try:
        if not ready.wait(cfg["timeout"]):
            raise TimeoutError(f"the sequencer did not start within {cfg['timeout']} s")
        sequenced = pyseq.Ring.attach(ring, timeout=cfg["timeout"])
        try:
            reader = sequenced.reader("counter", gating=True, start="latest", idle=pyseq.SpinYield())
            try:
                return read_all(pyseq, sequenced, reader, names, per_client, cfg, reader_ready, connected, go,
                                seq_stop)
            finally:
                reader.close()
        finally:
            sequenced.close()
    finally:
        seq_stop.set()


def read_all(pyseq, sequenced, reader, names, per_client, cfg, reader_ready, connected, go, seq_stop) -> dict:
    timeout = cfg["timeout"]
    sources = {pyseq.sequencer.source_id(n): n for n in names}
    check = StreamCheck(sequenced.dtype, sources, check_pattern="last")
    out = np.empty(READ_BATCH, dtype=sequenced.dtype)
    out.view(np.uint8).fill(0)
    read_batch, clock = reader.read_batch, time.perf_counter_ns
    total = per_client * len(names)
    reader_ready.set()
    for ev in connected:
        if not ev.wait(timeout):
            raise TimeoutError(f"a client did not connect within {timeout} s")
    preempted = harness.preemptions()
    start = clock()
    go.set()
    got = 0
    while got < total:
        batch = read_batch(READ_BATCH, timeout, out)
        if len(batch) == 0:
            raise TimeoutError(f"no message within {timeout} s after {got:,} of {total:,}")
        check.check(batch)
        got = sum(check.next_counter.values())
    end = clock()
    preempted = harness.preemptions() - preempted
    if got != total:
        raise BenchFailed(f"read {got} client messages, {total} were sent")
    stamped_ns = max(check.last_ts.values()) - min(check.first_ts.values())
    seq_stop.set()  # the sequencer drains (nothing is left), publishes END_OF_STREAM
    deadline = time.monotonic() + timeout
    while not check.end_of_stream:
        check.check(read_batch(READ_BATCH, 0.1, out))
        if time.monotonic() > deadline:
            raise TimeoutError(f"no END_OF_STREAM within {timeout} s")
    return {"messages": total, "seconds": (end - start) / 1e9, "stamped_s": stamped_ns / 1e9,
            "preempted": preempted, "system": check.system}


def sequencer_alone(ring: str, n_clients: int, per_client: int, timeout: float) -> dict:
    """The C loop alone: fill n_clients inbound rings, then let the sequencer drain them (twice; the
    second lap is measured).  Returns msgs/s from the sequencing stamps, every message checked."""
    pyseq = import_pyseq()
    names = [client_name(k) for k in range(n_clients)]
    total = n_clients * per_client
    limits = pyseq.Limits(default=pyseq.Limit(capacity=per_client))
    try:
        seq = pyseq.Sequencer(ring, capacity=total, limits=limits, idle=pyseq.BusySpin(), slice_s=0.001)
        try:
            clients = connect_while_stepping(pyseq, seq, ring, names, timeout)
            try:
                rates = []
                sequenced = clients[0].sequenced
                records = batch_records(0, per_client)
                for lap in range(2):
                    first = sequenced.published_sequence + 1
                    for c in clients:
                        c.submit_batch(MSG_TYPE, records, timeout=timeout)  # exactly fills its ring
                    records.view("<i8")[:, 0] += per_client
                    moved, deadline = 0, time.monotonic() + timeout
                    while moved < total:
                        moved += seq.step()
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"the sequencer moved {moved} of {total} within {timeout} s")
                    reader = sequenced.reader(start=first)
                    try:
                        check = StreamCheck(sequenced.dtype, {c.source: c.client_name for c in clients})
                        for c in clients:
                            check.next_counter[c.source] = lap * per_client
                        got = 0
                        while got < total:
                            batch = reader.read_batch(READ_BATCH, timeout)
                            if len(batch) == 0:
                                raise TimeoutError("the sequenced messages are not all there")
                            check.check(batch)
                            got = sum(check.next_counter.values()) - lap * total
                    finally:
                        reader.close()
                    stamped = (max(check.last_ts.values()) - min(check.first_ts.values())) / 1e9
                    if lap == 1:
                        rates.append(round((total - 1) / stamped))
                return {"msgs_per_s": rates[0], "messages": total}
            finally:
                for c in clients:
                    c.close()
        finally:
            seq.close()
    finally:
        harness.unlink_ring_family(ring)


def connect_while_stepping(pyseq, seq, ring, names, timeout):
    """Client.connect waits for the sequencer to take the client: step it in a thread meanwhile
    (its C loop releases the GIL)."""
    stop = threading.Event()
    failure = []

    def stepper():
        try:
            while not stop.is_set():
                seq.step()
        except BaseException as exc:  # reported below
            failure.append(exc)

    thread = threading.Thread(target=stepper, daemon=True)
    thread.start()
    clients = []
    try:
        for name in names:
            clients.append(pyseq.Client.connect(ring, name, timeout=timeout))
    finally:
        stop.set()
        thread.join(timeout)
        if thread.is_alive():
            raise BenchFailed("the sequencer thread did not stop")
    if failure:
        raise BenchFailed(f"the sequencer failed: {failure[0]!r}")
    return clients


# ============================================================================================
# Runs and rows
# ============================================================================================


def run_once(n_clients: int, mode: str, total: int, cfg, cpus) -> dict:
    ring = harness.shm_name("tp")
    names = [client_name(k) for k in range(n_clients)]
    per_client = total // n_clients
    if mode == "batch":
        per_client -= per_client % SUBMIT_BATCH
    ready, reader_ready, go = (harness.CTX.Event() for _ in range(3))
    seq_stop = Flag()
    connected = [harness.CTX.Event() for _ in names]
    peer_cfg = {"timeout": cfg.timeout}
    peers = [("sequencer", cpus[1], sequencer_main, (ring, "busy-spin", {}, ready, seq_stop, cfg.run_cap)),
             ("reader", cpus[0], reader_main, (ring, names, per_client, peer_cfg, ready, reader_ready, connected,
                                               go, seq_stop))]
    peers += [(name, cfg.client_cpu, client_main, (ring, name, mode, per_client, peer_cfg, reader_ready, ev, go))
              for name, ev in zip(names, connected)]
    try:
        results = harness.run_peers(peers, deadline_s=cfg.run_cap + 30)
    finally:
        harness.unlink_ring_family(ring)
    r, s = results["reader"], results["sequencer"]
    sent = sum(results[n]["sent"] for n in names)
    if sent != r["messages"]:
        raise BenchFailed(f"the clients sent {sent} messages, the reader read {r['messages']}")
    busy_rounds = s["rounds"] - s["idle_rounds"]
    return {"messages": sent, "msgs_per_s": round(sent / r["seconds"]),
            "per_busy_round": round(sent / busy_rounds, 1) if busy_rounds else None,
            "stamped_msgs_per_s": round((sent - 1) / r["stamped_s"]) if r["stamped_s"] > 0 else None,
            "client_submit_msgs_per_s": round(sent / max(results[n]["seconds"] for n in names)),
            "preempted": {"reader": r["preempted"], "sequencer": s["preempted"],
                          "clients": sum(results[n]["preempted"] for n in names)},
            "sequencer": sequencer_row_stats(s)}


def fmt_rate(value) -> str:
    return "-" if value is None else f"{value / 1e6:,.2f} M"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer messages and runs (whole run < 60 s)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--clients", default="1,4", help="client counts, comma-separated (default 1,4)")
    p.add_argument("--modes", default=",".join(MODES), help="batch (submit_batch of 256), single (submit)")
    p.add_argument("--client-cpu", default="0", help="CPU of the clients: 0, 1 or none (default 0)")
    p.add_argument("--repeat", type=int, help="runs per row, interleaved")
    p.add_argument("--timeout", type=float, default=5.0, help="longest wait for any one message (s)")
    cfg = p.parse_args(argv)
    cfg.repeat = cfg.repeat or (3 if cfg.quick else 7)
    cfg.client_cpu = None if cfg.client_cpu == "none" else int(cfg.client_cpu)
    cfg.run_cap = 90.0
    scale = 1 if cfg.quick else 3
    totals = {"batch": 1_000_000 * scale, "single": 300_000 * scale}
    counts = [int(c) for c in cfg.clients.split(",")]
    modes = [m for m in cfg.modes.split(",") if m]
    if set(modes) - set(MODES):
        p.error(f"modes are {', '.join(MODES)}")

    harness.start_bench()
    cpus = harness.cpu_pair()
    if cpus[0] is None:
        print("one CPU: not measured", file=sys.stderr)
        return 1
    where = "no fixed CPU" if cfg.client_cpu is None else f"CPU {cfg.client_cpu}"
    print(f"N clients -> sequencer (busy-spin, CPU {cpus[1]}) -> reader (CPU {cpus[0]}); clients on {where}; "
          f"64-byte messages, every one checked; {cfg.repeat} runs per row, interleaved", flush=True)

    rows = {(n, m): [] for n in counts for m in modes}
    labels = {(n, m): f"{n} client{'s' if n > 1 else ''}, " + (f"submit_batch({SUBMIT_BATCH})" if m == "batch"
                                                               else "submit()") for n, m in rows}
    alone = {n: [] for n in counts}
    failed = None
    try:
        for rep in range(cfg.repeat):
            for key in rows:
                n, m = key
                try:
                    run = run_once(n, m, totals[m], cfg, cpus)
                except Unavailable as exc:
                    print(f"skipped: {exc}", file=sys.stderr)
                    return 1
                rows[key].append(run)
                pre = run["preempted"]
                print(f"  run {rep + 1}/{cfg.repeat} {labels[key]:<28} {fmt_rate(run['msgs_per_s']):>9} msgs/s "
                      f"(stamped {fmt_rate(run['stamped_msgs_per_s'])}); preempted reader {pre['reader']}, "
                      f"sequencer {pre['sequencer']}, clients {pre['clients']}", flush=True)
            for n in counts:
                ring = harness.shm_name("alone")
                try:
                    res = harness.run_peers([("sequencer alone", cpus[1], sequencer_alone,
                                              (ring, n, 65536, cfg.timeout))], deadline_s=cfg.run_cap)
                finally:
                    harness.unlink_ring_family(ring)
                alone[n].append(res["sequencer alone"]["msgs_per_s"])
                print(f"  run {rep + 1}/{cfg.repeat} C loop alone, {n} client ring(s)  "
                      f"{fmt_rate(alone[n][-1]):>9} msgs/s", flush=True)
    except BenchFailed as exc:
        failed = str(exc)
        print(f"FAILED: {exc}", file=sys.stderr)

    print()
    print("msgs/s: the median run (range over runs), clients' first submit -> reader's last message;\n"
          "stamped: the median over the sequencer's own stamps; /round: messages per round that moved any\n"
          "(median run; 256 x clients is a saturated sequencer, a few means it waited on the others);\n"
          "preempt: involuntary context switches of the sequencer / the reader / all clients, summed over\n"
          "the runs (a sched_yield that hands the CPU over counts too: the reader and clients use SpinYield).")
    print(f"{'row':<30} {'msgs/run':>10} {'msgs/s':>10} {'range':>22} {'stamped':>10} {'/round':>7}   "
          "preempt seq/reader/clients")
    summary = {}
    for key, runs in rows.items():
        if not runs:
            continue
        rates = [r["msgs_per_s"] for r in runs]
        stamped = [r["stamped_msgs_per_s"] for r in runs if r["stamped_msgs_per_s"]]
        med = round(harness.median(rates))
        per_round = [r["per_busy_round"] for r in runs if r["per_busy_round"]]
        summary[f"{key[0]}/{key[1]}"] = {"label": labels[key], "msgs_per_s": med, "min": min(rates),
                                         "max": max(rates), "stamped_msgs_per_s": round(harness.median(stamped))
                                         if stamped else None,
                                         "per_busy_round": harness.median(per_round) if per_round else None,
                                         "runs": runs}
        pre = [sum(r["preempted"][k] for r in runs) for k in ("sequencer", "reader", "clients")]
        print(f"{labels[key]:<30} {runs[0]['messages']:>10,} {fmt_rate(med):>10} "
              f"{fmt_rate(min(rates)) + ' .. ' + fmt_rate(max(rates)):>22} "
              f"{fmt_rate(summary[f'{key[0]}/{key[1]}']['stamped_msgs_per_s']):>10} "
              f"{summary[f'{key[0]}/{key[1]}']['per_busy_round'] or 0:>7,.1f}   {pre[0]}/{pre[1]}/{pre[2]}")
    for n, rates in alone.items():
        if rates:
            print(f"{f'C loop alone, {n} ring(s)':<30} {n * 65536:>10,} {fmt_rate(harness.median(rates)):>10} "
                  f"{fmt_rate(min(rates)) + ' .. ' + fmt_rate(max(rates)):>22}")

    if cfg.json:
        report = {"bench": "sequencer_throughput", "message_length": 64, "machine": harness.machine_info(cpus),
                  "code": code_version(),
                  "config": {"quick": cfg.quick, "totals": totals, "repeat": cfg.repeat, "clients": counts,
                             "modes": modes, "client_cpu": cfg.client_cpu, "submit_batch": SUBMIT_BATCH,
                             "read_batch": READ_BATCH},
                  "results": summary,
                  "c_loop_alone": {str(n): {"msgs_per_s": round(harness.median(r)), "runs": r}
                                   for n, r in alone.items() if r},
                  "failed": failed}
        with open(cfg.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        print(f"wrote {cfg.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
