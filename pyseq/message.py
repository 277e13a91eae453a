"""Message: one sequenced message as a reader sees it, and the numpy dtype of a batch."""
from __future__ import annotations

import struct
from typing import Any, NamedTuple

import numpy as np

from ._native import lib

FRAME_LENGTH: int = lib.PYSEQ_FRAME_LENGTH
# The frame header of ring_layout.h: sequence, timestamp_ns, length, msg_type, schema_version, source, origin
FRAME = struct.Struct("<qqIHHII")
assert FRAME.size == FRAME_LENGTH


class Message(NamedTuple):
    """A sequenced message: the frame header fields and a copy of the payload bytes."""

    seq: int
    timestamp_ns: int
    msg_type: int
    schema_version: int
    source: int
    payload: bytes

    def decode(self) -> Any:
        """The payload decoded by the record class declared for ``msg_type`` (see pyseq.schema)."""
        from . import schema

        return schema.lookup(self.msg_type).decode(self.payload)


def batch_dtype(slot_size: int) -> np.dtype:
    """The numpy dtype of one slot: the frame header fields, then ``payload`` as bytes.

    ``read_batch`` copies whole slots into an array of this dtype, so its itemsize is the slot size
    and its field offsets are the frame offsets of ring_layout.h.
    """
    return np.dtype([
        ("seq", "<i8"), ("timestamp_ns", "<i8"), ("length", "<u4"), ("msg_type", "<u2"),
        ("schema_version", "<u2"), ("source", "<u4"), ("origin", "<u4"),
        ("payload", "u1", (slot_size - FRAME_LENGTH,)),
    ])


def batch_payloads(batch: np.ndarray, record_dtype: np.dtype) -> np.ndarray:
    """The payloads of a batch (all of one message type) as an array of ``record_dtype``."""
    size = record_dtype.itemsize
    raw = np.ascontiguousarray(batch["payload"][:, :size])
    return raw.view(record_dtype).reshape(len(batch))
