"""Reference data as a replicated state machine: instruments, tick and lot sizes, trading status.

Every process that needs reference data (an OMS validating orders, a router) runs a
:class:`ReferenceData` in a :class:`pyseq.Replica`; an admin client changes it by submitting
sequenced messages, so every process sees every change at the same sequence::

    admin = pyseq.Client.connect("market", "admin")
    admin.submit(AddInstrument(symbol="AAPL", tick_size=0.01, lot_size=1, currency="USD"))
    admin.submit(Halt(symbol="AAPL", reason="news pending"))

Messages (message types 0x0101..0x0104)::

    AddInstrument     symbol, tick_size, lot_size, currency          (v2 appends max_order_qty)
    UpdateInstrument  symbol, tick_size (0: unchanged), lot_size (0: unchanged)
    Halt              symbol, reason
    Resume            symbol

A message that does not fit the state (an unknown or duplicate symbol, a tick size <= 0) is rejected,
the same way in every replica: it changes nothing but the reject count and the last reject, which
are part of the state (and of the digest).

The snapshot is canonical (documented in :meth:`ReferenceData.snapshot`), so an independent
implementation, in another language or by another team, reaches the same digest: the conformance
kit (``pyseq conformance``) checks exactly that.

Schema evolution: ``AddInstrument`` version 2 appends ``max_order_qty``.  A replica applies it only
once version 2 is in effect for the type (an :class:`pyseq.ActivateSchema` at an agreed sequence);
before that it reads every AddInstrument as version 1 (by its prefix), like a replica of an older
release, so both agree up to the switch.  ``ReferenceData(max_version=1)`` is that older release.
"""
from __future__ import annotations

import dataclasses
import math
import struct
from typing import Optional

from . import errors
from .message import Message
from .schema import Record, f64, i64, string
from .statemachine import StateMachine

ADD_INSTRUMENT = 0x0101
UPDATE_INSTRUMENT = 0x0102
HALT = 0x0103
RESUME = 0x0104

TRADING = 1
HALTED = 2

# reject codes (part of the state)
REJECT_DUPLICATE = 1
REJECT_UNKNOWN = 2
REJECT_INVALID = 3
REJECT_UNDECODABLE = 4


class AddInstrument(Record, msg_type=ADD_INSTRUMENT, version=1):
    symbol: string(16)  # type: ignore[valid-type]
    tick_size: f64  # type: ignore[valid-type]
    lot_size: i64 = 1  # type: ignore[valid-type]
    currency: string(3) = "USD"  # type: ignore[valid-type]


class AddInstrumentV2(Record, msg_type=ADD_INSTRUMENT, version=2):
    symbol: string(16)  # type: ignore[valid-type]
    tick_size: f64  # type: ignore[valid-type]
    lot_size: i64 = 1  # type: ignore[valid-type]
    currency: string(3) = "USD"  # type: ignore[valid-type]
    max_order_qty: i64 = 0  # type: ignore[valid-type]  # 0: no limit


class UpdateInstrument(Record, msg_type=UPDATE_INSTRUMENT, version=1):
    symbol: string(16)  # type: ignore[valid-type]
    tick_size: f64 = 0.0  # type: ignore[valid-type]
    lot_size: i64 = 0  # type: ignore[valid-type]


class Halt(Record, msg_type=HALT, version=1):
    symbol: string(16)  # type: ignore[valid-type]
    reason: string(32) = ""  # type: ignore[valid-type]


class Resume(Record, msg_type=RESUME, version=1):
    symbol: string(16)  # type: ignore[valid-type]


@dataclasses.dataclass(frozen=True)
class Instrument:
    symbol: str
    tick_size: float
    lot_size: int
    currency: str
    status: int = TRADING
    max_order_qty: int = 0
    halt_reason: str = ""
    updated_seq: int = 0
    updated_ns: int = 0

    @property
    def tradable(self) -> bool:
        return self.status == TRADING


class _Entry:
    """The mutable record of one instrument inside the machine (queries return Instrument copies)."""

    __slots__ = ("symbol", "tick_size", "lot_size", "currency", "status", "max_order_qty", "halt_reason",
                 "updated_seq", "updated_ns")

    def __init__(self, symbol: str, tick_size: float, lot_size: int, currency: str, status: int, max_order_qty: int,
                 halt_reason: str, updated_seq: int, updated_ns: int) -> None:
        self.symbol, self.tick_size, self.lot_size, self.currency = symbol, tick_size, lot_size, currency
        self.status, self.max_order_qty, self.halt_reason = status, max_order_qty, halt_reason
        self.updated_seq, self.updated_ns = updated_seq, updated_ns

    def frozen(self) -> Instrument:
        return Instrument(self.symbol, self.tick_size, self.lot_size, self.currency, self.status, self.max_order_qty,
                          self.halt_reason, self.updated_seq, self.updated_ns)


# The canonical encoding (snapshot): a header, then each instrument sorted by the UTF-8 bytes of its symbol.
_HEAD = struct.Struct("<8sIQqH")  # b"REFDATA1", instrument count, rejected, last reject sequence, code
_INSTRUMENT = struct.Struct("<16sdq3sBq32sqq")  # symbol, tick, lot, currency, status, max qty, halt reason,
#                                                  updated_seq, updated_ns
_MAGIC = b"REFDATA1"


def _text(raw: bytes) -> str:
    return raw.rstrip(b"\0").decode()


class ReferenceData(StateMachine):
    """The reference-data state machine (see the module docstring)."""

    name = "refdata"

    def __init__(self, max_version: int = 2) -> None:
        super().__init__()
        self.max_version = max_version
        self._instruments: dict[str, _Entry] = {}
        self.rejected = 0
        self.last_reject = (0, 0)  # (sequence, code)

    # ---- queries -------------------------------------------------------------------------------

    def instrument(self, symbol: str) -> Optional[Instrument]:
        entry = self._instruments.get(symbol)
        return entry.frozen() if entry is not None else None

    def instruments(self) -> list[Instrument]:
        """Every instrument, sorted by the UTF-8 bytes of its symbol."""
        return [self._instruments[s].frozen() for s in sorted(self._instruments, key=str.encode)]

    def __len__(self) -> int:
        return len(self._instruments)

    def is_tradable(self, symbol: str) -> bool:
        inst = self._instruments.get(symbol)
        return inst is not None and inst.status == TRADING

    def on_tick(self, symbol: str, price: float) -> bool:
        """True if ``price`` is a whole number of ticks of ``symbol`` (within 1e-9 of a tick)."""
        inst = self._instruments.get(symbol)
        if inst is None or not math.isfinite(price):
            return False
        quotient = price / inst.tick_size
        if not math.isfinite(quotient):
            return False
        ticks = round(quotient)
        return abs(price - ticks * inst.tick_size) <= inst.tick_size * 1e-9

    def validate_order(self, symbol: str, price: float, qty: int) -> Optional[str]:
        """None if an order may be sent, else why not (what an OMS checks before it accepts one)."""
        inst = self._instruments.get(symbol)
        if inst is None:
            return f"unknown instrument {symbol!r}"
        if inst.status != TRADING:
            return f"{symbol} is halted" + (f" ({inst.halt_reason})" if inst.halt_reason else "")
        if not price > 0 or not self.on_tick(symbol, price):
            return f"price {price} is not on {symbol}'s tick of {inst.tick_size}"
        if qty <= 0 or qty % inst.lot_size:
            return f"quantity {qty} is not a positive multiple of {symbol}'s lot of {inst.lot_size}"
        if inst.max_order_qty and qty > inst.max_order_qty:
            return f"quantity {qty} is above {symbol}'s maximum of {inst.max_order_qty}"
        return None

    # ---- applying ------------------------------------------------------------------------------

    def apply(self, msg: Message) -> None:
        t = msg.msg_type
        if t not in (ADD_INSTRUMENT, UPDATE_INSTRUMENT, HALT, RESUME):
            return
        try:
            if t == ADD_INSTRUMENT:
                v2 = self.max_version >= 2 and self.schema_versions.get(ADD_INSTRUMENT, 1) >= 2
                self._add(msg, AddInstrumentV2.decode(msg.payload) if v2 else AddInstrument.decode(msg.payload))
            elif t == UPDATE_INSTRUMENT:
                self._update(msg, UpdateInstrument.decode(msg.payload))
            elif t == HALT:
                h = Halt.decode(msg.payload)
                self._status(msg, h.symbol, HALTED, h.reason)
            else:
                self._status(msg, Resume.decode(msg.payload).symbol, TRADING, "")
        except errors.SchemaError:
            self._reject(msg, REJECT_UNDECODABLE)

    def _reject(self, msg: Message, code: int) -> None:
        self.rejected += 1
        self.last_reject = (msg.seq, code)

    def _add(self, msg: Message, a: "AddInstrument | AddInstrumentV2") -> None:
        if a.symbol in self._instruments:
            return self._reject(msg, REJECT_DUPLICATE)
        if not a.symbol or not (math.isfinite(a.tick_size) and a.tick_size > 0) or a.lot_size <= 0:
            return self._reject(msg, REJECT_INVALID)
        max_qty = getattr(a, "max_order_qty", 0)
        if max_qty < 0:
            return self._reject(msg, REJECT_INVALID)
        self._instruments[a.symbol] = _Entry(a.symbol, a.tick_size, a.lot_size, a.currency, TRADING, max_qty, "",
                                             msg.seq, msg.timestamp_ns)

    def _update(self, msg: Message, u: UpdateInstrument) -> None:
        inst = self._instruments.get(u.symbol)
        if inst is None:
            return self._reject(msg, REJECT_UNKNOWN)
        if not math.isfinite(u.tick_size) or u.tick_size < 0 or u.lot_size < 0:
            return self._reject(msg, REJECT_INVALID)
        if u.tick_size:
            inst.tick_size = u.tick_size
        if u.lot_size:
            inst.lot_size = u.lot_size
        inst.updated_seq, inst.updated_ns = msg.seq, msg.timestamp_ns

    def _status(self, msg: Message, symbol: str, status: int, reason: str) -> None:
        inst = self._instruments.get(symbol)
        if inst is None:
            return self._reject(msg, REJECT_UNKNOWN)
        inst.status, inst.halt_reason = status, reason
        inst.updated_seq, inst.updated_ns = msg.seq, msg.timestamp_ns

    # ---- snapshots -----------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The canonical encoding, little-endian: ``b"REFDATA1"``, u32 instrument count, u64 rejected,
        i64 last reject sequence, u16 last reject code; then per instrument, sorted by the UTF-8
        bytes of the symbol: symbol (16 bytes, NUL-padded), tick_size f64, lot_size i64, currency
        (3 bytes), status u8 (1 trading, 2 halted), max_order_qty i64, halt_reason (32 bytes),
        updated_seq i64, updated_ns i64 (the sequence and sequencing time of the last change)."""
        parts = [_HEAD.pack(_MAGIC, len(self._instruments), self.rejected, *self.last_reject)]
        for symbol in sorted(self._instruments, key=str.encode):
            inst = self._instruments[symbol]
            parts.append(_INSTRUMENT.pack(inst.symbol.encode(), inst.tick_size, inst.lot_size, inst.currency.encode(),
                                          inst.status, inst.max_order_qty, inst.halt_reason.encode(),
                                          inst.updated_seq, inst.updated_ns))
        return b"".join(parts)

    def restore(self, data: bytes) -> None:
        if len(data) < _HEAD.size or data[:8] != _MAGIC:
            raise errors.SnapshotError("not a reference-data state (bad magic)")
        _, count, rejected, reject_seq, reject_code = _HEAD.unpack_from(data)
        if len(data) != _HEAD.size + count * _INSTRUMENT.size:
            raise errors.SnapshotError(f"reference-data state of {len(data)} bytes for {count} instruments")
        instruments = {}
        for k in range(count):
            (symbol, tick, lot, currency, status, max_qty, reason, seq, ns) = _INSTRUMENT.unpack_from(
                data, _HEAD.size + k * _INSTRUMENT.size)
            inst = _Entry(_text(symbol), tick, lot, _text(currency), status, max_qty, _text(reason), seq, ns)
            instruments[inst.symbol] = inst
        self._instruments = instruments
        self.rejected = rejected
        self.last_reject = (reject_seq, reject_code)
