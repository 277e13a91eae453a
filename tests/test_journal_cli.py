"""The journal through the ``pyseq`` command, with real processes and real files: a ``pyseq
sequencer --journal DIR`` subprocess fed by clients in this process and stopped by SIGTERM, then
``pyseq journal verify/info`` and ``pyseq replay`` run as commands on what it wrote (or on a copy
with a corrupt byte, or with garbage appended), and rings filled by ``replay --into`` read back.

One journal is recorded for the whole module (the ``recorded`` fixture); tests that damage a journal
copy it first.  Every subprocess has a timeout and is killed in a finally; every ring is removed.
"""
from __future__ import annotations

import collections
import dataclasses
import datetime
import glob
import json
import os
import shutil
import signal
import struct
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest

import pyseq
from cliproc import ENV, REPO_TOOLS, WAIT_S, command, read_until, run, stop, wait_for
from conftest import unique_ring_name
from pyseq.cli import main, stat

SEGMENT_BYTES = 96 * 1024  # a few segments, each with an index entry past its first record
ALICE, BOB = 2000, 1000    # messages each client submits
GREETING = 4201
JOINED, LEFT, EOS = pyseq.CLIENT_JOINED, pyseq.CLIENT_LEFT, pyseq.END_OF_STREAM
SYSTEM_NAMES = {JOINED: "CLIENT_JOINED", LEFT: "CLIENT_LEFT", EOS: "END_OF_STREAM"}
SCHEMA_MODULE = f"""
from pyseq.schema import Record, string, u32

class Greeting(Record, msg_type={GREETING}, version=1):
    n: u32
    text: string(8)
"""


def alice_message(i: int) -> tuple[int, bytes]:
    return (1 if i % 2 else 2), (b"alice-%d;" % i * 20)[: i % 97]


def bob_message(i: int) -> tuple[int, bytes, int]:
    if i % 3:
        return GREETING, struct.pack("<I8s", i, b"hi%d" % (i % 100)), 1
    return 3, b"\x00raw\xff%d" % i, 0


@dataclasses.dataclass
class Recorded:
    path: Path
    ring: str
    messages: list[pyseq.Message]  # what a reader of the sequenced ring saw, END_OF_STREAM included
    banner: str
    stat: dict[str, Any]

    @property
    def last(self) -> int:
        return self.messages[-1].seq

    def segments(self) -> list[str]:
        return sorted(os.path.basename(p) for p in glob.glob(str(self.path / "*.seg")))


def _remove_rings(ring: str) -> None:
    for path in glob.glob(f"/dev/shm/pyseq.{glob.escape(ring)}*"):
        os.unlink(path)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    """Run ``pyseq sequencer --journal`` with two clients submitting ALICE + BOB messages, stop it
    with SIGTERM; the journal directory and every message a reader saw in the sequenced ring."""
    path = tmp_path_factory.mktemp("recorded") / "journal"
    ring = unique_ring_name()
    log_path = path.parent / "sequencer.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command("sequencer", "--ring", ring, "--journal", str(path), "--fsync", "batch",
                                        "--segment-bytes", str(SEGMENT_BYTES)),
                                stdout=subprocess.PIPE, stderr=log, env=ENV)
    try:
        banner = read_until(proc, lambda out: f"sequencer {ring} ready pid {proc.pid}\n" in out)
        with pyseq.Ring.attach(ring) as sequenced, sequenced.reader("expected") as reader:
            with pyseq.Client.connect(ring, "alice") as alice, pyseq.Client.connect(ring, "bob") as bob:
                for i in range(ALICE):
                    alice.submit(*alice_message(i))
                    if i % 2:
                        msg_type, payload, version = bob_message(i // 2)
                        bob.submit(msg_type, payload, schema_version=version)
            total = 2 + ALICE + BOB + 2  # joined, messages, left
            wait_for(lambda: sequenced.journaled_sequence == sequenced.published_sequence == total,
                     "every message sequenced and journaled")
            summary = stat(ring)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(WAIT_S) == 0, log_path.read_text()
            messages = list(reader)  # iteration ends at the end of the stream
        _remove_rings(ring)  # what is left is the journal
        yield Recorded(path, ring, messages, banner, summary)
    finally:
        stop(proc)
        _remove_rings(ring)


def copy_journal(recorded: Recorded, tmp_path: Path) -> Path:
    target = tmp_path / "journal"
    shutil.copytree(recorded.path, target)
    return target


def records_of(segment: Path) -> list[tuple[int, int, int]]:
    """(offset, sequence, record_length) of every record of a segment, by the format in journal_format.h."""
    data = segment.read_bytes()
    offset, out = 128, []
    while offset + 40 <= len(data):
        record_length, = struct.unpack_from("<I", data, offset + 4)
        sequence, = struct.unpack_from("<q", data, offset + 8)
        out.append((offset, sequence, record_length))
        offset += record_length
    return out


def timestamp(ns: int) -> str:
    t = datetime.datetime.fromtimestamp(ns // 1_000_000_000, datetime.timezone.utc)
    return t.replace(microsecond=ns // 1000 % 1_000_000).isoformat(timespec="microseconds")


def expected_lines(messages: list[pyseq.Message], start: Optional[int] = None, stop: Optional[int] = None,
                   types: Optional[set[int]] = None) -> list[str]:
    """What ``replay --raw`` prints (no schema imported): sources named by the joins replayed."""
    sources: dict[int, str] = {}
    lines = []
    for m in messages:
        if (start is not None and m.seq < start) or (stop is not None and m.seq > stop):
            continue
        if m.msg_type in (JOINED, LEFT):
            sources[m.source] = m.payload.decode()
        if types is None or m.msg_type in types:
            kind = SYSTEM_NAMES.get(m.msg_type, str(m.msg_type))
            line = f"{m.seq} {timestamp(m.timestamp_ns)} {kind} src={sources.get(m.source, m.source)} {m.payload.hex()}"
            lines.append(line.rstrip())
    return lines


def one_line_error(result: subprocess.CompletedProcess, prefix: str) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(prefix), result.stderr
    return last


# ---- the recording -----------------------------------------------------------------------------

def test_the_sequencer_reports_its_journal_at_start_and_stat_shows_the_journal(recorded: Recorded) -> None:
    assert recorded.banner.splitlines()[0] == f"journal {recorded.path} (fsync batch): empty; resumed at sequence 1"
    ring = recorded.stat["ring"]
    assert (ring["journal_state"], ring["journal_fsync"], ring["journal_errors"]) == ("running", "batch", 0)
    assert ring["journaled_sequence"] == ring["published_sequence"] == recorded.last - 1
    assert ring["journal_lag"] == 0
    assert "journal running (fsync batch): journaled %d (lag 0), write errors 0" % (recorded.last - 1) \
        in pyseq.cli.format_stat(recorded.stat)
    assert any(r["name"] == "journaler" and r["gating"] for r in recorded.stat["readers"])


def test_stat_of_a_ring_without_a_journal_says_so(ring_name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pyseq.Ring.create(ring_name, 16, 64) as ring:
        assert main(["stat", ring_name, "--json"]) == 0
        s = json.loads(capsys.readouterr().out)["ring"]
        assert (s["journal_state"], s["journaled_sequence"], s["journal_lag"]) == ("none", None, None)
        assert main(["stat", ring_name]) == 0
        assert "journal none" in capsys.readouterr().out.splitlines()
        ring.unlink()


# ---- journal verify / info ---------------------------------------------------------------------

def test_verify_checks_every_record_and_exits_0(recorded: Recorded) -> None:
    result = run("journal", "verify", str(recorded.path), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["problems"] == [] and report["torn_tail"] is None
    assert (report["first_seq"], report["last_seq"], report["records"]) == (1, recorded.last, len(recorded.messages))
    assert report["segments"] == len(recorded.segments()) >= 3
    human = run("journal", "verify", str(recorded.path))
    assert human.returncode == 0
    assert human.stdout == (f"journal {recorded.path}: {report['segments']} segments, {report['records']} records "
                            f"(sequences 1..{recorded.last}), {report['bytes']} bytes: ok\n")


def test_info_json_gives_the_range_the_segments_and_the_counts_by_type(recorded: Recorded) -> None:
    result = run("journal", "info", str(recorded.path), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert (info["first_seq"], info["last_seq"], info["records"]) == (1, recorded.last, len(recorded.messages))
    assert info["segments"] == len(recorded.segments())
    counts = collections.Counter(str(m.msg_type) for m in recorded.messages)
    assert info["by_type"] == dict(counts)
    listed = info["segment_list"]
    assert [s["file"] for s in listed] == recorded.segments()
    assert all(s["complete"] and s["ring"] == recorded.ring and s["max_payload"] == 96 for s in listed)
    assert all(a["last_seq"] + 1 == b["first_seq"] for a, b in zip(listed, listed[1:]))
    assert info["bytes"] == sum(os.path.getsize(recorded.path / s) for s in recorded.segments())
    human = run("journal", "info", str(recorded.path))
    assert human.returncode == 0
    assert human.stdout.startswith(f"journal {recorded.path}: sequences 1..{recorded.last}, "
                                   f"{len(recorded.messages)} records in {info['segments']} segments")
    assert "CLIENT_JOINED 2, CLIENT_LEFT 2, END_OF_STREAM 1" in human.stdout


# ---- replay, printed ---------------------------------------------------------------------------

RANGES: dict[str, Callable[[int, int], tuple[Optional[int], Optional[int], Optional[list[str]]]]] = {
    # (first sequence of the second segment, records in it) -> (--from, --to, --type ...)
    "everything": lambda b, n: (None, None, None),
    "across-a-segment-boundary-two-types": lambda b, n: (b - 40, b + 40, ["1", "3"]),
    "from-past-an-index-entry-to-the-end": lambda b, n: (b + n * 3 // 4, None, None),
    "to-only": lambda b, n: (None, 25, None),
    "one-sequence": lambda b, n: (b, b, None),
    "system-types-by-name": lambda b, n: (None, None, ["CLIENT_JOINED", "CLIENT_LEFT", "end_of_stream"]),
}


@pytest.mark.parametrize("case", sorted(RANGES))
def test_replay_prints_the_selected_messages_one_a_line(recorded: Recorded, case: str) -> None:
    second = records_of(recorded.path / recorded.segments()[1])
    start, stop_, types = RANGES[case](second[0][1], len(second))
    args = ["replay", str(recorded.path), "--raw"]
    args += ["--from", str(start)] if start is not None else []
    args += ["--to", str(stop_)] if stop_ is not None else []
    for t in types or []:
        args += ["--type", t]
    result = run(*args)
    assert result.returncode == 0, result.stderr
    wanted = None if types is None else {int(t) if t.isdigit() else
                                         {v: k for k, v in SYSTEM_NAMES.items()}[t.upper()] for t in types}
    lines = expected_lines(recorded.messages, start, stop_, wanted)
    assert len(lines) >= 2 or case == "one-sequence"
    assert result.stdout.splitlines() == lines


def test_replay_decodes_payloads_with_a_schema_module_and_names_sources(recorded: Recorded, tmp_path: Path) -> None:
    (tmp_path / "journal_greetings.py").write_text(SCHEMA_MODULE)
    greetings = [m for m in recorded.messages if m.msg_type == GREETING][:20]
    result = run("replay", str(recorded.path), "--to", str(greetings[-1].seq), "--type", str(GREETING), "--schema",
                 "journal_greetings", cwd=tmp_path)  # the module is found in the current directory
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == len(greetings)
    for line, m in zip(result.stdout.splitlines(), greetings):
        n, text = struct.unpack("<I8s", m.payload)
        assert line == (f"{m.seq} {timestamp(m.timestamp_ns)} Greeting src=bob "
                        f"Greeting(n={n}, text={text.rstrip(bytes(1)).decode()!r})")


def test_replay_of_a_range_past_the_end_prints_nothing_and_says_what_the_journal_holds(recorded: Recorded) -> None:
    result = run("replay", str(recorded.path), "--from", str(recorded.last + 1))
    assert result.returncode == 0 and result.stdout == ""
    assert result.stderr == f"pyseq replay: no records matched (the journal holds sequences 1..{recorded.last})\n"


# ---- replay --into -----------------------------------------------------------------------------

def test_replay_into_a_ring_republishes_every_message_as_it_was(recorded: Recorded, ring_name: str) -> None:
    result = run("replay", str(recorded.path), "--into", ring_name, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    n = len(recorded.messages)
    assert (report["ring"], report["count"], report["first_seq"], report["last_seq"]) == (ring_name, n, 1, n)
    assert (report["ring_first_seq"], report["ring_last_seq"], report["removed"]) == (1, n, False)
    assert report["rate"] > 0
    with pyseq.Ring.attach(ring_name) as ring, ring.reader() as reader:  # the ring stays after the replay
        assert (ring.first_sequence, ring.slot_size, ring.capacity) == (1, 128, 65536)
        got = list(reader)  # ends: the replay closed the ring
    assert got == recorded.messages  # sequence, timestamp, type, schema version, source and payload
    human = run("replay", str(recorded.path), "--into", ring_name, "--to", "10")  # replaces the closed ring
    assert human.returncode == 0, human.stderr
    first, second = human.stdout.splitlines()
    assert first.startswith(f"replayed 10 messages (journal sequences 1..10, ring sequences 1..10) into ring "
                            f"{ring_name} in ")
    assert second == (f"ring {ring_name} stays in /dev/shm; remove it with: "
                      f"python -c \"import pyseq; pyseq.Ring.remove('{ring_name}')\"")


def test_replay_into_a_small_ring_waits_for_its_gating_reader_and_renumbers_a_filtered_stream(
        recorded: Recorded, ring_name: str) -> None:
    start = 100
    wanted = [m for m in recorded.messages if m.seq >= start and m.msg_type in (2, GREETING)]
    proc = subprocess.Popen(command("replay", str(recorded.path), "--into", ring_name, "--from", str(start),
                                    "--type", "2", "--type", str(GREETING), "--capacity", "16",
                                    "--wait-readers", "1", "--remove-after", "--json"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    try:
        with pyseq.Ring.attach(ring_name, timeout=WAIT_S) as ring, \
                ring.reader("slow", gating=True, start="earliest", idle=pyseq.BackoffIdle()) as reader:
            assert ring.first_sequence == wanted[0].seq
            got = [reader.read(timeout=WAIT_S)]
            # the replay fills the 16 slots, then waits for this reader instead of overwriting
            wait_for(lambda: ring.info()["full_count"] > 0, "the replay held back by its gating reader")
            got += list(reader)
            out, err = proc.communicate(timeout=WAIT_S)
    finally:
        stop(proc)
    assert proc.returncode == 0, err
    assert b"waiting for 1 reader to attach" in err
    report = json.loads(out)
    assert (report["count"], report["first_seq"], report["last_seq"]) == (len(wanted), wanted[0].seq, wanted[-1].seq)
    assert report["removed"] is True and not pyseq.Ring.exists(ring_name)
    assert [m.seq for m in got] == list(range(wanted[0].seq, wanted[0].seq + len(wanted)))
    assert [m._replace(seq=w.seq) for m, w in zip(got, wanted)] == wanted


def test_replay_into_at_a_rate_is_paced_by_its_deadline_schedule(recorded: Recorded, ring_name: str) -> None:
    n, rate = 601, 2000.0
    result = run("replay", str(recorded.path), "--into", ring_name, "--to", str(n), "--rate", str(rate), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["count"] == n and report["target_rate"] == rate
    # message i is due (n - 1) / rate after the first, never before: at most rate * n / (n - 1) on
    # average, and close to the rate (not far below it, as one sleep per message would be)
    assert report["elapsed_s"] >= (n - 1) / rate
    assert 0.5 <= report["rate"] / rate <= n / (n - 1) + 1e-6
    with pyseq.Ring.attach(ring_name) as ring:
        assert ring.published_sequence == n


# ---- damaged journals --------------------------------------------------------------------------

def test_a_corrupt_byte_mid_segment_makes_verify_exit_1_naming_segment_offset_and_sequence(
        recorded: Recorded, tmp_path: Path) -> None:
    journal = copy_journal(recorded, tmp_path)
    segment = recorded.segments()[0]
    records = records_of(journal / segment)
    offset, sequence, _ = records[len(records) // 2]
    with open(journal / segment, "r+b") as f:  # flip a byte of the record's timestamp
        f.seek(offset + 20)
        byte = f.read(1)
        f.seek(offset + 20)
        f.write(bytes([byte[0] ^ 0x5A]))
    result = run("journal", "verify", str(journal))
    assert result.returncode == 1
    problem = f"corrupt: {segment} at offset {offset} (sequence {sequence}): a checksum mismatch"
    assert result.stdout.splitlines()[1:] == [f"  {problem}"]
    assert result.stdout.splitlines()[0].endswith("CORRUPT (1 problem)")
    as_json = run("journal", "verify", str(journal), "--json")
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert report["ok"] is False and report["records"] == len(recorded.messages) - 1
    assert report["problems"] == [{"segment": segment, "offset": offset, "sequence": sequence,
                                   "reason": "a checksum mismatch", "torn_tail": False, "bytes": 0}]
    # a replay prints every message before the bad record, then fails with one line
    replay = run("replay", str(journal), "--raw")
    assert replay.returncode == 1
    assert replay.stdout.splitlines() == expected_lines(recorded.messages, stop=sequence - 1)
    assert replay.stderr == (f"pyseq replay: journal corrupt: {segment} at offset {offset} (sequence {sequence}): "
                             f"a checksum mismatch\n")


def test_a_missing_segment_fails_verify_and_a_replay_through_the_gap(recorded: Recorded, tmp_path: Path,
                                                                     ring_name: str) -> None:
    journal = copy_journal(recorded, tmp_path)
    _, second, third = recorded.segments()[:3]
    gone = records_of(journal / second)
    (journal / second).unlink()
    (journal / second.replace(".seg", ".idx")).unlink()
    start, end = gone[0][1], gone[-1][1]
    result = run("journal", "verify", str(journal))
    assert result.returncode == 1
    assert result.stdout.splitlines()[1] == (f"  corrupt: {third} at offset 0 (sequence {start}): the segment starts "
                                             f"at {end + 1}; the previous one ended at {start - 1}")
    gap = (f"journal corrupt: {third} at offset 0 (sequence {start}): the segment starts at {end + 1} but the "
           f"previous one ended at {start - 1}: sequences are missing")
    replay = run("replay", str(journal), "--from", str(start - 3), "--raw")
    assert replay.returncode == 1 and len(replay.stdout.splitlines()) == 3
    assert one_line_error(replay, f"pyseq replay: {gap}")
    into = run("replay", str(journal), "--into", ring_name)
    assert into.returncode == 1
    assert one_line_error(into, f"pyseq replay: {gap}")
    assert f"replayed {start - 1} messages" in into.stderr  # what it published before the gap, and where it is
    assert "stays in /dev/shm" in into.stderr


def test_a_sequencer_refuses_a_journal_whose_last_segment_is_corrupt(recorded: Recorded, tmp_path: Path,
                                                                     ring_name: str) -> None:
    journal = copy_journal(recorded, tmp_path)
    segment = recorded.segments()[-1]
    offset, sequence, _ = records_of(journal / segment)[5]
    with open(journal / segment, "r+b") as f:
        f.seek(offset + 8)  # the sequence number of the record
        f.write(struct.pack("<q", sequence + 1000))
    result = run("sequencer", "--ring", ring_name, "--journal", str(journal), "--duration", "0.1")
    assert result.returncode == 1
    line = one_line_error(result, f"pyseq sequencer: journal corrupt: {segment} at offset {offset} "
                                  f"(sequence {sequence}): ")
    assert "valid records after it" in line
    assert not pyseq.Ring.exists(ring_name)  # refused before it created the ring


def test_garbage_after_the_last_record_is_a_torn_tail_that_a_restarted_sequencer_truncates(
        recorded: Recorded, tmp_path: Path, ring_names: Callable[[], str],
        sequencers: Callable[..., subprocess.Popen]) -> None:
    journal = copy_journal(recorded, tmp_path)
    last_segment = journal / recorded.segments()[-1]
    size = last_segment.stat().st_size
    with open(last_segment, "ab") as f:
        f.write(b"\x07" * 15)
    n = recorded.last
    result = run("journal", "verify", str(journal), "--json")
    assert result.returncode == 0, result.stdout  # a torn tail alone is what a crash leaves: not corruption
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["records"] == n
    torn = report["torn_tail"]
    assert (torn["segment"], torn["offset"], torn["sequence"], torn["bytes"], torn["torn_tail"]) == \
        (last_segment.name, size, n + 1, 15, True)
    human = run("journal", "verify", str(journal))
    assert human.returncode == 0 and human.stdout.splitlines()[0].endswith(": ok")
    assert human.stdout.splitlines()[1].startswith(f"  torn tail: {last_segment.name} at offset {size} "
                                                   f"(sequence {n + 1}, 15 bytes): ")
    replay = run("replay", str(journal), "--raw")
    assert replay.returncode == 0 and replay.stdout.splitlines() == expected_lines(recorded.messages)

    # a sequencer started on it truncates the tail, says so, and numbers on from the last record
    ring = ring_names()
    proc = sequencers(ring, "--journal", str(journal), "--fsync", "interval:5")
    assert proc.banner.splitlines()[0] == (
        f"journal {journal} (fsync interval:5): ends at sequence {n} ({len(recorded.segments())} segments); "
        f"torn tail truncated (15 bytes at offset {size} of {last_segment.name}: {torn['reason']}); "
        f"resumed at sequence {n + 1}")
    assert last_segment.stat().st_size == size
    second = run("sequencer", "--ring", ring_names(), "--journal", str(journal), "--duration", "0.1")
    assert second.returncode == 1
    one_line_error(second, f"pyseq sequencer: journal {str(journal)!r} is being written by another process "
                           f"(pid {proc.pid})")
    with pyseq.Ring.attach(ring) as sequenced:
        assert sequenced.first_sequence == n + 1
        with pyseq.Client.connect(ring, "carol") as carol:
            for i in range(5):
                carol.submit(9, b"after-%d" % i)
        wait_for(lambda: sequenced.journaled_sequence == sequenced.published_sequence == n + 7,
                 "joined, 5 messages, left journaled")
        s = stat(ring)["ring"]
        assert (s["journal_state"], s["journal_fsync"], s["journaled_sequence"]) == ("running", "interval", n + 7)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(WAIT_S) == 0
    after = json.loads(run("journal", "verify", str(journal), "--json").stdout)
    assert (after["ok"], after["problems"], after["first_seq"], after["last_seq"], after["records"]) == \
        (True, [], 1, n + 8, n + 8)
    tail = run("replay", str(journal), "--from", str(n + 1)).stdout.splitlines()
    assert [line.split(" ", 2)[2] for line in tail] == \
        ["CLIENT_JOINED src=carol 'carol'"] + [f"9 src=carol b'after-{i}'" for i in range(5)] + \
        ["CLIENT_LEFT src=carol 'carol'", "END_OF_STREAM src=0"]
    assert [int(line.split()[0]) for line in tail] == list(range(n + 1, n + 9))


# ---- usage and errors --------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["journal", "--help"], ["journal", "verify", "--help"], ["journal", "info", "--help"],
                                  ["replay", "--help"]])
def test_the_new_subcommands_print_their_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 0
    assert "usage: pyseq" in capsys.readouterr().out


def test_the_tools_scripts_run_journal_and_replay(recorded: Recorded) -> None:
    verify = subprocess.run([str(REPO_TOOLS / "pyseq-journal"), "verify", str(recorded.path)], capture_output=True,
                            text=True, timeout=WAIT_S, env=ENV)
    assert verify.returncode == 0 and verify.stdout.endswith(": ok\n")
    replay = subprocess.run([str(REPO_TOOLS / "pyseq-replay"), str(recorded.path), "--to", "3"], capture_output=True,
                            text=True, timeout=WAIT_S, env=ENV)
    assert replay.returncode == 0 and len(replay.stdout.splitlines()) == 3


@pytest.mark.parametrize("argv, message", [
    (["journal"], "required: ACTION"),
    (["journal", "check", "x"], "invalid choice"),
    (["sequencer", "--ring", "x", "--journal", "j", "--fsync", "sometimes"],
     "argument --fsync: fsync policy must be 'never', 'batch' or 'interval:MS' (MS > 0), not 'sometimes'"),
    (["sequencer", "--ring", "x", "--journal", "j", "--fsync", "interval:0"], "argument --fsync"),
    (["sequencer", "--ring", "x", "--fsync", "never"], "--fsync needs --journal DIR"),
    (["sequencer", "--ring", "x", "--fsync", "never", "--segment-bytes", "8192"],
     "--fsync and --segment-bytes need --journal DIR"),
    (["sequencer", "--ring", "x", "--journal", "j", "--segment-bytes", "100"], "a number of bytes >= 4096"),
    (["replay", "j", "--from", "10", "--to", "5"], "--from 10 is after --to 5"),
    (["replay", "j", "--from", "0"], "--from"),
    (["replay", "j", "--type", "70000"], "is not a message type"),
    (["replay", "j", "--rate", "100"], "--rate: only with --into RING"),
    (["replay", "j", "--into", "r", "--rate", "0"], "--rate"),
    (["replay", "j", "--into", "r", "--raw"], "--raw and --schema are for printing"),
    (["replay", "j", "--into", "a.in.b"], "marks a client's inbound ring"),
])
def test_bad_arguments_exit_2_with_a_message(argv: list[str], message: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "usage: pyseq" in err and message in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [["journal", "verify"], ["journal", "info"], ["replay"]])
def test_a_missing_or_empty_journal_directory_exits_1_with_one_line(argv: list[str], tmp_path: Path) -> None:
    missing = run(*argv, str(tmp_path / "nowhere"))
    assert missing.returncode == 1
    assert missing.stderr == f"pyseq {' '.join(argv)}: no journal directory at {str(tmp_path / 'nowhere')!r}\n"
    empty = run(*argv, str(tmp_path))
    assert empty.returncode == 1
    assert empty.stderr == f"pyseq {' '.join(argv)}: {str(tmp_path)!r} holds no journal segment (no *.seg file)\n"


def test_replay_refuses_slots_too_small_and_the_journal_s_own_ring(recorded: Recorded,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(recorded.path), "--into", "elsewhere", "--slot-size", "64"]) == 2
    assert "--slot-size 64: the journal's payloads need slots of at least 128 bytes" in capsys.readouterr().err
    assert main(["replay", str(recorded.path), "--into", recorded.ring]) == 2
    assert "this journal was written from that ring" in capsys.readouterr().err
    assert not pyseq.Ring.exists("elsewhere") and not pyseq.Ring.exists(recorded.ring)
