"""``pyseq demo``: the essay's trading environment on one machine, each part its own process.

::

    pyseq demo                               # about 20 s: a live progress line, then a report
    pyseq demo --duration 60 --clients 4 --json report.json
    pyseq demo --chaos --duration 30         # processes SIGKILLed and restarted mid-run

The processes (``multiprocessing`` "spawn" children of the command, which orchestrates them):

- **sequencer** with its journaler (journal in ``DIR/journal``);
- **admin**: loads reference data (a few dozen instruments), then changes it while the demo runs
  (tick-size updates, halts and resumes, new instruments) and submits :class:`pyseq.TakeSnapshot`
  now and then;
- **retail-oms**: a :class:`ReferenceData` replica; generates orders at a steady rate (seeded RNG),
  validates each against its replica (a halted instrument, an off-tick price: refused locally,
  counted, and sequenced as an ``OrderRejected``; some off-tick prices are sent on purpose), submits
  the accepted ones as ``NewOrder`` and now and then cancels one;
- **sor** (smart order router): a ReferenceData replica that also sees every sequenced order and,
  for each, checks it against the reference data *at that order's sequence* and submits a
  ``Route`` and (deterministically from the order id) a ``Fill`` for part or all of it, or an
  ``OrderRejected`` if the instrument was halted or its tick changed before the order was sequenced;
- **institutional-oms**: joins at 40 % of the duration from a snapshot written by the retail OMS
  (``snapshot_from``), replays the journal, goes live (reports when it caught up) and sends orders too;
- **gateway**: :class:`pyseq.gateway.MarketDataGateway`, the order book served as FIX 4.4;
- **fix-N**: FIX clients that log on, check every message (BodyLength, CheckSum, MsgSeqNum with no
  gap, parsed independently of :mod:`pyseq.fix`; with ``simplefix`` as well when it is installed)
  and rebuild the book from 35=W and 35=X.

The end: order flow stops, the router drains, the admin submits a final ``TakeSnapshot`` (label
"final"), every replica records its digest at exactly that sequence; the command checks them
against each other and against replicas it runs over the journal itself.  Unequal digests, a FIX
gap or a rebuilt book that differs from the gateway's make the demo fail (exit 1).  Ctrl-C or
SIGTERM stop everything: every child ends and every /dev/shm object of the demo's ring is removed.

``--chaos``: at seeded random moments of the order flow, one at a time, the retail OMS, the router,
the gateway and (once it has joined) the institutional OMS are killed with SIGKILL and restarted
under the same name: each recovers from its own latest snapshot and the journal, then goes live;
the report lists each fault with its recovery time (kill to live again).  What makes that safe:

- a restarted client reconnects under the same client name (retried while the sequencer still
  drains the dead one's inbound ring; it is taken only after that ring is drained and removed);
- the router's snapshots carry, besides the reference data (its digest is the reference data's
  alone), the decisions (Route, Fill, OrderRejected) made for sequenced orders whose echo it has not
  yet seen in the stream; a restarted router connects first (so everything its predecessor
  submitted is sequenced), catches up (the echoes remove what was sent) and sends the rest: every
  order is decided exactly once, derived from the stream, not from memory;
- a restarted OMS takes a fresh, disjoint block of order ids (``INCARNATION_IDS``) and its own RNG
  stream; counts are summed over incarnations in shared memory (a process killed right after a
  submit, before counting it, has one message more in the stream than it counted);
- the FIX clients of a killed gateway connect again to its successor: a new session (MsgSeqNum
  from 1, checked with no gap in each session), a fresh book from its 35=W snapshots;
- no multiprocessing lock is shared with a killable process (a killed holder never releases it):
  flags and counters are lock-free shared memory, and a process is killed only 0.3 s after its last
  word to the results queue.
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import math
import multiprocessing as mp
import multiprocessing.resource_tracker as resource_tracker
import os
import queue
import random
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
import uuid
from typing import Any, Callable, Optional

from .idle import idle_named

SPAWN = mp.get_context("spawn")

# slots of the shared status array (last sequence applied by each process; -1: not running)
SLOTS = ["retail-oms", "sor", "institutional-oms", "gateway"]
REFDATA_REPLICAS = ["retail-oms", "sor", "institutional-oms"]
FINAL_LABEL = "final"
VENUES = ["XNAS", "BATS", "ARCA", "IEXG"]
SYMBOLS = ["AAPL", "MSFT", "AMZN", "GOOGL", "META", "NVDA", "TSLA", "JPM", "V", "MA", "UNH", "HD", "PG", "XOM",
           "KO", "PEP", "COST", "WMT", "DIS", "NFLX", "ADBE", "CRM", "INTC", "AMD", "CSCO", "ORCL", "IBM", "QCOM",
           "VOD.L", "BP.L", "HSBA.L", "SAP.DE"]
NEW_SYMBOLS = ["SHOP", "UBER", "ABNB", "SNOW", "PLTR", "COIN", "RIVN", "ARM"]
TICKS = [0.01, 0.05, 0.25]
LOTS = [1, 10, 100]

OMS_KEYS = ["generated", "accepted", "rejected_halted", "rejected_off_tick", "rejected_other", "cancels"]
SOR_KEYS = ["orders_seen", "routes", "fills", "rejected"]
INCARNATION_IDS = 100_000_000  # each OMS incarnation takes a disjoint block of order ids

log = logging.getLogger("pyseq.demo")


def _connect(ring: str, name: str, timeout: float = 20.0) -> Any:
    """Client.connect, retried while a killed predecessor of the same name still holds the name (its
    inbound ring is drained by the sequencer, then removed; the new one is taken after that)."""
    from . import errors
    from .client import Client
    end = time.monotonic() + timeout
    while True:
        try:
            return Client.connect(ring, name, timeout=max(0.5, end - time.monotonic()))
        except (errors.ClientNameInUseError, errors.SequencerNotRunningError):
            if time.monotonic() >= end:
                raise
            time.sleep(0.05)


# ---- helpers shared by the children -----------------------------------------------------------------

def _child_setup(idle: str, parent: int) -> None:
    """Every child: the idle strategy by default for every ring it touches, Ctrl-C left to the parent
    (which stops everything in order), and death with the parent if the parent dies."""
    os.environ["PYSEQ_IDLE"] = idle
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by the parent around start()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s")

    def watchdog() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(3)
            time.sleep(0.2)

    threading.Thread(target=watchdog, daemon=True).start()


def _child(fn: Callable[..., Any], label: str, results: Any, idle: str, parent: int, *args: Any) -> None:
    _child_setup(idle, parent)
    try:
        fn(label, results, idle, *args)
    except BaseException:
        results.put((label, "error", traceback.format_exc()))
        raise SystemExit(1)


class _Flag:
    """A one-way flag in shared memory with the part of ``multiprocessing.Event``'s interface the
    demo uses, and no lock: ``Event.is_set`` takes a semaphore, and a process SIGKILLed while holding
    it (``--chaos``) would leave every other process that looks at the event hung."""

    def __init__(self) -> None:
        self._v = SPAWN.RawValue("b", 0)

    def is_set(self) -> bool:
        return bool(self._v.value)

    def set(self) -> None:
        self._v.value = 1

    def wait(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while not self._v.value and time.monotonic() < end:
            time.sleep(min(0.005, max(0.0, end - time.monotonic())))
        return bool(self._v.value)


def _wait_event(event: Any, abort: Any, timeout: float = 1e9) -> bool:
    end = time.monotonic() + timeout
    while not event.is_set():
        if abort.is_set() or time.monotonic() > end:
            return False
        event.wait(0.05)
    return True


def _percentiles(samples: list[int]) -> dict[str, int]:
    if not samples:
        return {"count": 0}
    s = sorted(samples)

    def at(q: float) -> int:
        return int(s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))])

    return {"count": len(s), "p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": int(s[-1])}


def _observed(base: type) -> type:
    """``base`` (a state machine class) with an observer called after every apply: the observer only
    looks, so the state, its snapshot and its digest are the base class's."""

    class Observed(base):  # type: ignore[misc, valid-type]
        def __init__(self, observer: Callable[[Any, Any], None], *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._observer = observer

        def apply(self, msg: Any) -> Any:
            out = super().apply(msg)
            self._observer(self, msg)
            return out

    Observed.__name__ = f"Observed{base.__name__}"
    return Observed


class _Watcher:
    """What every replica of the demo records: the read latency of live messages, and the digest at the
    final marker."""

    def __init__(self) -> None:
        from .admin import TAKE_SNAPSHOT, TakeSnapshot
        self._take, self._decode = TAKE_SNAPSHOT, TakeSnapshot.decode
        self.live = False
        self.read_ns: list[int] = []
        self.final: Optional[tuple[int, str]] = None
        self.extra: Optional[Callable[[Any, Any], None]] = None

    def __call__(self, machine: Any, msg: Any) -> None:
        if self.live:
            self.read_ns.append(time.time_ns() - msg.timestamp_ns)
        if msg.msg_type == self._take and self.final is None and self._decode(msg.payload).label == FINAL_LABEL:
            self.final = (msg.seq, machine.digest())
        if self.extra is not None:
            self.extra(machine, msg)


# ---- the sequencer --------------------------------------------------------------------------------

def _sequencer(label: str, results: Any, idle: str, ring: str, journal: str, journal_idle: str, stop: Any) -> None:
    from .sequencer import Sequencer
    seq = Sequencer(ring, capacity=1 << 16, journal=journal, fsync="batch", idle=idle_named(idle),
                    journal_idle=idle_named(journal_idle))
    results.put((label, "ready", os.getpid()))
    try:
        while not stop.is_set():
            seq.step()
        stats = seq.stats()
    finally:
        seq.close()
    results.put((label, "done", {"journal": stats.get("journal"), "rounds": stats["rounds"]}))


# ---- the admin client -------------------------------------------------------------------------------

def _admin(label: str, results: Any, idle: str, ring: str, seed: int, instruments: int, change_every: float,
           snapshot_every: float, stop_changes: Any, final: Any, close: Any, abort: Any) -> None:
    from .admin import TakeSnapshot
    from .client import Client
    from .refdata import AddInstrument, Halt, Resume, UpdateInstrument
    rng = random.Random(seed)
    counts = {"instruments_added": 0, "tick_updates": 0, "halts": 0, "resumes": 0, "snapshots": 0}
    client = Client.connect(ring, "admin", timeout=20)
    try:
        symbols = SYMBOLS[:instruments]
        for i, symbol in enumerate(symbols):
            client.submit(AddInstrument(symbol=symbol, tick_size=TICKS[i % 3], lot_size=LOTS[i % 3 if i % 5 else 0],
                                        currency="GBP" if symbol.endswith(".L") else
                                        "EUR" if symbol.endswith(".DE") else "USD"))
            counts["instruments_added"] += 1
        client.submit(TakeSnapshot(label="initial"))
        counts["snapshots"] += 1
        client.wait_sequenced(10)
        results.put((label, "loaded", len(symbols)))
        halted: list[str] = []
        new = list(NEW_SYMBOLS)
        next_change = time.monotonic() + change_every
        next_snapshot = time.monotonic() + snapshot_every
        while not stop_changes.is_set():
            if abort.is_set():
                return
            now = time.monotonic()
            if now >= next_snapshot:
                next_snapshot = now + snapshot_every
                counts["snapshots"] += 1
                client.submit(TakeSnapshot(label=f"periodic-{counts['snapshots']}"))
            if now >= next_change:
                next_change = now + change_every
                k = rng.random()
                if k < 0.35:
                    client.submit(UpdateInstrument(symbol=rng.choice(symbols), tick_size=rng.choice(TICKS)))
                    counts["tick_updates"] += 1
                elif k < 0.6 and len(halted) < 4:
                    symbol = rng.choice([s for s in symbols if s not in halted])
                    client.submit(Halt(symbol=symbol, reason="news pending"))
                    halted.append(symbol)
                    counts["halts"] += 1
                elif k < 0.9 and halted:
                    client.submit(Resume(symbol=halted.pop(rng.randrange(len(halted)))))
                    counts["resumes"] += 1
                elif new:
                    symbol = new.pop(0)
                    client.submit(AddInstrument(symbol=symbol, tick_size=0.01, lot_size=1))
                    symbols.append(symbol)
                    counts["instruments_added"] += 1
            time.sleep(0.01)
        client.wait_sequenced(10)
        results.put((label, "quiet", None))
        if not _wait_event(final, abort):
            return
        client.submit(TakeSnapshot(label=FINAL_LABEL))
        counts["snapshots"] += 1
        client.wait_sequenced(10)
        results.put((label, "final-submitted", dict(counts)))
        _wait_event(close, abort)
    finally:
        client.close()


# ---- the order management systems ---------------------------------------------------------------

def _oms(label: str, results: Any, idle: str, ring: str, journal: str, snapshots: str, snapshot_from: Optional[str],
         status: Any, slot: int, seed: int, rate: float, id_base: int, off_tick: float, stop_orders: Any,
         done: Any, abort: Any, incarnation: int = 0, shared: Any = None) -> None:
    from .orders import (BUY, NEW_ORDER, REASON_HALTED, REASON_OFF_TICK, REASON_OTHER, SELL, CancelOrder, NewOrder,
                         OrderRejected)
    from .refdata import ReferenceData
    from .replica import Replica
    from .sequencer import source_id

    watcher = _Watcher()
    submitted: dict[int, int] = {}  # order id -> submit time (ns, CLOCK_REALTIME like the sequencer's stamp)
    to_seq: list[int] = []
    me = source_id(label)
    decode = NewOrder.decode

    def mine(machine: Any, msg: Any) -> None:
        if msg.msg_type == NEW_ORDER and msg.source == me:
            t = submitted.pop(decode(msg.payload).order_id, None)
            if t is not None:
                to_seq.append(msg.timestamp_ns - t)

    watcher.extra = mine
    machine = _observed(ReferenceData)(watcher)
    # a restarted incarnation recovers from its own latest snapshot (then the journal)
    replica = Replica(machine, ring=ring, journal=journal, snapshots=snapshots,
                      snapshot_from=snapshot_from if incarnation == 0 else None, name=label, idle=idle_named(idle))
    started = time.monotonic()
    replica.run_until_caught_up(timeout=60)
    caught = {"after_s": round(time.monotonic() - started, 3), "at_seq": replica.last_applied,
              "from_snapshot_seq": replica.started_from, "replayed": replica.applied}
    watcher.live = True
    status[slot] = replica.last_applied
    account = label.split("-")[0][:16]
    rng = random.Random(seed + 7919 * incarnation)
    counts = {"generated": 0, "accepted": 0, "rejected_halted": 0, "rejected_off_tick": 0, "rejected_other": 0,
              "cancels": 0}
    open_ids: list[int] = []

    def bump(key: str) -> None:  # counted in this incarnation and (summed over incarnations) in shared memory
        counts[key] += 1
        if shared is not None:
            shared[OMS_KEYS.index(key)] += 1

    client = _connect(ring, label)
    results.put((label, "caught-up" if incarnation == 0 else "recovered", caught))
    try:
        next_id = id_base + incarnation * INCARNATION_IDS
        t0 = time.monotonic()
        while not stop_orders.is_set():
            if abort.is_set():
                return
            replica.follow(duration=0.0005)  # (duration=0 only bootstraps)
            status[slot] = replica.last_applied
            due = int((time.monotonic() - t0) * rate) - counts["generated"]
            for _ in range(max(0, min(due, 50))):
                instruments = machine.instruments()
                if open_ids and rng.random() < 0.1:
                    client.submit(CancelOrder(order_id=open_ids.pop(rng.randrange(len(open_ids))), account=account))
                    bump("cancels")
                    bump("generated")
                    continue
                inst = rng.choice(instruments)
                side = rng.choice((BUY, SELL))
                base = 20 + 7 * (sum(inst.symbol.encode()) % 50)
                ticks = round(base / inst.tick_size) + rng.randint(-20, 20) * (1 if side == BUY else -1)
                price = ticks * inst.tick_size
                if rng.random() < off_tick:
                    price += inst.tick_size / 2  # deliberately off the tick: the OMS must refuse it
                qty = inst.lot_size * rng.randint(1, 20)
                next_id += 1
                why = machine.validate_order(inst.symbol, price, qty)
                if why is None:
                    submitted[next_id] = time.time_ns()
                    client.submit(NewOrder(order_id=next_id, symbol=inst.symbol, side=side, price=price, qty=qty,
                                           account=account))
                    bump("accepted")
                    bump("generated")
                    open_ids.append(next_id)
                    del open_ids[:-200]
                    continue
                reason = REASON_HALTED if "halted" in why else REASON_OFF_TICK if "tick" in why else REASON_OTHER
                client.submit(OrderRejected(order_id=next_id, reason=reason, text=why[:32]))
                bump("rejected_halted" if reason == REASON_HALTED else
                     "rejected_off_tick" if reason == REASON_OFF_TICK else "rejected_other")
                bump("generated")
            time.sleep(0.002)
        client.wait_sequenced(10)
        results.put((label, "quiet", dict(counts)))
        while watcher.final is None and not abort.is_set():
            replica.follow(duration=0.05)
            status[slot] = replica.last_applied
        results.put((label, "final", {"final": watcher.final, "read_ns": watcher.read_ns, "to_seq_ns": to_seq,
                                      "counts": counts, "caught_up": caught,
                                      "snapshots_written": len(replica.snapshots_written)}))
        _wait_event(done, abort)
    finally:
        client.close()
        replica.close()


# ---- the smart order router -------------------------------------------------------------------------

def _fills_for(order_id: int, qty: int) -> list[int]:
    """The fills the router reports for an order: a function of the order alone."""
    h = (order_id * 2654435761) & 0xFFFFFFFF
    kind = h % 4
    if kind == 0 or qty <= 0:
        return []            # it rests at the venue
    if kind == 1 or qty < 2:
        return [qty]         # filled at once
    if kind == 2:
        return [qty // 2]    # half filled, the rest rests
    return [qty // 2, qty - qty // 2]  # filled in two parts


def _sor_machine() -> type:
    """The router's machine: the reference data (its digest is the reference data's alone) plus, in
    its snapshots, the decisions (Route, Fill, OrderRejected) made for sequenced orders whose echo
    the router has not yet seen in the sequenced stream.  A restarted router recovers them from its
    snapshot and the journal: what was routed is what the stream says, not what memory says."""
    import collections
    import hashlib
    import pickle
    import struct
    from .refdata import ReferenceData

    class RouterState(ReferenceData):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.outstanding: Any = collections.deque()

        def snapshot(self) -> bytes:
            base = super().snapshot()
            return struct.pack("<I", len(base)) + base + pickle.dumps(list(self.outstanding))

        def restore(self, data: bytes) -> None:
            (n,) = struct.unpack_from("<I", data)
            super().restore(data[4:4 + n])
            self.outstanding = collections.deque(pickle.loads(data[4 + n:]))

        def digest(self) -> str:
            return hashlib.sha256(ReferenceData.snapshot(self)).hexdigest()

    return RouterState


def _sor(label: str, results: Any, idle: str, ring: str, journal: str, snapshots: str, status: Any, slot: int,
         drain: Any, drain_to: Any, done: Any, abort: Any, incarnation: int = 0, shared: Any = None) -> None:
    from .orders import (FILL, NEW_ORDER, ORDER_REJECTED, REASON_HALTED, REASON_OFF_TICK, ROUTE, Fill, NewOrder,
                         OrderRejected, Route)
    from .replica import Replica
    from .sequencer import source_id

    watcher = _Watcher()
    me = source_id(label)
    counts = {k: 0 for k in SOR_KEYS}
    sent = [0]  # how many of machine.outstanding (from the left) this incarnation has submitted

    def route(machine: Any, msg: Any) -> None:
        if msg.source == me and msg.msg_type in (ROUTE, FILL, ORDER_REJECTED):
            machine.outstanding.popleft()  # its echo: sequenced (the router's records are sequenced in order)
            sent[0] = max(0, sent[0] - 1)
            return
        if msg.msg_type != NEW_ORDER:
            return
        o = NewOrder.decode(msg.payload)
        why = machine.validate_order(o.symbol, o.price, o.qty)  # the reference data at this order's sequence
        if why is not None:
            machine.outstanding.append(OrderRejected(order_id=o.order_id, reason=REASON_HALTED if "halted" in why
                                                     else REASON_OFF_TICK, text=f"sor: {why}"[:32]))
            return
        venue = VENUES[o.order_id % len(VENUES)]
        machine.outstanding.append(Route(order_id=o.order_id, venue=venue, qty=o.qty))
        for q in _fills_for(o.order_id, o.qty):
            machine.outstanding.append(Fill(order_id=o.order_id, price=o.price, qty=q, venue=venue, liquidity=1))

    def bump(key: str) -> None:
        counts[key] += 1
        if shared is not None:
            shared[SOR_KEYS.index(key)] += 1

    watcher.extra = route
    machine = _observed(_sor_machine())(watcher)
    replica = Replica(machine, ring=ring, journal=journal, snapshots=snapshots, name=label, idle=idle_named(idle))
    started = time.monotonic()
    # connect first: a killed predecessor's inbound ring is drained before this one is taken, so once
    # connected, everything it submitted is in the stream and catching up sees its echo
    client = _connect(ring, label)
    try:
        replica.run_until_caught_up(timeout=60)
        watcher.live = True
        results.put((label, "caught-up" if incarnation == 0 else "recovered",
                     {"at_seq": replica.last_applied, "from_snapshot_seq": replica.started_from,
                      "replayed": replica.applied, "after_s": round(time.monotonic() - started, 3),
                      "outstanding": len(machine.outstanding)}))
        quiet = False
        while watcher.final is None:
            if abort.is_set():
                return
            replica.follow(duration=0.005)
            status[slot] = replica.last_applied
            out = machine.outstanding
            while sent[0] < len(out):
                record = out[sent[0]]
                client.submit(record)
                sent[0] += 1
                if isinstance(record, Route):
                    bump("routes")
                    bump("orders_seen")
                elif isinstance(record, Fill):
                    bump("fills")
                else:
                    bump("rejected")
                    bump("orders_seen")
            if drain.is_set() and not quiet and replica.last_applied >= drain_to.value:
                client.wait_sequenced(10)
                quiet = True
                results.put((label, "quiet", dict(counts)))
        results.put((label, "final", {"final": watcher.final, "read_ns": watcher.read_ns, "counts": counts,
                                      "snapshots_written": len(replica.snapshots_written)}))
        _wait_event(done, abort)
    finally:
        client.close()
        replica.close()


# ---- the market-data gateway and its FIX clients ----------------------------------------------------

def _levels(book: Any) -> dict[str, dict[str, dict[str, int]]]:
    """{symbol: {"0" bids / "1" offers: {price text: qty}}} of the non-empty sides."""
    from .orders import BUY, SELL, price_text
    out: dict[str, dict[str, dict[str, int]]] = {}
    for symbol in book.symbols():
        for side, key in ((BUY, "0"), (SELL, "1")):
            levels = {price_text(u): q for u, q, _ in book.level_units(symbol, side)}
            if levels:
                out.setdefault(symbol, {})[key] = levels
    return out


def _gateway(label: str, results: Any, idle: str, ring: str, journal: str, snapshots: str, status: Any, slot: int,
             port: Any, stop: Any, abort: Any) -> None:
    from .gateway import MarketDataGateway
    from .orders import OrderBook

    watcher = _Watcher()
    final_levels: list[Any] = []

    def at_final(machine: Any, msg: Any) -> None:
        if watcher.final is not None and not final_levels:
            final_levels.append(_levels(machine))

    watcher.extra = at_final
    gw = MarketDataGateway(ring, "127.0.0.1", 0, journal=journal, snapshots=snapshots, name=label,
                           poll_interval=0.002)
    # the gateway's book, observed (the same state, digest and level changes)
    book = _observed(OrderBook)(watcher, on_change=gw._on_change)
    gw.book = book
    gw.replica.machine = book
    port.value = gw.port
    results.put((label, "listening", gw.port))
    try:
        gw.start()
        while not stop.is_set() and not abort.is_set():
            gw.step()
            status[slot] = gw.replica.last_applied
            if not watcher.live and gw.replica.lag == 0:
                watcher.live = True  # caught up: from here on, what it reads is live
                results.put((label, "live", {"at_seq": gw.replica.last_applied,
                                             "from_snapshot_seq": gw.replica.started_from}))
            if watcher.final is not None and not final_levels:
                final_levels.append(_levels(book))
    finally:
        gw.close()
    results.put((label, "final", {"final": watcher.final, "read_ns": watcher.read_ns, "stats": gw.stats(),
                                  "levels": final_levels[0] if final_levels else None}))


_HEAD = re.compile(rb"8=FIX\.4\.4\x019=(\d+)\x01")


def _fix_client(label: str, results: Any, idle: str, port_value: Any, heartbeat: int, stop: Any,
                abort: Any) -> None:
    """A FIX 4.4 market-data client: frames and checks every message with its own code (BodyLength,
    CheckSum, MsgSeqNum with no gap; simplefix re-parses it when installed), rebuilds the book.  When
    the gateway goes away (killed by --chaos), it connects again to the gateway's new port: a new
    session, MsgSeqNum from 1, a fresh book from the 35=W snapshots."""
    from . import fix
    try:
        import simplefix  # type: ignore[import-untyped, import-not-found]
    except ImportError:
        simplefix = None

    def connect() -> socket.socket:
        end = time.monotonic() + 30
        while True:
            try:
                c = socket.create_connection(("127.0.0.1", port_value.value), timeout=10)
                c.setblocking(False)
                return c
            except OSError:
                if time.monotonic() > end or abort.is_set():
                    raise
                time.sleep(0.05)

    sock = connect()
    reconnects: list[str] = []
    sessions = 1
    messages = 0
    name = label.upper()
    out_seq = 0
    last_sent = time.monotonic()

    def send(body: Any) -> None:
        nonlocal out_seq, last_sent
        out_seq += 1
        sock.setblocking(True)
        sock.sendall(fix.frame(body, name, "PYSEQ", out_seq))
        sock.setblocking(False)
        last_sent = time.monotonic()

    send(fix.logon(heartbeat, reset=True))
    buf = bytearray()
    expect = 1
    by_type: dict[str, int] = {}
    problems: list[str] = []
    gaps = 0
    book: dict[str, dict[str, dict[str, int]]] = {}
    at_seq = 0
    eof = False
    logout_sent = False
    deadline: Optional[float] = None

    def handle(raw: bytes) -> None:
        nonlocal expect, gaps, at_seq, messages
        messages += 1
        head = _HEAD.match(raw)
        body = raw[head.end():-7] if head else b""
        if head is None or len(body) != int(head.group(1)):
            problems.append(f"bad BodyLength in {raw[:40]!r}")
        if raw[-7:] != b"10=%03d\x01" % (sum(raw[:-7]) % 256):
            problems.append(f"bad CheckSum in {raw[:40]!r}")
        if simplefix is not None:
            p = simplefix.FixParser()
            p.append_buffer(raw)
            m = p.get_message()
            if m is None or m.encode() != raw:
                problems.append(f"simplefix disagrees on {raw[:40]!r}")
        fields = [(int(t), v.decode()) for t, _, v in (f.partition(b"=") for f in raw.split(b"\x01")[:-1])]
        get = dict(fields)
        seq = int(get.get(34, "0"))
        if seq != expect:
            gaps += 1
            problems.append(f"MsgSeqNum {seq}, expected {expect}")
        expect = seq + 1
        t = get.get(35, "?")
        by_type[t] = by_type.get(t, 0) + 1
        if t == "1":
            send(fix.heartbeat(get.get(112, "")))
        elif t == "W":
            sides: dict[str, dict[str, int]] = {"0": {}, "1": {}}
            entry: dict[int, str] = {}
            for tag, value in fields[fields.index((268, get[268])) + 1:]:
                if tag == 269 and entry:
                    sides[entry[269]][entry[270]] = int(entry[271])
                    entry = {}
                if tag in (269, 270, 271):
                    entry[tag] = value
            if entry:
                sides[entry[269]][entry[270]] = int(entry[271])
            book[get[55]] = sides
            at_seq = max(at_seq, int(get.get(5500, 0)))
        elif t == "X":
            entry = {}
            entries = []
            for tag, value in fields:
                if tag == 279:
                    if entry:
                        entries.append(entry)
                    entry = {}
                if entry is not None and tag in (279, 269, 55, 270, 271):
                    entry[tag] = value
            if entry:
                entries.append(entry)
            for e in entries:
                side = book.setdefault(e[55], {"0": {}, "1": {}})[e[269]]
                if (e[270] in side) != (e[279] != "0"):
                    problems.append(f"entry {e} does not fit the book")
                if e[279] == "2":
                    side.pop(e[270], None)
                else:
                    side[e[270]] = int(e[271])
            at_seq = max(at_seq, int(get.get(5500, 0)))

    while not eof:
        if abort.is_set():
            break
        if stop.is_set() and not logout_sent:
            send(fix.logout())
            logout_sent = True
            deadline = time.monotonic() + 10
        if deadline is not None and time.monotonic() > deadline:
            problems.append("no end of the session within 10 s of the Logout")
            break
        lost = False
        try:
            data = sock.recv(1 << 16)
            if not data:
                if logout_sent:
                    eof = True
                else:
                    lost = True
            buf += data
        except (BlockingIOError, InterruptedError):
            time.sleep(0.002)
        except OSError as e:
            if logout_sent:
                problems.append(f"receive failed: {e}")
                break
            lost = True
        if lost:  # the gateway is gone: a new session with its successor
            reconnects.append(f"session {sessions} lost after its message {expect - 1} "
                              f"({messages} messages in all)")
            sock.close()
            sock = connect()
            sessions += 1
            buf.clear()
            book.clear()
            expect = 1
            out_seq = 0
            send(fix.logon(heartbeat, reset=True))
            continue
        while True:
            head = _HEAD.match(buf)
            if head is None:
                if len(buf) >= 20 or (buf and not b"8=FIX.4.4\x019=".startswith(bytes(buf[:14]))):
                    if not _HEAD.match(buf + b"0\x01") and len(buf) >= 20:
                        problems.append(f"garbage in the stream: {bytes(buf[:40])!r}")
                        buf.clear()
                break
            end = head.end() + int(head.group(1)) + 7
            if len(buf) < end:
                break
            raw = bytes(buf[:end])
            del buf[:end]
            handle(raw)
        if not logout_sent and time.monotonic() - last_sent >= heartbeat:
            send(fix.heartbeat())
    sock.close()
    normal = {sym: {k: v for k, v in sides.items() if v} for sym, sides in book.items()}
    results.put((label, "final", {"messages": messages, "sessions": sessions, "reconnects": reconnects,
                                  "by_type": by_type, "gaps": gaps,
                                  "problems": problems[:20], "book": {s: v for s, v in normal.items() if v},
                                  "at_seq": at_seq, "simplefix": simplefix is not None}))


# ---- the command ------------------------------------------------------------------------------------

class _Interrupted(Exception):
    pass


class Demo:
    """The orchestrator (runs in the ``pyseq demo`` process)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.duration = args.duration
        self.ring = args.ring or f"demo-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.keep_dir = args.dir is not None
        self.dir = os.path.abspath(args.dir) if args.dir else tempfile.mkdtemp(prefix="pyseq-demo-")
        os.makedirs(self.dir, exist_ok=True)
        self.journal = os.path.join(self.dir, "journal")
        self.results = SPAWN.Queue()
        self.events: dict[tuple[str, str], Any] = {}
        self.procs: dict[str, Any] = {}
        # no multiprocessing lock anywhere a process may be SIGKILLed (--chaos): a lock held by a killed
        # process is never released, and every other process touching it would hang
        self.status = SPAWN.Array("q", [-1] * len(SLOTS), lock=False)
        self.port = SPAWN.Value("i", 0, lock=False)
        self.drain_to = SPAWN.Value("q", 0, lock=False)
        self.ev = {k: _Flag() for k in ("abort", "stop_seq", "stop_orders", "drain", "final", "done",
                                             "stop_fix", "stop_gw")}
        self.interrupted: Optional[str] = None
        self.tty = sys.stdout.isatty()
        self.cores = len(os.sched_getaffinity(0))
        self.idle = self._plan_idle(args.busy_spin)
        self.started = 0.0
        self.late_started_at: Optional[float] = None
        # --chaos: counters summed over incarnations (shared memory, no lock: one writer at a time)
        self.shared = {"retail-oms": SPAWN.Array("q", len(OMS_KEYS), lock=False),
                       "institutional-oms": SPAWN.Array("q", len(OMS_KEYS), lock=False),
                       "sor": SPAWN.Array("q", len(SOR_KEYS), lock=False)}
        self.recipes: dict[str, tuple[Any, tuple]] = {}
        self.incarnation: dict[str, int] = {}
        self.dead: list[Any] = []
        self.event_times: dict[tuple[str, str], float] = {}
        self.faults: list[dict[str, Any]] = []
        self.pending_fault: Optional[dict[str, Any]] = None
        self.chaos_plan: list[tuple[float, str]] = []

    def _plan_idle(self, force: bool) -> dict[str, str]:
        """Busy-spin only where a core is free for it: the sequencer from 4 cores on, the router from 8
        (it is on the order path); everything else backs off.  --busy-spin: everything spins."""
        names = ["sequencer", "journaler", "admin", *SLOTS] + [f"fix-{i + 1}" for i in range(self.args.clients)]
        plan = {n: "backoff" for n in names}
        if force:
            return {n: "busy-spin" for n in names}
        if self.cores >= 4:
            plan["sequencer"] = "busy-spin"
        if self.cores >= 8:
            plan["sor"] = "busy-spin"
        return plan

    # ---- processes -----------------------------------------------------------------------------

    def start(self, label: str, fn: Callable[..., Any], *args: Any) -> None:
        p = SPAWN.Process(target=_child, args=(fn, label, self.results, self.idle.get(label, "backoff"),
                                               os.getpid(), *args), name=label, daemon=True)
        # the child starts with SIGINT blocked (the mask survives fork and exec) and ignores it before
        # unblocking: a Ctrl-C during its start-up is the parent's alone, which stops everything in order.
        # (The resource tracker is started first: starting it unblocks SIGINT, bpo-33613.)
        resource_tracker.ensure_running()
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            p.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        self.procs[label] = p
        self.recipes[label] = (fn, args)
        self.incarnation.setdefault(label, 0)

    # ---- chaos ---------------------------------------------------------------------------------

    def plan_chaos(self) -> None:
        """Seeded: one SIGKILL of each of retail-oms, sor and the gateway at random moments of the order
        flow, and of the institutional OMS once it has joined; one fault at a time."""
        d = self.duration
        rng = random.Random(self.args.seed * 7919 + 17)
        first = rng.sample(["retail-oms", "sor", "gateway"], 3)
        slots = [(0.10, 0.25), (0.25, 0.40), (0.40, 0.55)]
        self.chaos_plan = [(rng.uniform(lo, hi) * d, t) for (lo, hi), t in zip(slots, first)]
        self.chaos_plan.append((rng.uniform(0.60, 0.75) * d, "institutional-oms"))

    def chaos_step(self, now_s: float) -> None:
        f = self.pending_fault
        if f is not None:
            key = (f["process"], "live" if f["process"] == "gateway" else "recovered")
            if key in self.events:
                value = self.events[key]
                f["recovered_after_s"] = round(self.event_times[key] - self.started - f["killed_at_s"], 3)
                f["restarted_from_snapshot_seq"] = value.get("from_snapshot_seq")
                f["live_at_seq"] = value.get("at_seq")
                self.note(f"chaos: {f['process']} is live again after {f['recovered_after_s']:.2f} s (from the "
                          f"snapshot at {f['restarted_from_snapshot_seq']}, live at sequence {f['live_at_seq']})")
                self.pending_fault = None
            return
        if not self.chaos_plan or now_s < self.chaos_plan[0][0]:
            return
        target = self.chaos_plan[0][1]
        ready = "live" if target == "gateway" else "caught-up"
        if target not in self.procs or (target, ready) not in self.events:
            return  # not started or not live yet: later
        if time.monotonic() - self.event_times[(target, ready)] < 0.3:
            return  # its last word to the results queue may still hold the queue's write lock
        self.chaos_plan.pop(0)
        self.kill_and_restart(target)

    def kill_and_restart(self, label: str) -> None:
        p = self.procs.pop(label)
        killed_at = time.monotonic() - self.started
        os.kill(p.pid, signal.SIGKILL)
        p.join(10)
        self.dead.append(p)
        self.status[SLOTS.index(label)] = -1
        if label == "gateway":
            self.port.value = 0  # the FIX clients wait for the successor's port
        for kind in ("recovered", "live", "listening"):
            self.events.pop((label, kind), None)
        n = self.incarnation[label] = self.incarnation[label] + 1
        fn, args = self.recipes[label]
        if fn in (_oms, _sor):
            args = (*args[:-2], n, args[-1])  # the same process, its next incarnation
        fault = {"process": label, "signal": "SIGKILL", "pid": p.pid, "killed_at_s": round(killed_at, 3),
                 "incarnation": n, "recovered_after_s": None, "restarted_from_snapshot_seq": None,
                 "live_at_seq": None}
        self.faults.append(fault)
        self.pending_fault = fault
        self.note(f"chaos: SIGKILL {label} (pid {p.pid}); restarting it")
        self.start(label, fn, *args)

    def pump(self) -> None:
        while True:
            try:
                label, kind, value = self.results.get_nowait()
            except queue.Empty:
                return
            if kind == "error":
                raise RuntimeError(f"process {label} failed:\n{value}")
            self.events[(label, kind)] = value
            self.event_times[(label, kind)] = time.monotonic()
            if kind == "caught-up" and label == "institutional-oms":
                self.note(f"institutional-oms caught up: from the snapshot at {value['from_snapshot_seq']}, "
                          f"replayed {value['replayed']} messages in {value['after_s']:.2f} s, live at sequence "
                          f"{value['at_seq']}")

    def wait(self, label: str, kind: str, timeout: float = 30.0) -> Any:
        end = time.monotonic() + timeout
        while (label, kind) not in self.events:
            self.check()
            p = self.procs.get(label)
            if p is not None and not p.is_alive():
                time.sleep(0.3)
                self.pump()
                if (label, kind) in self.events:
                    break
                raise RuntimeError(f"process {label} exited (code {p.exitcode}) before {kind!r}")
            if time.monotonic() > end:
                raise RuntimeError(f"process {label}: no {kind!r} within {timeout} s")
            time.sleep(0.02)
        return self.events[(label, kind)]

    def check(self) -> None:
        if self.interrupted:
            raise _Interrupted(self.interrupted)
        self.pump()
        for label, p in self.procs.items():
            if not p.is_alive() and p.exitcode not in (0, None) \
                    and (label, "final") not in self.events:
                raise RuntimeError(f"process {label} died (exit code {p.exitcode})")

    # ---- progress ------------------------------------------------------------------------------

    def note(self, text: str) -> None:
        if self.tty:
            sys.stdout.write("\r\x1b[K")
        print(f"[{time.monotonic() - self.started:6.1f}s] {text}", flush=True)

    def progress(self, ring: Any, last: list[float]) -> None:
        now = time.monotonic()
        published = ring.published_sequence
        rate = (published - last[1]) / max(1e-6, now - last[0])
        last[0], last[1] = now, published
        lags = " ".join(f"{name}={published - self.status[i]}" if self.status[i] >= 0 else f"{name}=-"
                        for i, name in enumerate(SLOTS))
        line = f"[{now - self.started:6.1f}s] seq {published:>8}  {rate:>8.0f} msg/s  lag: {lags}"
        if self.tty:
            sys.stdout.write("\r\x1b[K" + line)
            sys.stdout.flush()
        else:
            print(line, flush=True)

    # ---- the run -------------------------------------------------------------------------------

    def run(self) -> int:
        from .ring import Ring
        a = self.args
        self.started = time.monotonic()
        print(f"pyseq demo: ring {self.ring!r}, dir {self.dir}, {a.duration:g} s, {a.clients} FIX clients, "
              f"{self.cores} cores (idle: sequencer {self.idle['sequencer']}, others "
              f"{self.idle['retail-oms']})", flush=True)
        self.start("sequencer", _sequencer, self.ring, self.journal, self.idle["journaler"], self.ev["stop_seq"])
        self.wait("sequencer", "ready", 30)
        self.start("admin", _admin, self.ring, a.seed, 32, 0.25, max(1.0, a.duration / 8), self.ev["stop_orders"],
                   self.ev["final"], self.ev["done"], self.ev["abort"])
        self.wait("admin", "loaded", 30)
        snap = lambda name: os.path.join(self.dir, "snapshots", name)  # noqa: E731
        self.start("sor", _sor, self.ring, self.journal, snap("sor"), self.status, SLOTS.index("sor"),
                   self.ev["drain"], self.drain_to, self.ev["done"], self.ev["abort"], 0, self.shared["sor"])
        self.start("retail-oms", _oms, self.ring, self.journal, snap("retail-oms"), None, self.status,
                   SLOTS.index("retail-oms"), a.seed + 1, a.rate, 0, 0.05, self.ev["stop_orders"], self.ev["done"],
                   self.ev["abort"], 0, self.shared["retail-oms"])
        self.start("gateway", _gateway, self.ring, self.journal, snap("gateway"), self.status,
                   SLOTS.index("gateway"), self.port, self.ev["stop_gw"], self.ev["abort"])
        self.wait("gateway", "listening", 30)
        for i in range(a.clients):
            self.start(f"fix-{i + 1}", _fix_client, self.port, 5, self.ev["stop_fix"], self.ev["abort"])
        self.wait("retail-oms", "caught-up", 30)
        self.wait("sor", "caught-up", 30)
        self.started = time.monotonic()
        self.note("every process is up: order flow starts")
        last = [time.monotonic(), 0.0]
        with Ring.attach(self.ring) as ring:
            last[1] = ring.published_sequence
            next_view = 0.0
            if a.chaos:
                self.plan_chaos()
            while time.monotonic() - self.started < a.duration or self.pending_fault is not None:
                self.check()
                now = time.monotonic()
                if a.chaos:
                    self.chaos_step(now - self.started)
                if now - self.started > a.duration + 60:
                    raise RuntimeError(f"chaos: {self.pending_fault} did not recover within 60 s")
                if self.late_started_at is None and now - self.started >= 0.4 * a.duration:
                    self.late_started_at = now - self.started
                    self.note("institutional-oms joins: from the retail OMS's latest snapshot, then the journal")
                    self.start("institutional-oms", _oms, self.ring, self.journal, snap("institutional-oms"),
                               snap("retail-oms"), self.status, SLOTS.index("institutional-oms"), a.seed + 2,
                               a.rate / 4, 1_000_000_000, 0.0, self.ev["stop_orders"], self.ev["done"],
                               self.ev["abort"], 0, self.shared["institutional-oms"])
                if now >= next_view:
                    next_view = now + (0.25 if self.tty else 1.0)
                    self.progress(ring, last)
                time.sleep(0.02)
            run_s = time.monotonic() - self.started
            self.note("order flow stops; the router drains; the final marker")
            self.ev["stop_orders"].set()
            if self.late_started_at is not None:
                self.wait("institutional-oms", "caught-up", 60)
            oms = {n: self.wait(n, "quiet", 30) for n in ("retail-oms", "institutional-oms", "admin")
                   if n in self.procs}
            self.drain_to.value = ring.published_sequence
            self.ev["drain"].set()
            self.wait("sor", "quiet", 30)
            self.ev["final"].set()
            admin = self.wait("admin", "final-submitted", 30)
            finals = {n: self.wait(n, "final", 30) for n in ("retail-oms", "sor", "institutional-oms")
                      if n in self.procs}
            published_at_final = ring.published_sequence
        # the gateway has the final marker once its book is there; then the FIX clients log out
        end = time.monotonic() + 30
        while self.status[SLOTS.index("gateway")] < max(f["final"][0] for f in finals.values()):
            self.check()
            if time.monotonic() > end:
                raise RuntimeError("the gateway did not reach the final marker within 30 s")
            time.sleep(0.02)
        time.sleep(0.2)  # its last incremental refreshes go out
        self.ev["stop_fix"].set()
        fixr = {f"fix-{i + 1}": self.wait(f"fix-{i + 1}", "final", 30) for i in range(a.clients)}
        self.ev["stop_gw"].set()
        gw = self.wait("gateway", "final", 30)
        self.ev["done"].set()
        for n in ("admin", "retail-oms", "sor", "institutional-oms"):
            if n in self.procs:
                self.procs[n].join(20)
        self.ev["stop_seq"].set()
        seq = self.wait("sequencer", "done", 30)
        for p in self.procs.values():
            p.join(20)
        if self.tty:
            sys.stdout.write("\r\x1b[K")
        report = self.report(run_s, oms, admin, finals, gw, fixr, seq, published_at_final)
        print(self.text(report), flush=True)
        if a.json:
            with open(a.json, "w") as f:
                json.dump(report, f, indent=2, sort_keys=True)
        return 0 if report["ok"] else 1

    # ---- the report ----------------------------------------------------------------------------

    def report(self, run_s: float, oms: dict, admin: dict, finals: dict, gw: dict, fixr: dict, seq: dict,
               published_at_final: int) -> dict[str, Any]:
        from . import errors, schema
        from .journal import Journal
        from .orders import OrderBook
        from .refdata import ReferenceData
        from .sequencer import CLIENT_JOINED, CLIENT_LEFT, END_OF_STREAM

        problems: list[str] = []
        final_seqs = {n: f["final"][0] for n, f in finals.items() if f["final"]}
        final_seqs["gateway"] = gw["final"][0] if gw["final"] else None
        final_seq = finals["retail-oms"]["final"][0]
        if set(final_seqs.values()) != {final_seq}:
            problems.append(f"the replicas saw the final marker at different sequences: {final_seqs}")
        # replicas of our own over the journal, to the final marker
        refdata, book = ReferenceData(), OrderBook()
        journal = Journal(self.journal)
        by_type_num: dict[int, int] = {}
        for msg in journal.records(stop=final_seq):
            refdata.apply(msg)
            book.apply(msg)
        info = journal.info()
        for t, n in info["by_type"].items():
            by_type_num[int(t)] = n
        system = {CLIENT_JOINED: "CLIENT_JOINED", CLIENT_LEFT: "CLIENT_LEFT", END_OF_STREAM: "END_OF_STREAM"}
        registered = schema.registered()

        def type_name(t: int) -> str:
            if t in system:
                return system[t]
            if t not in registered:
                return f"0x{t:04X}"
            try:
                return schema.lookup(t, 1).__name__  # the type's name (not a later version's class name)
            except errors.SchemaError:
                return registered[t].__name__

        by_type = {type_name(t): n for t, n in sorted(by_type_num.items())}
        digests = {n: f["final"][1] for n, f in finals.items() if f["final"]}
        digests["journal"] = refdata.digest()
        if len(set(digests.values())) != 1:
            problems.append(f"DIGESTS DIFFER at sequence {final_seq}: {digests}")
        book_digests = {"gateway": gw["final"][1] if gw["final"] else None, "journal": book.digest()}
        if len(set(book_digests.values())) != 1:
            problems.append(f"ORDER-BOOK DIGESTS DIFFER at sequence {final_seq}: {book_digests}")
        # latency by hop
        lat: dict[str, Any] = {}
        to_seq = finals["retail-oms"]["to_seq_ns"] + finals.get("institutional-oms", {}).get("to_seq_ns", [])
        lat["client->sequencer"] = _percentiles(to_seq)
        reads: list[int] = []
        for n, f in [*finals.items(), ("gateway", gw)]:
            lat[f"sequencer->{n}"] = _percentiles(f["read_ns"])
            reads += f["read_ns"]
        lat["sequencer->reader"] = _percentiles(reads)
        # FIX
        stats = gw["stats"]
        clients = {}
        for n, r in fixr.items():
            match = gw["levels"] is not None and r["book"] == gw["levels"]
            clients[n] = {k: r[k] for k in ("messages", "sessions", "reconnects", "by_type", "gaps", "problems",
                                            "at_seq", "simplefix")}
            clients[n]["book_matches_gateway"] = match
            if r["gaps"] or r["problems"]:
                problems.append(f"FIX client {n}: {r['gaps']} gaps, problems: {r['problems'][:3]}")
            if not match:
                problems.append(f"FIX client {n}: the book it rebuilt differs from the gateway's")
            if r["messages"] == 0:
                problems.append(f"FIX client {n} received nothing")
        # counts summed over every incarnation of each process (--chaos restarts them)
        oms_counts = {n: dict(zip(OMS_KEYS, self.shared[n][:])) for n in ("retail-oms", "institutional-oms")
                      if n in finals}
        sor_counts = dict(zip(SOR_KEYS, self.shared["sor"][:]))
        late = self.events.get(("institutional-oms", "caught-up"))
        if late is not None:
            late = dict(late, joined_at_s=round(self.late_started_at or 0, 3))
        sequenced = final_seq - (info["first_seq"] or 1) + 1
        for f in self.faults:
            if f["recovered_after_s"] is None:
                problems.append(f"chaos: {f['process']} killed at {f['killed_at_s']} s never recovered")
        report = {
            "ok": not problems, "problems": problems, "ring": self.ring, "dir": self.dir, "dir_kept": self.keep_dir,
            "duration_s": self.duration, "run_s": round(run_s, 3), "cores": self.cores, "idle": self.idle,
            "final_seq": final_seq, "journal_records": info["records"], "journal_last_seq": info["last_seq"],
            "throughput_msg_s": round(sequenced / run_s, 1),
            "digests": digests, "orderbook_digests": book_digests,
            "messages_by_type": by_type, "latency_ns": lat, "faults": self.faults, "chaos": bool(self.args.chaos),
            "oms": oms_counts, "sor": sor_counts, "admin": admin, "late_joiner": late,
            "fix": {"clients_served": stats["clients_served"], "messages_sent": stats["messages_sent"],
                    "snapshots_sent": stats["snapshots_sent"], "incrementals_sent": stats["incrementals_sent"],
                    "clients": clients},
            "snapshots_written": {n: f["snapshots_written"] for n, f in finals.items()},
            "journal": seq.get("journal"),
        }
        return report

    def text(self, r: dict[str, Any]) -> str:
        us = lambda ns: f"{ns / 1000:.0f}" if ns is not None else "-"  # noqa: E731
        lines = ["", "=== pyseq demo report ===",
                 f"ran {r['run_s']:.1f} s on {r['cores']} cores; final sequence {r['final_seq']} "
                 f"({r['throughput_msg_s']:.0f} msg/s sequenced); journal: {r['journal_records']} records",
                 "idle strategies: " + ", ".join(f"{k} {v}" for k, v in r["idle"].items()),
                 "messages by type: " + ", ".join(f"{k} {v}" for k, v in r["messages_by_type"].items())]
        for n, c in r["oms"].items():
            lines.append(f"{n}: {c['generated']} generated, {c['accepted']} accepted, refused locally: "
                         f"{c['rejected_halted']} halted, {c['rejected_off_tick']} off-tick; {c['cancels']} cancels")
        s = r["sor"]
        lines.append(f"sor: {s['orders_seen']} orders seen, {s['routes']} routed, {s['fills']} fills, "
                     f"{s['rejected']} rejected (reference data changed before the order was sequenced)")
        a = r["admin"]
        lines.append(f"admin: {a['instruments_added']} instruments, {a['tick_updates']} tick-size updates, "
                     f"{a['halts']} halts, {a['resumes']} resumes, {a['snapshots']} snapshots")
        if r["late_joiner"]:
            lj = r["late_joiner"]
            lines.append(f"institutional-oms joined at {lj['joined_at_s']:.1f} s from the snapshot at sequence "
                         f"{lj['from_snapshot_seq']}, replayed {lj['replayed']} messages and was live at sequence "
                         f"{lj['at_seq']} after {lj['after_s']:.2f} s")
        lines.append(f"  {'latency (us), by hop':<28} {'count':>7} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}")
        for hop, p in r["latency_ns"].items():
            lines.append(f"  {hop:<28} {p['count']:>7} {us(p.get('p50')):>8} {us(p.get('p90')):>8} "
                         f"{us(p.get('p99')):>8} {us(p.get('max')):>8}")
        f = r["fix"]
        lines.append(f"FIX gateway: {f['clients_served']} clients served, {f['messages_sent']} messages sent "
                     f"({f['snapshots_sent']} 35=W, {f['incrementals_sent']} 35=X)")
        for n, c in f["clients"].items():
            lines.append(f"  {n}: {c['messages']} messages in {c['sessions']} session(s), {c['gaps']} gaps, "
                         f"book "
                         f"{'= the gateway' if c['book_matches_gateway'] else 'DIFFERS'}")
        lines.append(f"digests at sequence {r['final_seq']}:")
        for n, d in r["digests"].items():
            lines.append(f"  refdata   {n:<20} {d}")
        for n, d in r["orderbook_digests"].items():
            lines.append(f"  orderbook {n:<20} {d}")
        if not r["faults"]:
            lines.append("faults: none" + ("" if r["chaos"] else " (no --chaos)"))
        else:
            lines.append(f"faults ({len(r['faults'])}, SIGKILL then restart):")
        for f in r["faults"]:
            rec = "NOT RECOVERED" if f["recovered_after_s"] is None else \
                f"live again after {f['recovered_after_s']:.2f} s at sequence {f['live_at_seq']}, from the snapshot " \
                f"at {f['restarted_from_snapshot_seq']}"
            lines.append(f"  {f['process']:<18} killed at {f['killed_at_s']:6.2f} s: {rec}")
        lines.append("OK: every replica holds the same state at the same sequence" if r["ok"] else
                     "FAILED:\n  " + "\n  ".join(r["problems"]))
        return "\n".join(lines)

    # ---- the end, always -----------------------------------------------------------------------

    def _discard_results(self) -> None:
        try:
            while True:
                self.results.get_nowait()
        except Exception:  # queue.Empty, or a queue already closed
            pass

    def cleanup(self) -> None:
        from .ring import Ring
        self.ev["abort"].set()
        self.ev["stop_seq"].set()
        end = time.monotonic() + 10
        for p in self.dead:
            p.join(1)
        for p in self.procs.values():
            while p.is_alive() and time.monotonic() < end:
                self._discard_results()  # a child blocks on exit until what it queued is read
                p.join(0.05)
        for p in self.procs.values():
            if p.is_alive():
                p.terminate()
                p.join(2)
            if p.is_alive():
                p.kill()
                p.join(5)
        try:
            self.results.close()
            self.results.cancel_join_thread()
        except Exception:
            pass
        for path in glob.glob(f"/dev/shm/pyseq.{glob.escape(self.ring)}.in.*") + [f"/dev/shm/pyseq.{self.ring}"]:
            name = os.path.basename(path)[len("pyseq."):]
            try:
                Ring.remove(name, force=True)
            except Exception:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        if not self.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


def _ring_name(text: str) -> str:
    from . import errors
    from .sequencer import validate_sequenced_name
    try:
        return validate_sequenced_name(text)
    except errors.RingNameError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_parser(sub: Any) -> None:
    """Add ``pyseq demo`` to the ``pyseq`` command's subparsers."""
    from .cli import _positive  # the command's own argument type (cli imports this module first)

    p = sub.add_parser("demo", help="run the whole trading environment on this machine, then report",
                       description="Start a sequencer with its journal, an admin client changing reference data, a "
                                   "retail OMS, a smart order router, an institutional OMS that joins late from a "
                                   "snapshot, a FIX market-data gateway and FIX clients, each its own process; show "
                                   "a live progress line; at the end check that every replica holds the same state "
                                   "at the same sequence (exit 1 if not) and print a report.")
    p.add_argument("--duration", type=_positive(float, "a number of seconds > 0"), default=20.0,
                   help="seconds of order flow (default 20)")
    p.add_argument("--clients", type=_positive(int, "an integer > 0"), default=2, help="FIX clients (default 2)")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON to FILE")
    p.add_argument("--busy-spin", action="store_true", help="every process busy-spins (default: only where a "
                                                            "core is free)")
    p.add_argument("--dir", metavar="DIR", help="journal and snapshots here, kept (default: a temporary directory, "
                                                "removed after)")
    p.add_argument("--ring", type=_ring_name, help="the sequenced ring's name (default: a unique one)")
    p.add_argument("--rate", type=_positive(float, "a number > 0"), default=300.0,
                   help="orders per second from the retail OMS (default 300; the institutional OMS sends a quarter)")
    p.add_argument("--seed", type=int, default=1, help="seed of every random choice (default 1)")
    p.add_argument("--chaos", action="store_true", help="SIGKILL the retail OMS, the router, the institutional OMS "
                                                        "and the gateway at random (seeded) moments; each restarts, "
                                                        "recovers from its snapshot and the journal, goes live")
    p.set_defaults(run=_run_demo, parser=p)


def _run_demo(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    demo: Optional[Demo] = None
    caught: list[str] = []

    def on_signal(signum: int, _frame: Any) -> None:
        caught.append(signal.Signals(signum).name)
        if demo is not None:
            demo.interrupted = caught[0]

    # the handlers first: a Ctrl-C while the demo is being set up stops it the same orderly way
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        demo = Demo(args)
        if caught:
            demo.interrupted = caught[0]
        return demo.run()
    except _Interrupted as e:
        print(f"\npyseq demo: {e} received: stopping every process", file=sys.stderr, flush=True)
        return 130 if str(e) == "SIGINT" else 143
    except RuntimeError as e:
        print(f"\npyseq demo FAILED: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        try:
            if demo is not None:
                demo.cleanup()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
