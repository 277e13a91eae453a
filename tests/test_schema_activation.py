"""Schema evolution in a running system: replicas of an old release (``ReferenceData(max_version=1)``)
and of a new one (``ReferenceData()``) follow one real sequencer side by side while an admin client
sends version-1 AddInstruments, then ``ActivateSchema(ADD_INSTRUMENT, 2, at_sequence=S)``, then
version-2 ones with ``max_order_qty``.  Every replica is a child process recording its digest after
every sequence, so digests are compared at the same sequences: old and new agree before S, the new
ones agree everywhere, and a late joiner started from a snapshot taken between the activation and S
switches at S too.  Then snapshots that must be refused: corrupt, truncated, of another machine,
whose restored state does not have the recorded digest, garbage.

Every child is SIGKILLed and joined after its test, the sequencer killed; every wait has a deadline.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import struct
import time
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

import pyseq
from childproc import SPAWN, Children, Deadline
from pyseq import snapshot
from pyseq.admin import ActivateSchema, TakeSnapshot
from pyseq.journal import crc32c
from pyseq.message import Message
from pyseq.refdata import ADD_INSTRUMENT, AddInstrument, AddInstrumentV2, ReferenceData, UpdateInstrument
from pyseq.schema import Record
from pyseq.statemachine import StateMachine


# ---- children ----------------------------------------------------------------------------------

class Recording(ReferenceData):
    """Reference data that records its digest and the AddInstrument schema version in effect after
    every message it applies (a replica applies every message of the stream, in order).  Its name is
    still "refdata", so its snapshots are reference-data snapshots."""

    def __init__(self, max_version: int) -> None:
        super().__init__(max_version=max_version)
        self.digests: dict[int, str] = {}
        self.versions: dict[int, int] = {}

    def record(self, seq: int) -> None:
        self.digests[seq] = self.digest()
        self.versions[seq] = self.schema_versions.get(ADD_INSTRUMENT, 1)

    def apply(self, msg: Message) -> None:
        super().apply(msg)
        self.record(msg.seq)


def follow_each(ring: str, label: str, max_version: int, snapshots: str, snapshot_from: Optional[str], final: Any,
                ready: Any) -> dict[str, Any]:
    """A replica (from ``snapshot_from`` if given) that follows the ring until the final sequence
    (set by the test); what it recorded at every sequence."""
    machine = Recording(max_version)
    replica = pyseq.Replica(machine, ring=ring, snapshots=snapshots, snapshot_from=snapshot_from, name=label)
    replica.follow(until_sequence=0)  # starts it: from the snapshot, if it has one
    machine.record(replica.last_applied)
    ready.set()
    deadline = Deadline(60, f"replica {label}: the final sequence")
    while not final.value:
        deadline.check()
        replica.follow(duration=0.05)
    replica.follow(until_sequence=final.value)  # nothing is sequenced after the final one until it returns
    replica.close()
    return {"started_from": replica.started_from, "last_applied": replica.last_applied, "digests": machine.digests,
            "versions": machine.versions, "rejected": machine.rejected, "snapshots": replica.snapshots_written,
            "max_order_qty": {i.symbol: i.max_order_qty for i in machine.instruments()}}


# ---- helpers -----------------------------------------------------------------------------------

def wait_until(predicate: Callable[[], Any], seconds: float, what: str) -> None:
    deadline = Deadline(seconds, what)
    while not predicate():
        deadline.check()
        time.sleep(0.01)


class Admin:
    """The one client: submits a record and waits until it is sequenced; its sequence."""

    def __init__(self, ring_name: str) -> None:
        self.ring = pyseq.Ring.attach(ring_name)
        self.client = pyseq.Client.connect(ring_name, "admin", timeout=20.0)
        wait_until(lambda: self.ring.published_sequence >= 1, 20, "the admin's CLIENT_JOINED")
        self.sent: dict[int, Record] = {}

    def submit(self, record: Record) -> int:
        before = self.ring.published_sequence
        self.client.submit(record)
        wait_until(lambda: self.ring.published_sequence > before, 20, f"{record!r} to be sequenced")
        seq = self.ring.published_sequence
        assert seq == before + 1, f"something else was sequenced: {before} -> {seq}"
        self.sent[seq] = record
        return seq

    def check_the_stream(self) -> None:
        """What the ring holds at each sequence is what was sent."""
        with self.ring.reader("check", start=min(self.sent)) as reader:
            for seq, record in sorted(self.sent.items()):
                msg = reader.read(timeout=5)
                assert (msg.seq, msg.msg_type, msg.schema_version, msg.payload) == \
                       (seq, record.msg_type, record.version, record.encode())

    def close(self) -> None:
        self.client.close()
        self.ring.close()


# ---- old and new releases through an activation ------------------------------------------------

@pytest.mark.timeout(120)
def test_old_and_new_releases_agree_until_the_activation_and_the_new_ones_switch_exactly_there(
        children: Children, ring_name: str, sequencers: Any, tmp_path: Path) -> None:
    sequencers(ring_name, "--capacity", "1024")
    final = SPAWN.Value("q", 0)
    dirs = {label: str(tmp_path / label) for label in ("old", "new-a", "new-b", "late")}
    ready = {label: children.event() for label in dirs}
    for label, version in (("old", 1), ("new-a", 2), ("new-b", 2)):
        children.start(label, follow_each, ring_name, label, version, dirs[label], None, final, ready[label])
    for label in ("old", "new-a", "new-b"):
        assert ready[label].wait(30), f"replica {label} did not start"
    admin = Admin(ring_name)
    try:
        for i in range(5):
            admin.submit(AddInstrument(symbol=f"V1-{i}", tick_size=0.01, lot_size=1 + i))
        at = admin.ring.published_sequence + 1
        s = at + 4  # S: a few messages after the activation
        assert admin.submit(ActivateSchema(message_type=ADD_INSTRUMENT, schema_version=2, at_sequence=s)) == at
        admin.submit(AddInstrumentV2(symbol="EARLY", tick_size=0.05, max_order_qty=500))  # before S: read as v1
        pending_at = admin.submit(TakeSnapshot(label="pending"))  # between the activation and S
        admin.submit(AddInstrumentV2(symbol="EARLY2", tick_size=0.05, max_order_qty=700))
        assert admin.submit(AddInstrumentV2(symbol="AT-S", tick_size=0.1, max_order_qty=1000)) == s
        pending_file = os.path.join(dirs["new-a"], snapshot.snapshot_name(pending_at))
        wait_until(lambda: os.path.exists(pending_file), 30, "new-a to write its snapshot")
        children.start("late", follow_each, ring_name, "late", 2, dirs["late"], pending_file, final, ready["late"])
        admin.submit(AddInstrumentV2(symbol="LATER", tick_size=0.1, lot_size=10, max_order_qty=2000))
        admin.submit(AddInstrument(symbol="V1-AFTER", tick_size=0.01))  # a v1 payload after S: defaults filled
        admin.submit(UpdateInstrument(symbol="AT-S", tick_size=0.2))
        final.value = admin.submit(TakeSnapshot(label="final"))
        results = {label: children.result(label, 60) for label in dirs}
        admin.check_the_stream()
    finally:
        admin.close()
    end = final.value
    old, new_a, new_b, late = (results[label] for label in ("old", "new-a", "new-b", "late"))

    # every replica kept running to the end, and nothing was rejected (the old one read v2 by its prefix)
    assert {r["last_applied"] for r in results.values()} == {end}
    assert {r["rejected"] for r in results.values()} == {0}
    assert sorted(old["digests"]) == sorted(new_a["digests"]) == list(range(0, end + 1))
    # old and new agree at every sequence before S, and part at S
    assert [old["digests"][q] for q in range(s)] == [new_a["digests"][q] for q in range(s)]
    assert old["digests"][s] != new_a["digests"][s]
    # two new replicas agree at every sequence; the late joiner from the snapshot at every one it applied
    assert new_a["digests"] == new_b["digests"]
    assert late["started_from"] == pending_at and sorted(late["digests"]) == list(range(pending_at, end + 1))
    assert late["digests"] == {q: d for q, d in new_a["digests"].items() if q >= pending_at}
    # the new releases switch to version 2 exactly at S, the late joiner included
    for r in (new_a, new_b, late):
        assert r["versions"] == {q: 2 if q >= s else 1 for q in r["versions"]}
    # max_order_qty applies from S on: a v2 add before S was read as v1
    expected = {**{f"V1-{i}": 0 for i in range(5)}, "EARLY": 0, "EARLY2": 0, "AT-S": 1000, "LATER": 2000,
                "V1-AFTER": 0}
    assert new_a["max_order_qty"] == new_b["max_order_qty"] == late["max_order_qty"] == expected
    assert old["max_order_qty"] == dict.fromkeys(expected, 0)
    # the snapshot between the activation and S carries the pending activation, the same in every release
    snap = snapshot.read(pending_file)
    assert snap.pending_activations == [(s, ADD_INSTRUMENT, 2)] and ADD_INSTRUMENT not in snap.schema_versions
    pending_bytes = {Path(dirs[label], snapshot.snapshot_name(pending_at)).read_bytes()
                     for label in ("old", "new-a", "new-b")}
    assert len(pending_bytes) == 1
    finals = {label: Path(dirs[label], snapshot.snapshot_name(end)).read_bytes() for label in dirs}
    assert finals["new-a"] == finals["new-b"] == finals["late"] != finals["old"]
    assert snapshot.read(os.path.join(dirs["late"], snapshot.snapshot_name(end))).schema_versions == {
        ADD_INSTRUMENT: 2}


# ---- a late joiner in this process, from a snapshot with a pending activation --------------------

S = 5  # the activation's at_sequence in the stream below
STREAM = [
    AddInstrument(symbol="A", tick_size=0.01),                                  # 1
    ActivateSchema(message_type=ADD_INSTRUMENT, schema_version=2, at_sequence=S),  # 2
    AddInstrumentV2(symbol="B", tick_size=0.1, max_order_qty=9),               # 3: before S, read as v1
    TakeSnapshot(label="mid"),                                                  # 4: the activation is pending
    AddInstrumentV2(symbol="C", tick_size=0.1, max_order_qty=10),              # 5 = S
    AddInstrumentV2(symbol="D", tick_size=0.1, max_order_qty=11),              # 6
]


def messages(records: list[Record], first: int = 1) -> list[Message]:
    return [Message(first + i, 1_000_000 + first + i, r.msg_type, r.version, 0, r.encode())
            for i, r in enumerate(records)]


@pytest.fixture
def written(tmp_path: Path, ring_name: str) -> tuple[str, pyseq.Replica]:
    """The snapshot a replica wrote at sequence 4 of STREAM (it applied all of STREAM)."""
    replica = pyseq.Replica(ReferenceData(), ring=ring_name, snapshots=str(tmp_path / "snaps"))
    replica.apply_messages(messages(STREAM))
    assert len(replica.snapshots_written) == 1
    return replica.snapshots_written[0], replica


def test_a_late_joiner_from_a_snapshot_with_a_pending_activation_switches_at_its_sequence(
        written: tuple[str, pyseq.Replica], ring_name: str) -> None:
    path, first = written
    late = pyseq.Replica(ReferenceData(), ring=ring_name, snapshot_from=path)
    late.follow(until_sequence=0)
    assert late.started_from == 4 and late.state.schema_versions == {}
    late.apply_messages(messages(STREAM[4:], first=5))
    assert late.digest() == first.digest()
    assert {i.symbol: i.max_order_qty for i in late.state.instruments()} == {"A": 0, "B": 0, "C": 10, "D": 11}
    assert late.state.schema_versions == {ADD_INSTRUMENT: 2}


# ---- snapshots that must be refused ------------------------------------------------------------

class Counter(StateMachine):
    """Another state machine, whose snapshots a reference-data replica must refuse."""

    name = "counter"

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def apply(self, msg: Message) -> None:
        self.count += 1

    def snapshot(self) -> bytes:
        return struct.pack("<q", self.count)

    def restore(self, data: bytes) -> None:
        (self.count,) = struct.unpack("<q", data)


def reseal(data: bytes) -> bytes:
    """``data`` with its trailing checksum made right again (so that another check has to catch it)."""
    return data[:-4] + struct.pack("<I", crc32c(data[:-4]))


def regions(data: bytes) -> tuple[int, int]:
    """(where the metadata starts, where the state starts)."""
    meta_length = snapshot.HEADER.unpack_from(data)[5]
    return snapshot.HEADER.size, snapshot.HEADER.size + meta_length


def flip_a_state_byte(data: bytes) -> bytes:
    at = regions(data)[1] + 20
    return data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1:]


def forge_the_digest(data: bytes) -> bytes:
    meta_at, state_at = regions(data)
    meta = json.loads(data[meta_at:state_at])
    forged = data[meta_at:state_at].replace(meta["digest"].encode(), hashlib.sha256(b"another state").hexdigest().encode())
    return reseal(data[:meta_at] + forged + data[state_at:])


def garble_the_metadata(data: bytes) -> bytes:
    meta_at, state_at = regions(data)
    return reseal(data[:meta_at] + b"{" * (state_at - meta_at) + data[state_at:])


def newer_format(data: bytes) -> bytes:
    return reseal(data[:8] + struct.pack("<I", 2) + data[12:])


def state_not_refdata(data: bytes) -> bytes:
    at = regions(data)[1]
    return reseal(data[:at] + b"NOTREFDA" + data[at + 8:])


def another_machine(data: bytes) -> bytes:
    return snapshot.encode(Counter(), 4, 0, [])


DAMAGE: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "a flipped byte": (flip_a_state_byte, "checksum mismatch (corrupt)"),
    "truncated": (lambda d: d[:-7], "truncated or extended"),
    "extended": (lambda d: d + b"\0", "truncated or extended"),
    "cut inside the header": (lambda d: d[:40], "40 bytes, shorter than a snapshot header"),
    "empty": (lambda d: b"", "0 bytes, shorter than a snapshot header"),
    "garbage": (lambda d: random.Random(5).randbytes(len(d)), "not a pyseq snapshot (bad magic)"),
    "a newer format": (newer_format, "format version 2; this pyseq reads version 1"),
    "unreadable metadata": (garble_the_metadata, "unreadable metadata"),
    "of another state machine": (another_machine, "it is of state machine 'counter', not 'refdata'"),
    "a digest the restored state does not have": (forge_the_digest, "the restored state's digest"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_snapshot_is_refused_with_an_error_naming_the_file(
        case: str, written: tuple[str, pyseq.Replica], ring_name: str, tmp_path: Path) -> None:
    good, _ = written
    damage, reason = DAMAGE[case]
    path = tmp_path / "bad" / os.path.basename(good)
    path.parent.mkdir()
    path.write_bytes(damage(Path(good).read_bytes()))
    replica = pyseq.Replica(ReferenceData(), ring=ring_name, snapshot_from=str(path))
    with pytest.raises(pyseq.SnapshotError) as refused:
        replica.follow(until_sequence=0)
    message = str(refused.value)
    assert f"snapshot {str(path)!r} refused: " in message and reason in message, message
    assert replica.last_applied == 0 and replica.started_from is None


def test_the_newest_snapshot_of_a_directory_is_refused_if_damaged_not_skipped(
        written: tuple[str, pyseq.Replica], ring_name: str) -> None:
    good, _ = written
    newer = os.path.join(os.path.dirname(good), snapshot.snapshot_name(6))
    shutil.copyfile(good, newer)  # its name says 6, its header 4
    replica = pyseq.Replica(ReferenceData(), ring=ring_name, snapshot_from=os.path.dirname(good))
    with pytest.raises(pyseq.SnapshotError, match=r"refused: its header says sequence 4, its name 6"):
        replica.follow(until_sequence=0)
    os.unlink(newer)
    replica = pyseq.Replica(ReferenceData(), ring=ring_name, snapshot_from=os.path.dirname(good))
    replica.follow(until_sequence=0)
    assert replica.started_from == 4


def test_a_snapshot_whose_state_the_machine_cannot_parse_is_refused_naming_the_file(
        written: tuple[str, pyseq.Replica], ring_name: str, tmp_path: Path) -> None:
    good, _ = written
    path = tmp_path / os.path.basename(good)
    path.write_bytes(state_not_refdata(Path(good).read_bytes()))
    replica = pyseq.Replica(ReferenceData(), ring=ring_name, snapshot_from=str(path))
    with pytest.raises(pyseq.SnapshotError, match="not a reference-data state") as refused:
        replica.follow(until_sequence=0)
    assert str(path) in str(refused.value)
