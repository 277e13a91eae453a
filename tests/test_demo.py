"""``pyseq demo`` end to end, as a real command: its JSON report is checked against its own journal, and
Ctrl-C mid-run leaves no process and no shared-memory object behind."""
from __future__ import annotations

import glob
import json
import signal
import subprocess
import time
import uuid
from pathlib import Path

import psutil
import pytest

import pyseq
from cliproc import ENV, command, read_until

NAME_PREFIX = "tdemo-"


def demo_ring() -> str:
    return f"{NAME_PREFIX}{uuid.uuid4().hex[:8]}"


def shm_of(ring: str) -> list[str]:
    return glob.glob(f"/dev/shm/pyseq.{glob.escape(ring)}") + glob.glob(f"/dev/shm/pyseq.{glob.escape(ring)}.*")


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def kill_all(proc: subprocess.Popen, kids: list[psutil.Process]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    for k in kids:
        try:
            k.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.mark.timeout(90)
def test_the_demo_runs_and_its_report_is_consistent(tmp_path: Path) -> None:
    ring, report_path, work = demo_ring(), tmp_path / "report.json", tmp_path / "work"
    proc = subprocess.Popen(command("demo", "--duration", "6", "--json", str(report_path), "--dir", str(work),
                                    "--ring", ring), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    try:
        out, err = proc.communicate(timeout=75)
    finally:
        kill_all(proc, [])
    assert proc.returncode == 0, (out.decode()[-3000:], err.decode()[-3000:])
    text = out.decode()
    assert "OK: every replica holds the same state at the same sequence" in text
    r = json.loads(report_path.read_text())
    assert r["ok"] and r["problems"] == [] and r["faults"] == []
    # every replica's digest at the final marker, and replicas over the journal, are equal
    assert set(r["digests"]) == {"retail-oms", "sor", "institutional-oms", "journal"}
    assert len(set(r["digests"].values())) == 1
    assert len(set(r["orderbook_digests"].values())) == 1 and None not in r["orderbook_digests"].values()
    assert r["final_seq"] > 0
    # the counts agree with what the journal holds, and with what each process says it sent
    info = pyseq.Journal(str(work / "journal")).info()
    by = r["messages_by_type"]
    assert sum(by.values()) == info["records"] == r["journal_records"]
    assert r["final_seq"] <= info["last_seq"]
    oms = r["oms"]
    assert set(oms) == {"retail-oms", "institutional-oms"}
    accepted = sum(c["accepted"] for c in oms.values())
    local_rejects = sum(c["rejected_halted"] + c["rejected_off_tick"] + c["rejected_other"] for c in oms.values())
    assert oms["retail-oms"]["accepted"] > 100 and oms["retail-oms"]["rejected_off_tick"] > 0
    assert by["NewOrder"] == accepted == r["sor"]["orders_seen"]
    assert by["CancelOrder"] == sum(c["cancels"] for c in oms.values())
    assert by["OrderRejected"] == local_rejects + r["sor"]["rejected"]
    assert by["Route"] == r["sor"]["routes"] <= accepted and by["Fill"] == r["sor"]["fills"]
    admin = r["admin"]
    assert by["AddInstrument"] == admin["instruments_added"] >= 32 and by["TakeSnapshot"] == admin["snapshots"]
    assert by["UpdateInstrument"] == admin["tick_updates"] and by["Halt"] == admin["halts"]
    assert by["END_OF_STREAM"] == 1
    # the late joiner started from a snapshot and caught up
    late = r["late_joiner"]
    assert late["from_snapshot_seq"] and late["at_seq"] >= late["from_snapshot_seq"] and late["after_s"] < 30
    # latency percentiles for each hop
    for hop in ("client->sequencer", "sequencer->reader", "sequencer->gateway"):
        p = r["latency_ns"][hop]
        assert p["count"] > 0 and 0 <= p["p50"] <= p["p90"] <= p["p99"] <= p["max"], (hop, p)
    # FIX: every client saw messages, with no gap, and rebuilt the gateway's book
    fix = r["fix"]
    assert fix["clients_served"] == 2 and set(fix["clients"]) == {"fix-1", "fix-2"}
    assert fix["messages_sent"] >= sum(c["messages"] for c in fix["clients"].values())
    for c in fix["clients"].values():
        assert c["messages"] > 10 and c["gaps"] == 0 and c["problems"] == [] and c["book_matches_gateway"]
        assert c["by_type"].get("X", 0) > 0 and c["by_type"].get("A") == 1 and c["by_type"].get("5") == 1
    assert set(r["idle"].values()) <= {"busy-spin", "backoff", "spin-yield"}
    assert shm_of(ring) == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_run_stops_every_process_and_removes_every_ring(sig: int, tmp_path: Path) -> None:
    ring = demo_ring()
    proc = subprocess.Popen(command("demo", "--duration", "60", "--ring", ring, "--dir", str(tmp_path / "w")),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    kids: list[psutil.Process] = []
    try:
        read_until(proc, lambda out: "order flow starts" in out, timeout=40)
        time.sleep(1.0)
        kids = descendants(proc.pid)
        assert len(kids) >= 7  # sequencer, admin, two OMS-side replicas, gateway, 2 FIX clients (+ the tracker)
        assert shm_of(ring)
        proc.send_signal(sig)
        assert proc.wait(30) == (130 if sig == signal.SIGINT else 143)
        gone, alive = psutil.wait_procs(kids, timeout=5)
        assert alive == [], f"processes of the demo outlived it: {alive}"
        assert shm_of(ring) == []
    finally:
        kill_all(proc, kids)
        for path in shm_of(ring):
            Path(path).unlink()


@pytest.mark.timeout(90)
def test_chaos_kills_and_restarts_processes_and_the_digests_still_agree(tmp_path: Path) -> None:
    from pyseq.demo import _fills_for
    from pyseq.orders import FILL, NEW_ORDER, ORDER_REJECTED, ROUTE, Fill, NewOrder, OrderRejected, Route
    from pyseq.refdata import ReferenceData
    from pyseq.sequencer import source_id

    ring, report_path, work = demo_ring(), tmp_path / "report.json", tmp_path / "work"
    proc = subprocess.Popen(command("demo", "--chaos", "--duration", "10", "--json", str(report_path), "--dir",
                                    str(work), "--ring", ring, "--seed", "3"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    kids: list[psutil.Process] = []
    try:
        time.sleep(3)
        kids = descendants(proc.pid)
        out, err = proc.communicate(timeout=75)
    finally:
        kill_all(proc, [])
    assert proc.returncode == 0, (out.decode()[-3000:], err.decode()[-3000:])
    assert "OK: every replica holds the same state at the same sequence" in out.decode()
    r = json.loads(report_path.read_text())
    assert r["ok"] and r["problems"] == [] and r["chaos"]
    # every process was killed once, and came back from its own snapshot and the journal
    faults = r["faults"]
    assert sorted(f["process"] for f in faults) == ["gateway", "institutional-oms", "retail-oms", "sor"]
    for f in faults:
        assert f["signal"] == "SIGKILL" and f["killed_at_s"] > 0, f
        assert f["recovered_after_s"] is not None and 0 < f["recovered_after_s"] < 30, f
        assert f["live_at_seq"] > 0, f
        assert f["restarted_from_snapshot_seq"] is None or f["restarted_from_snapshot_seq"] <= f["live_at_seq"], f
    assert any(f["restarted_from_snapshot_seq"] for f in faults)
    assert set(r["digests"]) == {"retail-oms", "sor", "institutional-oms", "journal"}
    assert len(set(r["digests"].values())) == 1
    assert len(set(r["orderbook_digests"].values())) == 1 and None not in r["orderbook_digests"].values()
    # counts: summed over incarnations; a process killed right after a submit, before counting it, may
    # have one message more in the stream than it counted
    by = r["messages_by_type"]
    killed = {f["process"]: 1 for f in faults}
    oms = r["oms"]
    accepted = sum(c["accepted"] for c in oms.values())
    oms_kills = killed.get("retail-oms", 0) + killed.get("institutional-oms", 0)
    assert 0 <= by["NewOrder"] - accepted <= oms_kills
    assert 0 <= by["CancelOrder"] - sum(c["cancels"] for c in oms.values()) <= oms_kills
    assert 0 <= by["Route"] - r["sor"]["routes"] <= killed.get("sor", 0)
    assert 0 <= by["Fill"] - r["sor"]["fills"] <= killed.get("sor", 0)
    # the router, across its restart, decided every order exactly once (from the journal itself)
    sor, new_ids, decided, routed, fills = source_id("sor"), [], {}, set(), {}
    refdata, valid = ReferenceData(), set()  # the reference data at each order's sequence, rebuilt here
    for msg in pyseq.Journal(str(work / "journal")).records(stop=r["final_seq"]):
        refdata.apply(msg)
        if msg.msg_type == NEW_ORDER:
            o = NewOrder.decode(msg.payload)
            new_ids.append((o.order_id, o.qty))
            if refdata.validate_order(o.symbol, o.price, o.qty) is None:
                valid.add(o.order_id)
        elif msg.source == sor and msg.msg_type in (ROUTE, ORDER_REJECTED):
            dec = (Route if msg.msg_type == ROUTE else OrderRejected).decode(msg.payload)
            decided[dec.order_id] = decided.get(dec.order_id, 0) + 1
            if msg.msg_type == ROUTE:
                routed.add(dec.order_id)
        elif msg.source == sor and msg.msg_type == FILL:
            f = Fill.decode(msg.payload)
            fills.setdefault(f.order_id, []).append(f.qty)
    assert len({i for i, _ in new_ids}) == len(new_ids), "an order id was used twice"
    assert {i for i, _ in new_ids} == set(decided) and set(decided.values()) == {1}
    # routed: exactly the orders valid at their own sequence (the others were halted, or their tick
    # changed, between the OMS's check and the order's sequence: rejected by the router)
    assert routed == valid and routed
    # a routed order has exactly its fills, a rejected one none
    for i, qty in new_ids:
        assert fills.get(i, []) == (_fills_for(i, qty) if i in routed else []), (i, qty, i in routed)
    # FIX: the clients reconnected to the restarted gateway, with no gap in any session
    for c in r["fix"]["clients"].values():
        # (a client may lose a second connection: one made to the killed gateway's listening socket
        # in the instant before the kernel closed it)
        assert c["sessions"] >= 2 and c["by_type"].get("A", 0) >= 2, c
        assert c["gaps"] == 0 and c["problems"] == [] and c["book_matches_gateway"], c
    # nothing left behind
    gone, alive = psutil.wait_procs(kids, timeout=5)
    assert alive == [], f"processes of the demo outlived it: {alive}"
    assert shm_of(ring) == []
