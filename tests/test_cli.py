"""The ``pyseq`` command with real processes: a ``pyseq sequencer`` subprocess, clients and readers
in this process, ``stat`` and ``tail`` run as commands (``python -m pyseq.cli``) or through ``main``.

Every sequencer subprocess is killed in a finally (the ``sequencers`` fixture) and every wait has a
timeout; rings, inbound rings included, are removed after each test.
"""
from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

import pyseq
from cliproc import ENV, WAIT_S, command, read_until, run, stop, wait_for
from pyseq.cli import main

REPO = Path(__file__).resolve().parent.parent
GREETING = 4201  # the msg_type declared by the --schema module written in test_tail_...

SCHEMA_MODULE = f"""
from pyseq.schema import Record, string, u32

class Greeting(Record, msg_type={GREETING}, version=1):
    n: u32
    text: string(8)
"""


def stat_json(ring: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(["stat", ring, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


# ---- usage -------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["--help"], ["sequencer", "--help"], ["stat", "--help"], ["tail", "--help"]])
def test_every_subcommand_prints_its_help_and_exits_0(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 0
    assert "usage: pyseq" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    ([], "required: COMMAND"),
    (["frobnicate"], "invalid choice"),
    (["sequencer"], "--ring"),
    (["sequencer", "--ring", "x", "--capacity", "zero"], "--capacity"),
    (["sequencer", "--ring", "x", "--limits", "l.json", "--rate", "5"], "cannot be combined"),
    (["sequencer", "--ring", "x", "--idle", "nap"], "--idle"),
    (["stat"], "RING"),
    (["stat", "a/b"], "may hold only"),
    (["tail", "x", "--from", "middle"], "'earliest', 'latest' or a sequence"),
    (["tail", "x", "--count", "-1"], "--count"),
])
def test_bad_arguments_exit_2_with_a_message(argv: list[str], message: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "usage: pyseq" in err and message in err


def test_an_impossible_ring_shape_is_a_usage_error(ring_name: str) -> None:
    result = run("sequencer", "--ring", ring_name, "--capacity", "1000")
    assert result.returncode == 2
    assert "power of two" in result.stderr


def test_stat_of_a_missing_ring_exits_1_with_a_clear_message(ring_name: str) -> None:
    result = run("stat", ring_name)
    assert result.returncode == 1
    assert result.stderr.strip() == \
        f"pyseq stat: no ring named {ring_name!r} (/dev/shm/pyseq.{ring_name} does not exist)"
    assert not os.path.exists(f"/dev/shm/pyseq.{ring_name}")  # stat never creates a ring


def test_tail_of_a_missing_ring_exits_1_with_a_clear_message(ring_name: str,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tail", ring_name, "--timeout", "0"]) == 1
    assert f"no ring named {ring_name!r}" in capsys.readouterr().err


def test_the_tools_scripts_run_the_same_command() -> None:
    for name in ("sequencer", "stat", "tail"):
        result = subprocess.run([sys.executable, str(REPO / "tools" / f"pyseq-{name}"), "--help"],
                                capture_output=True, text=True, timeout=WAIT_S, env=ENV)
        assert result.returncode == 0 and f"usage: pyseq {name}" in result.stdout


# ---- sequencer and stat ------------------------------------------------------------------------

def test_stat_json_shows_the_client_with_its_counts_and_the_sequencer_alive(
        sequencers: Callable[..., subprocess.Popen], ring_name: str, capsys: pytest.CaptureFixture[str]) -> None:
    proc = sequencers(ring_name)
    with pyseq.Client.connect(ring_name, "alice") as client, \
            client.sequenced.reader("watcher", start="earliest") as reader:
        for i in range(25):
            client.submit(1, b"m%d" % i)
        wait_for(lambda: stat_json(ring_name, capsys)["clients"][0]["sequenced"] == 25, "25 messages sequenced")
        reader.read(timeout=WAIT_S)  # the watcher has read 1 of 26 (CLIENT_JOINED + 25)
        s = stat_json(ring_name, capsys)
    assert s["ring"]["name"] == ring_name
    assert s["ring"]["writer_pid"] == proc.pid and s["ring"]["writer_alive"] is True
    assert s["ring"]["published_sequence"] == 26 and 0 <= s["ring"]["heartbeat_age_s"] < 2.0
    [c] = s["clients"]
    assert c["client"] == "alice" and c["pid"] == os.getpid() and c["alive"] is True
    assert (c["submitted"], c["sequenced"], c["pending"], c["back_pressured"]) == (25, 25, 0, 0)
    [r] = [r for r in s["readers"] if r["name"] == "watcher"]
    assert (r["pid"], r["alive"], r["gating"], r["state"], r["sequence"], r["lag"]) == \
        (os.getpid(), True, False, "active", 1, 25)
    assert r["rate"] == 0.0


def test_stat_table_shows_the_writer_every_reader_and_every_client(
        sequencers: Callable[..., subprocess.Popen], ring_name: str) -> None:
    proc = sequencers(ring_name)
    with pyseq.Client.connect(ring_name, "bob") as client, client.sequenced.reader("audit"):
        client.submit(1, b"x")
        result = run("stat", ring_name)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"writer pid {proc.pid} alive" in out
    assert "audit" in out and "bob" in out
    assert "back-pressured" in out and "deferred" in out and "lag" in out


def test_a_client_over_its_rate_limit_is_counted_as_deferred_and_still_sequenced(
        sequencers: Callable[..., subprocess.Popen], ring_name: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    limits = tmp_path / "limits.toml"
    limits.write_text('[default]\nrate = 0\n\n[clients.slow]\nrate = 100\nburst = 2\n')
    sequencers(ring_name, "--limits", str(limits))
    with pyseq.Client.connect(ring_name, "slow") as slow, pyseq.Client.connect(ring_name, "fast") as fast:
        for i in range(20):
            slow.submit(1, b"s")
            fast.submit(1, b"f")
        s = wait_for(lambda: (lambda s: s if all(c["sequenced"] == 20 for c in s["clients"]) else None)(
            stat_json(ring_name, capsys)), "both clients sequenced")
    by_name = {c["client"]: c for c in s["clients"]}
    assert by_name["slow"]["deferred"] > 0
    assert by_name["fast"]["deferred"] == 0


def test_sigterm_makes_the_sequencer_drain_publish_end_of_stream_and_exit_0(
        sequencers: Callable[..., subprocess.Popen], ring_name: str) -> None:
    proc = sequencers(ring_name)
    tail = subprocess.Popen(command("tail", ring_name, "--timeout", str(WAIT_S)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=ENV)
    try:
        with pyseq.Client.connect(ring_name, "carol") as client, \
                client.sequenced.reader("follower", start="earliest") as reader:
            first = read_until(tail, lambda out: "CLIENT_JOINED" in out)  # the tail is following
            for i in range(5):
                client.submit(9, b"last-%d" % i)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(WAIT_S) == 0
            seen = [m for m in reader]  # iteration ends at the end of the stream
            with pytest.raises(pyseq.EndOfStreamError):
                reader.read(timeout=WAIT_S)
        out, err = tail.communicate(timeout=WAIT_S)
    finally:
        stop(tail)
    assert [m.payload for m in seen if m.msg_type == 9] == [b"last-%d" % i for i in range(5)]
    assert seen[-1].msg_type == pyseq.END_OF_STREAM
    assert tail.returncode == 0, err
    lines = (first + out.decode()).splitlines()
    assert [line.split()[-1] for line in lines[1:6]] == [repr(b"last-%d" % i) for i in range(5)]
    assert lines[-1].split()[2] == "END_OF_STREAM"


def test_the_sequencer_refuses_a_ring_whose_writer_is_alive(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, 64, 64) as ring:
        result = run("sequencer", "--ring", ring_name, "--duration", "1")
        assert result.returncode == 1
        assert "already exists" in result.stderr and str(os.getpid()) in result.stderr
        ring.unlink()


def test_the_sequencer_stops_by_itself_after_its_duration(ring_name: str) -> None:
    result = run("sequencer", "--ring", ring_name, "--duration", "0.3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"sequencer {ring_name} ready pid ")
    with pyseq.Ring.attach(ring_name) as ring, ring.reader() as reader:
        assert reader.read(timeout=WAIT_S).msg_type == pyseq.END_OF_STREAM


# ---- tail --------------------------------------------------------------------------------------

def test_tail_prints_each_message_decoded_with_the_declared_records(
        sequencers: Callable[..., subprocess.Popen], ring_name: str, tmp_path: Path) -> None:
    (tmp_path / "cli_greetings.py").write_text(SCHEMA_MODULE)
    sequencers(ring_name)
    with pyseq.Client.connect(ring_name, "dave") as client:
        client.submit(GREETING, struct.pack("<I8s", 7, b"hi"), schema_version=1)
        client.submit(3, b"\x00raw\xff")
        result = run("tail", ring_name, "--count", "3", "--schema", "cli_greetings",
                     cwd=tmp_path)  # the module is found in the current directory
    assert result.returncode == 0, result.stderr
    joined, greeting, raw = result.stdout.splitlines()
    seq, stamp, kind, source, payload = greeting.split(" ", 4)
    assert (seq, kind, source, payload) == ("2", "Greeting", "src=dave", "Greeting(n=7, text='hi')")
    assert stamp.endswith("+00:00") and len(stamp.split(".")[1]) == len("123456+00:00")
    assert joined.split(" ", 2)[2] == "CLIENT_JOINED src=dave 'dave'"
    assert raw.split(" ", 2)[2] == r"3 src=dave b'\x00raw\xff'"


def test_tail_raw_prints_payloads_as_hex(ring_name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pyseq.Ring.create(ring_name, 16, 64) as ring:
        ring.publish(GREETING, b"\x01\x02", source=5)
        assert main(["tail", ring_name, "--raw", "--timeout", "0"]) == 0
        ring.unlink()
    assert capsys.readouterr().out.split()[2:] == [str(GREETING), "src=5", "0102"]


def test_tail_reports_a_lap_and_continues_from_the_oldest_message(ring_name: str,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    with pyseq.Ring.create(ring_name, 4, 64) as ring:
        for i in range(1, 11):
            ring.publish(1, b"%d" % i)
        assert main(["tail", ring_name, "--from", "1", "--timeout", "0.2"]) == 0
        ring.unlink()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "lapped: 6 messages missed (sequences 1..6); continuing at 7"
    assert [line.split()[0] for line in lines[1:]] == ["7", "8", "9", "10"]


def test_tail_from_latest_ends_after_its_timeout_with_nothing_new(ring_name: str,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    with pyseq.Ring.create(ring_name, 16, 64) as ring:
        ring.publish(1, b"old")
        started = time.monotonic()
        assert main(["tail", ring_name, "--from", "latest", "--timeout", "0.3"]) == 0
        assert 0.25 <= time.monotonic() - started < WAIT_S
        ring.unlink()
    assert capsys.readouterr().out == ""


def test_ctrl_c_ends_a_following_tail_quietly_with_exit_0(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, 16, 64) as ring:
        ring.publish(1, b"one")
        tail = subprocess.Popen(command("tail", ring_name), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
        try:
            read_until(tail, lambda out: "b'one'" in out)
            tail.send_signal(signal.SIGINT)
            _, err = tail.communicate(timeout=WAIT_S)
        finally:
            stop(tail)
        ring.unlink()
    assert tail.returncode == 0 and err == b""


def test_stat_watch_repeats_until_ctrl_c_and_exits_0(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, 16, 64) as ring:
        proc = subprocess.Popen(command("stat", ring_name, "--json", "--watch", "0.1"), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=ENV)
        try:
            out = read_until(proc, lambda out: out.count("\n") >= 2)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=WAIT_S)
        finally:
            stop(proc)
        ring.unlink()
    assert proc.returncode == 0 and err == b""
    first, second = (json.loads(line) for line in out.splitlines()[:2])
    assert first["ring"]["writer_pid"] == second["ring"]["writer_pid"] == os.getpid()
    assert first["clients"] == [] and first["readers"] == []
