"""Snapshot files: a state machine's state at one sequence, checksummed.

Every replica that applies a :class:`pyseq.TakeSnapshot` writes one at that message's sequence;
their bytes are identical (nothing replica-specific is in them), so a late joiner can start from a
snapshot written by any other replica.

Layout (little-endian)::

    0   magic "PYSEQSNP"                8 bytes
    8   format_version                  u32 (1)
    12  header_length                   u32 (64)
    16  sequence                        i64  the last sequence applied to the state
    24  timestamp_ns                    i64  that message's sequencing time
    32  meta_length                     u32  bytes of the JSON that follows the header
    36  reserved                        u32  0
    40  state_length                    u64  bytes of the state that follow the JSON
    48  reserved                        16 bytes, 0
    64  meta: canonical JSON (sorted keys, no spaces): machine, digest, schema_versions,
        pending_activations
    ..  state: the machine's snapshot() bytes
    ..  crc32c of every byte before it   u32

File name: ``<sequence, 20 digits>.snapshot``; written to a temporary name, fsynced, then renamed.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import struct
from typing import Any, Optional

from . import errors
from .journal import crc32c
from .statemachine import StateMachine

MAGIC = b"PYSEQSNP"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sIIqqIIQ16x")
SUFFIX = ".snapshot"
_NAME = re.compile(r"^(\d{20})\.snapshot$")
assert HEADER.size == 64


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A snapshot file's contents, checked."""

    path: str
    sequence: int
    timestamp_ns: int
    machine: str
    digest: str
    schema_versions: dict[int, int]
    pending_activations: list[tuple[int, int, int]]  # (at_sequence, message_type, schema_version)
    state: bytes


def snapshot_name(sequence: int) -> str:
    return f"{sequence:020d}{SUFFIX}"


def encode(machine: StateMachine, sequence: int, timestamp_ns: int,
           pending_activations: list[tuple[int, int, int]]) -> bytes:
    """The bytes of a snapshot of ``machine`` as of ``sequence``."""
    state = machine.snapshot()
    meta = json.dumps({"machine": machine.name, "digest": machine.digest(),
                       "schema_versions": {str(k): v for k, v in sorted(machine.schema_versions.items())},
                       "pending_activations": [list(a) for a in sorted(pending_activations)]},
                      sort_keys=True, separators=(",", ":")).encode()
    body = HEADER.pack(MAGIC, FORMAT_VERSION, HEADER.size, sequence, timestamp_ns, len(meta), 0, len(state)) + \
        meta + state
    return body + struct.pack("<I", crc32c(body))


def write(directory: str, machine: StateMachine, sequence: int, timestamp_ns: int,
          pending_activations: list[tuple[int, int, int]]) -> str:
    """Write the snapshot file atomically; its path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, snapshot_name(sequence))
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(encode(machine, sequence, timestamp_ns, pending_activations))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def read(path: str) -> Snapshot:
    """Read and check a snapshot file (:class:`SnapshotError` naming what is wrong)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise errors.SnapshotError(f"snapshot {path!r}: cannot read it: {e}") from None

    def bad(reason: str) -> errors.SnapshotError:
        return errors.SnapshotError(f"snapshot {path!r} refused: {reason}")

    if len(data) < HEADER.size + 4:
        raise bad(f"{len(data)} bytes, shorter than a snapshot header")
    magic, version, header_length, sequence, timestamp_ns, meta_length, _, state_length = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise bad("not a pyseq snapshot (bad magic)")
    if version != FORMAT_VERSION or header_length != HEADER.size:
        raise bad(f"format version {version}; this pyseq reads version {FORMAT_VERSION}")
    if len(data) != HEADER.size + meta_length + state_length + 4:
        raise bad(f"{len(data)} bytes where its header says {HEADER.size + meta_length + state_length + 4}: truncated "
                  f"or extended")
    (crc,) = struct.unpack_from("<I", data, len(data) - 4)
    if crc32c(data[:-4]) != crc:
        raise bad("checksum mismatch (corrupt)")
    try:
        meta = json.loads(data[HEADER.size:HEADER.size + meta_length])
        schema_versions = {int(k): int(v) for k, v in meta["schema_versions"].items()}
        pending = [(int(a), int(t), int(v)) for a, t, v in meta["pending_activations"]]
        machine, digest = str(meta["machine"]), str(meta["digest"])
    except (ValueError, KeyError, TypeError) as e:
        raise bad(f"unreadable metadata: {e}") from None
    m = _NAME.match(os.path.basename(path))
    if m is not None and int(m.group(1)) != sequence:
        raise bad(f"its header says sequence {sequence}, its name {int(m.group(1))}")
    state = data[HEADER.size + meta_length:len(data) - 4]
    return Snapshot(path, sequence, timestamp_ns, machine, digest, schema_versions, pending, state)


def restore(snap: Snapshot, machine: StateMachine) -> None:
    """Load ``snap`` into ``machine``; refuse a snapshot of another machine, or one whose restored
    state does not have the recorded digest."""
    if snap.machine != machine.name:
        raise errors.SnapshotError(f"snapshot {snap.path!r} refused: it is of state machine {snap.machine!r}, "
                                   f"not {machine.name!r}")
    try:
        machine.restore(snap.state)
    except Exception as e:  # a restore() that cannot parse the state
        raise errors.SnapshotError(f"snapshot {snap.path!r} refused: {machine.name} cannot restore its state: "
                                   f"{type(e).__name__}: {e}") from None
    machine.schema_versions = dict(snap.schema_versions)
    digest = machine.digest()
    if digest != snap.digest:
        raise errors.SnapshotError(f"snapshot {snap.path!r} refused: the restored state's digest {digest[:16]}… is "
                                   f"not the recorded {snap.digest[:16]}… (another implementation or version?)")


def latest(directory: str, before: Optional[int] = None) -> Optional[str]:
    """The path of the newest snapshot in ``directory`` (at or before sequence ``before``), or None."""
    if not os.path.isdir(directory):
        return None
    found = sorted(int(m.group(1)) for m in map(_NAME.match, os.listdir(directory)) if m)
    if before is not None:
        found = [s for s in found if s <= before]
    return os.path.join(directory, snapshot_name(found[-1])) if found else None


def describe(snap: Snapshot) -> dict[str, Any]:
    return {"path": snap.path, "sequence": snap.sequence, "machine": snap.machine, "digest": snap.digest,
            "schema_versions": snap.schema_versions, "state_bytes": len(snap.state)}
