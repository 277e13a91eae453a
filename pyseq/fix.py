"""Minimal FIX 4.4: what a market-data gateway sends and what its clients send it.

No dependency: messages are built from (tag, value) pairs and framed here::

    8=FIX.4.4|9=<BodyLength>|35=<MsgType>|49=<SenderCompID>|56=<TargetCompID>|34=<MsgSeqNum>|52=<SendingTime>|
    <body>|10=<CheckSum>|

(``|`` is SOH, 0x01.)  BodyLength counts the bytes from 35= up to and including the SOH before 10=;
CheckSum is the sum of every byte before 10=, modulo 256, as three digits.

A gateway sends one body to many sessions, each with its own header (TargetCompID, MsgSeqNum): a
:class:`Body` is encoded once, with its byte sum, and :func:`frame` adds a session's header and
trailer around it.  :class:`Parser` reads what a client sends (Logon, Heartbeat, TestRequest,
MarketDataRequest, Logout): it checks BeginString, BodyLength and CheckSum and refuses a message
larger than ``max_length``.

Market data (the gateway's): MarketDataSnapshotFullRefresh (W) carries one instrument's whole book,
MarketDataIncrementalRefresh (X) the level changes, each entry with its MDUpdateAction (279: 0 new,
1 change, 2 delete), MDEntryType (269: 0 bid, 1 offer), Symbol (55), MDEntryPx (270), MDEntrySize
(271).  Both carry the user-defined tag 5500 (SEQUENCE), the pyseq sequence the data is at: a W
shows the book after that sequence, an X brings it there.  Prices are written by :func:`format_price`:
plain decimals, no exponent, no float noise.
"""
from __future__ import annotations

import datetime
import time
from decimal import ROUND_HALF_EVEN, Context, Decimal, InvalidOperation
from typing import Any, Iterable, Iterator, NamedTuple, Optional, Union

SOH = b"\x01"
BEGIN_STRING = "FIX.4.4"
_BEGIN = b"8=FIX.4.4\x01"

# MsgType (35)
HEARTBEAT = "0"
TEST_REQUEST = "1"
REJECT = "3"
LOGOUT = "5"
LOGON = "A"
MARKET_DATA_REQUEST = "V"
MARKET_DATA_SNAPSHOT = "W"
MARKET_DATA_INCREMENTAL = "X"

# tags
BEGIN_STRING_TAG = 8
BODY_LENGTH = 9
CHECKSUM = 10
MSG_SEQ_NUM = 34
MSG_TYPE = 35
REF_SEQ_NUM = 45
SENDER_COMP_ID = 49
SENDING_TIME = 52
SYMBOL = 55
TARGET_COMP_ID = 56
TEXT = 58
ENCRYPT_METHOD = 98
HEART_BT_INT = 108
TEST_REQ_ID = 112
RESET_SEQ_NUM_FLAG = 141
NO_RELATED_SYM = 146
MD_REQ_ID = 262
SUBSCRIPTION_REQUEST_TYPE = 263
MARKET_DEPTH = 264
NO_MD_ENTRY_TYPES = 267
NO_MD_ENTRIES = 268
MD_ENTRY_TYPE = 269
MD_ENTRY_PX = 270
MD_ENTRY_SIZE = 271
MD_UPDATE_ACTION = 279
SEQUENCE = 5500  # user-defined: the pyseq sequence the market data is at

BID = "0"
OFFER = "1"

# SubscriptionRequestType (263)
SNAPSHOT_ONLY = "0"
SNAPSHOT_AND_UPDATES = "1"
UNSUBSCRIBE = "2"

MAX_LENGTH = 65536

Value = Union[str, int, float, Decimal, bytes]


class FixError(ValueError):
    """A message that is not well-formed FIX 4.4 (the session should end)."""


# ---- values ------------------------------------------------------------------------------------


_PRICE_CONTEXT = Context(prec=40)


def format_price(value: Any, decimals: int = 8) -> str:
    """A price as FIX text: a plain decimal, rounded to ``decimals`` places (half even), without
    exponent or trailing zeros: 0.1 + 0.2 -> "0.3", 1e-05 -> "0.00001", 100.0 -> "100"."""
    if isinstance(value, float):
        d = Decimal(repr(value))  # the shortest text that reads back as this float
    else:
        try:
            d = Decimal(str(value) if not isinstance(value, Decimal) else value)
        except InvalidOperation:
            raise FixError(f"{value!r} is not a price") from None
    if not d.is_finite():
        raise FixError(f"{value!r} is not a finite price")
    try:
        d = d.quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_EVEN, context=_PRICE_CONTEXT)
    except InvalidOperation:
        raise FixError(f"{value!r} is too large a price") from None
    text = format(d, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def utc_timestamp(t: Optional[float] = None) -> str:
    """UTCTimestamp with milliseconds: ``YYYYMMDD-HH:MM:SS.sss``."""
    now = time.time() if t is None else t
    dt = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
    return f"{dt:%Y%m%d-%H:%M:%S}.{dt.microsecond // 1000:03d}"


def _value(value: Value) -> bytes:
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, bool):
        data = b"Y" if value else b"N"
    elif isinstance(value, (float, Decimal)):
        data = format_price(value).encode()
    else:
        data = str(value).encode()
    if SOH in data:
        raise FixError(f"a FIX value cannot hold SOH: {data!r}")
    return data


def checksum(data: bytes) -> str:
    """FIX CheckSum of ``data`` (every byte before 10=): the byte sum modulo 256, three digits."""
    return f"{sum(data) % 256:03d}"


# ---- building ----------------------------------------------------------------------------------


class Body(NamedTuple):
    """An encoded message body (every field after SendingTime), shareable between sessions."""

    msg_type: str
    data: bytes
    byte_sum: int

    @classmethod
    def of(cls, msg_type: str, fields: Iterable[tuple[int, Value]] = ()) -> "Body":
        data = b"".join(b"%d=%s\x01" % (tag, _value(value)) for tag, value in fields)
        return cls(msg_type, data, sum(data))

    def __len__(self) -> int:
        return len(self.data)


def frame(body: Body, sender: str, target: str, seq_num: int, sending_time: Optional[str] = None) -> bytes:
    """The whole message: BeginString, BodyLength, the header, ``body``, CheckSum."""
    header = b"35=%s\x0149=%s\x0156=%s\x0134=%d\x0152=%s\x01" % (
        body.msg_type.encode(), sender.encode(), target.encode(), seq_num,
        (sending_time or utc_timestamp()).encode())
    prefix = b"8=FIX.4.4\x019=%d\x01" % (len(header) + len(body.data))
    total = (sum(prefix) + sum(header) + body.byte_sum) % 256
    return b"%s%s%s10=%03d\x01" % (prefix, header, body.data, total)


def encode(msg_type: str, fields: Iterable[tuple[int, Value]], *, sender: str, target: str, seq_num: int,
           sending_time: Optional[str] = None) -> bytes:
    """One message from its type and body fields."""
    return frame(Body.of(msg_type, fields), sender, target, seq_num, sending_time)


def logon(heartbeat_interval: int, *, reset: bool = False) -> Body:
    fields: list[tuple[int, Value]] = [(ENCRYPT_METHOD, 0), (HEART_BT_INT, heartbeat_interval)]
    if reset:
        fields.append((RESET_SEQ_NUM_FLAG, "Y"))
    return Body.of(LOGON, fields)


def heartbeat(test_req_id: Optional[str] = None) -> Body:
    return Body.of(HEARTBEAT, [(TEST_REQ_ID, test_req_id)] if test_req_id is not None else [])


def test_request(test_req_id: str) -> Body:
    return Body.of(TEST_REQUEST, [(TEST_REQ_ID, test_req_id)])


def logout(text: str = "") -> Body:
    return Body.of(LOGOUT, [(TEXT, text)] if text else [])


def reject(ref_seq_num: int, text: str) -> Body:
    return Body.of(REJECT, [(REF_SEQ_NUM, ref_seq_num), (TEXT, text)])


def market_data_request(md_req_id: str, symbols: Iterable[str] = (), *,
                        subscription: str = SNAPSHOT_AND_UPDATES, depth: int = 0) -> Body:
    """What a client sends to ask for market data (no symbols: every instrument)."""
    symbols = list(symbols)
    fields: list[tuple[int, Value]] = [(MD_REQ_ID, md_req_id), (SUBSCRIPTION_REQUEST_TYPE, subscription),
                                       (MARKET_DEPTH, depth), (NO_MD_ENTRY_TYPES, 2), (MD_ENTRY_TYPE, BID),
                                       (MD_ENTRY_TYPE, OFFER), (NO_RELATED_SYM, len(symbols))]
    fields += [(SYMBOL, s) for s in symbols]
    return Body.of(MARKET_DATA_REQUEST, fields)


def snapshot_full_refresh(symbol: str, bids: Iterable[tuple[str, int]], offers: Iterable[tuple[str, int]], *,
                          sequence: Optional[int] = None, md_req_id: Optional[str] = None) -> Body:
    """35=W: one instrument's whole book; ``bids``/``offers`` are (price text, size), best first."""
    entries = [(BID, p, q) for p, q in bids] + [(OFFER, p, q) for p, q in offers]
    parts = []
    if md_req_id is not None:
        parts.append(b"262=%s\x01" % _value(md_req_id))
    parts.append(b"55=%s\x01" % _value(symbol))
    if sequence is not None:
        parts.append(b"5500=%d\x01" % sequence)
    parts.append(b"268=%d\x01" % len(entries))
    parts += [b"269=%s\x01270=%s\x01271=%d\x01" % (t.encode(), p.encode(), q) for t, p, q in entries]
    data = b"".join(parts)
    return Body(MARKET_DATA_SNAPSHOT, data, sum(data))


class Entry(NamedTuple):
    """One entry of an incremental refresh."""

    action: int       # MDUpdateAction: 0 new, 1 change, 2 delete
    entry_type: str   # BID or OFFER
    symbol: str
    price: str        # price text
    size: int         # not sent with a delete


def incremental_refresh(entries: Iterable[Entry], *, sequence: Optional[int] = None,
                        md_req_id: Optional[str] = None) -> Body:
    """35=X: level changes, in the order they happened."""
    entries = list(entries)
    parts = []
    if md_req_id is not None:
        parts.append(b"262=%s\x01" % _value(md_req_id))
    if sequence is not None:
        parts.append(b"5500=%d\x01" % sequence)
    parts.append(b"268=%d\x01" % len(entries))
    for e in entries:
        if e.action == 2:
            parts.append(b"279=2\x01269=%s\x0155=%s\x01270=%s\x01" % (
                e.entry_type.encode(), e.symbol.encode(), e.price.encode()))
        else:
            parts.append(b"279=%d\x01269=%s\x0155=%s\x01270=%s\x01271=%d\x01" % (
                e.action, e.entry_type.encode(), e.symbol.encode(), e.price.encode(), e.size))
    data = b"".join(parts)
    return Body(MARKET_DATA_INCREMENTAL, data, sum(data))


# ---- parsing -----------------------------------------------------------------------------------


class FixMessage(NamedTuple):
    """A parsed message: its fields in order (tag, value text), and the raw bytes."""

    fields: list[tuple[int, str]]
    raw: bytes

    @property
    def msg_type(self) -> str:
        return str(self.get(MSG_TYPE, ""))

    @property
    def seq_num(self) -> int:
        return int(self.get(MSG_SEQ_NUM, "0"))

    def get(self, tag: int, default: Any = None) -> Any:
        for t, v in self.fields:
            if t == tag:
                return v
        return default

    def get_all(self, tag: int) -> list[str]:
        return [v for t, v in self.fields if t == tag]

    def __contains__(self, tag: object) -> bool:
        return any(t == tag for t, _ in self.fields)


def parse_fields(data: bytes) -> list[tuple[int, str]]:
    """``tag=value`` SOH-terminated fields as (tag, value) pairs."""
    if data and not data.endswith(SOH):
        raise FixError("the last field is not terminated by SOH")
    fields = []
    for part in data.split(SOH)[:-1]:
        tag, eq, value = part.partition(b"=")
        if not eq or not tag.isdigit():
            raise FixError(f"not a tag=value field: {part[:40]!r}")
        try:
            fields.append((int(tag), value.decode()))
        except UnicodeDecodeError:
            raise FixError(f"field {int(tag)} is not UTF-8") from None
    return fields


class Parser:
    """Splits a byte stream into checked messages: ``feed(data)`` yields each complete one."""

    def __init__(self, max_length: int = MAX_LENGTH) -> None:
        self.max_length = max_length
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[FixMessage]:
        self._buf += data
        while True:
            msg = self._next()
            if msg is None:
                return
            yield msg

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def _next(self) -> Optional[FixMessage]:
        buf = self._buf
        if len(buf) < len(_BEGIN):
            if buf and not _BEGIN.startswith(bytes(buf)):
                raise FixError(f"a message must start with 8=FIX.4.4, got {bytes(buf)!r}")
            return None
        if not buf.startswith(_BEGIN):
            raise FixError(f"a message must start with 8=FIX.4.4, got {bytes(buf[:20])!r}")
        end_len = buf.find(SOH, len(_BEGIN))
        if end_len < 0:
            if len(buf) > len(_BEGIN) + 12:
                raise FixError("BodyLength (9) is missing or too long")
            return None
        length_field = bytes(buf[len(_BEGIN):end_len])
        if not length_field.startswith(b"9=") or not length_field[2:].isdigit():
            raise FixError(f"the second field must be BodyLength (9), got {length_field[:20]!r}")
        body_length = int(length_field[2:])
        body_start = end_len + 1
        total = body_start + body_length + 7  # 10=NNN SOH
        if total > self.max_length:
            raise FixError(f"a message of {total} bytes is larger than {self.max_length}")
        if len(buf) < total:
            return None
        trailer = bytes(buf[body_start + body_length:total])
        if not (trailer.startswith(b"10=") and trailer.endswith(SOH) and trailer[3:6].isdigit()):
            raise FixError(f"BodyLength {body_length} does not end at CheckSum (10): found {trailer!r}")
        raw = bytes(buf[:total])
        expected = checksum(raw[:body_start + body_length])
        if trailer[3:6].decode() != expected:
            raise FixError(f"CheckSum {trailer[3:6].decode()} is wrong: the bytes sum to {expected}")
        del buf[:total]
        fields = parse_fields(raw[body_start:body_start + body_length])
        if not fields or fields[0][0] != MSG_TYPE:
            raise FixError("the third field must be MsgType (35)")
        return FixMessage([(BEGIN_STRING_TAG, BEGIN_STRING), (BODY_LENGTH, str(body_length))] + fields
                          + [(CHECKSUM, trailer[3:6].decode())], raw)


def parse(raw: bytes) -> FixMessage:
    """One whole message (checked like :class:`Parser` does)."""
    parser = Parser(max_length=max(MAX_LENGTH, len(raw)))
    messages = list(parser.feed(raw))
    if len(messages) != 1 or parser.buffered:
        raise FixError(f"expected exactly one whole message in {len(raw)} bytes")
    return messages[0]
