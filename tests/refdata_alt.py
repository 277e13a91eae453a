"""A second implementation of the reference-data state machine, written the way another team would
write it from the documentation alone: the message layouts of pyseq.refdata's module docstring and
record declarations, pyseq.schema's decoding rules (prefixes of older and newer versions), and the
canonical snapshot of ``ReferenceData.snapshot``'s docstring.  Nothing of pyseq.refdata is imported.

Its data structures are deliberately not the reference's: symbols are kept as their UTF-8 bytes, in
a list kept sorted with :mod:`bisect` beside a dict of plain tuples; payloads are cut by hand with its
own :class:`struct.Struct` codes; rejects are a list of (sequence, code) pairs.

``AltReferenceData`` must pass ``pyseq conformance check``; the subclasses at the end each carry one
bug a real implementation might have, for the kit to catch at the exact sequence.
"""
from __future__ import annotations

import bisect
import hashlib
import math
import struct
from typing import Any, Optional

# message types and layouts (little-endian, packed)
T_ADD, T_UPDATE, T_HALT, T_RESUME = 0x0101, 0x0102, 0x0103, 0x0104

# (struct code, size, has a default, default) per field, in order
ADD_V1 = [("symbol", "16s", None), ("tick", "d", None), ("lot", "q", 1), ("ccy", "3s", b"USD")]
ADD_V2 = ADD_V1 + [("max_qty", "q", 0)]
UPDATE = [("symbol", "16s", None), ("tick", "d", 0.0), ("lot", "q", 0)]
HALT = [("symbol", "16s", None), ("reason", "32s", b"")]
RESUME = [("symbol", "16s", None)]

TRADING, HALTED = 1, 2
DUPLICATE, UNKNOWN, INVALID, UNDECODABLE = 1, 2, 3, 4

HEADER = struct.Struct("<8sIQqH")
ROW = struct.Struct("<16sdq3sBq32sqq")


class Undecodable(Exception):
    pass


def decode(layout: list[tuple[str, str, Any]], payload: bytes) -> dict[str, Any]:
    """pyseq.schema's rules: a longer payload is read by its prefix; a shorter one must end at a
    field boundary and the fields it lacks must have defaults; strings are NUL-padded UTF-8."""
    sizes = [struct.calcsize("<" + code) for _, code, _ in layout]
    full = sum(sizes)
    n = len(payload)
    if n >= full:
        count = len(layout)
    else:
        bounds = [sum(sizes[:i]) for i in range(len(layout))]
        if n not in bounds:
            raise Undecodable(f"{n} bytes is not a field boundary")
        count = bounds.index(n)
        if any(default is None for _, _, default in layout[count:]):
            raise Undecodable("a field without a default is missing")
    out: dict[str, Any] = {}
    offset = 0
    for i, (name, code, default) in enumerate(layout):
        if i >= count:
            out[name] = default
            continue
        (value,) = struct.unpack_from("<" + code, payload, offset)
        offset += sizes[i]
        if isinstance(value, bytes):
            value = value.rstrip(b"\0")
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                raise Undecodable(f"{name} is not UTF-8") from None
        out[name] = value
    return out


class AltReferenceData:
    """Reference data, independently implemented (see the module docstring)."""

    name = "refdata"

    def __init__(self) -> None:
        self.schema_versions: dict[int, int] = {}
        self.keys: list[bytes] = []                  # sorted UTF-8 symbols
        self.rows: dict[bytes, tuple] = {}           # symbol -> (tick, lot, ccy, status, max, reason, seq, ns)
        self.rejects: list[tuple[int, int]] = []     # (sequence, code), every one

    # ---- applying ------------------------------------------------------------------------------

    def apply(self, msg: Any) -> None:
        handler = {T_ADD: self.on_add, T_UPDATE: self.on_update, T_HALT: self.on_halt,
                   T_RESUME: self.on_resume}.get(msg.msg_type)
        if handler is None:
            return
        try:
            handler(msg)
        except Undecodable:
            self.reject(msg, UNDECODABLE)

    def reject(self, msg: Any, code: int) -> None:
        self.rejects.append((msg.seq, code))

    def add_layout(self) -> list[tuple[str, str, Any]]:
        return ADD_V2 if self.schema_versions.get(T_ADD, 1) >= 2 else ADD_V1

    def on_add(self, msg: Any) -> None:
        f = decode(self.add_layout(), msg.payload)
        sym = f["symbol"]
        if sym in self.rows:
            return self.reject(msg, DUPLICATE)
        tick, lot, max_qty = f["tick"], f["lot"], f.get("max_qty", 0)
        if sym == b"" or not math.isfinite(tick) or tick <= 0 or lot <= 0 or max_qty < 0:
            return self.reject(msg, INVALID)
        bisect.insort(self.keys, sym)
        self.rows[sym] = (tick, lot, f["ccy"], TRADING, max_qty, b"", msg.seq, msg.timestamp_ns)

    def on_update(self, msg: Any) -> None:
        f = decode(UPDATE, msg.payload)
        row = self.rows.get(f["symbol"])
        if row is None:
            return self.reject(msg, UNKNOWN)
        tick, lot = f["tick"], f["lot"]
        if math.isnan(tick) or math.isinf(tick) or tick < 0 or lot < 0:
            return self.reject(msg, INVALID)
        new_tick = row[0] if tick == 0 else tick
        new_lot = row[1] if lot == 0 else lot
        self.rows[f["symbol"]] = (new_tick, new_lot) + row[2:6] + (msg.seq, msg.timestamp_ns)

    def set_status(self, msg: Any, sym: bytes, status: int, reason: bytes) -> None:
        row = self.rows.get(sym)
        if row is None:
            return self.reject(msg, UNKNOWN)
        self.rows[sym] = row[:3] + (status, row[4], reason, msg.seq, msg.timestamp_ns)

    def on_halt(self, msg: Any) -> None:
        f = decode(HALT, msg.payload)
        self.set_status(msg, f["symbol"], HALTED, f["reason"])

    def on_resume(self, msg: Any) -> None:
        f = decode(RESUME, msg.payload)
        self.set_status(msg, f["symbol"], TRADING, b"")

    # ---- state ---------------------------------------------------------------------------------

    def last_reject(self) -> tuple[int, int]:
        return self.rejects[-1] if self.rejects else (0, 0)

    def ordered_keys(self) -> list[bytes]:
        return self.keys

    def snapshot(self) -> bytes:
        out = bytearray(HEADER.pack(b"REFDATA1", len(self.keys), len(self.rejects), *self.last_reject()))
        for sym in self.ordered_keys():
            tick, lot, ccy, status, max_qty, reason, seq, ns = self.rows[sym]
            out += ROW.pack(sym, tick, lot, ccy, status, max_qty, reason, seq, ns)
        return bytes(out)

    def restore(self, data: bytes) -> None:
        magic, count, rejected, reject_seq, reject_code = HEADER.unpack_from(data)
        if magic != b"REFDATA1" or len(data) != HEADER.size + count * ROW.size:
            raise ValueError("not a REFDATA1 state")
        self.keys, self.rows = [], {}
        for i in range(count):
            sym, tick, lot, ccy, status, max_qty, reason, seq, ns = ROW.unpack_from(data, HEADER.size + i * ROW.size)
            sym = sym.rstrip(b"\0")
            self.keys.append(sym)
            self.rows[sym] = (tick, lot, ccy.rstrip(b"\0"), status, max_qty, reason.rstrip(b"\0"), seq, ns)
        self.keys.sort()
        # only the count and the last reject are state; the earlier ones are not kept in a snapshot
        self.rejects = [(0, 0)] * (rejected - 1) + [(reject_seq, reject_code)] if rejected else []

    def digest(self) -> str:
        return hashlib.sha256(self.snapshot()).hexdigest()

    # ---- queries (what an OMS asks) -------------------------------------------------------------

    def halt_reason(self, symbol: str) -> Optional[str]:
        row = self.rows.get(symbol.encode())
        return None if row is None else row[5].decode()


# ---- deliberately buggy variants ------------------------------------------------------------------

class ResumeKeepsReason(AltReferenceData):
    """Bug: Resume sets the status back to trading but leaves the halt reason."""

    def on_resume(self, msg: Any) -> None:
        f = decode(RESUME, msg.payload)
        row = self.rows.get(f["symbol"])
        if row is None:
            return self.reject(msg, UNKNOWN)
        self.rows[f["symbol"]] = row[:3] + (TRADING, row[4], row[5], msg.seq, msg.timestamp_ns)


class UndecodableNotCounted(AltReferenceData):
    """Bug: a payload that does not decode is ignored instead of rejected (the reject count is one
    short from the first such message on)."""

    def reject(self, msg: Any, code: int) -> None:
        if code != UNDECODABLE:
            super().reject(msg, code)


class Utf16Order(AltReferenceData):
    """Bug: instruments sorted as a JVM would sort strings (UTF-16 code units), not by UTF-8 bytes."""

    def ordered_keys(self) -> list[bytes]:
        return sorted(self.keys, key=lambda k: k.decode().encode("utf-16-be"))


class ForgetsRejectsOnRestore(AltReferenceData):
    """Bug: restore() reads the instruments but not the reject count (a late joiner differs)."""

    def restore(self, data: bytes) -> None:
        super().restore(data)
        self.rejects = []


class RaisesOnEmptyCurrency(AltReferenceData):
    """Bug: the implementation crashes on an instrument without a currency."""

    def on_add(self, msg: Any) -> None:
        f = decode(self.add_layout(), msg.payload)
        if f["ccy"] == b"" and f["symbol"] not in self.rows:
            raise KeyError("currency")
        super().on_add(msg)
