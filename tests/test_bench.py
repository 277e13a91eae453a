"""bench/run.py --smoke end to end: every transport that can run here runs, checks every message,
and the results file holds what RESULTS.md and the plots are made from.

The bench runs in its own process group (start_new_session) and is killed with its peers in a
finally; in --smoke every waiting peer backs off and nothing is pinned (this machine has two cores).
Nothing here asserts a time: counts, structure and the presence of ratios only.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RUN = REPO / "bench" / "run.py"
ALWAYS = {"queue", "pipe", "pyring", "pyseq", "pyseq-batch", "pyseq-seq"}  # need nothing beyond pyseq itself
OPTIONAL = {"faster-fifo": "faster-fifo", "zmq": "pyzmq"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> dict:
    pytest.importorskip("hdrh", reason="the benches record latencies in HdrHistogram: pip install hdrhistogram")
    out = tmp_path_factory.mktemp("bench")
    env = dict(os.environ, PYSEQ_IDLE="backoff")
    proc = subprocess.Popen([sys.executable, str(RUN), "--smoke", "--out", str(out)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert proc.returncode == 0, f"bench/run.py --smoke exited {proc.returncode}:\n{log[-4000:]}"
    results = json.loads((out / "results.json").read_text())
    results["_out"] = out
    return results


def rows(results, figure, **match):
    return [r for r in results["rows"] if r["figure"] == figure
            and all(r.get(k) == v for k, v in match.items())]


def test_smoke_runs_every_figure_for_every_transport_that_is_installed(smoke):
    ran = {r["transport"] for r in smoke["rows"] if r["status"] == "ok"}
    assert ALWAYS <= ran
    for key, package in OPTIONAL.items():
        states = {r["status"] for r in smoke["rows"] if r["transport"] == key}
        assert states in ({"ok"}, {"unavailable"}), f"{key}: {states}"
        if states == {"unavailable"}:
            assert smoke["unavailable"][key]["pip"] == f"pip install {package}"
    assert not [r for r in smoke["rows"] if r["status"] not in ("ok", "unavailable")]
    for figure in ("latency", "open", "throughput", "readers", "capacity"):
        assert {r["transport"] for r in rows(smoke, figure, status="ok")} >= (
            {"pyring", "pyseq"} if figure != "capacity" else {"pyring", "pyseq", "pyseq-batch"}), figure


def test_every_latency_row_measured_the_messages_it_checked(smoke):
    cfg = smoke["config"]
    for r in rows(smoke, "latency", status="ok") + rows(smoke, "open", status="ok"):
        one_way = r["one_way_ns"]
        assert one_way["count"] > 0 and r["messages_checked"] >= one_way["count"], r["label"]
        assert one_way["p50"] <= one_way["p99"] <= one_way["p99.99"] <= one_way["max"], r["label"]
        assert r["one_way_curve"][-1] == [100.0, one_way["max"]]
        if r["figure"] == "open":
            assert r["raw_ns"]["count"] == one_way["count"]
            assert one_way["count"] == int(cfg["rate"] * cfg["open_s"]) * cfg["repeat"], r["label"]
        elif not r.get("floor") and r["transport"] != "pyseq-seq":  # two peers, a round trip each
            assert r["rtt_ns"]["count"] == one_way["count"]
            assert r["messages_checked"] == 2 * (one_way["count"] + cfg["warmup"] * cfg["repeat"]), r["label"]


def test_every_throughput_run_delivered_every_message_to_every_reader(smoke):
    for r in rows(smoke, "throughput", status="ok") + rows(smoke, "readers", status="ok") + \
            rows(smoke, "capacity", status="ok"):
        assert r["runs"], r["label"]
        for run in r["runs"]:
            readers = run.get("readers", 1)
            assert run["msgs_per_s"] > 0
            if not r.get("floor"):
                assert run["readers"] == r.get("readers", 1)
        if not r.get("floor"):
            warmup = min(r.get("capacity", 4096), r["runs"][0]["messages"])
            assert r["messages_checked"] == sum((warmup + run["messages"]) * readers for run in r["runs"]), r["label"]
    assert sorted({r["readers"] for r in rows(smoke, "readers")}) == [1, 2, 4]


def test_results_carry_the_ratios_the_table_is_made_of(smoke):
    ratios = smoke["ratios"]
    figures = {v["figure"] for v in ratios["pyseq_vs_pyring"]}
    assert figures == {"latency", "open", "throughput", "readers", "capacity"}
    for v in ratios["pyseq_vs_pyring"]:
        assert v["ratio"] > 0 and isinstance(v["pyseq_ahead"], bool)
    for size in ("64", "256"):
        assert "pyring" in ratios["latency"][size] and "queue" in ratios["throughput"][size]
    machine = smoke["machine"]
    assert machine["cpu_count"] and machine["kernel"] and machine["python"]


def test_the_markdown_and_the_plots_are_written(smoke):
    text = (smoke["_out"] / "RESULTS.md").read_text()
    assert "BEGIN generated by bench/run.py" in text and "pyseq against the pure-Python ring" in text
    plots = smoke["plots"]
    if plots["status"] == "ok":
        assert {"latency_percentiles.png", "throughput.png", "readers_scaling.png",
                "capacity_scaling.png"} <= set(plots["files"])
        for name in plots["files"]:
            assert (smoke["_out"] / "plots" / name).stat().st_size > 0
    else:
        assert plots["pip"] == "pip install matplotlib" and "Plots not drawn" in text
