"""The market-data side: the order book state machine, FIX 4.4 encoding, and the gateway serving
real FIX clients.

- The book: random order/cancel/fill streams (hypothesis) give the book a naive recomputation from
  the open orders gives, and replaying the level changes it reports rebuilds it; snapshots restore
  it; equal streams give equal digests.
- FIX: BodyLength and CheckSum checked by an independent computation and by simplefix's parser.
- The gateway, in this process: heartbeats, TestRequest, Logout, a malformed message, a
  MarketDataRequest for one symbol.
- The real thing: a sequencer, an OMS client submitting orders, the gateway in a child process, and
  FIX clients in child processes using simplefix (two from the start, one that connects late, one
  that never reads and is disconnected); each checks every message and rebuilds the book, which must
  equal an OrderBook replica's.  And ``pyseq gateway`` as a command, building its book from the
  journal when the ring has moved on.

Every child is SIGKILLed and joined after its test; every wait has a deadline; every ring is removed.
"""
from __future__ import annotations

import collections
import json
import math
import random
import re
import select
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest
import simplefix  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

import pyseq
from childproc import SPAWN, Children, Deadline
from cliproc import ENV, command, read_until, stop
from pyseq import fix
from pyseq.gateway import MarketDataGateway
from pyseq.orders import (BUY, CHANGE, DELETE, NEW, PRICE_SCALE, SELL, CancelOrder, Fill, LevelChange, NewOrder,
                          OrderBook, OrderRejected, Route, price_text)

SYMBOLS = ["AAPL", "MSFT", "ES-Z5", "EURUSD", "VOD.L"]
TIMESTAMP = re.compile(rb"52=\d{8}-\d\d:\d\d:\d\d\.\d{3}\x01")


def message(seq: int, record: Any) -> pyseq.Message:
    return pyseq.Message(seq, seq * 1000, record.msg_type, record.version, 0, record.encode())


def apply_all(book: OrderBook, records: list[Any], first_seq: int = 1) -> list[tuple[int, LevelChange]]:
    changes = []
    for i, record in enumerate(records):
        seq = first_seq + i
        changes += [(seq, c) for c in book.apply(message(seq, record))]
    return changes


def levels_of(book: OrderBook) -> dict[str, dict[int, dict[str, int]]]:
    """{symbol: {side: {price text: qty}}} of the non-empty sides."""
    out: dict[str, dict[int, dict[str, int]]] = {}
    for symbol in book.symbols():
        for side in (BUY, SELL):
            levels = {price_text(u): q for u, q, _ in book.level_units(symbol, side)}
            if levels:
                out.setdefault(symbol, {})[side] = levels
    return out


# ---- the book ------------------------------------------------------------------------------------


def test_an_order_makes_a_level_fills_reduce_it_and_a_cancel_removes_the_rest() -> None:
    book = OrderBook()
    seen: list[tuple[int, list[LevelChange]]] = []
    book.on_change = lambda seq, changes: seen.append((seq, changes))
    changes = apply_all(book, [
        NewOrder(order_id=1, symbol="AAPL", side=BUY, price=187.01, qty=100, account="retail-7"),
        NewOrder(order_id=2, symbol="AAPL", side=BUY, price=187.01, qty=50),
        NewOrder(order_id=3, symbol="AAPL", side=SELL, price=187.05, qty=30),
        Route(order_id=1, venue="XNAS"),
        Fill(order_id=1, price=187.01, qty=40, venue="XNAS"),
        CancelOrder(order_id=1),
        Fill(order_id=2, price=187.01, qty=50),
        OrderRejected(order_id=3, reason=6, text="venue closed"),
    ])
    assert changes == [
        (1, LevelChange("AAPL", BUY, 187.01, 100, NEW, 18701000000)),
        (2, LevelChange("AAPL", BUY, 187.01, 150, CHANGE, 18701000000)),
        (3, LevelChange("AAPL", SELL, 187.05, 30, NEW, 18705000000)),
        (5, LevelChange("AAPL", BUY, 187.01, 110, CHANGE, 18701000000)),
        (6, LevelChange("AAPL", BUY, 187.01, 50, CHANGE, 18701000000)),
        (7, LevelChange("AAPL", BUY, 187.01, 0, DELETE, 18701000000)),
        (8, LevelChange("AAPL", SELL, 187.05, 0, DELETE, 18705000000)),
    ]
    assert [(seq, c) for seq, cs in seen for c in cs] == changes
    assert book.symbols() == ["AAPL"] and book.open_orders == 0 and book.best_bid("AAPL") is None
    assert (book.accepted, book.cancelled, book.fills, book.filled_qty, book.routes, book.order_rejects,
            book.rejected) == (3, 1, 2, 90, 1, 1, 0)


def test_levels_are_sorted_best_first_and_depth_limits_them() -> None:
    book = OrderBook()
    apply_all(book, [NewOrder(order_id=i, symbol="X", side=BUY if i % 2 else SELL, price=100 + i * 0.25, qty=i)
                     for i in range(1, 9)])
    assert book.levels("X", BUY) == [(101.75, 7), (101.25, 5), (100.75, 3), (100.25, 1)]
    assert book.levels("X", SELL, depth=2) == [(100.5, 2), (101.0, 4)]
    assert book.best_bid("X") == (101.75, 7) and book.best_ask("X") == (100.5, 2)  # crossed: shown as it is
    order = book.order(3)
    assert order is not None and (order.price, order.qty, order.side) == (100.75, 3, BUY)
    assert book.levels("Y", BUY) == [] and book.order(99) is None


def test_float_noise_in_prices_makes_no_extra_level_and_prices_print_exactly() -> None:
    book = OrderBook()
    apply_all(book, [NewOrder(order_id=1, symbol="X", side=BUY, price=0.1 + 0.2, qty=1),
                     NewOrder(order_id=2, symbol="X", side=BUY, price=0.3, qty=2),
                     NewOrder(order_id=3, symbol="X", side=SELL, price=100 + 7 * 0.01, qty=3)])
    assert book.level_units("X", BUY) == [(30_000_000, 3, 2)]
    assert [price_text(u) for u, _, _ in book.level_units("X", SELL)] == ["100.07"]
    assert [price_text(u) for u in (1, 100 * PRICE_SCALE, 12_345_678_900_000_000, 50_000_000)] == \
        ["0.00000001", "100", "123456789", "0.5"]


def test_messages_that_do_not_fit_the_book_are_rejected_as_state() -> None:
    book = OrderBook()
    ok = NewOrder(order_id=1, symbol="X", side=BUY, price=10.0, qty=5)
    bad = [ok,
           NewOrder(order_id=1, symbol="X", side=BUY, price=10.0, qty=5),     # duplicate open id
           NewOrder(order_id=2, symbol="X", side=3, price=10.0, qty=5),       # no such side
           NewOrder(order_id=3, symbol="X", side=BUY, price=math.nan, qty=5),
           NewOrder(order_id=4, symbol="X", side=BUY, price=-1.0, qty=5),
           NewOrder(order_id=5, symbol="X", side=BUY, price=1e300, qty=5),
           NewOrder(order_id=6, symbol="X", side=BUY, price=10.0, qty=0),
           NewOrder(order_id=7, symbol="", side=BUY, price=10.0, qty=1),
           CancelOrder(order_id=99),
           Fill(order_id=1, price=10.0, qty=6),                             # more than is open
           Fill(order_id=1, price=10.0, qty=0),
           Fill(order_id=42, price=10.0, qty=1)]
    changes = apply_all(book, bad)
    assert len(changes) == 1 and book.rejected == len(bad) - 1 and book.last_reject == (12, 2)
    book.apply(pyseq.Message(13, 0, NewOrder.msg_type, 1, 0, b"\x01\x02"))
    assert book.rejected == len(bad) and book.last_reject == (13, 5)
    assert book.levels("X", BUY) == [(10.0, 5)] and book.messages_applied == 13
    before = book.snapshot()
    book.apply(pyseq.Message(14, 0, 0x0101, 1, 0, b"not order flow"))
    assert book.snapshot() == before


def test_order_flow_message_types_sit_in_their_own_block() -> None:
    types = [NewOrder.msg_type, CancelOrder.msg_type, OrderRejected.msg_type, Route.msg_type, Fill.msg_type]
    assert types == list(range(0x0201, 0x0206))
    assert all(pyseq.schema.lookup(t).msg_type == t for t in types)
    assert max(r.size for r in (NewOrder, CancelOrder, OrderRejected, Route, Fill)) <= 128 - pyseq.FRAME_LENGTH


ORDER_IDS = st.integers(1, 12)
PRICES = st.sampled_from([99.99, 100.0, 100.01, 100 + 7 * 0.01, 100.07, 0.1 + 0.2, 0.3, 250.5, -1.0, 0.0,
                          math.nan, math.inf])
OPS = st.one_of(
    st.builds(NewOrder, order_id=ORDER_IDS, symbol=st.sampled_from(["A", "B", "C"]), side=st.integers(0, 3),
              price=PRICES, qty=st.integers(-1, 40)),
    st.builds(CancelOrder, order_id=ORDER_IDS),
    st.builds(Fill, order_id=ORDER_IDS, price=PRICES, qty=st.integers(-1, 45)),
    st.builds(OrderRejected, order_id=ORDER_IDS, reason=st.integers(1, 6)),
    st.builds(Route, order_id=ORDER_IDS, venue=st.sampled_from(["XNAS", "BATS"])),
)


def naive_levels(records: list[Any]) -> tuple[dict[str, dict[int, dict[str, int]]], int]:
    """The open orders by the rules, written plainly, summed by level; and the reject count."""
    open_orders: dict[int, list[Any]] = {}
    rejected = 0
    for r in records:
        if isinstance(r, NewOrder):
            good = (r.order_id not in open_orders and r.symbol and r.side in (1, 2) and r.qty > 0
                    and math.isfinite(r.price) and r.price > 0)
            if good:
                open_orders[r.order_id] = [r.symbol, r.side, round(r.price * PRICE_SCALE), r.qty]
            rejected += not good
        elif isinstance(r, CancelOrder):
            rejected += open_orders.pop(r.order_id, None) is None
        elif isinstance(r, Fill):
            o = open_orders.get(r.order_id)
            if o is None or not 0 < r.qty <= o[3] or not (math.isfinite(r.price) and r.price > 0):
                rejected += 1
                continue
            o[3] -= r.qty
            if o[3] == 0:
                del open_orders[r.order_id]
        elif isinstance(r, OrderRejected):
            open_orders.pop(r.order_id, None)
    levels: dict[str, dict[int, dict[str, int]]] = {}
    for symbol, side, units, qty in open_orders.values():
        side_levels = levels.setdefault(symbol, {}).setdefault(side, {})
        side_levels[price_text(units)] = side_levels.get(price_text(units), 0) + qty
    return levels, rejected


@settings(deadline=None, max_examples=300)
@given(st.lists(OPS, max_size=80))
def test_the_book_equals_a_naive_recomputation_and_its_changes_rebuild_it(records: list[Any]) -> None:
    book = OrderBook()
    changes = apply_all(book, records)
    expected, rejected = naive_levels(records)
    assert levels_of(book) == expected
    assert book.rejected == rejected and book.messages_applied == len(records)
    # a FIX client's view: the changes replayed from nothing, with the actions checked
    rebuilt: dict[str, dict[int, dict[str, int]]] = {}
    for _, c in changes:
        side = rebuilt.setdefault(c.symbol, {}).setdefault(c.side, {})
        price = price_text(c.units)
        assert (price in side) == (c.action != NEW)
        if c.action == DELETE:
            assert c.qty == 0
            del side[price]
        else:
            assert c.qty > 0
            side[price] = c.qty
    assert {s: {k: v for k, v in sides.items() if v} for s, sides in rebuilt.items()
            if any(sides.values())} == expected


@settings(deadline=None, max_examples=200)
@given(st.lists(OPS, max_size=60), st.data())
def test_a_book_restored_from_a_snapshot_continues_exactly_like_the_original(records: list[Any],
                                                                              data: Any) -> None:
    cut = data.draw(st.integers(0, len(records)))
    whole, first = OrderBook(), OrderBook()
    apply_all(whole, records)
    apply_all(first, records[:cut])
    restored = OrderBook()
    restored.restore(first.snapshot())
    assert restored.snapshot() == first.snapshot() and restored.digest() == first.digest()
    apply_all(restored, records[cut:], first_seq=cut + 1)
    assert restored.snapshot() == whole.snapshot() and restored.digest() == whole.digest()
    assert levels_of(restored) == levels_of(whole)
    again = OrderBook()
    apply_all(again, records)
    assert again.digest() == whole.digest()


def test_different_streams_give_different_digests_and_a_bad_snapshot_is_refused() -> None:
    a, b = OrderBook(), OrderBook()
    apply_all(a, [NewOrder(order_id=1, symbol="X", side=BUY, price=10.0, qty=5)])
    apply_all(b, [NewOrder(order_id=1, symbol="X", side=BUY, price=10.0, qty=6)])
    assert a.digest() != b.digest()
    for data in (b"", b"REFDATA1" + bytes(100), a.snapshot()[:-1], a.snapshot() + b"\0"):
        with pytest.raises(pyseq.SnapshotError):
            OrderBook().restore(data)


# ---- FIX -----------------------------------------------------------------------------------------


def independent_check(raw: bytes) -> None:
    """BodyLength and CheckSum recomputed from the bytes, without pyseq.fix."""
    head = re.match(rb"8=FIX\.4\.4\x019=(\d+)\x01", raw)
    assert head is not None, raw[:30]
    body = raw[head.end():-7]
    assert len(body) == int(head.group(1)), (len(body), head.group(1))
    assert raw[-7:] == b"10=%03d\x01" % (sum(raw[:-7]) % 256)
    assert body.startswith(b"35=")


def simplefix_parse(raw: bytes) -> simplefix.FixMessage:
    parser = simplefix.FixParser()
    parser.append_buffer(raw)
    m = parser.get_message()
    assert m is not None and parser.get_message() is None
    assert m.encode() == raw  # simplefix computes BodyLength and CheckSum itself
    return m


TEXT = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_", min_size=1, max_size=12)


@settings(deadline=None, max_examples=200)
@given(st.lists(st.tuples(st.integers(0, 2), st.sampled_from([fix.BID, fix.OFFER]), TEXT,
                          st.integers(1, 10 ** 12), st.integers(1, 10 ** 9)), max_size=20),
       TEXT, TEXT, st.integers(1, 2 ** 31), st.integers(0, 2 ** 40))
def test_body_length_and_checksum_are_right_for_snapshots_and_incrementals(
        entries: list[tuple[int, str, str, int, int]], sender: str, target: str, seq_num: int, seq: int) -> None:
    incremental = fix.incremental_refresh([fix.Entry(a, t, s, price_text(u), q) for a, t, s, u, q in entries],
                                          sequence=seq)
    snapshot = fix.snapshot_full_refresh(entries[0][2] if entries else "X",
                                         [(price_text(u), q) for _, t, _, u, q in entries if t == fix.BID],
                                         [(price_text(u), q) for _, t, _, u, q in entries if t == fix.OFFER],
                                         sequence=seq, md_req_id="r1")
    for body in (incremental, snapshot, fix.logon(30), fix.heartbeat("T1"), fix.logout("bye")):
        raw = fix.frame(body, sender, target, seq_num)
        independent_check(raw)
        m = simplefix_parse(raw)
        assert (m.get(35), m.get(49), m.get(56), m.get(34)) == (body.msg_type.encode(), sender.encode(),
                                                                 target.encode(), b"%d" % seq_num)
        assert TIMESTAMP.search(raw)
        assert fix.parse(raw).fields[2:-1] == [(int(t), v.decode()) for t, v in m.pairs[2:-1]]
    m = simplefix_parse(fix.frame(incremental, sender, target, seq_num))
    assert m.get(268) == b"%d" % len(entries) and m.get(5500) == b"%d" % seq
    actions = [int(v) for t, v in m.pairs if t == b"279"]
    assert actions == [a for a, *_ in entries]
    assert len([1 for t, _ in m.pairs if t == b"271"]) == sum(a != 2 for a, *_ in entries)


def test_a_message_simplefix_builds_is_parsed_and_a_broken_one_is_refused() -> None:
    m = simplefix.FixMessage()
    for tag, value in ((8, "FIX.4.4"), (35, "A"), (49, "CLIENT"), (56, "PYSEQ"), (34, 1), (98, 0), (108, 30)):
        m.append_pair(tag, value)
    m.append_utc_timestamp(52, header=True)
    raw = m.encode()
    parsed = list(fix.Parser().feed(raw))
    assert len(parsed) == 1 and parsed[0].msg_type == "A" and parsed[0].get(108) == "30"
    parser = fix.Parser()  # a byte at a time
    assert [x.raw for b in (raw * 3) for x in parser.feed(bytes([b]))] == [raw] * 3
    wrong_sum = raw[:-4] + b"%03d\x01" % ((int(raw[-4:-1]) + 1) % 256)
    wrong_length = raw.replace(b"9=", b"9=1", 1)
    for bad in (wrong_sum, wrong_length, b"8=FIX.4.2\x019=5\x01", b"garbage", raw[:-1] + b"|"):
        with pytest.raises(fix.FixError):
            list(fix.Parser().feed(bad + raw * 3))
    with pytest.raises(fix.FixError, match="larger than"):
        list(fix.Parser(max_length=64).feed(fix.encode("0", [(58, "x" * 100)], sender="a", target="b", seq_num=1)))


def test_prices_are_plain_decimals_without_float_noise() -> None:
    cases = {0.1 + 0.2: "0.3", 1e-05: "0.00001", 100.0: "100", 187.01: "187.01", -0.0: "0", 1e16:
             "10000000000000000", 2.675: "2.675", 0.123456789: "0.12345679", 3: "3", "1.50": "1.5"}
    for value, text in cases.items():
        assert fix.format_price(value) == text, value
    with pytest.raises(fix.FixError):
        fix.format_price(math.inf)


# ---- the gateway in this process -------------------------------------------------------------------


class RawClient:
    """A FIX client in this process: the gateway is stepped while it waits."""

    def __init__(self, gw: MarketDataGateway, name: str, heartbeat: int = 30) -> None:
        self.gw, self.name = gw, name
        self.sock = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
        self.sock.setblocking(False)
        self.parser = fix.Parser()
        self.seq = 0
        self.received: list[fix.FixMessage] = []
        self.expect = 1
        self.eof = False

    def send(self, body: fix.Body) -> None:
        self.seq += 1
        self.sock.sendall(fix.frame(body, self.name, "PYSEQ", self.seq))

    def send_raw(self, raw: bytes) -> None:
        self.sock.sendall(raw)

    def poll(self) -> None:
        self.gw.step(0.005)
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        if not data:
            self.eof = True
            return
        for m in self.parser.feed(data):
            independent_check(m.raw)
            assert m.seq_num == self.expect, (m.seq_num, self.expect)
            assert (m.get(49), m.get(56)) == ("PYSEQ", self.name)
            self.expect += 1
            self.received.append(m)

    def wait_for(self, msg_type: str, seconds: float = 5.0, **fields: str) -> fix.FixMessage:
        d = Deadline(seconds, f"{self.name}: a 35={msg_type} {fields}")
        start = 0
        while True:
            for i in range(start, len(self.received)):
                m = self.received[i]
                if m.msg_type == msg_type and all(m.get(int(t[1:])) == v for t, v in fields.items()):
                    del self.received[:i + 1]
                    return m
            start = len(self.received)
            assert not self.eof, f"{self.name}: connection closed while waiting for 35={msg_type}"
            d.check()
            self.poll()

    def wait_eof(self, seconds: float = 5.0) -> None:
        d = Deadline(seconds, f"{self.name}: the gateway to close the connection")
        while not self.eof:
            d.check()
            self.poll()

    def close(self) -> None:
        self.sock.close()


def settle(gw: MarketDataGateway) -> None:
    """Step the gateway until every connection has ended."""
    d = Deadline(5, "every connection to end")
    while gw.clients:
        d.check()
        gw.step(0.01)


@pytest.fixture
def gateway(ring_name: str) -> Iterator[MarketDataGateway]:
    gw = MarketDataGateway(ring_name, "127.0.0.1", 0, poll_interval=0.001)
    try:
        yield gw
    finally:
        gw.close()


def test_the_gateway_heartbeats_asks_a_silent_client_and_answers_test_requests_and_logouts(
        gateway: MarketDataGateway) -> None:
    c = RawClient(gateway, "HB")
    c.send(fix.logon(1))
    logon = c.wait_for("A")
    assert logon.get(108) == "1" and logon.seq_num == 1
    started = time.monotonic()
    c.wait_for("0", 3)  # a heartbeat after 1 s without a message
    assert time.monotonic() - started >= 0.8
    c.send(fix.test_request("PING-7"))
    c.wait_for("0", 2, t112="PING-7")
    test_request = c.wait_for("1", 4)  # silent for more than HeartBtInt: the gateway asks
    c.send(fix.heartbeat(test_request.get(112)))
    c.send(fix.Body.of("D", [(11, "order")]))  # not served here: a session-level Reject
    assert c.wait_for("3").get(45) == str(c.seq)
    c.send(fix.logout())
    c.wait_for("5")
    c.wait_eof()
    c.close()
    settle(gateway)
    stats = gateway.stats()
    assert stats["clients_served"] == 1 and stats["logouts"] == 1 and stats["heartbeats_sent"] >= 2
    assert stats["disconnects"] == 1 and stats["clients_connected"] == 0


def test_a_client_that_stops_answering_or_breaks_the_protocol_is_logged_out(gateway: MarketDataGateway) -> None:
    silent = RawClient(gateway, "SILENT")
    silent.send(fix.logon(1))
    silent.wait_for("A")
    silent.wait_for("1", 4)
    assert "no answer to TestRequest" in silent.wait_for("5", 4).get(58)
    silent.wait_eof()
    garbled = RawClient(gateway, "GARBLED")
    garbled.send(fix.logon(30))
    garbled.wait_for("A")
    raw = fix.frame(fix.heartbeat(), "GARBLED", "PYSEQ", 2)
    garbled.send_raw(raw[:-4] + b"000\x01" if not raw.endswith(b"10=000\x01") else raw[:-4] + b"001\x01")
    assert "CheckSum" in garbled.wait_for("5").get(58)
    garbled.wait_eof()
    no_logon = RawClient(gateway, "NOLOGON")
    no_logon.send(fix.heartbeat())
    no_logon.wait_eof()
    assert not [m for m in no_logon.received]
    for c in (silent, garbled, no_logon):
        c.close()
    settle(gateway)
    stats = gateway.stats()
    assert stats["timeouts"] == 1 and stats["protocol_errors"] == 2 and stats["clients_served"] == 2


@pytest.fixture
def oms(ring_name: str) -> Iterator[pyseq.Client]:
    """A sequencer on ring_name in a thread of this process, and a client of it."""
    import threading

    seq = pyseq.Sequencer(ring_name, capacity=1024)
    thread = threading.Thread(target=seq.run, daemon=True)
    thread.start()
    client = None
    try:
        client = pyseq.Client.connect(ring_name, "oms", timeout=10)
        yield client
    finally:
        if client is not None:
            client.close()
        seq.stop()
        thread.join(10)


def step_until(gw: MarketDataGateway, predicate: Any, what: str) -> None:
    d = Deadline(10, what)
    while not predicate():
        d.check()
        gw.step()


def test_a_market_data_request_gets_snapshots_and_narrows_the_stream_to_its_symbols(
        ring_name: str, oms: pyseq.Client) -> None:
    oms.submit(NewOrder(order_id=1, symbol="AAPL", side=BUY, price=187.01, qty=100))
    oms.submit(NewOrder(order_id=2, symbol="MSFT", side=SELL, price=410.5, qty=7))
    with MarketDataGateway(ring_name, "127.0.0.1", 0, poll_interval=0.001) as gw:
        step_until(gw, lambda: gw.book.open_orders == 2, "the gateway to apply two orders")
        c = RawClient(gw, "MDR")
        c.send(fix.logon(30))
        c.wait_for("A")
        w = [c.wait_for("W"), c.wait_for("W")]
        assert [(m.get(55), m.get(268)) for m in w] == [("AAPL", "1"), ("MSFT", "1")]
        assert w[0].get(270) == "187.01" and w[0].get(271) == "100" and w[1].get(269) == fix.OFFER
        c.send(fix.market_data_request("req-1", ["MSFT"]))
        requested = c.wait_for("W", t262="req-1")
        assert requested.get(55) == "MSFT" and int(requested.get(5500)) == gw.replica.last_applied
        oms.submit(NewOrder(order_id=3, symbol="AAPL", side=BUY, price=187.0, qty=1))
        oms.submit(Fill(order_id=2, price=410.5, qty=7))
        x = c.wait_for("X", t262="req-1")
        assert [(t, v) for t, v in x.fields if t in (279, 269, 55, 270, 271)] == \
            [(279, "2"), (269, "1"), (55, "MSFT"), (270, "410.5")]
        assert not [m for m in c.received if m.msg_type == "X"]  # nothing about AAPL
        c.send(fix.market_data_request("req-2", subscription=fix.UNSUBSCRIBE))
        # (taken before the next order is sequenced: under load the gateway could otherwise apply the
        # order before it reads the request)
        step_until(gw, lambda: not any(s.subscribed for s in gw._sessions.values()), "the unsubscribe")
        oms.submit(NewOrder(order_id=4, symbol="MSFT", side=SELL, price=411.0, qty=1))
        step_until(gw, lambda: gw.book.open_orders == 3, "the gateway to apply the last order")
        for _ in range(20):
            c.poll()
        assert not [m for m in c.received if m.msg_type == "X"]
        c.close()


def test_a_snapshot_larger_than_the_buffer_limit_does_not_make_a_client_slow(
        ring_name: str, oms: pyseq.Client) -> None:
    for i in range(1, 401):
        oms.submit(NewOrder(order_id=i, symbol="DEEP", side=BUY if i % 2 else SELL, price=50 + i * 0.5, qty=i))
    with MarketDataGateway(ring_name, "127.0.0.1", 0, poll_interval=0.001, max_buffer=2048) as gw:
        step_until(gw, lambda: gw.book.open_orders == 400, "the gateway to apply 400 orders")
        c = RawClient(gw, "DEEP")
        c.send(fix.logon(30))
        c.wait_for("A")
        w = c.wait_for("W")
        assert len(w.raw) > 4 * 2048 and w.get(268) == "400"
        oms.submit(CancelOrder(order_id=1))
        assert c.wait_for("X").get(279) == "2"
        assert gw.stats()["slow_disconnects"] == 0
        c.close()


def test_the_gateway_follows_a_restarted_sequencer_and_its_clients_see_no_gap(ring_name: str,
                                                                              tmp_path: Path) -> None:
    import threading

    journal = str(tmp_path / "journal")

    def start() -> tuple[pyseq.Sequencer, threading.Thread]:
        seq = pyseq.Sequencer(ring_name, journal=journal, fsync="never", capacity=1024)
        thread = threading.Thread(target=seq.run, daemon=True)
        thread.start()
        return seq, thread

    def submit(ids: range) -> None:
        with pyseq.Client.connect(ring_name, "oms", timeout=10) as oms:
            for i in ids:
                oms.submit(NewOrder(order_id=i, symbol="X", side=BUY, price=10.0 + i, qty=i))

    seq, thread = start()
    gw = MarketDataGateway(ring_name, "127.0.0.1", 0, journal=journal, poll_interval=0.001)
    try:
        c = RawClient(gw, "RESTART")
        c.send(fix.logon(30))
        c.wait_for("A")
        submit(range(1, 11))
        seq.stop()
        thread.join(10)
        seq, thread = start()  # the same ring name: a new ring, numbering resumed from the journal
        submit(range(11, 21))
        d = Deadline(10, "the gateway to apply the orders sequenced after the restart")
        while gw.book.open_orders < 20:
            d.check()
            c.poll()
        entries: list[tuple[int, str]] = []
        while len(entries) < 20:
            entries += [(t, v) for m in [c.wait_for("X")] for t, v in m.fields if t == 271]
        assert [int(v) for _, v in entries] == list(range(1, 21))
        c.close()
    finally:
        gw.close()
        seq.stop()
        thread.join(10)


# ---- real processes ----------------------------------------------------------------------------------


def order_flow(seed: int, count: int) -> Iterator[Any]:
    """What an OMS and a router would submit: orders on a few instruments around 100, cancels,
    partial and full fills, routes, rejects, and now and then one that does not fit the book."""
    rng = random.Random(seed)
    open_orders: dict[int, int] = {}
    next_id = 1
    for _ in range(count):
        k = rng.random()
        if k < 0.5 or len(open_orders) < 5:
            side = rng.choice((BUY, SELL))
            price = 100 + (rng.randint(-30, 5) if side == BUY else rng.randint(-5, 30)) * 0.01
            qty = rng.randint(1, 50) * 10
            open_orders[next_id] = qty
            yield NewOrder(order_id=next_id, symbol=rng.choice(SYMBOLS), side=side, price=price, qty=qty,
                           account=f"acct-{rng.randint(1, 20)}")
            next_id += 1
            continue
        order_id = rng.choice(list(open_orders))
        if k < 0.68:
            del open_orders[order_id]
            yield CancelOrder(order_id=order_id)
        elif k < 0.88:
            qty = rng.randint(1, open_orders[order_id])
            open_orders[order_id] -= qty
            if not open_orders[order_id]:
                del open_orders[order_id]
            yield Fill(order_id=order_id, price=100.0, qty=qty, venue="XNAS", liquidity=1)
        elif k < 0.95:
            yield Route(order_id=order_id, venue=rng.choice(["XNAS", "BATS", "ARCA"]))
        elif k < 0.97:
            del open_orders[order_id]
            yield OrderRejected(order_id=order_id, reason=6, text="venue reject")
        else:
            yield CancelOrder(order_id=10 ** 9 + order_id)  # unknown: rejected by the book


def run_sequencer(ring: str, journal: str, capacity: int, stop_event: Any) -> None:
    seq = pyseq.Sequencer(ring, journal=journal, fsync="never", capacity=capacity, slot_size=128)
    try:
        while not stop_event.is_set():
            seq.step()
    finally:
        seq.close()


def run_gateway(ring: str, journal: str, shared: Any, stop_event: Any, options: dict) -> dict:
    """The gateway; ``shared`` gets [port, clients served, slow disconnects, last sequence]."""
    gw = MarketDataGateway(ring, "127.0.0.1", 0, journal=journal, **options)
    shared[0] = gw.port
    next_update = 0.0
    try:
        while not stop_event.is_set():
            gw.step()
            if time.monotonic() >= next_update:
                next_update = time.monotonic() + 0.02
                s = gw.stats()
                shared[1], shared[2], shared[3] = s["clients_served"], s["slow_disconnects"], s["last_sequence"]
    finally:
        gw.close()
    return gw.stats()


class FixSession:
    """A FIX client built on simplefix: every message is parsed by simplefix and checked (BodyLength
    and CheckSum recomputed by hand and by simplefix's encoder, MsgSeqNum with no gap, CompIDs)."""

    def __init__(self, port: int, name: str, heartbeat: int, rcvbuf: Optional[int] = None) -> None:
        self.name, self.heartbeat = name, heartbeat
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        self.parser = simplefix.FixParser()
        self.stream = bytearray()  # received, not yet parsed into whole messages
        self.fed = 0
        self.out_seq = 0
        self.expect = 1
        self.last_sent = time.monotonic()
        self.by_type: collections.Counter = collections.Counter()
        self.eof = False

    def send(self, msg_type: str, *fields: tuple[int, Any]) -> None:
        m = simplefix.FixMessage()
        self.out_seq += 1
        for tag, value in ((8, "FIX.4.4"), (35, msg_type), (49, self.name), (56, "PYSEQ"), (34, self.out_seq)):
            m.append_pair(tag, value, header=True)
        m.append_utc_timestamp(52, header=True)
        for tag, value in fields:
            m.append_pair(tag, value)
        self.sock.sendall(m.encode())
        self.last_sent = time.monotonic()

    def logon(self) -> None:
        self.send("A", (98, 0), (108, self.heartbeat), (141, "Y"))

    def receive(self, timeout: float) -> list[simplefix.FixMessage]:
        """Whatever whole messages arrive within ``timeout`` s (each checked)."""
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return []
        data = self.sock.recv(65536)
        if not data:
            self.eof = True
            return []
        out = []
        for start in range(0, len(data), 4096):  # simplefix copies its buffer per field: feed it small pieces
            chunk = data[start:start + 4096]
            self.stream += chunk
            self.parser.append_buffer(chunk)
            self.fed += len(chunk)
            while (m := self.parser.get_message()) is not None:
                end = len(self.stream) - len(self.parser.get_buffer())
                raw = bytes(self.stream[:end])
                del self.stream[:end]
                self.check(m, raw)
                out.append(m)
        return out

    def check(self, m: simplefix.FixMessage, raw: bytes) -> None:
        independent_check(raw)
        assert m.encode() == raw, (m.encode(), raw)
        assert int(m.get(34)) == self.expect, f"{self.name}: MsgSeqNum {m.get(34)}, expected {self.expect}"
        assert (m.get(49), m.get(56)) == (b"PYSEQ", self.name.encode())
        assert TIMESTAMP.search(raw)
        self.expect += 1
        self.by_type[m.get(35).decode()] += 1
        if m.get(35) == b"1":
            self.send("0", (112, m.get(112).decode()))

    def keep_alive(self) -> None:
        if time.monotonic() - self.last_sent >= self.heartbeat:
            self.send("0")


def groups(m: simplefix.FixMessage, first_tag: bytes) -> list[dict[bytes, bytes]]:
    """The entries of a repeating group, each starting at ``first_tag``."""
    out: list[dict[bytes, bytes]] = []
    in_group = False
    for tag, value in m.pairs:
        if tag == b"268":
            in_group = True
        elif in_group and tag == first_tag:
            out.append({tag: value})
        elif in_group and out and tag != b"10":
            out[-1][tag] = value
    assert len(out) == int(m.get(268))
    return out


def fix_client(port: int, name: str, target: Any, heartbeat: int = 2) -> dict:
    """Log on, rebuild the book from 35=W and 35=X until it is at ``target`` (set by the test), log out."""
    s = FixSession(port, name, heartbeat)
    s.logon()
    book: dict[str, dict[str, dict[str, int]]] = {}
    at = 0  # the sequence the rebuilt book is at
    first: Optional[tuple[str, int]] = None
    d = Deadline(60, f"{name}: the book at the target sequence")
    while not (target.value and at >= target.value):
        d.check()
        for m in s.receive(0.1):
            t = m.get(35)
            if first is None:
                assert t == b"A" and m.get(108) == b"%d" % heartbeat
                first = ("A", 0)
            elif t == b"W":
                sides: dict[str, dict[str, int]] = {"0": {}, "1": {}}
                for e in groups(m, b"269"):
                    sides[e[b"269"].decode()][e[b"270"].decode()] = int(e[b"271"])
                book[m.get(55).decode()] = sides
                at = max(at, int(m.get(5500)))
            elif t == b"X":
                for e in groups(m, b"279"):
                    side = book.setdefault(e[b"55"].decode(), {"0": {}, "1": {}})[e[b"269"].decode()]
                    price, action = e[b"270"].decode(), e[b"279"]
                    assert (price in side) == (action != b"0"), (name, e)
                    if action == b"2":
                        del side[price]
                    else:
                        side[price] = int(e[b"271"])
                at = max(at, int(m.get(5500)))
            else:
                assert t in (b"0", b"1"), m
        assert not s.eof, f"{name}: the gateway closed the connection"
        s.keep_alive()
    s.send("5")
    d = Deadline(10, f"{name}: the gateway's Logout")
    while not s.eof:
        d.check()
        s.receive(0.1)
    s.sock.close()
    assert s.by_type["5"] == 1
    normal = {sym: {int(side) + 1: levels for side, levels in sides.items() if levels}
              for sym, sides in book.items()}
    return {"book": {sym: sides for sym, sides in normal.items() if sides}, "at": at, "messages": s.expect - 1,
            "by_type": dict(s.by_type)}


def slow_client(port: int, name: str, may_read: Any) -> dict:
    """Log on and read nothing until the test says so; then read what is left: the messages sent
    before it was cut off, with no gap, and a Logout saying why."""
    s = FixSession(port, name, heartbeat=30, rcvbuf=4096)
    s.logon()
    assert may_read.wait(60), "never told to read"
    last = None
    d = Deadline(30, f"{name}: the end of the connection")
    while not s.eof:
        d.check()
        for m in s.receive(0.2):
            last = m
    assert last is not None and last.get(35) == b"5", last
    return {"messages": s.expect - 1, "text": last.get(58).decode(), "by_type": dict(s.by_type)}


def wait_until(predicate: Any, seconds: float, what: str, children: Optional[Children] = None) -> None:
    d = Deadline(seconds, what)
    while not predicate():
        if children is not None:
            for label, p in children.procs.items():
                if not p.is_alive() and label not in children._got:
                    children.result(label, 1)  # its traceback
        d.check()
        time.sleep(0.02)


def submit_paced(client: pyseq.Client, records: list[Any], rate: float) -> None:
    start = time.monotonic()
    for i, record in enumerate(records):
        wait = start + i / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        client.submit(record)


def follow_book(replica: pyseq.Replica, count: int, seconds: float) -> None:
    d = Deadline(seconds, f"the replica to apply {count} order-flow messages")
    while replica.state.messages_applied < count:  # type: ignore[attr-defined]
        d.check()
        replica.follow(duration=0.05)


@pytest.mark.timeout(120)
def test_fix_clients_early_late_and_slow_get_the_book_the_replicas_hold(
        children: Children, ring_name: str, tmp_path: Path) -> None:
    journal = str(tmp_path / "journal")
    stop_seq, stop_gw = children.event(), children.event()
    children.start("sequencer", run_sequencer, ring_name, journal, 1 << 14, stop_seq)
    shared = SPAWN.Array("q", 4)
    target = SPAWN.Value("q", 0)
    may_read = children.event()
    children.start("gateway", run_gateway, ring_name, journal, shared, stop_gw,
                   dict(max_buffer=64 << 10, sndbuf=32 << 10, linger=30.0, max_entries=16))
    wait_until(lambda: shared[0] != 0, 20, "the gateway to listen", children)
    port = shared[0]
    for label in ("early-a", "early-b"):
        children.start(label, fix_client, port, label.upper(), target)
    children.start("slow", slow_client, port, "SLOW", may_read)
    wait_until(lambda: shared[1] >= 3, 20, "three clients logged on", children)

    records = list(order_flow(7, 6000))
    last_change = [0]
    book = OrderBook(on_change=lambda seq, changes: last_change.__setitem__(0, seq))
    replica = pyseq.Replica(book, ring=ring_name, journal=journal, name="reference")
    oms = pyseq.Client.connect(ring_name, "oms", timeout=20)
    try:
        submit_paced(oms, records[:3000], 2500)
        follow_book(replica, 3000, 30)
        children.start("late", fix_client, port, "LATE", target)
        wait_until(lambda: shared[1] >= 4, 20, "the late client logged on", children)
        submit_paced(oms, records[3000:], 2500)
        follow_book(replica, len(records), 30)
    finally:
        oms.close()
    target.value = last_change[0]  # the book's last change: every client's book must get there
    wait_until(lambda: shared[2] >= 1, 30, "the slow client to be disconnected", children)
    may_read.set()
    results = {label: children.result(label, 60) for label in ("early-a", "early-b", "late")}
    slow = children.result("slow", 60)
    stop_gw.set()
    stats = children.result("gateway", 30)
    stop_seq.set()
    children.result("sequencer", 30)
    replica.close()

    expected = levels_of(book)
    assert sum(len(levels) for sides in expected.values() for levels in sides.values()) > 20  # a real book
    for label, r in results.items():
        assert r["book"] == expected, label
        assert r["at"] >= target.value
        assert r["by_type"]["A"] == 1 and r["by_type"]["5"] == 1
    assert results["early-a"]["by_type"]["X"] > 50 and results["early-a"]["by_type"].get("W", 0) == 0
    assert results["late"]["by_type"]["W"] == len(SYMBOLS)  # a snapshot of every instrument on connect
    assert "slow consumer" in slow["text"]
    assert 0 < slow["messages"] < results["early-a"]["messages"]
    assert stats["clients_served"] == 4 and stats["slow_disconnects"] == 1 and stats["disconnects"] == 4
    assert stats["last_sequence"] >= target.value and stats["messages_sent"] >= \
        sum(r["messages"] for r in results.values()) + slow["messages"]


@pytest.mark.timeout(90)
def test_pyseq_gateway_builds_from_the_journal_what_the_ring_no_longer_holds_and_serves_it(
        sequencers: Any, ring_name: str, tmp_path: Path) -> None:
    journal = str(tmp_path / "journal")
    sequencers(ring_name, "--capacity", "1024", "--journal", journal, "--fsync", "never")
    records = list(order_flow(11, 5000))
    with pyseq.Client.connect(ring_name, "oms", timeout=20) as oms:
        for r in records:
            oms.submit(r)
    replica = pyseq.Replica(OrderBook(), ring=ring_name, journal=journal, name="reference")
    follow_book(replica, len(records), 30)
    ring = pyseq.Ring.attach(ring_name)
    assert ring.published_sequence - ring.capacity > 1  # the ring has moved on: the journal must fill in
    ring.close()
    with open(tmp_path / "gateway.log", "wb") as log:
        proc = subprocess.Popen(command("gateway", "--ring", ring_name, "--journal", journal, "--port", "0", "--json"),
                                stdout=subprocess.PIPE, stderr=log, env=ENV)
    try:
        line = read_until(proc, lambda out: "\n" in out)
        found = re.fullmatch(rf"gateway {re.escape(ring_name)} listening on 127\.0\.0\.1:(\d+) pid {proc.pid}\n",
                             line)
        assert found, line
        s = FixSession(int(found.group(1)), "CLI", heartbeat=30)
        s.logon()
        book: dict[str, dict[int, dict[str, int]]] = {}
        d = Deadline(20, "a snapshot of every instrument")
        while len(book) < len(SYMBOLS):
            d.check()
            for m in s.receive(0.1):
                if m.get(35) == b"W":
                    assert int(m.get(5500)) >= replica.last_applied  # the journal and the ring, all of it
                    sides: dict[int, dict[str, int]] = {}
                    for e in groups(m, b"269"):
                        sides.setdefault(int(e[b"269"]) + 1, {})[e[b"270"].decode()] = int(e[b"271"])
                    book[m.get(55).decode()] = sides
        assert {k: v for k, v in book.items() if v} == levels_of(replica.state)  # type: ignore[arg-type]
        proc.send_signal(signal.SIGTERM)
        d = Deadline(10, "the gateway's Logout")
        while not s.eof:
            d.check()
            for m in s.receive(0.1):
                if m.get(35) == b"5":
                    assert b"shutting down" in m.get(58)
                    s.send("5")
        s.sock.close()
        assert proc.wait(15) == 0
        assert proc.stdout is not None
        final = proc.stdout.read().decode()
        stats = json.loads(final)
        assert stats["clients_served"] == 1 and stats["snapshots_sent"] == len(SYMBOLS)
    finally:
        stop(proc)
        replica.close()
