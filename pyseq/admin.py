"""Admin messages: sequenced commands every replica acts on at the same sequence.

Any client may submit them (``client.submit(pyseq.TakeSnapshot())``); the sequencer sequences them
like any other message, so every replica sees each at the same place in the stream.  Their message
types are in the system range (from :data:`pyseq.SYSTEM_FIRST`), beside CLIENT_JOINED,
CLIENT_LEFT and END_OF_STREAM.
"""
from __future__ import annotations

from .schema import Record, i64, raw, string, u16

TAKE_SNAPSHOT = 0xFF10
ACTIVATE_SCHEMA = 0xFF11
REPLICA_DIGEST = 0xFF12


class TakeSnapshot(Record, msg_type=TAKE_SNAPSHOT, version=1):
    """Every replica writes a snapshot of its state as of this message's sequence."""

    label: string(32) = ""  # type: ignore[valid-type]


class ActivateSchema(Record, msg_type=ACTIVATE_SCHEMA, version=1):
    """From sequence ``at_sequence`` on, messages of ``message_type`` are read as ``schema_version``:
    every replica switches at the same logical time, whatever its release."""

    message_type: u16  # type: ignore[valid-type]
    schema_version: u16  # type: ignore[valid-type]
    at_sequence: i64  # type: ignore[valid-type]


class ReplicaDigest(Record, msg_type=REPLICA_DIGEST, version=1):
    """A replica's state digest at ``sequence`` (published for a monitor to compare)."""

    replica: string(24)  # type: ignore[valid-type]
    machine: string(16)  # type: ignore[valid-type]
    sequence: i64  # type: ignore[valid-type]
    digest: raw(32)  # type: ignore[valid-type]  # (80 bytes: fits the default 128-byte slot)
