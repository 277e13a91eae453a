"""The conformance kit (pyseq.conformance) and the reference-data machine it is the reference of.

One kit is recorded for the module (the ``kit`` fixture: a real ring, a real Journaler, the reference
replayed by a real Replica).  An independent implementation (tests/refdata_alt.py, written from the
documentation, importing nothing of pyseq.refdata) must pass it; each deliberately buggy variant
must be caught at exactly the first sequence that triggers its bug, which these tests compute on
their own by walking the journal with the independent implementation.  The command runs as a real
process for its exit codes and output.  Then ReferenceData itself: rejects, validate_order, and
hypothesis properties of its canonical snapshot (round trip, insertion order, and agreement with the
independent implementation on random message streams).
"""
from __future__ import annotations

import json
import math
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyseq
from cliproc import ENV, WAIT_S, command, run
from conftest import unique_ring_name
from pyseq import conformance
from pyseq.cli import main
from pyseq.conformance import KitError, MachineSpecError, check, load_machine, record
from pyseq.admin import ACTIVATE_SCHEMA as ACTIVATE
from pyseq.message import Message
from pyseq.refdata import (ADD_INSTRUMENT, HALT, REJECT_DUPLICATE, REJECT_INVALID, REJECT_UNDECODABLE,
                           REJECT_UNKNOWN, RESUME, UPDATE_INSTRUMENT, AddInstrument, AddInstrumentV2, Halt,
                           ReferenceData, Resume, UpdateInstrument)
from refdata_alt import (HALT as HALT_LAYOUT, RESUME as RESUME_LAYOUT, UPDATE as UPDATE_LAYOUT,
                         AltReferenceData, ForgetsRejectsOnRestore, RaisesOnEmptyCurrency, ResumeKeepsReason,
                         Undecodable, UndecodableNotCounted, Utf16Order, decode)

TESTS = Path(__file__).resolve().parent
ALT = str(TESTS / "refdata_alt.py")
KIT_MESSAGES, KIT_SEED = 500, 11


# ---- the kit, and an independent walk over its journal ------------------------------------------

@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("kit")
    summary = record(path, messages=KIT_MESSAGES, seed=KIT_SEED, ring_name=unique_ring_name())
    assert summary["last_sequence"] == KIT_MESSAGES
    return path


@pytest.fixture(scope="module")
def messages(kit: Path) -> list[Message]:
    return list(pyseq.Journal(str(kit / "journal")).records())


@pytest.fixture(scope="module")
def expected(kit: Path) -> dict[str, Any]:
    return json.loads((kit / "expected.json").read_text())


def walk(msgs: Iterable[Message], machine: Any,
         before: Optional[Callable[[Message, Any], bool]] = None,
         after: Optional[Callable[[Message, Any], bool]] = None) -> Optional[int]:
    """Apply ``msgs`` to ``machine`` as a replica does (an ActivateSchema takes effect at its
    at_sequence, or from the next message if that is not later), written here from the documentation
    rather than taken from pyseq.replica; the first sequence for which ``before`` (state before the
    message) or ``after`` (state after it) is true, else None."""
    pending: list[tuple[int, int, int]] = []
    for msg in msgs:
        for p in [p for p in pending if p[0] <= msg.seq]:
            machine.schema_versions[p[1]] = p[2]
            pending.remove(p)
        if msg.msg_type == ACTIVATE:
            msg_type, version, at = struct.unpack_from("<HHq", msg.payload)
            if at <= msg.seq:
                machine.schema_versions[msg_type] = version
            else:
                pending.append((at, msg_type, version))
        if before is not None and before(msg, machine):
            return msg.seq
        machine.apply(msg)
        if after is not None and after(msg, machine):
            return msg.seq
    return None


def decoded(msg: Message, machine: AltReferenceData) -> Optional[dict[str, Any]]:
    layout = {ADD_INSTRUMENT: machine.add_layout(), UPDATE_INSTRUMENT: UPDATE_LAYOUT, HALT: HALT_LAYOUT,
              RESUME: RESUME_LAYOUT}.get(msg.msg_type)
    if layout is None:
        return None
    try:
        return decode(layout, msg.payload)
    except Undecodable:
        return None


def resume_of_a_reason(msg: Message, m: AltReferenceData) -> bool:
    f = decoded(msg, m) if msg.msg_type == RESUME else None
    return f is not None and f["symbol"] in m.rows and m.rows[f["symbol"]][5] != b""


def undecodable(msg: Message, m: AltReferenceData) -> bool:
    return msg.msg_type in (ADD_INSTRUMENT, UPDATE_INSTRUMENT, HALT, RESUME) and decoded(msg, m) is None


def utf16_order_differs(msg: Message, m: AltReferenceData) -> bool:
    return sorted(m.keys) != sorted(m.keys, key=lambda k: k.decode().encode("utf-16-be"))


def new_instrument_without_currency(msg: Message, m: AltReferenceData) -> bool:
    f = decoded(msg, m) if msg.msg_type == ADD_INSTRUMENT else None
    return f is not None and f["ccy"] == b"" and f["symbol"] not in m.rows


def v2_add_an_older_release_reads_otherwise(msg: Message, m: AltReferenceData) -> bool:
    """A v2 AddInstrument (v2 in effect) that a v1 reader treats differently: a new, otherwise valid
    instrument with a non-zero max_order_qty (kept, or rejected if negative, by v2; ignored by v1)."""
    if msg.msg_type != ADD_INSTRUMENT or m.schema_versions.get(ADD_INSTRUMENT, 1) < 2:
        return False
    f = decoded(msg, m)
    return (f is not None and f["symbol"] not in m.rows and f["symbol"] != b"" and math.isfinite(f["tick"])
            and f["tick"] > 0 and f["lot"] > 0 and f["max_qty"] != 0)


# ---- the kit -------------------------------------------------------------------------------------

def test_record_writes_a_kit_of_journal_snapshots_and_every_digest(kit: Path, messages: list[Message],
                                                                   expected: dict[str, Any]) -> None:
    assert expected["format"] == conformance.FORMAT and expected["machine"] == "refdata"
    assert expected["reference"] == "pyseq.refdata:ReferenceData"
    assert (expected["first_sequence"], expected["last_sequence"], expected["every"]) == (1, KIT_MESSAGES, 1)
    assert [m.seq for m in messages] == list(range(1, KIT_MESSAGES + 1))
    assert sorted(map(int, expected["digests"])) == list(range(1, KIT_MESSAGES + 1))
    assert expected["initial_digest"] == ReferenceData().digest()
    assert expected["messages_sha256"] == conformance.messages_sha256(messages)
    assert pyseq.Journal(str(kit / "journal")).verify().ok
    # deterministic timestamps and sources, not the wall clock
    assert [m.timestamp_ns for m in messages] == conformance.timestamps(KIT_MESSAGES, KIT_SEED)
    names = {int(k): v for k, v in expected["sources"].items()}
    assert {names.get(m.source, "") for m in messages} == {"", "refdata-admin", "ops", "oms-1", "replica-a"}
    assert all(pyseq.sequencer.source_id(n) == s for s, n in names.items())
    # the digests are the reference's, after each sequence
    ref = ReferenceData()
    digests = {}
    walk(messages, ref, after=lambda msg, m: bool(digests.__setitem__(str(msg.seq), m.digest())))
    assert digests == expected["digests"]
    # a snapshot file per TakeSnapshot, one of them holding the pending schema activation
    takes = [m.seq for m in messages if m.msg_type == pyseq.admin.TAKE_SNAPSHOT]
    assert [s["sequence"] for s in expected["snapshots"]] == takes and len(takes) >= 4
    for s in expected["snapshots"]:
        snap = pyseq.snapshot.read(str(kit / s["file"]))
        assert (snap.machine, snap.digest) == ("refdata", expected["digests"][str(snap.sequence)])
    assert any(s["pending_activations"] == [[s["pending_activations"][0][0], ADD_INSTRUMENT, 2]]
               for s in expected["snapshots"] if s["pending_activations"])


def test_the_workload_exercises_everything(messages: list[Message]) -> None:
    seen: dict[str, Any] = {"codes": set(), "halt_reasons": set(), "unicode": set(), "max_qty": set(),
                            "resumed_halted": 0, "tick_updates": 0, "lot_updates": 0}
    before_rows: dict[bytes, tuple] = {}

    def before(msg: Message, m: AltReferenceData) -> bool:
        before_rows.clear()
        before_rows.update(m.rows)
        return False

    def after(msg: Message, m: AltReferenceData) -> bool:
        if m.rejects and m.rejects[-1][0] == msg.seq:
            seen["codes"].add(m.rejects[-1][1])
            return False
        f = decoded(msg, m)
        if f is None:
            return False
        sym = f["symbol"]
        row, old = m.rows.get(sym), before_rows.get(sym)
        if msg.msg_type == ADD_INSTRUMENT:
            seen["max_qty"].add(row[4])
            if not sym.isascii():
                seen["unicode"].add(sym)
        elif msg.msg_type == HALT:
            seen["halt_reasons"].add(row[5])
        elif msg.msg_type == RESUME and old[3] == 2 and old[5]:
            seen["resumed_halted"] += 1
        elif msg.msg_type == UPDATE_INSTRUMENT:
            seen["tick_updates"] += row[0] != old[0]
            seen["lot_updates"] += row[1] != old[1]
        return False

    walk(messages, AltReferenceData(), before, after)
    assert seen["codes"] == {1, 2, 3, 4}
    assert len(seen["halt_reasons"]) >= 4 and b"" in seen["halt_reasons"]
    assert seen["resumed_halted"] >= 3 and seen["tick_updates"] >= 3 and seen["lot_updates"] >= 3
    assert max(map(len, seen["unicode"])) == 16 and len(seen["unicode"]) >= 6
    assert 0 in seen["max_qty"] and max(seen["max_qty"]) > 0
    # the activation comes before its at_sequence, which is the first AddInstrument read as v2
    (act,) = [m for m in messages if m.msg_type == ACTIVATE]
    _, version, at = struct.unpack("<HHq", act.payload)
    assert version == 2 and at > act.seq + 3
    first_v2 = next(m for m in messages if m.seq >= at and m.msg_type == ADD_INSTRUMENT)
    assert first_v2.seq == at and AddInstrumentV2.decode(first_v2.payload).max_order_qty > 0
    v2_before = [m for m in messages if act.seq < m.seq < at and m.msg_type == ADD_INSTRUMENT and len(m.payload) == 43]
    assert v2_before and messages[at - 2] in v2_before  # a v2 payload right before the switch, read as v1
    # types the machine ignores, and the end of the stream
    types = {m.msg_type for m in messages}
    assert {pyseq.CLIENT_JOINED, pyseq.CLIENT_LEFT, pyseq.admin.REPLICA_DIGEST, 0x0105} <= types
    assert len(types - {ADD_INSTRUMENT, UPDATE_INSTRUMENT, HALT, RESUME}) >= 8
    assert messages[-1].msg_type == pyseq.END_OF_STREAM


def test_the_workload_is_a_function_of_messages_and_seed(expected: dict[str, Any], tmp_path: Path) -> None:
    a = conformance.workload(KIT_MESSAGES, KIT_SEED)
    assert a == conformance.workload(KIT_MESSAGES, KIT_SEED)
    assert a != conformance.workload(KIT_MESSAGES, KIT_SEED + 1)
    with pytest.raises(ValueError, match="at least"):
        conformance.workload(40, 1)
    # recorded again, in another process with another hash seed: the same expected.json
    out = tmp_path / "again"
    proc = subprocess.run(command("conformance", "record", str(out), "--messages", str(KIT_MESSAGES), "--seed",
                                  str(KIT_SEED), "--json"), capture_output=True, text=True, timeout=WAIT_S,
                          env={**ENV, "PYTHONHASHSEED": "4242"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["final_digest"] == expected["final_digest"]
    assert json.loads((out / "expected.json").read_text()) == expected


# ---- check ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("implementation", [ReferenceData, AltReferenceData], ids=["reference", "independent"])
def test_a_conforming_implementation_passes(kit: Path, expected: dict[str, Any], implementation: Any) -> None:
    report = check(str(kit), implementation)
    assert report.ok, conformance.format_report(report)
    assert report.first_mismatch is None and not report.problems
    assert report.checked == report.digests == KIT_MESSAGES + 1
    assert [j.sequence for j in report.late_joins] == [s["sequence"] for s in expected["snapshots"]]
    assert all(j.ok and j.checked == KIT_MESSAGES - j.sequence for j in report.late_joins)
    assert conformance.format_report(report).startswith("PASS")


BUGS = [
    (ResumeKeepsReason, dict(before=resume_of_a_reason), "halt_reason expected ''"),
    (UndecodableNotCounted, dict(before=undecodable), "rejected: expected"),
    (Utf16Order, dict(after=utf16_order_differs), "sorted by the UTF-8 bytes"),
    (RaisesOnEmptyCurrency, dict(before=new_instrument_without_currency), "instrument count"),
]


@pytest.mark.parametrize("buggy,trigger,difference", BUGS, ids=[b[0].__name__ for b in BUGS])
def test_a_bug_is_caught_at_the_first_message_that_triggers_it(kit: Path, messages: list[Message],
                                                               expected: dict[str, Any], buggy: type,
                                                               trigger: dict[str, Any], difference: str) -> None:
    first = walk(messages, AltReferenceData(), **trigger)
    assert first is not None and first > 1
    report = check(str(kit), buggy)
    m = report.first_mismatch
    assert not report.ok and m is not None, conformance.format_report(report)
    assert (m.sequence, m.exact) == (first, True)
    assert report.checked == first + 1  # the empty state, then 1..first
    assert m.expected_digest == expected["digests"][str(first)] and m.actual_digest != m.expected_digest
    assert m.message is not None and m.message["sequence"] == first
    assert m.message["msg_type"] == messages[first - 1].msg_type and m.note
    assert any(difference in line for line in m.state["differences"]), m.state
    if buggy is RaisesOnEmptyCurrency:
        assert m.actual_digest is None and "KeyError" in m.error
    text = conformance.format_report(report)
    assert text.startswith("FAIL") and f"first at sequence {first}\n" in text


def test_an_older_release_differs_at_the_first_add_it_reads_as_v1(kit: Path, messages: list[Message]) -> None:
    first = walk(messages, AltReferenceData(), before=v2_add_an_older_release_reads_otherwise)
    at = next(struct.unpack("<HHq", m.payload)[2] for m in messages if m.msg_type == ACTIVATE)
    assert first == at  # the kit puts a v2 add with max_order_qty right at the switch
    report = check(str(kit), lambda: ReferenceData(max_version=1))
    assert report.first_mismatch is not None and report.first_mismatch.sequence == first
    assert any("max_order_qty expected 5000, got 0" in d for d in report.first_mismatch.state["differences"])


def test_a_restore_bug_is_caught_by_the_late_joiners(kit: Path) -> None:
    report = check(str(kit), ForgetsRejectsOnRestore)
    assert report.first_mismatch is None and report.checked == KIT_MESSAGES + 1
    assert not report.ok and report.late_joins and all(not j.ok for j in report.late_joins)
    assert all("refused" in j.error and "digest" in j.error for j in report.late_joins)
    assert check(str(kit), ForgetsRejectsOnRestore, late_joins=False).ok


def test_a_machine_of_another_name_does_not_conform(kit: Path) -> None:
    class Renamed(AltReferenceData):
        name = "refdata-v2"

    report = check(str(kit), Renamed, late_joins=False)
    assert report.first_mismatch is None and not report.ok
    assert "named 'refdata-v2'" in report.problems[0]


def test_checkpoints_find_the_exact_sequence_by_running_the_reference_again(tmp_path: Path) -> None:
    out = tmp_path / "k25"
    summary = record(out, messages=300, seed=5, checkpoint_every=25, ring_name=unique_ring_name())
    assert summary["digests"] == 12
    exp = json.loads((out / "expected.json").read_text())
    assert sorted(map(int, exp["digests"])) == list(range(25, 301, 25))
    msgs = list(pyseq.Journal(str(out / "journal")).records())
    assert check(str(out), AltReferenceData).ok

    first = walk(msgs, AltReferenceData(), before=resume_of_a_reason)
    assert first % 25  # between two checkpoints
    report = check(str(out), ResumeKeepsReason)
    m = report.first_mismatch
    assert (m.sequence, m.exact, m.bracket) == (first, True, (first // 25 * 25 + 1, (first // 25 + 1) * 25))
    assert m.expected_digest == reference_digest_at(msgs, first)
    first = walk(msgs, AltReferenceData(), before=new_instrument_without_currency)
    m = check(str(out), RaisesOnEmptyCurrency).first_mismatch
    assert (m.sequence, m.exact, m.actual_digest) == (first, True, None) and "KeyError" in m.error

    # without a reference to run again, the report gives the bracket between checkpoints
    exp["reference"] = None
    (out / "expected.json").write_text(json.dumps(exp))
    first = walk(msgs, AltReferenceData(), before=resume_of_a_reason)
    m = check(str(out), ResumeKeepsReason).first_mismatch
    assert not m.exact and m.bracket[0] <= first <= m.bracket[1] == m.sequence and m.bracket[1] % 25 == 0
    # ... unless one is given
    m = check(str(out), ResumeKeepsReason, reference=ReferenceData).first_mismatch
    assert (m.sequence, m.exact) == (first, True)


def reference_digest_at(msgs: list[Message], seq: int) -> str:
    ref = ReferenceData()
    walk([m for m in msgs if m.seq <= seq], ref)
    return ref.digest()


def test_a_kit_that_cannot_be_used_is_refused(kit: Path, tmp_path: Path) -> None:
    with pytest.raises(KitError, match="not a directory"):
        check(str(tmp_path / "missing"), AltReferenceData)
    with pytest.raises(KitError, match="no expected.json"):
        check(str(tmp_path), AltReferenceData)
    copy = tmp_path / "copy"
    shutil.copytree(kit, copy)
    exp = json.loads((copy / "expected.json").read_text())
    (copy / "expected.json").write_text(json.dumps({**exp, "messages_sha256": "0" * 64}))
    with pytest.raises(KitError, match="not the one"):
        check(str(copy), AltReferenceData)
    (copy / "expected.json").write_text(json.dumps({**exp, "format": "something-else/9"}))
    with pytest.raises(KitError, match="format"):
        check(str(copy), AltReferenceData)
    (copy / "expected.json").write_text("{not json")
    with pytest.raises(KitError, match="cannot be read"):
        check(str(copy), AltReferenceData)
    (copy / "expected.json").write_text(json.dumps({**exp, "last_sequence": KIT_MESSAGES + 1,
                                                    "digests": {str(KIT_MESSAGES + 1): "0" * 64}}))
    with pytest.raises(KitError, match=f"not sequences 1..{KIT_MESSAGES + 1}"):
        check(str(copy), AltReferenceData)
    with pytest.raises(FileExistsError):
        record(kit, messages=200)


def test_load_machine_specs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_machine("pyseq.refdata:ReferenceData") is ReferenceData
    assert load_machine(f"{ALT}:AltReferenceData")().name == "refdata"
    assert load_machine(f"{ALT}:AltReferenceData") is load_machine(f"{ALT}:AltReferenceData")  # loaded once
    assert load_machine(AltReferenceData) is AltReferenceData
    (tmp_path / "nested_machine.py").write_text("from refdata_alt import AltReferenceData\n"
                                                "class Outer:\n    Inner = AltReferenceData\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", sys.path[:])  # what load_machine adds to it is undone
    assert load_machine("nested_machine:Outer.Inner") is AltReferenceData  # the current directory is importable
    assert load_machine("./nested_machine.py:Outer.Inner")().name == "refdata"
    (tmp_path / "broken.py").write_text("def oops(:\n")
    (tmp_path / "needs_args.py").write_text("class M:\n    name = 'refdata'\n    def __init__(self, x): pass\n")
    for spec, match in [("nocolon", "expected 'module:Class'"), ("mod:", "expected"), (":Cls", "expected"),
                        ("pyseq.refdata:1bad", "expected"), ("no_such_module_xyz:C", "cannot import"),
                        ("pyseq.refdata:Nope", "has no Nope"), ("pyseq.refdata:ADD_INSTRUMENT", "not a class"),
                        (str(tmp_path / "absent.py") + ":C", "no file"), ("broken.py:C", "SyntaxError")]:
        with pytest.raises(MachineSpecError, match=match):
            load_machine(spec)
    with pytest.raises(MachineSpecError, match="no arguments failed"):
        conformance._instantiate(load_machine("needs_args.py:M"), "needs_args.py:M")
    with pytest.raises(MachineSpecError, match="no apply"):
        conformance._instantiate(object, "object")
    sys.modules.pop("nested_machine", None)


def test_state_difference_names_the_field() -> None:
    def state(*ops: Any) -> bytes:
        m = ReferenceData()
        for i, rec in enumerate(ops, 1):
            m.apply(Message(i, 1000 + i, rec.msg_type, rec.version, 0, rec.encode()))
        return m.snapshot()

    a = state(AddInstrument(symbol="A", tick_size=0.01), Halt(symbol="A", reason="news"))
    b = state(AddInstrument(symbol="A", tick_size=0.01), Halt(symbol="A", reason="new"))
    c = state(AddInstrument(symbol="A", tick_size=0.01), AddInstrument(symbol="B", tick_size=0.01))
    diff = conformance.state_difference(a, b, "refdata")
    assert diff["differences"] == ["instrument 'A': halt_reason expected 'news', got 'new'"]
    assert diff["first_difference_at"] == 8 + 4 + 8 + 8 + 2 + 16 + 8 + 8 + 3 + 1 + 8 + 3
    assert "instrument 'B': not expected" in conformance.state_difference(a, c, "refdata")["differences"]
    assert conformance.state_difference(a, b"junk", "refdata")["differences"][0].startswith("the implementation's")
    assert conformance.state_difference(a, a)["first_difference_at"] is None


# ---- the command ---------------------------------------------------------------------------------

def test_the_command_records_and_checks(tmp_path: Path) -> None:
    out = tmp_path / "kit"
    proc = run("conformance", "record", str(out), "--messages", "150", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"conformance kit {out}: machine refdata, 150 messages (seed 3, sequences 1..150)")
    proc = run("conformance", "check", str(out), "--machine", f"{ALT}:AltReferenceData")
    assert (proc.returncode, proc.stderr) == (0, "") and proc.stdout.startswith("PASS: ")
    assert "151 digests match (after every sequence)" in proc.stdout

    msgs = list(pyseq.Journal(str(out / "journal")).records())
    first = walk(msgs, AltReferenceData(), before=resume_of_a_reason)
    proc = subprocess.run(command("conformance", "check", str(out), "--machine", "refdata_alt:ResumeKeepsReason"),
                          capture_output=True, text=True, timeout=WAIT_S, env=ENV, cwd=TESTS)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].endswith(f"first at sequence {first}")
    assert lines[1].startswith(f"  message   {first} Resume v1 src=refdata-admin Resume(symbol=")
    assert any(line.startswith("  state     instrument ") and "halt_reason" in line for line in lines)
    proc = run("conformance", "check", str(out), "--machine", f"{ALT}:UndecodableNotCounted", "--json")
    report = json.loads(proc.stdout)
    assert proc.returncode == 1 and report["ok"] is False
    assert report["first_mismatch"]["sequence"] == walk(msgs, AltReferenceData(), before=undecodable)
    assert report["first_mismatch"]["message"]["undecodable"]


def test_the_command_refuses_what_it_cannot_use(kit: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    for args, message in [
        (["check", str(kit), "--machine", "no-colon"], "expected 'module:Class'"),
        (["check", str(kit), "--machine", "no_such_module_xyz:Machine"], "cannot import no_such_module_xyz"),
        (["check", str(tmp_path / "nowhere"), "--machine", f"{ALT}:AltReferenceData"], "no conformance kit"),
        (["check", str(tmp_path), "--machine", f"{ALT}:AltReferenceData"], "no expected.json"),
        (["record", str(kit)], "already holds a conformance kit"),
        (["record", str(tmp_path / "small"), "--messages", "20"], "at least"),
        (["record", str(tmp_path / "k"), "--every", "0"], "argument --every"),
        (["check", str(kit)], "--machine"),
    ]:
        assert main(["conformance", *args]) == 2, args
        assert message in capsys.readouterr().err, args
    proc = run("conformance", "check", str(tmp_path / "nowhere"), "--machine", "x:Y")
    assert proc.returncode == 2 and "error:" in proc.stderr and proc.stdout == ""
    proc = run("conformance", "check", str(kit), "--machine", str(TESTS / "absent.py") + ":M")
    assert proc.returncode == 2 and "no file" in proc.stderr


# ---- ReferenceData itself ------------------------------------------------------------------------

class Feed:
    """Messages to a machine with consecutive sequences and timestamps."""

    def __init__(self, *machines: Any) -> None:
        self.machines = machines
        self.seq = 0

    def __call__(self, rec: Any = None, *, msg_type: int = 0, payload: bytes = b"", version: int = 1) -> int:
        self.seq += 1
        msg = Message(self.seq, 1_000 + self.seq, rec.msg_type if rec is not None else msg_type,
                      rec.version if rec is not None else version, 7, rec.encode() if rec is not None else payload)
        for m in self.machines:
            m.apply(msg)
        return self.seq


def test_rejects_are_counted_with_the_last_one_in_the_state() -> None:
    m = ReferenceData()
    feed = Feed(m)
    feed(AddInstrument(symbol="A", tick_size=0.01))
    state = m.snapshot()
    cases = [
        (AddInstrument(symbol="A", tick_size=0.5), REJECT_DUPLICATE),
        (AddInstrument(symbol="A", tick_size=-1.0), REJECT_DUPLICATE),  # a duplicate first
        (AddInstrument(symbol="B", tick_size=0.0), REJECT_INVALID),
        (AddInstrument(symbol="B", tick_size=float("nan")), REJECT_INVALID),
        (AddInstrument(symbol="B", tick_size=0.01, lot_size=0), REJECT_INVALID),
        (AddInstrument(symbol="", tick_size=0.01), REJECT_INVALID),
        (UpdateInstrument(symbol="Q", tick_size=-1.0), REJECT_UNKNOWN),  # unknown first
        (UpdateInstrument(symbol="A", tick_size=float("inf")), REJECT_INVALID),
        (UpdateInstrument(symbol="A", lot_size=-1), REJECT_INVALID),
        (Halt(symbol="Q"), REJECT_UNKNOWN),
        (Resume(symbol="Q"), REJECT_UNKNOWN),
    ]
    for n, (rec, code) in enumerate(cases, 1):
        seq = feed(rec)
        assert (m.rejected, m.last_reject) == (n, (seq, code)), rec
    for payload in (b"", b"A" * 20, b"\xff" * 16 + bytes(19)):
        seq = feed(msg_type=ADD_INSTRUMENT, payload=payload)
        assert m.last_reject == (seq, REJECT_UNDECODABLE)
    assert m.rejected == len(cases) + 3
    assert m.snapshot()[30:] == state[30:]  # the instruments did not change, only the header
    feed(msg_type=0x0105, payload=b"whatever")
    feed(msg_type=pyseq.END_OF_STREAM)
    assert m.rejected == len(cases) + 3  # other message types are ignored, not rejected


def test_validate_order_checks_tick_lot_halt_and_max_order_qty() -> None:
    m = ReferenceData()
    feed = Feed(m)
    feed(AddInstrument(symbol="A", tick_size=0.05, lot_size=100))
    assert m.validate_order("A", 10.05, 300) is None
    assert "unknown instrument 'B'" == m.validate_order("B", 1.0, 100)
    assert "not on A's tick of 0.05" in m.validate_order("A", 10.07, 100)
    for price in (0.0, -0.05, float("nan"), float("inf")):
        assert "price" in m.validate_order("A", price, 100), price
    for qty in (150, 0, -100):
        assert "not a positive multiple of A's lot of 100" in m.validate_order("A", 10.0, qty), qty
    feed(Halt(symbol="A", reason="news pending"))
    assert m.validate_order("A", 10.05, 300) == "A is halted (news pending)" and not m.is_tradable("A")
    feed(Resume(symbol="A"))
    assert m.validate_order("A", 10.05, 300) is None and m.instrument("A").halt_reason == ""
    feed(Halt(symbol="A"))
    assert m.validate_order("A", 10.05, 300) == "A is halted"
    feed(Resume(symbol="A"))
    feed(UpdateInstrument(symbol="A", tick_size=0.01, lot_size=10))
    assert m.validate_order("A", 10.07, 30) is None
    assert m.instrument("A").max_order_qty == 0  # no limit
    assert m.validate_order("A", 10.0, 10 ** 9) is None
    m.schema_versions[ADD_INSTRUMENT] = 2  # what the replica does at the activation's sequence
    feed(AddInstrumentV2(symbol="V", tick_size=0.25, lot_size=5, max_order_qty=500))
    assert m.instrument("V").max_order_qty == 500
    assert m.validate_order("V", 1.25, 500) is None
    assert "above V's maximum of 500" in m.validate_order("V", 1.25, 505)
    feed(AddInstrument(symbol="W", tick_size=0.25))  # a v1 payload once v2 is in effect: no limit
    assert m.instrument("W").max_order_qty == 0
    assert m.on_tick("A", 0.3) and not m.on_tick("A", 0.305) and not m.on_tick("Q", 1.0)


def test_validate_order_never_raises_for_an_accepted_instrument() -> None:
    m = ReferenceData()
    feed = Feed(m)
    feed(AddInstrument(symbol="TINY", tick_size=5e-324))
    feed(AddInstrument(symbol="A", tick_size=0.01))
    assert isinstance(m.validate_order("TINY", 1.0, 1), (str, type(None)))
    assert isinstance(m.validate_order("A", 1e308, 1), (str, type(None)))


# hypothesis: random streams of reference-data messages, valid and not
SYMBOLS = ["A", "AB", "B", "é", "e\u0301", "ＡＢＣ", "🚀", "日本電気株X", ""]
TICK = st.sampled_from([0.01, 0.25, 1 / 3, 5e-324, 0.0, -0.0, -1.0, float("nan"), float("inf")]) | \
    st.floats(min_value=-10, max_value=10)
LOT = st.sampled_from([1, 10, 100]) | st.integers(-3, 1 << 40)
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8)
RECORDS = st.one_of(
    st.builds(AddInstrument, symbol=st.sampled_from(SYMBOLS), tick_size=TICK, lot_size=LOT,
              currency=st.sampled_from(["USD", "", "€", "JP"])),
    st.builds(AddInstrumentV2, symbol=st.sampled_from(SYMBOLS), tick_size=TICK, lot_size=LOT,
              max_order_qty=st.integers(-5, 10 ** 6)),
    st.builds(UpdateInstrument, symbol=st.sampled_from(SYMBOLS), tick_size=TICK, lot_size=LOT),
    st.builds(Halt, symbol=st.sampled_from(SYMBOLS), reason=TEXT),
    st.builds(Resume, symbol=st.sampled_from(SYMBOLS)),
    st.tuples(st.sampled_from([ADD_INSTRUMENT, UPDATE_INSTRUMENT, HALT, RESUME, 0x0105, 9]), st.binary(max_size=50)),
    st.just("activate-v2"),
)
HYPOTHESIS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def feed_all(feed: Feed, ops: list[Any]) -> None:
    for op in ops:
        if op == "activate-v2":
            for m in feed.machines:
                m.schema_versions[ADD_INSTRUMENT] = 2
        elif isinstance(op, pyseq.Record):
            feed(op)
        else:
            feed(msg_type=op[0], payload=op[1])


@HYPOTHESIS
@given(st.lists(RECORDS, max_size=40))
def test_snapshot_restore_round_trip(ops: list[Any]) -> None:
    m = ReferenceData()
    feed_all(Feed(m), ops)
    copy = ReferenceData()
    copy.restore(m.snapshot())
    assert copy.snapshot() == m.snapshot() and copy.digest() == m.digest()
    assert copy.instruments() == m.instruments() and (copy.rejected, copy.last_reject) == (m.rejected, m.last_reject)
    alt = AltReferenceData()
    alt.restore(m.snapshot())  # the other implementation reads it too
    assert alt.snapshot() == m.snapshot()


@HYPOTHESIS
@given(st.lists(RECORDS, max_size=40))
def test_the_independent_implementation_agrees_after_every_message(ops: list[Any]) -> None:
    ref, alt = ReferenceData(), AltReferenceData()
    feed = Feed(ref, alt)
    for op in ops:
        feed_all(feed, [op])
        assert alt.snapshot() == ref.snapshot(), (feed.seq, op)


@HYPOTHESIS
@given(st.lists(st.tuples(st.sampled_from(SYMBOLS[:-1] + ["Z", "a", "AB.C", "0001"]), st.sampled_from([0.01, 0.5]),
                          st.booleans()), unique_by=lambda t: t[0], min_size=1), st.randoms(use_true_random=False))
def test_canonical_bytes_do_not_depend_on_insertion_order(instruments: list[tuple[str, float, bool]],
                                                          rng: Any) -> None:
    def state(order: list[int]) -> bytes:
        m = ReferenceData()
        for i in order:  # each instrument's messages keep their own sequences, whatever the order
            symbol, tick, halted = instruments[i]
            add = AddInstrument(symbol=symbol, tick_size=tick).encode()
            m.apply(Message(2 * i + 1, 10 * i, ADD_INSTRUMENT, 1, 0, add))
            if halted:
                m.apply(Message(2 * i + 2, 10 * i + 1, HALT, 1, 0, Halt(symbol=symbol, reason="r").encode()))
        return m.snapshot()

    order = list(range(len(instruments)))
    shuffled = order[:]
    rng.shuffle(shuffled)
    assert state(order) == state(shuffled) == state(order[::-1])
    symbols = [s for s, _, _ in instruments]
    m = ReferenceData()
    m.restore(state(shuffled))
    assert [i.symbol for i in m.instruments()] == sorted(symbols, key=str.encode)


def test_restore_refuses_what_is_not_a_reference_data_state() -> None:
    good = ReferenceData().snapshot()
    for bad in (b"", b"REFDATA2" + good[8:], good[:-1], good + b"\0" * 112, good[:8]):
        with pytest.raises(pyseq.SnapshotError):
            ReferenceData().restore(bad)
