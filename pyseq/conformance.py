"""The conformance kit: does another implementation of a state machine reach the same state, message
for message, as the reference?

State machine replication holds only if every replica's ``apply`` is deterministic and every
implementation encodes the same state to the same canonical bytes.  A replica written by another
team (or in another language, through a Python wrapper) proves it against a *kit*::

    pyseq conformance record kit/                                # the reference writes a kit
    pyseq conformance check kit/ --machine their_refdata:RefData # exit 0 conformant, 1 not, 2 usage

A kit is a directory:

``journal/``
    a journal (:class:`pyseq.Journal`) of a seeded, deterministic reference-data workload, published
    through a real ring by a :class:`pyseq.Journaler` with deterministic timestamps and sources.  It
    exercises everything: adds (ASCII and unicode symbols up to 16 UTF-8 bytes, subnormal and
    non-decimal tick sizes), updates of tick and lot (and no-op updates), halts with and without a
    reason, resumes, duplicates, unknown symbols and invalid values that must be rejected (and which
    reject wins when two apply), payloads that do not decode, payloads shorter or longer than their
    layout (decoded by the rules of :mod:`pyseq.schema`), :class:`pyseq.TakeSnapshot` commands, an
    :class:`pyseq.ActivateSchema` of AddInstrument version 2 at a later sequence (v2 payloads before
    it are read as v1, the message *at* that sequence is the first read as v2) followed by v2 adds
    with ``max_order_qty``, and messages of types the machine must ignore (client joins, replica
    digests, other applications' messages, END_OF_STREAM).
``snapshots/``
    the reference's snapshot files, one per TakeSnapshot of the workload (what a late joiner starts
    from).
``expected.json``
    the machine's name, the first and last sequence, the digest of the empty state and the
    reference's digest after every sequence (``--every 1``, the default) or after every K-th and the
    last (``--every K``, for long workloads), a checksum of the journal's messages, and the spec of
    the reference implementation (``pyseq.refdata:ReferenceData``).

``check`` drives the implementation through a :class:`pyseq.Replica` over the kit's journal, exactly
as a replica in production is driven (the replica applies ActivateSchema to ``schema_versions``), and
compares its ``digest()`` after each sequence.  The report names the *exact* first sequence whose
digest differs, with both digests, the message at that sequence (decoded), what the workload meant
it to exercise, and how the two states differ (for reference data: which instrument, which field).
With ``--every K`` the first differing checkpoint brackets the divergence, and the reference is run
again over that bracket to find the exact sequence.  If every digest matches, a fresh instance is
started from each of the kit's snapshots (the reference's bytes: a late joiner restoring another
implementation's snapshot) and must match from there to the end.

An implementation is named ``module:Class`` (the current directory is importable) or
``path/to/file.py:Class``; calling it with no arguments makes a machine with ``name``,
``apply(message)``, ``snapshot()`` (the canonical bytes), ``restore(bytes)``, ``digest()`` (default:
the SHA-256 of ``snapshot()``) and a ``schema_versions`` dict (what :class:`pyseq.StateMachine`
has).  It may decode payloads with :mod:`struct` from the documented layouts, or use
``pyseq.refdata``'s message records; it must not declare its own :class:`pyseq.Record` classes for
the reference-data message types (one class per type and version in a process).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import importlib.util
import json
import math
import os
import random
import struct
import sys
import uuid
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Union

from . import errors
from .idle import BackoffIdle
from .journal import Journal
from .message import Message

if TYPE_CHECKING:
    from .replica import Replica

FORMAT = "pyseq-conformance-kit/1"
GENERATOR = "refdata-workload/1"
EXPECTED = "expected.json"
JOURNAL_DIR = "journal"
SNAPSHOT_DIR = "snapshots"
DEFAULT_MESSAGES = 2000
DEFAULT_SEED = 1
REFERENCE = "pyseq.refdata:ReferenceData"
BASE_NS = 1_700_000_000_000_000_000  # the workload's first sequencing time (2023-11-14T22:13:20Z)
STEP_NS = 1_000_000                  # a message every millisecond, plus a seeded jitter below that
RING_CAPACITY = 1024
RING_SLOT = 256
PUBLISH_TIMEOUT_S = 30.0

# who sends what (the source id is the CRC-32 of the name, as the sequencer stamps it)
ADMIN, OPS, OMS, OMS2, MONITOR = "refdata-admin", "ops", "oms-1", "oms-2", "replica-a"

MachineFactory = Callable[[], Any]


class ConformanceError(errors.PyseqError):
    """A conformance kit or an implementation that cannot be used (the command exits 2)."""


class KitError(ConformanceError):
    """The directory is not a usable conformance kit: missing, incomplete, or inconsistent."""


class MachineSpecError(ConformanceError):
    """``--machine`` names nothing that can be loaded and instantiated."""


class WorkloadError(ConformanceError, ValueError):
    """A workload that cannot be made: too few messages to cover every case."""


# ================================================================================ the workload

@dataclasses.dataclass(frozen=True)
class Event:
    """One message of the workload: what is published, by whom, and what it exercises."""

    msg_type: int
    payload: bytes
    schema_version: int
    source: str  # the sender's client name ("" for the sequencer itself)
    note: str


def source_id(name: str) -> int:
    from .sequencer import source_id as crc_source

    return crc_source(name) if name else 0


def _utf8_len(text: str) -> int:
    return len(text.encode())


# Symbols the coverage script adds first: prefixes of each other (sort order), every UTF-8 length,
# NFC and NFD spellings of the same letter (two different symbols: nothing is normalised), a
# full-width and an astral symbol (UTF-8 byte order differs from UTF-16 code unit order), and
# symbols of exactly 16 bytes.
INTERESTING_SYMBOLS = ["AAPL", "MSFT", "AB", "ABC", "AB.C", "BRK.B", "Z", "0001.HK", "株式会社ABC", "ＡＢＣ",
                       "🚀MOON", "é", "e\u0301", "日本電気株X", "ÅÅÅÅÅÅÅÅ", "Ω-OMEGA", "ÄÖÜ.DE", "SIXTEENBYTES1234"]
TICKS = [0.01, 0.05, 0.25, 0.5, 1.0, 0.0001, 0.001, 0.1, 5.0, 1 / 3, 1e-8, 0.005]
LOTS = [1, 1, 1, 10, 100, 1000, 5, 50]
CURRENCIES = ["USD", "USD", "EUR", "JPY", "GBP", "CHF", "HKD", "€", ""]
REASONS = ["news pending", "volatility", "regulatory halt", "circuit breaker 🚦", "régulateur", "LULD", "",
           "x" * 32, "停牌", "T1"]
IGNORED_TYPES = [7, 42, 0x0100, 0x0105, 0x01FF, 0x0200, 0x7FFF, 0xFE00]
assert all(_utf8_len(s) <= 16 for s in INTERESTING_SYMBOLS) and _utf8_len("日本電気株X") == 16
assert all(_utf8_len(r) <= 32 for r in REASONS)


class _Workload:
    """Builds the events of one seeded workload (see :func:`workload`)."""

    def __init__(self, messages: int, seed: int) -> None:
        from . import refdata as rd

        self.rd = rd
        self.n = messages
        self.rng = random.Random(seed)
        self.events: list[Event] = []
        self.symbols: list[str] = []          # added and accepted, in order
        self.halted: dict[str, bool] = {}     # symbol -> halted (insertion order: deterministic)
        self.v2 = False                       # AddInstrument v2 in effect
        self.max_instruments = max(40, min(200, messages // 12))
        self._used: set[str] = set()
        self._fresh = self._symbol_source()
        self._unknown = 0

    # ---- symbols -------------------------------------------------------------------------------

    def _symbol_source(self) -> Iterator[str]:
        yield from INTERESTING_SYMBOLS
        letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
        while True:
            sym = "".join(self.rng.choice(letters) for _ in range(self.rng.choice([1, 2, 3, 3, 4, 4, 5, 6])))
            sym += self.rng.choice(["", "", "", ".L", ".PA", "-W", ".T", "1"])
            if sym not in self._used:
                yield sym

    def fresh(self) -> str:
        sym = next(self._fresh)
        self._used.add(sym)
        return sym

    def unknown(self) -> str:
        self._unknown += 1
        return f"?NO-SUCH-{self._unknown}"  # never added: '?' is in no added symbol

    def known(self, halted: Optional[bool] = None) -> str:
        pool = self.symbols if halted is None else [s for s in self.symbols if self.halted[s] == halted]
        return self.rng.choice(pool or self.symbols)

    # ---- emitting ------------------------------------------------------------------------------

    @property
    def next_seq(self) -> int:
        return len(self.events) + 1

    def emit(self, msg_type: int, payload: bytes, note: str, version: int = 1, source: str = ADMIN) -> None:
        self.events.append(Event(msg_type, payload, version, source, note))

    def record(self, rec: Any, note: str, source: str = ADMIN) -> None:
        self.emit(rec.msg_type, rec.encode(), note, rec.version, source)

    def add(self, symbol: str, note: str, tick: float = 0.01, lot: int = 1, currency: str = "USD",
            max_qty: Optional[int] = None, accepted: bool = True) -> None:
        rd = self.rd
        if max_qty is None:
            self.record(rd.AddInstrument(symbol=symbol, tick_size=tick, lot_size=lot, currency=currency), note)
        else:
            self.record(rd.AddInstrumentV2(symbol=symbol, tick_size=tick, lot_size=lot, currency=currency,
                                           max_order_qty=max_qty), note)
        self._used.add(symbol)
        if accepted:
            self.symbols.append(symbol)
            self.halted[symbol] = False

    def halt(self, symbol: str, reason: str, note: str) -> None:
        self.record(self.rd.Halt(symbol=symbol, reason=reason), note)
        if symbol in self.halted:
            self.halted[symbol] = True

    def resume(self, symbol: str, note: str) -> None:
        self.record(self.rd.Resume(symbol=symbol), note)
        if symbol in self.halted:
            self.halted[symbol] = False

    def update(self, symbol: str, note: str, tick: float = 0.0, lot: int = 0) -> None:
        self.record(self.rd.UpdateInstrument(symbol=symbol, tick_size=tick, lot_size=lot), note)

    def snapshot(self, label: str) -> None:
        from .admin import TakeSnapshot

        self.record(TakeSnapshot(label=label), "TakeSnapshot: every replica snapshots here", OPS)

    def joined(self, name: str) -> None:
        from .sequencer import CLIENT_JOINED

        self.emit(CLIENT_JOINED, name.encode(), f"CLIENT_JOINED {name}: ignored", 0, name)

    # ---- the parts -----------------------------------------------------------------------------

    def build(self) -> list[Event]:
        from .sequencer import CLIENT_LEFT, END_OF_STREAM

        for name in (ADMIN, OPS, OMS):
            self.joined(name)
        self.coverage()
        gap = max(6, self.n // 20)
        closing = 3
        activation_len = gap + 7
        minimum = len(self.events) + activation_len + closing
        if self.n < minimum:
            raise WorkloadError(f"a workload needs at least {minimum} messages to cover everything, not {self.n}")
        snap_every = max(40, self.n // 8)
        self.fill(max(len(self.events), int(self.n * 0.55)), snap_every)
        self.activation(gap)
        self.fill(self.n - closing, snap_every)
        self.snapshot("final")
        self.emit(CLIENT_LEFT, OMS.encode(), f"CLIENT_LEFT {OMS}: ignored", 0, OMS)
        self.emit(END_OF_STREAM, b"", "END_OF_STREAM: ignored", 0, "")
        assert len(self.events) == self.n
        return self.events

    def coverage(self) -> None:
        """Every case once, in a fixed order, before anything random."""
        rd, nan, inf = self.rd, float("nan"), float("inf")
        for i in range(len(INTERESTING_SYMBOLS)):
            sym = self.fresh()
            if i < 6:
                self.add(sym, f"add {sym!r}", tick=0.01, lot=1)
            else:
                self.add(sym, f"add {sym!r} ({_utf8_len(sym)} UTF-8 bytes)", tick=self.rng.choice(TICKS),
                         lot=self.rng.choice(LOTS), currency=self.rng.choice(CURRENCIES))
        self.add("TINY", "add with a subnormal tick size 5e-324 (valid: finite and > 0)", tick=5e-324)
        self.add("THIRD", "add with tick size 1/3 (not a decimal: the f64 bits must be kept)", tick=1 / 3, lot=3)
        self.add("EURO€", "add with currency '€' (3 UTF-8 bytes)", currency="€")
        self.add("NOCCY", "add with an empty currency", currency="")
        self.add("AAPL", "duplicate add: rejected (1 duplicate)", tick=0.05, accepted=False)
        self.add("AAPL", "duplicate add with an invalid tick: rejected as duplicate (checked first)", tick=-1.0,
                 accepted=False)
        for tick, lot, why in ((0.0, 1, "tick 0"), (-0.01, 1, "negative tick"), (-0.0, 1, "tick -0.0"),
                               (nan, 1, "tick NaN"), (inf, 1, "tick +inf"), (-inf, 1, "tick -inf"),
                               (0.01, 0, "lot 0"), (0.01, -5, "negative lot")):
            self.add(f"BAD{self._unknown}-{len(self.events)}", f"add with {why}: rejected (3 invalid)", tick=tick,
                     lot=lot, accepted=False)
        self.add("", "add with an empty symbol: rejected (3 invalid)", accepted=False)
        self.update("AAPL", "update tick only", tick=0.005)
        self.update("MSFT", "update lot only", lot=10)
        self.update("AB", "update tick and lot", tick=0.25, lot=100)
        self.update("ABC", "update with tick 0 and lot 0: accepted, nothing changes but updated_seq/ns")
        self.update("AB.C", "update with tick -0.0: -0.0 == 0, so the tick is unchanged", tick=-0.0, lot=5)
        self.update(self.unknown(), "update of an unknown symbol: rejected (2 unknown)", tick=0.01)
        self.update(self.unknown(), "update of an unknown symbol with a negative tick: rejected as unknown "
                                    "(checked first)", tick=-1.0)
        self.update("AAPL", "update with a negative tick: rejected (3 invalid)", tick=-0.01)
        self.update("AAPL", "update with tick NaN: rejected (3 invalid)", tick=nan)
        self.update("AAPL", "update with tick +inf: rejected (3 invalid)", tick=inf)
        self.update("AAPL", "update with a negative lot: rejected (3 invalid)", lot=-1)
        self.halt("AAPL", "news pending", "halt with a reason")
        self.halt("AAPL", "volatility", "halt of a halted instrument: accepted, the reason replaced")
        self.halt("株式会社ABC", "circuit breaker 🚦", "halt of a unicode symbol with a unicode reason")
        self.halt("MSFT", "", "halt with an empty reason")
        self.halt("Z", "x" * 32, "halt with a reason of exactly 32 bytes")
        self.halt(self.unknown(), "news", "halt of an unknown symbol: rejected (2 unknown)")
        self.resume("AAPL", "resume of a halted instrument: trading again, its reason cleared")
        self.resume("ABC", "resume of a trading instrument: accepted, no change but updated_seq/ns")
        self.resume(self.unknown(), "resume of an unknown symbol: rejected (2 unknown)")
        self.update("株式会社ABC", "update of a halted instrument: accepted, still halted", lot=1000)
        # payloads the machine cannot decode: rejected (4 undecodable)
        add = rd.AddInstrument(symbol="CUT", tick_size=0.01, lot_size=1, currency="USD").encode()
        self.emit(rd.ADD_INSTRUMENT, add[:20], "AddInstrument of 20 bytes (not a field boundary): rejected (4)")
        self.emit(rd.ADD_INSTRUMENT, b"", "AddInstrument with an empty payload: rejected (4)")
        self.emit(rd.ADD_INSTRUMENT, add[:16], "AddInstrument of 16 bytes (no tick_size, which has no default): "
                                               "rejected (4)")
        self.emit(rd.ADD_INSTRUMENT, "日本電気株X".encode()[:14].ljust(16, b"\0") + add[16:],
                  "AddInstrument whose symbol ends inside a UTF-8 character: rejected (4)")
        self.emit(rd.ADD_INSTRUMENT, add[:32] + "€".encode()[:2] + b"\0",
                  "AddInstrument whose currency is cut inside '€': rejected (4)")
        self.emit(rd.HALT, b"\xff\xfeAAPL".ljust(16, b"\0") + b"news".ljust(32, b"\0"),
                  "Halt whose symbol is not UTF-8: rejected (4)")
        self.emit(rd.HALT, b"AAPL".ljust(16, b"\0") + b"\xc3(".ljust(32, b"\0"),
                  "Halt whose reason is not UTF-8: rejected (4)")
        self.emit(rd.UPDATE_INSTRUMENT, rd.UpdateInstrument(symbol="AAPL", tick_size=0.01).encode()[:31],
                  "UpdateInstrument of 31 bytes: rejected (4)")
        self.emit(rd.RESUME, b"AAPL\0\0", "Resume of 6 bytes: rejected (4)")
        # payloads shorter or longer than the layout, which do decode (pyseq.schema's rules)
        sym = self.fresh()
        self.emit(rd.ADD_INSTRUMENT, rd.AddInstrument(symbol=sym, tick_size=0.5).encode()[:24],
                  f"AddInstrument {sym!r} of 24 bytes (symbol, tick): lot_size defaults to 1, currency to 'USD'")
        self.symbols.append(sym)
        self.halted[sym] = False
        sym = self.fresh()
        self.emit(rd.ADD_INSTRUMENT, rd.AddInstrument(symbol=sym, tick_size=0.5, lot_size=7).encode()[:32],
                  f"AddInstrument {sym!r} of 32 bytes (no currency): currency defaults to 'USD'")
        self.symbols.append(sym)
        self.halted[sym] = False
        self.emit(rd.UPDATE_INSTRUMENT, "ABC".encode().ljust(16, b"\0"),
                  "UpdateInstrument of 16 bytes (symbol only): a no-op update, accepted")
        self.emit(rd.HALT, "ÄÖÜ.DE".encode().ljust(16, b"\0"),
                  "Halt of 16 bytes (symbol only): halted with an empty reason")
        self.halted["ÄÖÜ.DE"] = True
        self.emit(rd.RESUME, "ÄÖÜ.DE".encode().ljust(16, b"\0") + b"trailing bytes of a newer version",
                  "Resume of 49 bytes (a newer version's): the known prefix is read", 2)
        self.halted["ÄÖÜ.DE"] = False
        self.emit(rd.HALT, rd.Halt(symbol="é", reason="NFC").encode() + bytes(range(1, 13)),
                  "Halt with 12 trailing bytes: the known prefix is read", 3)
        self.halted["é"] = True
        # messages the machine must ignore
        self.ignored()
        self.ignored()
        self.emit(0x0105, b"\x01\x01", "message type 0x0105 (next to reference data's, but not one): ignored")
        self.emit(rd.ADD_INSTRUMENT - 1, b"", "message type 0x0100: ignored")
        self.snapshot("coverage")

    def ignored(self) -> None:
        from .admin import ReplicaDigest

        if self.rng.random() < 0.3:
            self.record(ReplicaDigest(replica=MONITOR, machine="refdata", sequence=self.next_seq - 1,
                                      digest=self.rng.randbytes(32)), "ReplicaDigest: ignored", MONITOR)
            return
        t = self.rng.choice(IGNORED_TYPES)
        self.emit(t, self.rng.randbytes(self.rng.randrange(0, 64)), f"message type {t:#06x} of another "
                  "application: ignored", self.rng.randrange(0, 3), OMS)

    def random_add(self) -> None:
        sym = self.fresh()
        tick, lot, ccy = self.rng.choice(TICKS), self.rng.choice(LOTS), self.rng.choice(CURRENCIES)
        as_v2 = self.rng.random() < (0.75 if self.v2 else 0.15)
        if not as_v2:
            self.add(sym, "add" + (" (v1 payload: max_order_qty 0)" if self.v2 else ""), tick, lot, ccy)
            return
        qty = self.rng.choice([0, lot * 100, lot * 1000, lot * 7, 1])
        self.add(sym, f"add with max_order_qty {qty}" + ("" if self.v2 else " in a v2 payload before the "
                                                          "activation: read as v1, max_order_qty 0"),
                 tick, lot, ccy, max_qty=qty)

    def random_event(self) -> None:
        rng, rd = self.rng, self.rd
        kinds = ["add", "add_bad", "update", "update_bad", "halt", "halt_unknown", "resume", "resume_unknown",
                 "undecodable", "ignored"]
        weights = [12, 4, 18, 4, 13, 2, 13, 2, 3, 10]
        kind = "add" if len(self.symbols) < 3 else rng.choices(kinds, weights)[0]
        if kind == "add" and len(self.symbols) >= self.max_instruments:
            kind = "add_bad"
        if kind == "add":
            self.random_add()
        elif kind == "add_bad":
            what = rng.randrange(4)
            if what == 0:
                self.add(self.known(), "duplicate add: rejected (1)", rng.choice(TICKS), accepted=False)
            elif what == 1:
                self.add(f"BAD-{self.next_seq}", "add with tick 0: rejected (3)", 0.0, accepted=False)
            elif what == 2:
                self.add(f"BAD-{self.next_seq}", "add with a negative lot: rejected (3)", 0.01, -rng.randrange(1, 100),
                         accepted=False)
            elif self.v2:
                self.add(f"BAD-{self.next_seq}", "add with a negative max_order_qty: rejected (3)", 0.01, 1,
                         max_qty=-rng.randrange(1, 1000), accepted=False)
            else:
                self.add(f"BAD-{self.next_seq}", "add with tick NaN: rejected (3)", float("nan"), accepted=False)
        elif kind == "update":
            sym, what = self.known(), rng.randrange(5)
            if what == 0:
                self.update(sym, "update tick", tick=rng.choice(TICKS))
            elif what == 1:
                self.update(sym, "update lot", lot=rng.choice(LOTS))
            elif what == 2:
                self.update(sym, "update tick and lot", tick=rng.choice(TICKS), lot=rng.choice(LOTS))
            elif what == 3:
                self.update(sym, "no-op update (tick 0, lot 0)")
            else:
                self.update(sym, "update with tick -0.0 (unchanged) and a lot", tick=-0.0, lot=rng.choice(LOTS))
        elif kind == "update_bad":
            if rng.random() < 0.5:
                self.update(self.unknown(), "update of an unknown symbol: rejected (2)", tick=0.01)
            else:
                self.update(self.known(), "update with an invalid value: rejected (3)",
                            *rng.choice([(-0.5, 0), (float("nan"), 0), (float("inf"), 0), (0.0, -10)]))
        elif kind == "halt":
            self.halt(self.known(halted=rng.random() < 0.2), rng.choice(REASONS), "halt")
        elif kind == "halt_unknown":
            self.halt(self.unknown(), rng.choice(REASONS), "halt of an unknown symbol: rejected (2)")
        elif kind == "resume":
            self.resume(self.known(halted=rng.random() < 0.85), "resume (clears the halt reason)")
        elif kind == "resume_unknown":
            self.resume(self.unknown(), "resume of an unknown symbol: rejected (2)")
        elif kind == "undecodable":
            t = rng.choice([rd.ADD_INSTRUMENT, rd.UPDATE_INSTRUMENT, rd.HALT, rd.RESUME])
            self.emit(t, self.known().encode().ljust(16, b"\0")[:rng.choice([3, 9, 15])],
                      "a payload cut inside the symbol: rejected (4)")
        else:
            self.ignored()

    def fill(self, until: int, snap_every: int) -> None:
        while len(self.events) < until:
            if self.next_seq % snap_every == 0:
                self.snapshot(f"at-{self.next_seq}")
            else:
                self.random_event()

    def activation(self, gap: int) -> None:
        """ActivateSchema(AddInstrument, 2) at a later sequence; the boundary exactly."""
        from .admin import ActivateSchema

        at = self.next_seq + gap
        self.record(ActivateSchema(message_type=self.rd.ADD_INSTRUMENT, schema_version=2, at_sequence=at),
                    f"ActivateSchema: AddInstrument is read as version 2 from sequence {at} on", OPS)
        self.add(self.fresh(), "add in a v2 payload (max_order_qty 777) before the activation: read as v1, "
                               "max_order_qty 0", tick=0.01, lot=1, max_qty=777)
        self.snapshot("pending-activation")  # its snapshot holds the pending activation
        while self.next_seq < at - 1:
            self.random_event()
        self.add(self.fresh(), "add in a v2 payload (max_order_qty 1000) just before the activation: read as v1",
                 tick=0.01, lot=10, max_qty=1000)
        assert self.next_seq == at
        self.v2 = True
        self.add(self.fresh(), "add with max_order_qty 5000: the first message read as v2", tick=0.01, lot=10,
                 max_qty=5000)
        last = self.symbols[-1]
        self.add(self.fresh(), "add in a v1 payload after the activation: max_order_qty defaults to 0", tick=0.5)
        self.add(f"BAD-{self.next_seq}", "add with a negative max_order_qty: rejected (3)", max_qty=-1,
                 accepted=False)
        self.add(last, "duplicate v2 add: rejected (1)", max_qty=10, accepted=False)
        self.update(last, "update of a v2 instrument: max_order_qty kept", tick=0.05)
        self.halt(last, "limit check", "halt of a v2 instrument")


def workload(messages: int = DEFAULT_MESSAGES, seed: int = DEFAULT_SEED) -> list[Event]:
    """The events of the seeded reference-data workload: the same ``(messages, seed)`` gives the
    same events on any machine and any Python (a :class:`random.Random` of its own, no hashing)."""
    if not isinstance(messages, int) or isinstance(messages, bool) or messages < 1:
        raise ValueError(f"messages must be an int >= 1, not {messages!r}")
    return _Workload(messages, seed).build()


def timestamps(messages: int, seed: int) -> list[int]:
    """The sequencing time of each message: strictly increasing, seeded, never the wall clock."""
    rng = random.Random(seed * 2 + 1)
    return [BASE_NS + i * STEP_NS + rng.randrange(STEP_NS) for i in range(messages)]


def messages_sha256(messages: Any) -> str:
    """A checksum of messages (every frame field and the payload), to tie a journal to its kit."""
    h = hashlib.sha256()
    for m in messages:
        h.update(struct.pack("<qqHHII", m.seq, m.timestamp_ns, m.msg_type, m.schema_version, m.source,
                             len(m.payload)))
        h.update(m.payload)
    return h.hexdigest()


# ================================================================================ machines

def machine_digest(machine: Any) -> str:
    """The machine's digest: ``digest()`` if it has one, else the SHA-256 of ``snapshot()``."""
    digest = getattr(machine, "digest", None)
    value = digest() if callable(digest) else hashlib.sha256(machine.snapshot()).hexdigest()
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).hex()
    if not isinstance(value, str):
        raise TypeError(f"digest() returned {type(value).__name__}, not a hex str")
    return value.lower()


def load_machine(spec: Union[str, MachineFactory]) -> MachineFactory:
    """What makes a machine: ``"module:Class"``, ``"path/to/file.py:Class"`` (a dotted name after the
    colon reaches into the module), or a callable, returned as is.  :class:`MachineSpecError` if it
    names nothing callable."""
    if callable(spec):
        return spec
    if not isinstance(spec, str):
        raise MachineSpecError(f"a machine is 'module:Class' or 'path/to/file.py:Class', not {spec!r}")
    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not attr or not all(part.isidentifier() for part in attr.split(".")):
        raise MachineSpecError(f"--machine {spec!r}: expected 'module:Class' or 'path/to/file.py:Class'")
    if where.endswith(".py") or os.sep in where or "/" in where:
        module = _load_file(spec, where)
    else:
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())  # a console script does not see modules in the current directory
        try:
            module = importlib.import_module(where)
        except Exception as e:
            raise MachineSpecError(f"--machine {spec!r}: cannot import {where}: {type(e).__name__}: {e}") from None
    found: Any = module
    for part in attr.split("."):
        if not hasattr(found, part):
            raise MachineSpecError(f"--machine {spec!r}: {where} has no {attr}")
        found = getattr(found, part)
    if not callable(found):
        raise MachineSpecError(f"--machine {spec!r}: {attr} is a {type(found).__name__}, not a class or function")
    return found  # type: ignore[no-any-return]


def _load_file(spec: str, path: str) -> Any:
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise MachineSpecError(f"--machine {spec!r}: no file {path}")
    name = "_pyseq_machine_" + os.path.splitext(os.path.basename(path))[0].replace("-", "_") + "_" + \
        hashlib.sha256(path.encode()).hexdigest()[:8]
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise MachineSpecError(f"--machine {spec!r}: {path} cannot be imported")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    folder = os.path.dirname(path)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)  # its neighbours are importable while it loads
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise MachineSpecError(f"--machine {spec!r}: cannot import {path}: {type(e).__name__}: {e}") from None
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)
    return module


def _spec_of(factory: Any) -> Optional[str]:
    """``module:qualname`` of a class or function that can be imported back, else None."""
    module, qualname = getattr(factory, "__module__", None), getattr(factory, "__qualname__", None)
    if not module or not qualname or "<" in qualname or module == "__main__" or module.startswith("_pyseq_machine_"):
        return None
    try:
        found: Any = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except Exception:
        return None
    return f"{module}:{qualname}" if found is factory else None


def _instantiate(factory: MachineFactory, spec: str) -> Any:
    try:
        machine = factory()
    except Exception as e:
        raise MachineSpecError(f"--machine {spec}: calling it with no arguments failed: {type(e).__name__}: {e}") \
            from None
    missing = [m for m in ("apply", "snapshot") if not callable(getattr(machine, m, None))]
    if missing:
        raise MachineSpecError(f"--machine {spec}: a {type(machine).__name__} has no {' or '.join(missing)}() "
                               f"(a state machine has apply, snapshot, restore, digest)")
    if getattr(machine, "schema_versions", None) is None:
        try:
            machine.schema_versions = {}  # what the replica sets at an ActivateSchema
        except AttributeError:
            pass
    return machine


class _Stop(Exception):
    """Ends a replay early (a mismatch was found, or the sequence wanted is reached)."""


class _Driven:
    """The machine under test as a :class:`Replica` sees it: every call is passed on; after each
    ``apply`` the observer is called (it compares digests), and an exception in the machine is
    recorded with its message instead of escaping."""

    def __init__(self, machine: Any, observer: Callable[[Message], None]) -> None:
        self.inner = machine
        self.name = getattr(machine, "name", type(machine).__name__)
        self.observer = observer
        self.failure: Optional[tuple[Message, str]] = None

    @property
    def schema_versions(self) -> dict[int, int]:
        return self.inner.schema_versions  # type: ignore[no-any-return]

    @schema_versions.setter
    def schema_versions(self, value: dict[int, int]) -> None:
        self.inner.schema_versions = value

    def apply(self, msg: Message) -> None:
        try:
            self.inner.apply(msg)
        except Exception as e:
            self.failure = (msg, f"apply() raised {type(e).__name__}: {e}")
            raise _Stop from None
        self.observer(msg)

    def snapshot(self) -> bytes:
        return bytes(self.inner.snapshot())

    def restore(self, data: bytes) -> None:
        self.inner.restore(data)

    def digest(self) -> str:
        return machine_digest(self.inner)


def _replay(driven: _Driven, journal: str, snapshot_from: Optional[str] = None,
            snapshots: Optional[str] = None) -> "Replica":
    """Run a journal-only replica of ``driven`` to the end of the journal (or a _Stop)."""
    from .replica import Replica

    replica = Replica(driven, journal=journal, snapshots=snapshots, snapshot_from=snapshot_from,  # type: ignore
                      name=f"conformance-{driven.name}"[:31], idle=BackoffIdle())
    try:
        replica.run_until_caught_up(timeout=None)
    except _Stop:
        pass
    finally:
        replica.close()
    return replica


def _state_at(factory: MachineFactory, journal: str, sequence: int) -> bytes:
    """The canonical state a fresh machine from ``factory`` has after ``sequence`` (0: before any)."""
    machine = _instantiate(factory, "reference")

    def observer(msg: Message) -> None:
        if msg.seq >= sequence:
            raise _Stop

    if sequence > 0:
        driven = _Driven(machine, observer)
        _replay(driven, journal)
        if driven.failure is not None and driven.failure[0].seq != sequence:
            raise RuntimeError(f"at sequence {driven.failure[0].seq}: {driven.failure[1]}")
    return bytes(machine.snapshot())  # after a failed apply: what it left


# ================================================================================ record

def record(out_dir: str, machine_factory: Union[str, MachineFactory, None] = None, messages: int = DEFAULT_MESSAGES,
           seed: int = DEFAULT_SEED, checkpoint_every: int = 1, *, ring_name: Optional[str] = None,
           reference: Optional[str] = None) -> dict[str, Any]:
    """Write a conformance kit to ``out_dir`` (which must not hold one): the seeded workload
    published through a ring into ``out_dir/journal`` by a :class:`Journaler`, then replayed into
    the reference (``machine_factory``, default :class:`pyseq.refdata.ReferenceData`) by a
    :class:`Replica` that writes ``out_dir/snapshots`` and the digests of ``out_dir/expected.json``
    (after every sequence, or every ``checkpoint_every``-th and the last).  ``ring_name``: the ring
    to publish through (default: a unique name; removed at the end).  ``reference``: the
    ``module:Class`` that ``check`` may run again to bisect between checkpoints (default: the
    factory's own name, if it can be imported back).  Returns a summary."""
    if not isinstance(checkpoint_every, int) or isinstance(checkpoint_every, bool) or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be an int >= 1, not {checkpoint_every!r}")
    if machine_factory is None:
        from .refdata import ReferenceData

        machine_factory = ReferenceData
    factory = load_machine(machine_factory)
    if reference is None:
        reference = machine_factory if isinstance(machine_factory, str) else _spec_of(factory)
    events = workload(messages, seed)
    times = timestamps(messages, seed)
    out_dir = os.fspath(out_dir)
    journal_dir, snap_dir = os.path.join(out_dir, JOURNAL_DIR), os.path.join(out_dir, SNAPSHOT_DIR)
    in_the_way = [p for p in (journal_dir, snap_dir, os.path.join(out_dir, EXPECTED)) if os.path.exists(p)]
    if in_the_way:
        raise FileExistsError(f"{out_dir!r} already holds a conformance kit ({os.path.basename(in_the_way[0])}); "
                              f"record into a new directory")
    os.makedirs(out_dir, exist_ok=True)
    _publish(events, times, journal_dir, ring_name)

    journal = Journal(journal_dir)
    msgs = list(journal.records())
    if [m.seq for m in msgs] != list(range(1, messages + 1)):
        raise errors.JournalError(f"the journal of the kit holds {len(msgs)} records, not sequences 1..{messages}")
    sources = {str(source_id(n)): n for n in sorted({e.source for e in events if e.source})}

    machine = _instantiate(factory, reference or "reference")
    initial = machine_digest(machine)
    digests: dict[str, str] = {}
    last = messages

    def observer(msg: Message) -> None:
        if msg.seq % checkpoint_every == 0 or msg.seq == last:
            digests[str(msg.seq)] = machine_digest(machine)

    driven = _Driven(machine, observer)
    replica = _replay(driven, journal_dir, snapshots=snap_dir)
    if driven.failure is not None:
        raise errors.PyseqError(f"the reference failed at sequence {driven.failure[0].seq}: {driven.failure[1]}")
    from . import snapshot as snapshot_files

    snaps = []
    for path in replica.snapshots_written:
        snap = snapshot_files.read(path)
        snaps.append({"sequence": snap.sequence, "file": os.path.relpath(path, out_dir), "digest": snap.digest,
                      "pending_activations": [list(a) for a in snap.pending_activations]})
    expected = {
        "format": FORMAT,
        "machine": machine.name,
        "reference": reference,
        "workload": {"generator": GENERATOR, "messages": messages, "seed": seed},
        "first_sequence": 1,
        "last_sequence": last,
        "every": checkpoint_every,
        "messages_sha256": messages_sha256(msgs),
        "sources": sources,
        "snapshots": snaps,
        "initial_digest": initial,
        "final_digest": digests[str(last)],
        "digests": digests,
    }
    tmp = os.path.join(out_dir, EXPECTED + ".tmp")
    with open(tmp, "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    os.replace(tmp, os.path.join(out_dir, EXPECTED))
    return {"path": out_dir, "machine": machine.name, "messages": messages, "seed": seed, "first_sequence": 1,
            "last_sequence": last, "every": checkpoint_every, "digests": len(digests),
            "snapshots": [s["sequence"] for s in snaps], "final_digest": expected["final_digest"]}


def _publish(events: list[Event], times: list[int], journal_dir: str, ring_name: Optional[str]) -> None:
    """Publish the events through a real ring, journaled by a Journaler; the ring is removed after."""
    from .journaler import Journaler
    from .ring import Ring

    name = ring_name or f"pyseq-conformance-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    ring = Ring.create(name, capacity=RING_CAPACITY, slot_size=RING_SLOT, idle=BackoffIdle())
    try:
        journaler = Journaler(journal_dir, ring, fsync="never", idle=BackoffIdle()).start()
        try:
            for i, (ev, ts) in enumerate(zip(events, times)):
                seq = ring.publish(ev.msg_type, ev.payload, source=source_id(ev.source),
                                   schema_version=ev.schema_version, timestamp_ns=ts, timeout=PUBLISH_TIMEOUT_S)
                if seq != i + 1:
                    raise errors.PyseqError(f"ring {name!r} gave sequence {seq} to message {i + 1}")
        finally:
            left = journaler.stop()
        if left or journaler.failure is not None:
            raise errors.JournalError(f"the journaler could not journal the workload: {journaler.failure or left}")
    finally:
        ring.unlink()
        ring.close()


# ================================================================================ check

@dataclasses.dataclass
class Kit:
    """A conformance kit read from its directory (see :func:`open_kit`)."""

    path: str
    expected: dict[str, Any]
    digests: dict[int, str]

    @property
    def journal(self) -> str:
        return os.path.join(self.path, JOURNAL_DIR)

    @property
    def machine(self) -> str:
        return str(self.expected["machine"])

    @property
    def first_sequence(self) -> int:
        return int(self.expected["first_sequence"])

    @property
    def last_sequence(self) -> int:
        return int(self.expected["last_sequence"])

    @property
    def every(self) -> int:
        return int(self.expected.get("every", 1))

    def sources(self) -> dict[int, str]:
        return {int(k): v for k, v in self.expected.get("sources", {}).items()}


def open_kit(path: str) -> Kit:
    """Read and check a kit directory (:class:`KitError` naming what is wrong): its expected.json,
    and that its journal holds exactly the messages the digests were recorded from."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise KitError(f"no conformance kit at {path!r}: not a directory")
    exp_path = os.path.join(path, EXPECTED)
    try:
        with open(exp_path) as f:
            expected = json.load(f)
    except FileNotFoundError:
        raise KitError(f"{path!r} is not a conformance kit: it has no {EXPECTED}") from None
    except (OSError, ValueError) as e:
        raise KitError(f"{exp_path!r} cannot be read: {e}") from None
    try:
        if expected.get("format") != FORMAT:
            raise KitError(f"{exp_path!r} is format {expected.get('format')!r}; this pyseq reads {FORMAT!r}")
        digests = {int(k): str(v) for k, v in expected["digests"].items()}
        first, last = int(expected["first_sequence"]), int(expected["last_sequence"])
        str(expected["machine"]), str(expected["initial_digest"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise KitError(f"{exp_path!r} is not a conformance kit's expected digests: {type(e).__name__}: {e}") from None
    if last not in digests:
        raise KitError(f"{exp_path!r} has no digest for its last sequence {last}")
    kit = Kit(path, expected, digests)
    try:
        journal = Journal(kit.journal)
        msgs = list(journal.records())
    except errors.JournalError as e:
        raise KitError(f"the journal of kit {path!r} cannot be read: {e}") from None
    if not msgs or msgs[0].seq != first or msgs[-1].seq != last or len(msgs) != last - first + 1:
        span = f"{msgs[0].seq}..{msgs[-1].seq}" if msgs else "nothing"
        raise KitError(f"the journal of kit {path!r} holds {span}, not sequences {first}..{last}")
    if expected.get("messages_sha256") and messages_sha256(msgs) != expected["messages_sha256"]:
        raise KitError(f"the journal of kit {path!r} is not the one its {EXPECTED} was recorded from "
                       f"(its messages' checksum differs)")
    return kit


@dataclasses.dataclass
class Mismatch:
    """The first sequence at which the implementation's digest is not the reference's."""

    sequence: int
    expected_digest: Optional[str]
    actual_digest: Optional[str]
    error: Optional[str] = None                     # what the implementation raised, if it raised
    exact: bool = True                              # False: somewhere in ``bracket`` (no reference to bisect)
    bracket: Optional[tuple[int, int]] = None       # the sequences between two checkpoints it is in
    message: Optional[dict[str, Any]] = None        # the message at ``sequence``, decoded
    note: Optional[str] = None                      # what the workload meant that message to exercise
    state: Optional[dict[str, Any]] = None          # how the two states differ

    def to_mapping(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["bracket"] = list(self.bracket) if self.bracket else None
        return out


@dataclasses.dataclass
class LateJoin:
    """A fresh instance started from one of the kit's snapshots, then the journal after it."""

    sequence: int
    ok: bool
    checked: int = 0
    error: Optional[str] = None
    first_mismatch: Optional[Mismatch] = None

    def to_mapping(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["first_mismatch"] = self.first_mismatch.to_mapping() if self.first_mismatch else None
        return out


@dataclasses.dataclass
class Report:
    """What :func:`check` found: ``ok`` if every digest matched, the late joiners' too."""

    ok: bool
    kit: str
    machine: str                                    # the kit's machine name
    implementation: str
    implementation_name: str
    first_sequence: int
    last_sequence: int
    every: int
    checked: int                                    # digests compared in the full replay
    digests: int                                    # digests the kit holds (+1: the empty state)
    first_mismatch: Optional[Mismatch] = None
    late_joins: list[LateJoin] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)

    def to_mapping(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["first_mismatch"] = self.first_mismatch.to_mapping() if self.first_mismatch else None
        out["late_joins"] = [j.to_mapping() for j in self.late_joins]
        return out


def check(kit_dir: str, machine_factory: Union[str, MachineFactory], *, late_joins: bool = True,
          reference: Union[str, MachineFactory, None] = None) -> Report:
    """Check the implementation ``machine_factory`` (a callable, or a spec for :func:`load_machine`)
    against the kit in ``kit_dir``; a :class:`Report`.  ``reference`` overrides the kit's reference
    implementation (run again only to bisect between checkpoints and to describe a difference).
    :class:`KitError` / :class:`MachineSpecError` if the kit or the implementation cannot be used."""
    kit = open_kit(kit_dir)
    spec = machine_factory if isinstance(machine_factory, str) else (_spec_of(machine_factory) or
                                                                     repr(machine_factory))
    factory = load_machine(machine_factory)
    ref_factory = _reference(kit, reference)
    machine = _instantiate(factory, spec)
    name = str(getattr(machine, "name", type(machine).__name__))
    report = Report(ok=False, kit=kit.path, machine=kit.machine, implementation=spec, implementation_name=name,
                    first_sequence=kit.first_sequence, last_sequence=kit.last_sequence, every=kit.every,
                    checked=0, digests=len(kit.digests) + 1)
    if name != kit.machine:
        report.problems.append(f"the implementation is named {name!r}, the kit's machine {kit.machine!r}: "
                               f"snapshots and ReplicaDigest messages carry the name, so they would not match")

    report.first_mismatch, report.checked = _full_replay(kit, machine, ref_factory)
    if report.first_mismatch is not None:
        _describe(kit, report.first_mismatch, factory, ref_factory)
    elif late_joins:
        for snap in kit.expected.get("snapshots", []):
            join = _late_join(kit, factory, spec, int(snap["sequence"]), os.path.join(kit.path, snap["file"]))
            if join.first_mismatch is not None:
                _describe(kit, join.first_mismatch, factory, ref_factory)
            report.late_joins.append(join)
    report.ok = (report.first_mismatch is None and not report.problems and all(j.ok for j in report.late_joins))
    return report


def _reference(kit: Kit, reference: Union[str, MachineFactory, None]) -> Optional[MachineFactory]:
    spec = reference if reference is not None else kit.expected.get("reference")
    if spec is None:
        return None
    try:
        return load_machine(spec)
    except MachineSpecError:
        return None


def _full_replay(kit: Kit, machine: Any,
                 ref_factory: Optional[MachineFactory]) -> tuple[Optional[Mismatch], int]:
    """Replay the whole journal into ``machine``; the first mismatch (None) and the digests compared."""
    initial = kit.expected["initial_digest"]
    try:
        actual = machine_digest(machine)
    except Exception as e:
        return Mismatch(kit.first_sequence - 1, initial, None, f"digest() of the empty state raised "
                                                               f"{type(e).__name__}: {e}"), 0
    if actual != initial:
        return Mismatch(kit.first_sequence - 1, initial, actual), 1
    checked, last_good = 1, kit.first_sequence - 1
    bracket: list[tuple[int, Optional[str]]] = []  # the implementation's digests since the last good checkpoint
    found: list[Mismatch] = []
    every = kit.every

    def observer(msg: Message) -> None:
        nonlocal checked, last_good
        try:
            digest: Optional[str] = machine_digest(machine)
        except Exception as e:
            found.append(Mismatch(msg.seq, kit.digests.get(msg.seq), None,
                                  f"digest() raised {type(e).__name__}: {e}"))
            bracket.append((msg.seq, None))
            raise _Stop from None
        if every > 1:
            bracket.append((msg.seq, digest))
        expected = kit.digests.get(msg.seq)
        if expected is None:
            return
        checked += 1
        if digest == expected:
            last_good = msg.seq
            bracket.clear()
            return
        found.append(Mismatch(msg.seq, expected, digest))
        raise _Stop

    driven = _Driven(machine, observer)
    try:
        _replay(driven, kit.journal)
    except errors.PyseqError as e:
        return Mismatch(last_good + 1, kit.digests.get(last_good + 1), None,
                        f"the replica stopped: {type(e).__name__}: {e}"), checked
    if driven.failure is not None:
        msg, text = driven.failure
        found.append(Mismatch(msg.seq, kit.digests.get(msg.seq), None, text))
        bracket.append((msg.seq, None))
        checked += msg.seq in kit.digests  # compared, and failed
    if not found:
        return None, checked
    mismatch = found[0]
    if every > 1 and (last_good + 1 < mismatch.sequence or kit.digests.get(mismatch.sequence) is None):
        mismatch = _bisect(kit, mismatch, last_good, bracket, ref_factory)
    return mismatch, checked


def _bisect(kit: Kit, found: Mismatch, last_good: int, bracket: list[tuple[int, Optional[str]]],
            ref_factory: Optional[MachineFactory]) -> Mismatch:
    """Between checkpoints: run the reference again over (last_good, found.sequence] and compare
    its digest after each sequence with the implementation's, kept in ``bracket``."""
    span = (last_good + 1, found.sequence)
    inexact = dataclasses.replace(found, exact=found.sequence == last_good + 1, bracket=span)
    if ref_factory is None:
        return inexact
    try:
        ref = _instantiate(ref_factory, "reference")
    except MachineSpecError:
        return inexact
    ref_digests: dict[int, str] = {}

    def observer(msg: Message) -> None:
        if msg.seq > last_good:
            ref_digests[msg.seq] = machine_digest(ref)
        if msg.seq >= found.sequence:
            raise _Stop

    driven = _Driven(ref, observer)
    _replay(driven, kit.journal)
    if driven.failure is not None or any(kit.digests.get(s, d) != d for s, d in ref_digests.items()):
        return inexact  # the reference does not reproduce the kit: it changed since the kit was recorded
    for seq, digest in bracket:
        if seq in ref_digests and digest != ref_digests[seq]:
            error = found.error if seq == found.sequence else None
            return Mismatch(seq, ref_digests[seq], digest, error, True, span)
    return inexact


def _late_join(kit: Kit, factory: MachineFactory, spec: str, sequence: int, path: str) -> LateJoin:
    """Start a fresh implementation from the reference's snapshot at ``sequence``, replay the rest."""
    join = LateJoin(sequence, ok=False)
    machine = _instantiate(factory, spec)
    found: list[Mismatch] = []

    def observer(msg: Message) -> None:
        expected = kit.digests.get(msg.seq)
        if expected is None:
            return
        digest = machine_digest(machine)
        join.checked += 1
        if digest != expected:
            found.append(Mismatch(msg.seq, expected, digest, exact=kit.every == 1))
            raise _Stop

    driven = _Driven(machine, observer)
    try:
        replica = _replay(driven, kit.journal, snapshot_from=path)
    except errors.PyseqError as e:
        join.error = f"cannot start from the snapshot at sequence {sequence}: {e}"
        return join
    except Exception as e:
        join.error = f"starting from the snapshot at sequence {sequence} raised {type(e).__name__}: {e}"
        return join
    if driven.failure is not None:
        msg, text = driven.failure
        found.append(Mismatch(msg.seq, kit.digests.get(msg.seq), None, text))
    if found:
        join.first_mismatch = found[0]
        return join
    if replica.last_applied != kit.last_sequence:
        join.error = f"stopped at sequence {replica.last_applied}, not {kit.last_sequence}"
        return join
    join.ok = True
    return join


# ---- describing a mismatch -------------------------------------------------------------------------

def _describe(kit: Kit, mismatch: Mismatch, factory: MachineFactory, ref_factory: Optional[MachineFactory]) -> None:
    """Fill in the message at the mismatch, the workload's note on it, and the state difference."""
    seq = mismatch.sequence
    if seq >= kit.first_sequence:
        msg = next(iter(Journal(kit.journal).records(start=seq, stop=seq)), None)
        if msg is not None:
            mismatch.message = describe_message(msg, kit.sources())
            mismatch.note = _note(kit, msg)
    else:
        mismatch.note = "the empty state, before the first message"
    if not mismatch.exact or ref_factory is None:
        return
    try:
        expected = _state_at(ref_factory, kit.journal, seq)
        actual = _state_at(factory, kit.journal, seq)
    except Exception as e:  # a diagnosis only: never hide the mismatch itself
        mismatch.state = {"error": f"{type(e).__name__}: {e}"}
        return
    mismatch.state = state_difference(expected, actual, kit.machine)


def _note(kit: Kit, msg: Message) -> Optional[str]:
    work = kit.expected.get("workload") or {}
    if work.get("generator") != GENERATOR:
        return None
    try:
        events = workload(int(work["messages"]), int(work["seed"]))
    except Exception:
        return None
    ev = events[msg.seq - 1] if 0 < msg.seq <= len(events) else None
    if ev is None or (ev.msg_type, ev.payload) != (msg.msg_type, msg.payload):
        return None
    return ev.note


def describe_message(msg: Message, sources: Optional[dict[int, str]] = None) -> dict[str, Any]:
    """A message as a mapping: its frame fields, the sender's name, the payload as hex, and decoded
    by its declared record (``decoded``) or why it cannot be (``undecodable``)."""
    from . import admin, refdata, schema  # noqa: F401 - their records decode the kit's messages
    from .sequencer import CLIENT_JOINED, CLIENT_LEFT, END_OF_STREAM

    system = {CLIENT_JOINED: "CLIENT_JOINED", CLIENT_LEFT: "CLIENT_LEFT", END_OF_STREAM: "END_OF_STREAM"}
    out: dict[str, Any] = {"sequence": msg.seq, "timestamp_ns": msg.timestamp_ns, "msg_type": msg.msg_type,
                           "type": system.get(msg.msg_type, str(msg.msg_type)), "schema_version": msg.schema_version,
                           "source": msg.source, "sender": (sources or {}).get(msg.source),
                           "payload": msg.payload.hex(), "decoded": None, "undecodable": None}
    if msg.msg_type in (CLIENT_JOINED, CLIENT_LEFT):
        out["decoded"] = repr(msg.payload.decode(errors="replace"))
        return out
    if msg.msg_type in system:
        return out
    try:
        cls = schema.lookup(msg.msg_type, msg.schema_version or None)
    except errors.SchemaError:
        try:
            cls = schema.lookup(msg.msg_type)
        except errors.SchemaError:
            return out
    out["type"] = cls.__name__
    try:
        out["decoded"] = repr(cls.decode(msg.payload))
    except errors.SchemaError as e:
        out["undecodable"] = str(e)
    return out


# The canonical reference-data state, as refdata.ReferenceData.snapshot documents it.
_RD_HEAD = struct.Struct("<8sIQqH")
_RD_INSTRUMENT = struct.Struct("<16sdq3sBq32sqq")
_RD_FIELDS = ("tick_size", "lot_size", "currency", "status", "max_order_qty", "halt_reason", "updated_seq",
              "updated_ns")


def _parse_refdata(data: bytes) -> Optional[tuple[tuple[int, int, int, int], dict[bytes, tuple[Any, ...]]]]:
    if len(data) < _RD_HEAD.size or data[:8] != b"REFDATA1":
        return None
    _, count, rejected, reject_seq, reject_code = _RD_HEAD.unpack_from(data)
    if len(data) != _RD_HEAD.size + count * _RD_INSTRUMENT.size:
        return None
    instruments = {}
    for k in range(count):
        symbol, *fields = _RD_INSTRUMENT.unpack_from(data, _RD_HEAD.size + k * _RD_INSTRUMENT.size)
        instruments[symbol.rstrip(b"\0")] = tuple(f.rstrip(b"\0") if isinstance(f, bytes) else f for f in fields)
    return (count, rejected, reject_seq, reject_code), instruments


def _show(value: Any) -> str:
    if isinstance(value, bytes):
        try:
            return repr(value.decode())
        except UnicodeDecodeError:
            return repr(value)
    if isinstance(value, float) and not math.isnan(value):
        return f"{value!r} ({value.hex()})"
    return repr(value)


def state_difference(expected: bytes, actual: bytes, machine: str = "", limit: int = 12) -> dict[str, Any]:
    """How two canonical states differ: their lengths, the first differing byte, and for reference
    data the fields that differ (``differences``, at most ``limit`` lines)."""
    first = next((i for i, (a, b) in enumerate(zip(expected, actual)) if a != b), None)
    if first is None and len(expected) != len(actual):
        first = min(len(expected), len(actual))
    out: dict[str, Any] = {"expected_bytes": len(expected), "actual_bytes": len(actual), "first_difference_at": first,
                           "differences": []}
    if machine != "refdata":
        return out
    exp, act = _parse_refdata(expected), _parse_refdata(actual)
    if exp is None or act is None:
        if act is None:
            out["differences"].append("the implementation's state is not in the canonical REFDATA1 layout "
                                      "(magic, or a length that is not header + count × 112 bytes)")
        return out
    lines = out["differences"]
    for label, e, a in zip(("instrument count", "rejected", "last reject sequence", "last reject code"), exp[0],
                           act[0]):
        if e != a:
            lines.append(f"{label}: expected {e}, got {a}")
    for sym in sorted(set(exp[1]) | set(act[1])):
        shown = _show(sym)
        if sym not in act[1]:
            lines.append(f"instrument {shown}: missing")
        elif sym not in exp[1]:
            lines.append(f"instrument {shown}: not expected")
        else:
            for field, e, a in zip(_RD_FIELDS, exp[1][sym], act[1][sym]):
                same = e == a or (isinstance(e, float) and isinstance(a, float) and struct.pack("<d", e) ==
                                  struct.pack("<d", a))
                if not same:
                    lines.append(f"instrument {shown}: {field} expected {_show(e)}, got {_show(a)}")
    if not lines and expected != actual:
        lines.append("the same values in a different order: instruments must be sorted by the UTF-8 bytes of "
                     "their symbol")
    if len(lines) > limit:
        del lines[limit:]
        lines.append("…")
    return out


# ================================================================================ the command

def add_parser(sub: Any) -> None:
    """Add ``pyseq conformance record|check`` to the ``pyseq`` command's subparsers."""
    from .cli import _number  # the command's own argument parsers (cli imports this module first)

    def _int_at_least(minimum: int, what: str) -> Callable[[str], int]:
        return _number(int, minimum, what)

    p = sub.add_parser("conformance", help="record a conformance kit, or check an implementation against one",
                       description="A conformance kit is a journal of a seeded reference-data workload, the "
                                   "reference's snapshots, and its digest after every sequence. `record` writes "
                                   "one; `check` replays it into another implementation and names the first "
                                   "sequence whose digest differs. Exit codes: 0 conformant, 1 not conformant, 2 "
                                   "usage (a bad --machine, a directory that is not a kit).")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("record", help="write a conformance kit (journal, snapshots, expected digests)",
                           description="Publish a seeded reference-data workload through a ring into OUT/journal, "
                                       "replay it into the reference implementation, and write its snapshots to "
                                       "OUT/snapshots and its digests to OUT/expected.json. The same --messages "
                                       "and --seed give the same kit.")
    a.add_argument("out", metavar="OUT", help="a new (or empty) directory")
    a.add_argument("--messages", type=_int_at_least(1, "an integer >= 1"), default=DEFAULT_MESSAGES,
                   help=f"messages in the workload (default {DEFAULT_MESSAGES}; the minimum, about 100, covers "
                        "every case once)")
    a.add_argument("--seed", type=_int_at_least(0, "an integer >= 0"), default=DEFAULT_SEED,
                   help=f"the workload's seed (default {DEFAULT_SEED})")
    a.add_argument("--every", type=_int_at_least(1, "an integer >= 1"), default=1, metavar="K",
                   help="record the digest after every K-th sequence and the last (default 1: after every "
                        "sequence; a larger K keeps expected.json small for long workloads, and check runs the "
                        "reference again between checkpoints to find the exact sequence)")
    a.add_argument("--machine", metavar="SPEC", default=REFERENCE,
                   help=f"the reference implementation, module:Class or file.py:Class (default {REFERENCE})")
    a.add_argument("--json", action="store_true", help="the summary as one JSON object")
    a.set_defaults(run=_run_record, parser=a)
    a = actions.add_parser("check", help="check an implementation against a kit: exit 0 if it conforms",
                           description="Replay the kit's journal into the implementation through a Replica and "
                                       "compare its digest after every sequence with the kit's; then start fresh "
                                       "instances from each of the kit's snapshots. Reports the first sequence "
                                       "whose digest differs, the message there and how the states differ. Exit 0 "
                                       "if it conforms, 1 if not, 2 if the kit or --machine cannot be used.")
    a.add_argument("dir", metavar="DIR", help="a directory written by `pyseq conformance record`")
    a.add_argument("--machine", metavar="SPEC", required=True,
                   help="the implementation: module:Class (the current directory is importable) or "
                        "path/to/file.py:Class; called with no arguments")
    a.add_argument("--json", action="store_true", help="the report as one JSON object (keys: ok, checked, "
                   "first_mismatch, late_joins, problems, ...)")
    a.set_defaults(run=_run_check, parser=a)


def _usage(args: argparse.Namespace, message: str) -> int:
    args.parser.print_usage(sys.stderr)
    print(f"{args.parser.prog}: error: {message}", file=sys.stderr)
    return 2


def _run_record(args: argparse.Namespace) -> int:
    try:
        summary = record(args.out, args.machine, messages=args.messages, seed=args.seed,
                         checkpoint_every=args.every)
    except (ConformanceError, FileExistsError) as e:
        return _usage(args, str(e))
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"conformance kit {summary['path']}: machine {summary['machine']}, {summary['messages']} messages "
              f"(seed {summary['seed']}, sequences {summary['first_sequence']}..{summary['last_sequence']}), "
              f"{summary['digests']} digests (every {summary['every']}), snapshots at "
              f"{', '.join(map(str, summary['snapshots'])) or '-'}; final digest {summary['final_digest']}")
    return 0


def _run_check(args: argparse.Namespace) -> int:
    try:
        report = check(args.dir, args.machine)
    except ConformanceError as e:
        return _usage(args, str(e))
    if args.json:
        print(json.dumps(report.to_mapping()))
    else:
        print(format_report(report))
    return 0 if report.ok else 1


def format_report(report: Report) -> str:
    """The report for a person: a verdict line, then what differs and where."""
    span = f"sequences {report.first_sequence}..{report.last_sequence}"
    every = "after every sequence" if report.every == 1 else f"every {report.every} sequences"
    lines = []
    m = report.first_mismatch
    if report.ok:
        joins = f"; {len(report.late_joins)} late joiners from the kit's snapshots match too" \
            if report.late_joins else ""
        lines.append(f"PASS: {report.implementation} conforms to kit {report.kit} ({report.machine}, {span}): "
                     f"{report.checked} digests match ({every}){joins}")
        return "\n".join(lines)
    if m is not None:
        where = f"sequence {m.sequence}" if m.exact else \
            f"sequences {m.bracket[0]}..{m.bracket[1]} (no reference to bisect with)" if m.bracket else \
            f"sequence {m.sequence}"
        lines.append(f"FAIL: {report.implementation} differs from kit {report.kit} ({report.machine}, {span}) first "
                     f"at {where}")
        lines.extend(_mismatch_lines(m))
    else:
        lines.append(f"FAIL: {report.implementation} against kit {report.kit} ({report.machine}, {span}): "
                     f"{report.checked} digests match, but:")
    for problem in report.problems:
        lines.append(f"  problem: {problem}")
    for join in report.late_joins:
        if join.ok:
            lines.append(f"  late joiner from the snapshot at {join.sequence}: ok ({join.checked} digests)")
        elif join.error:
            lines.append(f"  late joiner from the snapshot at {join.sequence}: {join.error}")
        elif join.first_mismatch is not None:
            lines.append(f"  late joiner from the snapshot at {join.sequence}: differs first at sequence "
                         f"{join.first_mismatch.sequence}")
            lines.extend("  " + line for line in _mismatch_lines(join.first_mismatch))
    return "\n".join(lines)


def _mismatch_lines(m: Mismatch) -> list[str]:
    lines = []
    msg = m.message
    if msg is not None:
        payload = msg["decoded"] if msg["decoded"] is not None else \
            f"{bytes.fromhex(msg['payload'])!r}" + (f" (undecodable: {msg['undecodable']})" if msg["undecodable"]
                                                     else "")
        sender = msg["sender"] or msg["source"]
        lines.append(f"  message   {msg['sequence']} {msg['type']} v{msg['schema_version']} src={sender} {payload}")
    if m.note:
        lines.append(f"  exercises {m.note}")
    lines.append(f"  expected  {m.expected_digest or '-'}")
    lines.append(f"  actual    {m.actual_digest or '-'}")
    if m.error:
        lines.append(f"  error     {m.error}")
    if m.state:
        if "error" in m.state:
            lines.append(f"  state     (could not compare: {m.state['error']})")
        else:
            for diff in m.state.get("differences", []):
                lines.append(f"  state     {diff}")
            if not m.state.get("differences") and m.state.get("first_difference_at") is not None:
                lines.append(f"  state     {m.state['expected_bytes']} bytes expected, {m.state['actual_bytes']} "
                             f"bytes, first difference at byte {m.state['first_difference_at']}")
    return lines
