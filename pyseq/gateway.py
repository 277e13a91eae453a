"""The market-data gateway: the sequenced order book, served to many TCP clients as FIX 4.4.

::

    gw = MarketDataGateway("market", "127.0.0.1", 0, journal="./journal")
    print(gw.port)
    gw.run()                       # until gw.stop() (a signal handler may call it)

    pyseq gateway --ring market --journal ./journal --port 0     # prints the port it listens on

The fan-out to external clients never loads the sequencer: the gateway is a replica of
:class:`pyseq.orders.OrderBook` like any other, a plain non-gating reader of the sequenced ring
(from a snapshot and the journal if given, then live; back to the journal if the ring laps it), and
everything it does for its clients happens in its own process, in one thread, with non-blocking
sockets and a selector.

A client connects and sends a Logon (35=A, with its SenderCompID and HeartBtInt); the gateway
answers with a Logon, then a MarketDataSnapshotFullRefresh (35=W) of every instrument, then a
MarketDataIncrementalRefresh (35=X) for every batch of level changes, in sequence order.  A
MarketDataRequest (35=V) is optional: it asks for snapshots of some symbols (with its MDReqID), and
narrows (263=1) or stops (263=2) the incremental stream.  Each session has its own MsgSeqNum from 1,
with no gap.  Heartbeats go out after HeartBtInt seconds without a message; a client silent for
longer gets a TestRequest, and is logged out if it does not answer.

A slow client never blocks the others: its messages wait in its own queue, and when more than
``max_buffer`` bytes are waiting it is disconnected: what was not yet sent is dropped, it gets a
Logout saying why (if it reads within ``linger`` seconds) and it is counted in ``slow_disconnects``.
"""
from __future__ import annotations

import argparse
import collections
import errno
import json
import logging
import os
import selectors
import signal
import socket
import sys
import time
from typing import Any, Optional

from . import errors, fix
from .journal import Journal
from .orders import BUY, SELL, LevelChange, OrderBook, price_text
from .replica import Replica
from .ring import Ring

log = logging.getLogger("pyseq.gateway")

DEFAULT_MAX_BUFFER = 4 << 20    # bytes queued for one client before it is disconnected as slow
DEFAULT_MAX_ENTRIES = 64        # entries in one 35=X
DEFAULT_BATCH = 4096            # sequenced messages applied between two socket rounds
OUT_CHUNK = 64 << 10            # bytes framed at a time for one client
HEADER_ESTIMATE = 80            # bytes a session's header and trailer add to a body (queue accounting)
TIMER_INTERVAL = 0.1
WATCH_INTERVAL = 1.0


class _Session:
    """One TCP client."""

    def __init__(self, sock: socket.socket, peer: Any, now: float, max_length: int) -> None:
        self.sock = sock
        self.peer = peer
        self.parser = fix.Parser(max_length)
        self.state = "logon"            # -> "active" -> "closing" -> "closed"
        self.connected_at = now
        self.target = ""                # the client's SenderCompID
        self.heartbeat = 0.0            # HeartBtInt, seconds (0: none)
        self.next_seq = 1               # our next MsgSeqNum to it
        self.expect_seq = 1             # its next MsgSeqNum
        self.queue: collections.deque[fix.Body] = collections.deque()
        self.queued = 0                 # bytes in queue (bodies plus a header estimate)
        self.grace = 0                  # backlog allowed beyond max_buffer: the logon snapshots not yet sent
        self.out = bytearray()          # framed, not yet sent
        self.out_pos = 0
        self.last_sent = now
        self.last_received = now
        self.test_request: Optional[tuple[str, float]] = None
        self.subscribed = True
        self.md_req_id: Optional[str] = None
        self.symbols: Optional[frozenset[str]] = None
        self.close_at = 0.0
        self.shut = False
        self.events = selectors.EVENT_READ
        self.messages = 0

    @property
    def backlog(self) -> int:
        return self.queued + len(self.out) - self.out_pos


class MarketDataGateway:
    """Serves the order book of sequenced ring ``ring`` to FIX clients on ``host``:``port`` (0: a
    free port, see :attr:`port`).  ``journal``/``snapshot_from``/``snapshots`` are the replica's
    (:class:`pyseq.Replica`); ``max_buffer``: bytes queued for one client before it is disconnected;
    ``linger``: seconds a disconnected client has to read its Logout; ``sndbuf``: SO_SNDBUF of each
    client socket (None: the system's)."""

    def __init__(self, ring: str, host: str = "127.0.0.1", port: int = 0, *, journal: Optional[str] = None,
                 snapshot_from: Optional[str] = None, snapshots: Optional[str] = None,
                 sender_comp_id: str = "PYSEQ", max_buffer: int = DEFAULT_MAX_BUFFER, max_clients: int = 1024,
                 max_entries: int = DEFAULT_MAX_ENTRIES, batch: int = DEFAULT_BATCH, logon_timeout: float = 10.0,
                 linger: float = 5.0, sndbuf: Optional[int] = None, poll_interval: float = 0.002,
                 max_message: int = fix.MAX_LENGTH, name: Optional[str] = None) -> None:
        if max_buffer < 1 or max_clients < 1 or max_entries < 1 or batch < 1:
            raise ValueError("max_buffer, max_clients, max_entries and batch must be >= 1")
        self.ring_name = ring
        self.journal = journal
        self.sender = sender_comp_id
        self.max_buffer = max_buffer
        self.max_clients = max_clients
        self.max_entries = max_entries
        self.batch = batch
        self.logon_timeout = logon_timeout
        self.linger = linger
        self.sndbuf = sndbuf
        self.poll_interval = poll_interval
        self.max_message = max_message
        self.book = OrderBook(on_change=self._on_change)
        self.replica = Replica(self.book, ring=ring, journal=journal, snapshot_from=snapshot_from,
                               snapshots=snapshots, name=name or f"gateway-{os.getpid()}")
        self._changes: list[tuple[int, LevelChange]] = []
        self._snapshot_cache: dict[tuple[str, Optional[str]], fix.Body] = {}
        self._sessions: dict[int, _Session] = {}
        self._selector = selectors.DefaultSelector()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host, port), family=family, backlog=128)
        try:
            self._listener.setblocking(False)
            self._selector.register(self._listener, selectors.EVENT_READ, None)
        except BaseException:
            self._listener.close()
            raise
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._stop = False
        self._started = False
        self._closed = False
        self._next_timer = 0.0
        self._next_watch = 0.0
        self._watch: Optional[Ring] = None
        self._test_ids = 0
        self.counters = collections.Counter({key: 0 for key in (
            "clients_served", "messages_sent", "bytes_sent", "snapshots_sent", "incrementals_sent",
            "heartbeats_sent", "messages_received", "disconnects", "slow_disconnects", "timeouts", "logouts",
            "protocol_errors", "refused")})

    # ---- public --------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def clients(self) -> int:
        """Sessions open now (logged on or not)."""
        return len(self._sessions)

    def stats(self) -> dict[str, Any]:
        """Counters: clients served, messages and bytes sent, disconnects (and why), the sequence
        the book is at."""
        out: dict[str, Any] = dict(self.counters)
        out.update(clients_connected=len(self._sessions), last_sequence=self.replica.last_applied,
                   symbols=len(self.book.symbols()), open_orders=self.book.open_orders)
        return out

    def start(self) -> None:
        """Restore the snapshot (if any); if the ring is not there, apply what the journal holds."""
        if self._started:
            return
        self._started = True
        self.replica.follow(duration=0)  # bootstraps the replica from its snapshot, nothing more
        if self.journal is not None and not Ring.exists(self.ring_name):
            try:
                journal = Journal(self.journal)
            except errors.JournalNotFoundError:
                return
            self.replica.apply_messages(journal.records(start=self.replica.last_applied + 1))
            self._broadcast()

    def step(self, timeout: Optional[float] = None) -> int:
        """One round: apply what the ring has (up to ``batch`` messages), send the changes, serve the
        sockets (waiting up to ``timeout`` s, default ``poll_interval``, if nothing was applied);
        the number of messages applied."""
        self.start()
        applied = self._pump()
        self._broadcast()
        wait = 0.0 if applied else (self.poll_interval if timeout is None else timeout)
        for key, mask in self._selector.select(wait):
            if key.data is None:
                self._accept()
                continue
            s: _Session = key.data
            if mask & selectors.EVENT_READ and s.state != "closed":
                self._on_readable(s)
            if mask & selectors.EVENT_WRITE and s.state != "closed":
                self._flush(s)
        now = time.monotonic()
        if now >= self._next_timer:
            self._next_timer = now + TIMER_INTERVAL
            self._timers(now)
        return applied

    def run(self, duration: Optional[float] = None) -> None:
        """Serve until :meth:`stop` (or for ``duration`` seconds), then :meth:`close`."""
        end = None if duration is None else time.monotonic() + duration
        try:
            while not self._stop and (end is None or time.monotonic() < end):
                self.step()
        finally:
            self.close()

    def stop(self) -> None:
        """Ask :meth:`run` to finish (safe from a signal handler)."""
        self._stop = True

    def close(self, timeout: float = 1.0) -> None:
        """Log every client out (waiting up to ``timeout`` s for the Logouts to go), close everything."""
        if self._closed:
            return
        self._closed = True
        for s in list(self._sessions.values()):
            s.queue.clear()
            s.queued = 0
            self._begin_close(s, "the gateway is shutting down")
        deadline = time.monotonic() + timeout
        while self._sessions and time.monotonic() < deadline:
            for key, mask in self._selector.select(0.01):
                s = key.data
                if s is not None:
                    if mask & selectors.EVENT_READ and s.state != "closed":
                        self._on_readable(s)
                    if mask & selectors.EVENT_WRITE and s.state != "closed":
                        self._flush(s)
        for s in list(self._sessions.values()):
            self._close(s)
        self._selector.unregister(self._listener)
        self._listener.close()
        self._selector.close()
        if self._watch is not None:
            self._watch.close()
        self.replica.close()

    def __enter__(self) -> "MarketDataGateway":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the book ------------------------------------------------------------------------------

    def _on_change(self, seq: int, changes: list[LevelChange]) -> None:
        self._changes.extend((seq, c) for c in changes)

    def _pump(self) -> int:
        replica = self.replica
        before = replica.last_applied
        lag = replica.lag
        if lag > 0:
            replica.follow(until_sequence=before + min(lag, self.batch))
        else:
            now = time.monotonic()
            if now >= self._next_watch:
                self._next_watch = now + WATCH_INTERVAL
                self._watch_writer()
        if replica.last_applied != before:
            self._snapshot_cache.clear()
        return replica.last_applied - before

    def _watch_writer(self) -> None:
        """A sequencer that stopped (or died) leaves its ring; a restarted one replaces it.  Let the
        replica see the end of the old ring, so that it attaches the new one."""
        if self._watch is None:
            try:
                self._watch = Ring.attach(self.ring_name)
            except (errors.RingNotFoundError, errors.RingNotReadyError):
                return
        gone = self._watch.writer_gone
        if gone or self._watch.published_sequence > self.replica.last_applied:  # the replica's ring is not this one
            self.replica.follow(duration=0.02)
        if gone:
            self._watch.close()
            self._watch = None

    def _broadcast(self) -> None:
        if not self._changes:
            return
        changes, self._changes = self._changes, []
        last = self.replica.last_applied
        receivers = [s for s in self._sessions.values() if s.state == "active" and s.subscribed]
        if not receivers:
            return
        cache: dict[tuple[Optional[str], Optional[frozenset[str]]], list[fix.Body]] = {}
        for s in receivers:
            key = (s.md_req_id, s.symbols)
            bodies = cache.get(key)
            if bodies is None:
                wanted = changes if s.symbols is None else [c for c in changes if c[1].symbol in s.symbols]
                bodies = cache[key] = self._incrementals(wanted, last, s.md_req_id)
            for body in bodies:
                self._send(s, body)
            self._flush(s)

    def _incrementals(self, changes: list[tuple[int, LevelChange]], last: int,
                      md_req_id: Optional[str]) -> list[fix.Body]:
        bodies = []
        for start in range(0, len(changes), self.max_entries):
            chunk = changes[start:start + self.max_entries]
            entries = [fix.Entry(c.action, fix.BID if c.side == BUY else fix.OFFER, c.symbol, price_text(c.units),
                                 c.qty) for _, c in chunk]
            seq = last if start + self.max_entries >= len(changes) else chunk[-1][0]
            bodies.append(fix.incremental_refresh(entries, sequence=seq, md_req_id=md_req_id))
        return bodies

    def _snapshot(self, symbol: str, md_req_id: Optional[str]) -> fix.Body:
        body = self._snapshot_cache.get((symbol, md_req_id))
        if body is None:
            bids = [(price_text(u), q) for u, q, _ in self.book.level_units(symbol, BUY)]
            offers = [(price_text(u), q) for u, q, _ in self.book.level_units(symbol, SELL)]
            body = self._snapshot_cache[(symbol, md_req_id)] = fix.snapshot_full_refresh(
                symbol, bids, offers, sequence=self.replica.last_applied, md_req_id=md_req_id)
        return body

    def _send_snapshots(self, s: _Session, symbols: Optional[frozenset[str]] = None,
                        md_req_id: Optional[str] = None) -> None:
        s.grace = 1 << 62  # a big book's snapshots do not make a client slow...
        for symbol in (self.book.symbols() if symbols is None else sorted(symbols, key=str.encode)):
            self._send(s, self._snapshot(symbol, md_req_id))
        s.grace = s.backlog  # ...only what comes on top of them, once they are out

    # ---- sessions ------------------------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                sock, peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # out of file descriptors, a connection reset before accept
                log.warning("gateway: accept failed: %s", e)
                return
            if len(self._sessions) >= self.max_clients:
                self.counters["refused"] += 1
                sock.close()
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.sndbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf)
            s = _Session(sock, peer, time.monotonic(), self.max_message)
            self._sessions[sock.fileno()] = s
            self._selector.register(sock, selectors.EVENT_READ, s)

    def _send(self, s: _Session, body: fix.Body, force: bool = False) -> None:
        """Queue ``body`` for ``s`` (only while it is active, unless ``force``)."""
        if s.state != "active" and not force:
            return
        s.queue.append(body)
        s.queued += len(body.data) + HEADER_ESTIMATE
        if not force and s.backlog > self.max_buffer + s.grace:
            self.counters["slow_disconnects"] += 1
            log.warning("gateway: client %s (%s) is %d bytes behind: disconnected", s.target, s.peer, s.backlog)
            s.queue.clear()
            s.queued = 0
            self._begin_close(s, f"slow consumer: more than {self.max_buffer} bytes queued")

    def _flush(self, s: _Session) -> None:
        if s.state == "closed":
            return
        while True:
            if s.out_pos >= len(s.out):
                s.out.clear()
                s.out_pos = 0
                if not s.queue:
                    break
                stamp = fix.utc_timestamp()
                while s.queue and len(s.out) < OUT_CHUNK:
                    body = s.queue.popleft()
                    s.queued -= len(body.data) + HEADER_ESTIMATE
                    s.out += fix.frame(body, self.sender, s.target, s.next_seq, stamp)
                    s.next_seq += 1
                    s.messages += 1
                    self.counters["messages_sent"] += 1
                    t = body.msg_type
                    if t == fix.MARKET_DATA_INCREMENTAL:
                        self.counters["incrementals_sent"] += 1
                    elif t == fix.MARKET_DATA_SNAPSHOT:
                        self.counters["snapshots_sent"] += 1
                    elif t == fix.HEARTBEAT:
                        self.counters["heartbeats_sent"] += 1
                s.last_sent = time.monotonic()
            try:
                with memoryview(s.out) as view, view[s.out_pos:] as rest:
                    n = s.sock.send(rest)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                self._lost(s, f"send failed: {e}")
                return
            s.out_pos += n
            self.counters["bytes_sent"] += n
        pending = s.backlog > 0
        s.grace = min(s.grace, s.backlog)
        if not pending and s.state == "closing" and not s.shut:
            s.shut = True
            try:
                s.sock.shutdown(socket.SHUT_WR)  # the Logout is out: end our side, read theirs to the end
            except OSError:
                self._close(s)
                return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if pending else 0)
        if events != s.events:
            s.events = events
            self._selector.modify(s.sock, events, s)

    def _begin_close(self, s: _Session, text: str) -> None:
        """Send a Logout (``text`` says why) if the client is logged on, then close once it is out."""
        if s.state in ("closing", "closed"):
            return
        logged_on = s.state == "active"
        s.state = "closing"
        s.close_at = time.monotonic() + self.linger
        if logged_on:
            self._send(s, fix.logout(text), force=True)
        self._flush(s)

    def _lost(self, s: _Session, why: str) -> None:
        if s.state != "closing":
            log.info("gateway: client %s (%s): %s", s.target or "?", s.peer, why)
        self._close(s)

    def _close(self, s: _Session) -> None:
        fd = s.sock.fileno()
        if self._sessions.get(fd) is not s:
            return
        del self._sessions[fd]
        s.state = "closed"
        self._selector.unregister(s.sock)
        s.sock.close()
        self.counters["disconnects"] += 1
        log.info("gateway: client %s (%s) disconnected after %d messages", s.target or "?", s.peer, s.messages)

    def _on_readable(self, s: _Session) -> None:
        try:
            data = s.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._lost(s, f"receive failed: {e}")
            return
        if not data:
            self._lost(s, "connection closed by the client")
            return
        s.last_received = time.monotonic()
        if s.state == "closing":
            return  # read to the end, ignored
        try:
            for msg in s.parser.feed(data):
                self._handle(s, msg)
                if s.state != "active":
                    return
        except fix.FixError as e:
            self.counters["protocol_errors"] += 1
            log.warning("gateway: client %s (%s): %s", s.target or "?", s.peer, e)
            self._begin_close(s, f"malformed message: {e}"[:200])

    def _handle(self, s: _Session, msg: fix.FixMessage) -> None:
        self.counters["messages_received"] += 1
        try:
            seq = msg.seq_num
        except ValueError:
            raise fix.FixError(f"MsgSeqNum {msg.get(fix.MSG_SEQ_NUM)!r} is not a number") from None
        t = msg.msg_type
        s.test_request = None  # anything it sends shows it is alive
        if s.state == "logon":
            return self._logon(s, msg, seq)
        if seq < s.expect_seq:
            self.counters["protocol_errors"] += 1
            return self._begin_close(s, f"MsgSeqNum too low, expecting {s.expect_seq} but received {seq}")
        if seq > s.expect_seq:
            log.info("gateway: client %s: MsgSeqNum %d, expected %d (no resend: market data only)", s.target, seq,
                     s.expect_seq)
        s.expect_seq = seq + 1
        if t == fix.HEARTBEAT:
            pass
        elif t == fix.TEST_REQUEST:
            self._send(s, fix.heartbeat(msg.get(fix.TEST_REQ_ID, "")))
        elif t == fix.LOGOUT:
            self.counters["logouts"] += 1
            self._begin_close(s, "")
            return
        elif t == fix.MARKET_DATA_REQUEST:
            self._market_data_request(s, msg, seq)
        else:
            self._send(s, fix.reject(seq, f"MsgType {t} is not supported here"))
        self._flush(s)

    def _logon(self, s: _Session, msg: fix.FixMessage, seq: int) -> None:
        problem = None
        target = msg.get(fix.SENDER_COMP_ID, "")
        try:
            heartbeat = int(msg.get(fix.HEART_BT_INT, ""))
        except ValueError:
            heartbeat = -1
        if msg.msg_type != fix.LOGON:
            problem = f"the first message must be a Logon (35=A), not 35={msg.msg_type}"
        elif not target:
            problem = "the Logon has no SenderCompID (49)"
        elif not 0 <= heartbeat <= 3600:
            problem = f"the Logon's HeartBtInt (108) {msg.get(fix.HEART_BT_INT)!r} is not 0..3600"
        if problem is not None:
            self.counters["protocol_errors"] += 1
            log.warning("gateway: %s: %s", s.peer, problem)
            self._close(s)
            return
        s.target, s.heartbeat, s.expect_seq, s.state = target, float(heartbeat), seq + 1, "active"
        self.counters["clients_served"] += 1
        log.info("gateway: client %s (%s) logged on, heartbeat %d s", target, s.peer, heartbeat)
        self._send(s, fix.logon(heartbeat, reset=msg.get(fix.RESET_SEQ_NUM_FLAG) == "Y"))
        self._send_snapshots(s)
        self._flush(s)

    def _market_data_request(self, s: _Session, msg: fix.FixMessage, seq: int) -> None:
        req_id = msg.get(fix.MD_REQ_ID)
        kind = msg.get(fix.SUBSCRIPTION_REQUEST_TYPE, fix.SNAPSHOT_AND_UPDATES)
        if not req_id or kind not in (fix.SNAPSHOT_ONLY, fix.SNAPSHOT_AND_UPDATES, fix.UNSUBSCRIBE):
            self._send(s, fix.reject(seq, "MarketDataRequest needs MDReqID (262) and SubscriptionRequestType "
                                          "(263) 0, 1 or 2"))
            return
        symbols = frozenset(msg.get_all(fix.SYMBOL)) or None
        if kind == fix.UNSUBSCRIBE:
            s.subscribed = False
            return
        self._send_snapshots(s, symbols, req_id)
        if kind == fix.SNAPSHOT_AND_UPDATES:
            s.subscribed, s.md_req_id, s.symbols = True, req_id, symbols

    def _timers(self, now: float) -> None:
        for s in list(self._sessions.values()):
            if s.state == "logon":
                if now - s.connected_at > self.logon_timeout:
                    self.counters["timeouts"] += 1
                    self._close(s)
            elif s.state == "closing":
                if now >= s.close_at or (s.shut and s.backlog == 0 and now - s.last_received > 1.0):
                    self._close(s)
            elif s.heartbeat > 0:
                if now - s.last_sent >= s.heartbeat and s.backlog == 0:
                    self._send(s, fix.heartbeat())
                    self._flush(s)
                if s.test_request is None:
                    if now - s.last_received > s.heartbeat * 1.2 + 1.0:
                        self._test_ids += 1
                        s.test_request = (f"TEST{self._test_ids}", now)
                        self._send(s, fix.test_request(s.test_request[0]))
                        self._flush(s)
                elif now - s.test_request[1] > s.heartbeat + 1.0:
                    self.counters["timeouts"] += 1
                    self._begin_close(s, f"no answer to TestRequest {s.test_request[0]}")


# ---- the command -------------------------------------------------------------------------------

def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0..65535; 0: any free port)")
    return value


def add_parser(sub: Any) -> None:
    """Add ``pyseq gateway`` to the ``pyseq`` command's subparsers."""
    from .cli import _positive, _ring_name  # the command's own argument types (cli imports this module first)

    p = sub.add_parser("gateway", help="serve the order book of a sequenced ring as FIX 4.4 market data",
                       description="Read the sequenced ring RING (a non-gating reader: it never holds the sequencer "
                                   "back; from --journal when the ring has moved on) and serve its order book to "
                                   "TCP clients as FIX 4.4: after a client's Logon, a 35=W snapshot of every "
                                   "instrument, then 35=X incremental refreshes. Prints 'gateway RING listening on "
                                   "HOST:PORT pid N' once it listens; runs until SIGTERM/SIGINT (or --duration), "
                                   "then logs every client out and prints its counters.")
    p.add_argument("--ring", required=True, type=_ring_name, help="the sequenced ring to read")
    p.add_argument("--journal", metavar="DIR", help="the sequencer's journal: what the ring no longer holds")
    p.add_argument("--snapshot-from", metavar="PATH", help="start from this snapshot (a file, or a directory's newest)")
    p.add_argument("--snapshots", metavar="DIR", help="write a snapshot at every TakeSnapshot into DIR")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=0, help="port to listen on (default 0: any free port, printed)")
    p.add_argument("--sender-comp-id", default="PYSEQ", help="SenderCompID (49) of the gateway (default PYSEQ)")
    p.add_argument("--max-buffer", type=_positive(int, "a number of bytes > 0"), default=DEFAULT_MAX_BUFFER,
                   help=f"bytes queued for a client before it is disconnected as slow (default {DEFAULT_MAX_BUFFER})")
    p.add_argument("--max-clients", type=_positive(int, "an integer > 0"), default=1024,
                   help="clients at once (default 1024)")
    p.add_argument("--duration", type=_positive(float, "a number of seconds > 0"),
                   help="stop by itself after this many seconds")
    p.add_argument("--json", action="store_true", help="print the final counters as one JSON object")
    p.set_defaults(run=_run_gateway, parser=p)


def _run_gateway(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        gw = MarketDataGateway(args.ring, args.host, args.port, journal=args.journal,
                               snapshot_from=args.snapshot_from, snapshots=args.snapshots,
                               sender_comp_id=args.sender_comp_id, max_buffer=args.max_buffer,
                               max_clients=args.max_clients)
    except OSError as e:
        if e.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            print(f"pyseq gateway: cannot listen on {args.host}:{args.port}: {e.strerror}", file=sys.stderr)
            return 1
        raise

    def on_signal(signum: int, _frame: Any) -> None:
        gw.stop()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        host, port = gw.address
        print(f"gateway {args.ring} listening on {host}:{port} pid {os.getpid()}", flush=True)
        gw.run(args.duration)
    finally:
        gw.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    stats = gw.stats()
    if args.json:
        print(json.dumps(stats, sort_keys=True), flush=True)
    else:
        print(f"gateway {args.ring}: {stats['clients_served']} clients served, {stats['messages_sent']} messages "
              f"({stats['bytes_sent']} bytes) sent, {stats['disconnects']} disconnects "
              f"({stats['slow_disconnects']} slow, {stats['timeouts']} timeouts), book at sequence "
              f"{stats['last_sequence']}", flush=True)
    return 0
