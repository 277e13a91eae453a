"""Order flow and the price-level book it builds, as a replicated state machine.

The Retail and Institutional OMS submit orders; the Smart Order Router routes them and reports fills;
every one of those is a sequenced message, so every process that runs an :class:`OrderBook` holds the
same book at the same sequence.  The market-data gateway (:mod:`pyseq.gateway`) is one of them: it
serves the book to FIX clients, snapshot first, then the level changes each message causes.

Messages (message types 0x0201..0x0205, after reference data's 0x0101..0x0104)::

    NewOrder       order_id, symbol, side (1 buy, 2 sell), price, qty, account     an OMS accepted it
    CancelOrder    order_id, account                                               its rest is withdrawn
    OrderRejected  order_id, reason (REASON_*), text                               the OMS/SOR/venue said no
    Route          order_id, venue, qty                                            the SOR sent it to a venue
    Fill           order_id, price, qty, venue, liquidity (1 added, 2 removed)    part or all of it traded

Theory of operation
-------------------
The book holds the *open* orders (accepted, not yet fully filled, cancelled or rejected) and, per
instrument and side, their quantities summed by price: the levels.  It does not match orders (the
venues do, and report it as fills); a crossed book is possible and is shown as it is.

- **Prices are integers.**  A price is kept as a whole number of ``1 / PRICE_SCALE`` units (10^-8),
  ``round(price * PRICE_SCALE)``: the same in every replica, and 0.1 + 0.2 and 0.3 are one level.
  :func:`price_text` writes a level's price in decimal, exactly (``"100.07"``, never
  ``"100.07000000000001"``).
- **Each message changes at most one level.**  A NewOrder adds its quantity to its level (which
  appears if it was not there), a Fill takes the filled quantity off, a CancelOrder or an
  OrderRejected takes the rest off; a level whose quantity reaches 0 disappears.  ``apply`` returns
  those changes as :class:`LevelChange` (symbol, side, price, new total quantity, action NEW, CHANGE
  or DELETE: FIX's MDUpdateAction values), keeps them in ``last_changes`` and passes them to
  ``on_change(seq, changes)``: replaying every change from an empty book rebuilds the book, which is
  what a FIX client of the gateway does.
- **Errors are state.**  A message that does not fit the book (a duplicate open order id, an unknown
  order, a fill larger than what is left, a price that is not a positive finite number, a side that
  is neither 1 nor 2, a payload that does not decode) changes nothing but the reject count and the
  last reject (sequence, code), the same in every replica.  An OrderRejected for an order that is not
  open (the OMS refused it before it was ever entered) is only counted.
- **Instruments are remembered.**  A symbol is part of the book from its first accepted order on,
  even when both its sides are empty (the gateway sends an empty snapshot for it).

The snapshot (:meth:`OrderBook.snapshot`) holds the counters, the symbols and the open orders, each
sorted; the levels are derived from the orders, so equal snapshots mean equal books.
"""
from __future__ import annotations

import dataclasses
import math
import struct
from typing import Annotated, Callable, NamedTuple, Optional

from . import errors
from .message import Message
from .schema import Record, f64, i64, string, u8, u16, u64
from .statemachine import StateMachine

NEW_ORDER = 0x0201
CANCEL_ORDER = 0x0202
ORDER_REJECTED = 0x0203
ROUTE = 0x0204
FILL = 0x0205
ORDER_TYPES = (NEW_ORDER, CANCEL_ORDER, ORDER_REJECTED, ROUTE, FILL)

BUY = 1
SELL = 2
SIDES = (BUY, SELL)

ADDED = 1     # Fill.liquidity: the order was resting (a maker)
REMOVED = 2   # it took liquidity (a taker)

# LevelChange.action: FIX MDUpdateAction (279)
NEW = 0
CHANGE = 1
DELETE = 2

PRICE_SCALE = 100_000_000  # a price is a whole number of 1e-8 units
MAX_PRICE_UNITS = (1 << 62)  # about 4.6e10 in price: beyond it a price is rejected

# OrderRejected.reason: why an OMS, a router or a venue refused an order
REASON_UNKNOWN_INSTRUMENT = 1
REASON_HALTED = 2
REASON_OFF_TICK = 3
REASON_BAD_QUANTITY = 4
REASON_NO_ROUTE = 5
REASON_VENUE = 6
REASON_OTHER = 99

# reject codes of the book (part of its state)
REJECT_DUPLICATE_ORDER = 1
REJECT_UNKNOWN_ORDER = 2
REJECT_INVALID = 3
REJECT_OVERFILL = 4
REJECT_UNDECODABLE = 5


class NewOrder(Record, msg_type=NEW_ORDER, version=1):
    order_id: Annotated[int, u64]
    symbol: Annotated[str, string(16)]
    side: Annotated[int, u8]  # BUY or SELL
    price: Annotated[float, f64]  # limit price
    qty: Annotated[int, i64]
    account: Annotated[str, string(16)] = ""  # the client or account it is for


class CancelOrder(Record, msg_type=CANCEL_ORDER, version=1):
    order_id: Annotated[int, u64]
    account: Annotated[str, string(16)] = ""


class OrderRejected(Record, msg_type=ORDER_REJECTED, version=1):
    order_id: Annotated[int, u64]
    reason: Annotated[int, u16]  # REASON_*
    text: Annotated[str, string(32)] = ""


class Route(Record, msg_type=ROUTE, version=1):
    order_id: Annotated[int, u64]
    venue: Annotated[str, string(8)]
    qty: Annotated[int, i64] = 0  # 0: all that is open


class Fill(Record, msg_type=FILL, version=1):
    order_id: Annotated[int, u64]
    price: Annotated[float, f64]  # the execution price
    qty: Annotated[int, i64]
    venue: Annotated[str, string(8)] = ""  # where it traded (the contra side's venue)
    liquidity: Annotated[int, u8] = ADDED  # ADDED or REMOVED


class LevelChange(NamedTuple):
    """One price level changed by one message: its new total quantity (0 for DELETE)."""

    symbol: str
    side: int        # BUY (bids) or SELL (offers)
    price: float     # units / PRICE_SCALE
    qty: int         # the level's new total quantity
    action: int      # NEW, CHANGE or DELETE (FIX MDUpdateAction)
    units: int       # the price in 1e-8 units (exact: price_text(units))


@dataclasses.dataclass(frozen=True)
class OpenOrder:
    order_id: int
    symbol: str
    side: int
    price: float
    qty: int         # what is left open
    account: str


def price_units(price: float) -> Optional[int]:
    """``price`` in whole 1e-8 units, or None if it is not a positive finite price the book holds."""
    if not (isinstance(price, float) and math.isfinite(price)) or price <= 0:
        return None
    scaled = price * PRICE_SCALE
    if not math.isfinite(scaled):
        return None
    units = round(scaled)
    return units if 0 < units < MAX_PRICE_UNITS else None


def price_text(units: int) -> str:
    """A price in 1e-8 units as an exact decimal string, no exponent, no trailing zeros: ``"100.07"``."""
    whole, frac = divmod(units, PRICE_SCALE)
    return f"{whole}.{frac:08d}".rstrip("0").rstrip(".") if frac else str(whole)


class _Order:
    __slots__ = ("order_id", "symbol", "side", "units", "qty", "account")

    def __init__(self, order_id: int, symbol: str, side: int, units: int, qty: int, account: str) -> None:
        self.order_id, self.symbol, self.side, self.units, self.qty, self.account = \
            order_id, symbol, side, units, qty, account


class _Book:
    """One instrument: per side, price units -> [total qty, order count]."""

    __slots__ = ("bids", "asks")

    def __init__(self) -> None:
        self.bids: dict[int, list[int]] = {}
        self.asks: dict[int, list[int]] = {}

    def side(self, side: int) -> dict[int, list[int]]:
        return self.bids if side == BUY else self.asks


# The canonical encoding (snapshot), little-endian.
_HEAD = struct.Struct("<8sIIQQQQQQQqH")  # magic, symbols, orders, accepted, cancelled, fills, filled qty, routes,
#                                         order rejects, rejected, last reject sequence, last reject code
_SYMBOL = struct.Struct("<16s")
_ORDER = struct.Struct("<Q16sBqq16s")    # order_id, symbol, side, price units, open qty, account
_MAGIC = b"ORDBOOK1"


def _text(raw: bytes) -> str:
    return raw.rstrip(b"\0").decode()


class OrderBook(StateMachine):
    """The price-level book of every instrument, from the sequenced order flow (see the module
    docstring).  ``on_change(seq, changes)`` is called after each message that changed levels."""

    name = "orderbook"

    def __init__(self, on_change: Optional[Callable[[int, list[LevelChange]], None]] = None) -> None:
        super().__init__()
        self.on_change = on_change
        self.last_changes: list[LevelChange] = []
        self._orders: dict[int, _Order] = {}
        self._books: dict[str, _Book] = {}
        self.accepted = 0       # NewOrders entered
        self.cancelled = 0      # CancelOrders applied
        self.fills = 0          # Fills applied
        self.filled_qty = 0     # their quantity
        self.routes = 0         # Routes seen
        self.order_rejects = 0  # OrderRejected messages seen
        self.rejected = 0       # messages that did not fit the book
        self.last_reject = (0, 0)  # (sequence, code)

    # ---- queries -------------------------------------------------------------------------------

    def symbols(self) -> list[str]:
        """Every instrument the book has held an order of, sorted by the UTF-8 bytes of the symbol."""
        return sorted(self._books, key=str.encode)

    def levels(self, symbol: str, side: int, depth: Optional[int] = None) -> list[tuple[float, int]]:
        """(price, total qty) of the best ``depth`` levels of a side (all: None), best first."""
        return [(units / PRICE_SCALE, qty) for units, qty, _ in self.level_units(symbol, side, depth)]

    def level_units(self, symbol: str, side: int, depth: Optional[int] = None) -> list[tuple[int, int, int]]:
        """(price units, total qty, order count) of the best ``depth`` levels of a side, best first."""
        book = self._books.get(symbol)
        if book is None:
            return []
        levels = book.side(side)
        prices = sorted(levels, reverse=side == BUY)
        if depth is not None:
            prices = prices[:depth]
        return [(p, levels[p][0], levels[p][1]) for p in prices]

    def best_bid(self, symbol: str) -> Optional[tuple[float, int]]:
        top = self.levels(symbol, BUY, 1)
        return top[0] if top else None

    def best_ask(self, symbol: str) -> Optional[tuple[float, int]]:
        top = self.levels(symbol, SELL, 1)
        return top[0] if top else None

    def order(self, order_id: int) -> Optional[OpenOrder]:
        o = self._orders.get(order_id)
        if o is None:
            return None
        return OpenOrder(o.order_id, o.symbol, o.side, o.units / PRICE_SCALE, o.qty, o.account)

    @property
    def open_orders(self) -> int:
        return len(self._orders)

    @property
    def messages_applied(self) -> int:
        """Order-flow messages applied so far (rejected ones included)."""
        return self.accepted + self.cancelled + self.fills + self.routes + self.order_rejects + self.rejected

    # ---- applying ------------------------------------------------------------------------------

    def apply(self, msg: Message) -> list[LevelChange]:  # type: ignore[override]
        """Apply one sequenced message; the level changes it caused (also in ``last_changes``)."""
        t = msg.msg_type
        changes: list[LevelChange] = []
        self.last_changes = changes
        if t not in ORDER_TYPES:
            return changes
        try:
            if t == NEW_ORDER:
                self._new(msg, NewOrder.decode(msg.payload), changes)
            elif t == CANCEL_ORDER:
                self._cancel(msg, CancelOrder.decode(msg.payload), changes)
            elif t == FILL:
                self._fill(msg, Fill.decode(msg.payload), changes)
            elif t == ORDER_REJECTED:
                self._order_rejected(OrderRejected.decode(msg.payload), changes)
            else:
                Route.decode(msg.payload)
                self.routes += 1
        except errors.SchemaError:
            self._reject(msg, REJECT_UNDECODABLE)
        if changes and self.on_change is not None:
            self.on_change(msg.seq, changes)
        return changes

    def _reject(self, msg: Message, code: int) -> None:
        self.rejected += 1
        self.last_reject = (msg.seq, code)

    def _level(self, o: _Order, delta: int, changes: list[LevelChange]) -> None:
        """Add ``delta`` (may be negative) to the level of ``o``; record the change."""
        book = self._books.get(o.symbol)
        if book is None:
            book = self._books[o.symbol] = _Book()
        levels = book.side(o.side)
        level = levels.get(o.units)
        if level is None:
            level = levels[o.units] = [delta, 1]
            action = NEW
        else:
            level[0] += delta
            level[1] += 1 if delta > 0 else 0
            action = CHANGE
        if delta < 0 and o.qty == 0:  # the order left the level
            level[1] -= 1
        if level[0] == 0:
            del levels[o.units]
            action = DELETE
        changes.append(LevelChange(o.symbol, o.side, o.units / PRICE_SCALE, level[0], action, o.units))

    def _new(self, msg: Message, n: NewOrder, changes: list[LevelChange]) -> None:
        if n.order_id in self._orders:
            return self._reject(msg, REJECT_DUPLICATE_ORDER)
        units = price_units(n.price)
        if not n.symbol or n.side not in SIDES or units is None or n.qty <= 0:
            return self._reject(msg, REJECT_INVALID)
        o = _Order(n.order_id, n.symbol, n.side, units, n.qty, n.account)
        self._orders[o.order_id] = o
        self.accepted += 1
        self._level(o, o.qty, changes)

    def _remove(self, o: _Order, changes: list[LevelChange]) -> None:
        rest, o.qty = o.qty, 0
        del self._orders[o.order_id]
        self._level(o, -rest, changes)

    def _cancel(self, msg: Message, c: CancelOrder, changes: list[LevelChange]) -> None:
        o = self._orders.get(c.order_id)
        if o is None:
            return self._reject(msg, REJECT_UNKNOWN_ORDER)
        self.cancelled += 1
        self._remove(o, changes)

    def _fill(self, msg: Message, f: Fill, changes: list[LevelChange]) -> None:
        o = self._orders.get(f.order_id)
        if o is None:
            return self._reject(msg, REJECT_UNKNOWN_ORDER)
        if f.qty <= 0 or price_units(f.price) is None:
            return self._reject(msg, REJECT_INVALID)
        if f.qty > o.qty:
            return self._reject(msg, REJECT_OVERFILL)
        self.fills += 1
        self.filled_qty += f.qty
        o.qty -= f.qty
        if o.qty == 0:
            del self._orders[o.order_id]
        self._level(o, -f.qty, changes)

    def _order_rejected(self, r: OrderRejected, changes: list[LevelChange]) -> None:
        self.order_rejects += 1
        o = self._orders.get(r.order_id)
        if o is not None:  # rejected after it was entered (by the router or a venue): it leaves the book
            self._remove(o, changes)

    # ---- snapshots -----------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The canonical encoding, little-endian: ``b"ORDBOOK1"``, u32 symbol count, u32 open order
        count, u64 accepted, cancelled, fills, filled quantity, routes, order rejects, rejected,
        i64 last reject sequence, u16 last reject code; then each symbol (16 bytes, NUL-padded),
        sorted by its UTF-8 bytes; then each open order sorted by order id: order_id u64, symbol
        (16 bytes), side u8, price i64 (1e-8 units), open quantity i64, account (16 bytes)."""
        symbols = self.symbols()
        parts = [_HEAD.pack(_MAGIC, len(symbols), len(self._orders), self.accepted, self.cancelled, self.fills,
                            self.filled_qty, self.routes, self.order_rejects, self.rejected, *self.last_reject)]
        parts += [_SYMBOL.pack(s.encode()) for s in symbols]
        for order_id in sorted(self._orders):
            o = self._orders[order_id]
            parts.append(_ORDER.pack(o.order_id, o.symbol.encode(), o.side, o.units, o.qty, o.account.encode()))
        return b"".join(parts)

    def restore(self, data: bytes) -> None:
        if len(data) < _HEAD.size or data[:8] != _MAGIC:
            raise errors.SnapshotError("not an order-book state (bad magic)")
        (_, n_symbols, n_orders, accepted, cancelled, fills, filled_qty, routes, order_rejects, rejected,
         reject_seq, reject_code) = _HEAD.unpack_from(data)
        if len(data) != _HEAD.size + n_symbols * _SYMBOL.size + n_orders * _ORDER.size:
            raise errors.SnapshotError(f"order-book state of {len(data)} bytes for {n_symbols} symbols and "
                                       f"{n_orders} orders")
        offset = _HEAD.size
        books: dict[str, _Book] = {}
        for _ in range(n_symbols):
            books[_text(_SYMBOL.unpack_from(data, offset)[0])] = _Book()
            offset += _SYMBOL.size
        orders: dict[int, _Order] = {}
        for _ in range(n_orders):
            order_id, symbol, side, units, qty, account = _ORDER.unpack_from(data, offset)
            offset += _ORDER.size
            o = _Order(order_id, _text(symbol), side, units, qty, _text(account))
            book = books.get(o.symbol)
            if book is None or side not in SIDES or qty <= 0 or not 0 < units < MAX_PRICE_UNITS \
                    or order_id in orders:
                raise errors.SnapshotError(f"order-book state: order {order_id} does not fit")
            orders[order_id] = o
            level = book.side(side).setdefault(units, [0, 0])
            level[0] += qty
            level[1] += 1
        self._orders, self._books = orders, books
        self.accepted, self.cancelled, self.fills, self.filled_qty = accepted, cancelled, fills, filled_qty
        self.routes, self.order_rejects, self.rejected = routes, order_rejects, rejected
        self.last_reject = (reject_seq, reject_code)
        self.last_changes = []
