"""The ``pyseq`` command: ``sequencer``, ``stat``, ``tail``, ``journal`` and ``replay``
(``pyseq <command> --help``).

Exit codes: 0 done (Ctrl-C included), 1 a runtime failure (a missing ring or journal, a live writer
in the way, a corrupt journal), 2 a usage error.  ``stat`` and ``tail`` only attach: they never
create a ring; ``journal`` and ``replay`` only read the journal (``replay --into`` creates the ring
it republishes into).  The scripts in ``tools/`` call :func:`main` and hold no logic of their own.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import logging
import os
import signal
import sys
import time
from typing import Any, Callable, Optional, Sequence

from . import errors, schema
from . import bridge
from . import conformance
from . import demo
from . import gateway
from . import schema_cli
from .idle import BackoffIdle, BusySpin, IdleStrategy, SpinYield, default_idle
from .journal import Journal
from .journaler import DEFAULT_SEGMENT_BYTES, FsyncPolicy
from .message import FRAME_LENGTH, Message
from .ring import Ring, Start, validate_name
from .sequencer import (CLIENT_JOINED, CLIENT_LEFT, END_OF_STREAM, INBOUND_INFIX, SEQUENCER_CURSOR, Limit,
                        Limits, Sequencer, inbound_clients, inbound_name, source_id)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
IDLE: dict[str, Callable[[], IdleStrategy]] = {"busy-spin": BusySpin, "spin-yield": SpinYield, "backoff": BackoffIdle}
SYSTEM_TYPES = {CLIENT_JOINED: "CLIENT_JOINED", CLIENT_LEFT: "CLIENT_LEFT", END_OF_STREAM: "END_OF_STREAM"}
RATE_SAMPLE_S = 0.2  # stat measures rates over this interval
TAIL_CURSOR = "pyseq-tail"
REPLAY_CAPACITY = 65536  # default slots of the ring `replay --into` creates

log = logging.getLogger("pyseq.cli")


class UsageError(Exception):
    """Arguments that parse but do not make sense (together, or for the ring): exit 2."""


# ---- argument types (argparse turns their errors into usage errors) ----------------------------

def _ring_name(text: str) -> str:
    try:
        return validate_name(text)
    except errors.RingNameError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _number(kind: Callable[[str], Any], minimum: float, what: str,
            exclusive: bool = False) -> Callable[[str], Any]:
    """An argparse type: ``kind(text)`` at least ``minimum`` (above it if ``exclusive``)."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if value < minimum or (exclusive and value == minimum):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value
    parse.__name__ = what  # argparse names the type in its messages
    return parse


_count = _number(int, 1, "an integer >= 1")
_sequence = _number(int, 1, "a sequence >= 1")
_rate_arg = _number(float, 0, "a number >= 0")
_seconds = _number(float, 0, "a number of seconds >= 0")


def _positive(kind: Callable[[str], Any], what: str) -> Callable[[str], Any]:
    return _number(kind, 0, what, exclusive=True)


def _fsync(text: str) -> str:
    try:
        return str(FsyncPolicy.parse(text))
    except errors.JournalError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _msg_type(text: str) -> int:
    by_name = {name: t for t, name in SYSTEM_TYPES.items()}
    if text.upper() in by_name:
        return by_name[text.upper()]
    try:
        value = int(text, 0)
    except ValueError:
        value = -1
    if not 0 <= value <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"{text!r} is not a message type (0..65535, or one of "
                                         f"{', '.join(sorted(by_name))})")
    return value


_segment_bytes = _number(int, 4096, "a number of bytes >= 4096")
_positive_rate = _number(float, 1e-9, "a number of messages/s > 0")
_readers = _number(int, 0, "an integer >= 0")


def _start(text: str) -> Start:
    if text in ("earliest", "latest"):
        return text
    try:
        return _sequence(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not 'earliest', 'latest' or a sequence >= 1") from None


# ---- the parser --------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyseq",
        description="Run the demo (pyseq demo), a sequencer, a FIX market-data gateway; look at rings; read, "
                    "verify and replay journals; check schemas and state machine implementations.",
        epilog="exit codes: 0 ok, 1 runtime failure, 2 usage error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("sequencer", help="run the sequencer of a ring in the foreground",
                       description="Run the one writer of the sequenced ring RING until SIGTERM/SIGINT (or "
                                   "--duration): it then drains the inbound rings, publishes END_OF_STREAM and "
                                   "closes. Prints 'sequencer RING ready pid N' once it runs; logs to stderr.")
    p.add_argument("--ring", required=True, type=_ring_name, help="the sequenced ring to create")
    p.add_argument("--capacity", type=_count, default=65536, help="slots, a power of two (default 65536)")
    p.add_argument("--slot-size", type=_count, default=128, help="bytes a slot, a multiple of 64 (default 128)")
    p.add_argument("--limits", metavar="FILE", help="per-client limits, .json or .toml: "
                   '{"default": {"rate": R, "burst": B, "capacity": N}, "clients": {"NAME": {...}}}')
    p.add_argument("--rate", type=_rate_arg, help="default limit: messages/s a client (0: unlimited)")
    p.add_argument("--burst", type=_count, help="default limit: burst (messages)")
    p.add_argument("--inbound-capacity", type=_count, help="default limit: inbound ring slots")
    p.add_argument("--batch", type=_count, default=256, help="messages moved per client per round (default 256)")
    p.add_argument("--max-clients", type=_count, default=64, help="clients at once (default 64)")
    p.add_argument("--max-readers", type=_count, default=16, help="reader cursors in the ring (default 16)")
    p.add_argument("--idle", choices=sorted(IDLE), help="idle strategy (default: $PYSEQ_IDLE, else busy-spin)")
    p.add_argument("--first-sequence", type=_sequence,
                   help="sequence of the first message (default 1; with --journal, the one after the journal's last)")
    p.add_argument("--duration", type=_seconds, help="stop by itself after this many seconds")
    p.add_argument("--journal", metavar="DIR", help="journal every sequenced message into DIR (created if needed); "
                   "at start, a torn tail is truncated and the numbering resumes after the journal's last sequence")
    p.add_argument("--fsync", type=_fsync, metavar="never|batch|interval:MS",
                   help="when the journal is fdatasync'ed (default batch: after every write)")
    p.add_argument("--segment-bytes", type=_segment_bytes,
                   help=f"journal segment file size (default {DEFAULT_SEGMENT_BYTES})")
    p.set_defaults(run=_run_sequencer, parser=p)

    p = sub.add_parser("stat", help="positions, lag, rates, liveness and per-client counts",
                       description="Show the sequenced ring RING: its writer, every cursor (lag, rate) and every "
                                   "client's inbound ring (submitted, sequenced, back-pressured, deferred). "
                                   f"Rates are measured over {RATE_SAMPLE_S} s. Attaches read-only.")
    p.add_argument("ring", metavar="RING", type=_ring_name)
    p.add_argument("--json", action="store_true", help="one JSON object (keys: ring, clients, readers) a sample; "
                   "ring holds the journal's state too (journal_state, journaled_sequence, journal_lag, ...)")
    p.add_argument("--watch", metavar="SECONDS", type=_number(float, 0.01, "a number of seconds >= 0.01"),
                   help="repeat every SECONDS until Ctrl-C")
    p.set_defaults(run=_run_stat, parser=p)

    p = sub.add_parser("tail", help="print messages as they are sequenced, decoded",
                       description="Print one line a message: sequence, time, type, source, payload. Ends at "
                                   "END_OF_STREAM, after --count messages or --timeout seconds with nothing new; "
                                   "else follows until Ctrl-C.")
    p.add_argument("ring", metavar="RING", type=_ring_name, nargs="?", help="the ring (or --nats and --stream)")
    p.add_argument("--nats", metavar="URL", help="read the JetStream stream --stream a bridge fills, from any host")
    p.add_argument("--stream", help="the JetStream stream (with --nats)")
    p.add_argument("--from", dest="start", type=_start, default="earliest", metavar="earliest|latest|SEQ",
                   help="where to start (default earliest)")
    p.add_argument("--count", type=_count, help="stop after N messages")
    p.add_argument("--timeout", type=_seconds, help="stop after S seconds with nothing new")
    p.add_argument("--raw", action="store_true", help="payloads as hex, not decoded")
    p.add_argument("--schema", metavar="MODULE", action="append", default=[],
                   help="import MODULE (its record declarations decode payloads); repeatable")
    p.set_defaults(run=_run_tail, parser=p)

    p = sub.add_parser("journal", help="check or describe a journal directory",
                       description="Read a journal directory (what `pyseq sequencer --journal DIR` writes); "
                                   "safe while the sequencer writes it.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("verify", help="check every record; exit 1 if the journal is corrupt",
                           description="Check every record of every segment (length, checksum, sequence) and "
                                       "list every problem: its segment, offset and sequence. A torn tail (the "
                                       "last record of the last segment cut short by a crash) alone is reported "
                                       "but is not corruption: the next sequencer start truncates it. Exit 0 if "
                                       "the journal is sound, 1 if it is corrupt.")
    a.add_argument("journal", metavar="DIR")
    a.add_argument("--json", action="store_true", help="one JSON object (keys: ok, segments, records, first_seq, "
                   "last_seq, bytes, torn_tail, problems)")
    a.set_defaults(run=_run_journal_verify, parser=a)
    a = actions.add_parser("info", help="sequence range, records, segments, counts by message type",
                           description="Describe a journal: first and last sequence, records, segments, bytes, "
                                       "message counts by type and every segment (a full scan).")
    a.add_argument("journal", metavar="DIR")
    a.add_argument("--json", action="store_true", help="one JSON object (keys: first_seq, last_seq, records, "
                   "segments, bytes, by_type, segment_list)")
    a.set_defaults(run=_run_journal_info, parser=a)

    p = sub.add_parser("replay", help="print a journal's messages, or republish them into a ring",
                       description="Read the messages of journal DIR in sequence order (--from/--to/--type "
                                   "select). Without --into, print one line a message, decoded like tail (sources "
                                   "are named from the CLIENT_JOINED messages replayed). With --into RING, create "
                                   "RING and publish them into it with their message type, schema version, source "
                                   "and original timestamp; its first sequence is the first replayed one, so the "
                                   "sequences match the journal's when nothing is filtered out. Ends with the count "
                                   "and the rate achieved; the ring stays unless --remove-after.")
    p.add_argument("journal", metavar="DIR")
    p.add_argument("--from", dest="start", type=_sequence, metavar="SEQ", help="first sequence (default: the first)")
    p.add_argument("--to", dest="stop", type=_sequence, metavar="SEQ",
                   help="last sequence, included (default: the last)")
    p.add_argument("--type", dest="types", type=_msg_type, action="append", metavar="TYPE",
                   help="only messages of this type (a number, or CLIENT_JOINED, CLIENT_LEFT, END_OF_STREAM); "
                        "repeatable")
    p.add_argument("--raw", action="store_true", help="payloads as hex, not decoded")
    p.add_argument("--schema", metavar="MODULE", action="append", default=[],
                   help="import MODULE (its record declarations decode payloads); repeatable")
    g = p.add_argument_group("republishing into a ring")
    g.add_argument("--into", metavar="RING", type=_ring_name, help="create RING and publish the messages into it")
    g.add_argument("--capacity", type=_count, help=f"its slots, a power of two (default {REPLAY_CAPACITY})")
    g.add_argument("--slot-size", type=_count,
                   help="its slot size, a multiple of 64 (default and minimum: the journal's max payload + 32, "
                        "rounded up to 64)")
    g.add_argument("--rate", type=_positive_rate, metavar="MSG/S",
                   help="publish at this rate (a deadline schedule from the first message); default: as fast as "
                        "the ring's gating readers allow")
    g.add_argument("--wait-readers", type=_readers, default=0, metavar="N",
                   help="start publishing once N readers have attached to the ring (default 0)")
    g.add_argument("--remove-after", action="store_true", help="remove the ring when done")
    g.add_argument("--json", action="store_true", help="the final report as one JSON object")
    p.set_defaults(run=_run_replay, parser=p)
    # more subcommands, each from its own module: add_parser(sub) adds it (one line each)
    demo.add_parser(sub)
    gateway.add_parser(sub)
    conformance.add_parser(sub)
    schema_cli.add_parser(sub)
    bridge.add_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``pyseq`` command with ``argv`` (default: sys.argv[1:]); the exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    try:
        return int(args.run(args))
    except UsageError as e:
        args.parser.print_usage(sys.stderr)
        print(f"{args.parser.prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:  # e.g. `pyseq tail RING | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (errors.PyseqError, OSError) as e:
        print(f"{args.parser.prog}: {e}", file=sys.stderr)
        return EXIT_FAILURE


# ---- sequencer ---------------------------------------------------------------------------------

def _limits(args: argparse.Namespace) -> Limits:
    given = {k: v for k, v in (("rate", args.rate), ("burst", args.burst), ("capacity", args.inbound_capacity))
             if v is not None}
    try:
        if args.limits:
            if given:
                raise UsageError("--limits cannot be combined with --rate/--burst/--inbound-capacity "
                                 "(put the default in the file)")
            return Limits.from_file(args.limits)
        return Limits(Limit(**given))
    except (OSError, ValueError, TypeError) as e:
        where = f"--limits {args.limits}" if args.limits else "limits"
        raise UsageError(f"{where}: {e}") from None


def _journal_options(args: argparse.Namespace) -> dict[str, Any]:
    if args.journal is None:
        given = [flag for flag, value in (("--fsync", args.fsync), ("--segment-bytes", args.segment_bytes))
                 if value is not None]
        if given:
            raise UsageError(f"{' and '.join(given)} {'need' if len(given) > 1 else 'needs'} --journal DIR")
        return {}
    return {"journal": args.journal, "fsync": args.fsync or "batch",
            "segment_bytes": args.segment_bytes or DEFAULT_SEGMENT_BYTES}


def recovery_line(sequencer: Sequencer, path: str) -> str:
    """What a sequencer with a journal found at start, in one line."""
    assert sequencer.journal is not None and sequencer.recovery is not None
    report, resumed = sequencer.recovery, sequencer.ring.first_sequence
    found = f"ends at sequence {report.last_sequence} ({_plural(report.segments, 'segment')})" \
        if report.last_sequence else "empty"
    parts = [f"journal {path} (fsync {sequencer.journal.policy}): {found}"]
    if report.torn_tail is not None:
        t = report.torn_tail
        parts.append(f"torn tail truncated ({t.bytes} bytes at offset {t.offset} of {t.segment}: {t.reason})")
    if resumed - 1 > report.last_sequence:
        parts.append(f"journaled sequences {report.last_sequence + 1}..{resumed - 1} left unjournaled in the old "
                     f"ring by the previous sequencer")
    parts.append(f"resumed at sequence {resumed}")
    return "; ".join(parts)


def _run_sequencer(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    limits = _limits(args)
    journal = _journal_options(args)
    try:
        idle = IDLE[args.idle]() if args.idle else default_idle()
        sequencer = Sequencer(args.ring, capacity=args.capacity, slot_size=args.slot_size, limits=limits,
                              batch=args.batch, max_clients=args.max_clients, max_readers=args.max_readers,
                              first_sequence=args.first_sequence, idle=idle, **journal)
    except ValueError as e:  # RingConfigError, a bad PYSEQ_IDLE, a name too long for inbound rings
        raise UsageError(str(e)) from None
    if sequencer.journal is not None:
        line = recovery_line(sequencer, args.journal)
        log.info("sequencer %r: %s", args.ring, line)
        print(line, flush=True)

    stopped_by: list[str] = []

    def on_signal(signum: int, _frame: Any) -> None:  # no logging here: it may interrupt a log call
        stopped_by.append(signal.Signals(signum).name)
        sequencer.stop()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        log.info("sequencer %r: capacity %d, slot size %d, idle %s, default limit %s", args.ring, args.capacity,
                 args.slot_size, idle.name, limits.default)
        print(f"sequencer {args.ring} ready pid {os.getpid()}", flush=True)
        sequencer.run(args.duration)
        if stopped_by:
            log.info("sequencer %r: %s: draining and stopping", args.ring, stopped_by[0])
    finally:
        sequencer.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    log.info("sequencer %r: closed; END_OF_STREAM published", args.ring)
    return EXIT_OK


# ---- stat --------------------------------------------------------------------------------------

client_names = inbound_clients  # the clients with an inbound ring on a sequenced ring now


def _attach_inbound(ring: str) -> dict[str, Ring]:
    out = {}
    for client in client_names(ring):
        try:
            out[client] = Ring.attach(inbound_name(ring, client))
        except (errors.RingNotFoundError, errors.RingNotReadyError):
            continue  # the client left, or is still being created
    return out


def _sample(ring: Ring, inbound: dict[str, Ring]) -> tuple[float, dict[str, Any], dict[str, dict[str, Any]]]:
    return time.monotonic(), ring.info(), {c: r.info() for c, r in inbound.items() if not r.closed}


def _rate(before: Optional[int], after: int, dt: float) -> Optional[float]:
    return None if before is None else round((after - before) / dt, 1)


def _reader_key(r: dict[str, Any]) -> tuple[int, str, int]:
    return r["index"], r["name"], r["pid"]


def _sequencer_cursor(readers: list[dict[str, Any]]) -> Optional[dict[str, Any]]:
    mine = [r for r in readers if r["name"] == SEQUENCER_CURSOR]
    return next((r for r in mine if r["state"] == "active"), mine[0] if mine else None)


def stat(name: str, sample_s: float = RATE_SAMPLE_S) -> dict[str, Any]:
    """The state of the sequenced ring ``name`` and its clients, rates measured over ``sample_s``."""
    ring = Ring.attach(name)
    inbound: dict[str, Ring] = {}
    try:
        inbound = _attach_inbound(name)
        t0, info0, in0 = _sample(ring, inbound)
        time.sleep(sample_s)
        t1, info, in1 = _sample(ring, inbound)
    finally:
        for r in inbound.values():
            r.close()
        ring.close()
    dt = t1 - t0
    before = {_reader_key(r): r["sequence"] for r in info0["readers"]}
    readers = [{"name": r["name"], "index": r["index"], "pid": r["pid"], "alive": r["alive"], "gating": r["gating"],
                "state": r["state"], "sequence": r["sequence"], "lag": r["lag"],
                "rate": _rate(before.get(_reader_key(r)), r["sequence"], dt)} for r in info["readers"]]
    clients = []
    for client, now in in1.items():
        cursor, cursor0 = _sequencer_cursor(now["readers"]), _sequencer_cursor(in0[client]["readers"])
        sequenced = None if cursor is None else cursor["sequence"]
        clients.append({
            "client": client, "source": source_id(client), "ring": inbound_name(name, client),
            "pid": now["writer_pid"], "alive": now["writer_alive"], "capacity": now["capacity"],
            "submitted": now["published_sequence"], "sequenced": sequenced,
            "pending": None if sequenced is None else max(0, now["published_sequence"] - sequenced),
            "back_pressured": now["full_count"], "deferred": None if cursor is None else cursor["held_count"],
            "rate": None if cursor is None or cursor0 is None else _rate(cursor0["sequence"], cursor["sequence"], dt),
        })
    summary = {k: info[k] for k in ("name", "capacity", "slot_size", "first_sequence", "published_sequence",
                                    "writer_pid", "writer_alive", "writer_state", "eviction_count", "full_count")}
    summary["heartbeat_age_s"] = round((time.time_ns() - info["writer_heartbeat_ns"]) / 1e9, 3)
    summary["rate"] = _rate(info0["published_sequence"], info["published_sequence"], dt)
    journaled = info["journal_state"] != "none"
    summary.update({
        "journal_state": info["journal_state"],
        "journal_fsync": info["journal_fsync"] if journaled else None,
        "journaled_sequence": info["journaled_sequence"] if journaled else None,
        "journal_lag": max(0, info["published_sequence"] - info["journaled_sequence"]) if journaled else None,
        "journal_errors": info["journal_errors"] if journaled else None,
    })
    return {"ring": summary, "clients": clients, "readers": readers}


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> list[str]:
    def cell(v: Any) -> str:
        return "-" if v is None else ("yes" if v is True else "no" if v is False else str(v))
    cells = [[title for _, title in columns]] + [[cell(row[key]) for key, _ in columns] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return ["  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
            for r in cells]


def format_stat(s: dict[str, Any]) -> str:
    r = s["ring"]
    lines = [
        f"ring {r['name']}: published {r['published_sequence']} ({r['rate']} msg/s), "
        f"capacity {r['capacity']} x {r['slot_size']} B, evictions {r['eviction_count']}, full {r['full_count']}",
        f"writer pid {r['writer_pid']} {'alive' if r['writer_alive'] else 'NOT ALIVE'} ({r['writer_state']}), "
        f"heartbeat {r['heartbeat_age_s']:.3f} s ago",
        "journal none" if r["journal_state"] == "none" else
        f"journal {r['journal_state']} (fsync {r['journal_fsync']}): journaled {r['journaled_sequence']} "
        f"(lag {r['journal_lag']}), write errors {r['journal_errors']}",
        f"readers ({len(s['readers'])})",
    ]
    lines += _table(s["readers"], [("name", "name"), ("pid", "pid"), ("alive", "alive"), ("gating", "gating"),
                                   ("state", "state"), ("sequence", "sequence"), ("lag", "lag"),
                                   ("rate", "msg/s")])
    lines.append(f"clients ({len(s['clients'])})")
    lines += _table(s["clients"], [("client", "client"), ("pid", "pid"), ("alive", "alive"),
                                   ("submitted", "submitted"), ("sequenced", "sequenced"), ("pending", "pending"),
                                   ("back_pressured", "back-pressured"), ("deferred", "deferred"),
                                   ("rate", "msg/s")])
    return "\n".join(lines)


def _run_stat(args: argparse.Namespace) -> int:
    while True:
        started = time.monotonic()
        s = stat(args.ring)
        if args.json:
            print(json.dumps(s), flush=True)
        else:
            if args.watch:
                print(datetime.datetime.now().isoformat(timespec="seconds"))
            print(format_stat(s), flush=True)
        if not args.watch:
            return EXIT_OK
        time.sleep(max(0.0, args.watch - (time.monotonic() - started)))
        if not args.json:
            print()


# ---- tail --------------------------------------------------------------------------------------

def _timestamp(ns: int) -> str:
    t = datetime.datetime.fromtimestamp(ns // 1_000_000_000, datetime.timezone.utc)
    return t.replace(microsecond=ns // 1000 % 1_000_000).isoformat(timespec="microseconds")


def _record_class(msg: Message) -> Optional[type[schema.Record]]:
    try:
        return schema.lookup(msg.msg_type, msg.schema_version or None)
    except errors.SchemaError:
        try:  # a version this process does not know: the newest one reads its prefix
            return schema.lookup(msg.msg_type)
        except errors.SchemaError:
            return None


def format_message(msg: Message, sources: dict[int, str], raw: bool = False) -> str:
    """One line: sequence, time, type, source, payload (a record's repr, or the bytes)."""
    payload: str
    cls = None if msg.msg_type in SYSTEM_TYPES else _record_class(msg)
    kind = SYSTEM_TYPES.get(msg.msg_type) or (cls.__name__ if cls else str(msg.msg_type))
    if raw:
        payload = msg.payload.hex()
    elif msg.msg_type in (CLIENT_JOINED, CLIENT_LEFT):
        payload = repr(msg.payload.decode(errors="replace"))
    elif cls is not None:
        try:
            payload = repr(cls.decode(msg.payload))
        except errors.SchemaError as e:
            payload = f"{msg.payload!r} (undecodable: {e})"
    else:
        payload = repr(msg.payload) if msg.payload else ""
    source = sources.get(msg.source, str(msg.source))
    return f"{msg.seq} {_timestamp(msg.timestamp_ns)} {kind} src={source} {payload}".rstrip()


def _import_schemas(modules: list[str]) -> None:
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # a console script does not see modules in the current directory
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as e:
            raise errors.PyseqError(f"--schema {module}: cannot import it: {type(e).__name__}: {e}") from None


def _run_tail(args: argparse.Namespace) -> int:
    if (args.ring is None) == (args.nats is None) or (args.nats is None) != (args.stream is None):
        raise UsageError("give a RING, or --nats URL and --stream STREAM")
    _import_schemas(args.schema)
    if args.nats is not None:
        from .remote import RemoteReader
        with RemoteReader(args.nats, args.stream, start=args.start) as remote:
            return _tail(args, remote, {})
    with Ring.attach(args.ring) as ring, ring.reader(TAIL_CURSOR, start=args.start, idle=BackoffIdle()) as reader:
        return _tail(args, reader, {source_id(c): c for c in client_names(args.ring)})


def _tail(args: argparse.Namespace, reader: Any, sources: dict[int, str]) -> int:
    """Print what ``reader`` (a ring's or a RemoteReader) reads, as `tail` does."""
    shown = 0
    ended = False
    while args.count is None or shown < args.count:
        try:
            msg = reader.poll()
            if msg is None:
                if ended:  # END_OF_STREAM was the last word (a replayed stream may go on after one)
                    break
                sys.stdout.flush()
                msg = reader.read(timeout=args.timeout)
        except errors.LappedError as e:
            print(f"lapped: {e.missed} messages missed (sequences {e.first_missed}..{e.resume_at - 1}); "
                  f"continuing at {e.resume_at}")
            reader.skip_to(e.resume_at)
            continue
        except (errors.TimeoutError, errors.EndOfStreamError):
            break
        if msg.msg_type in (CLIENT_JOINED, CLIENT_LEFT):
            sources[msg.source] = msg.payload.decode(errors="replace")
        print(format_message(msg, sources, args.raw))
        shown += 1
        ended = msg.msg_type == END_OF_STREAM
    sys.stdout.flush()
    return EXIT_OK


# ---- journal -----------------------------------------------------------------------------------

def open_journal(path: str) -> Journal:
    """The journal at ``path`` for reading; :class:`JournalNotFoundError` if it is not a directory
    or holds no segment file."""
    journal = Journal(path)
    if not journal.segment_files():
        raise errors.JournalNotFoundError(f"{path!r} holds no journal segment (no *.seg file)")
    return journal


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _sequences(first: Optional[int], last: Optional[int]) -> str:
    return "no records" if first is None else f"sequences {first}..{last}"


def _type_name(msg_type: int) -> str:
    return SYSTEM_TYPES.get(msg_type, str(msg_type))


def _run_journal_verify(args: argparse.Namespace) -> int:
    report = open_journal(args.journal).verify()
    torn = report.torn_tail
    if args.json:
        out = report.to_mapping()
        out["torn_tail"] = None if torn is None else next(p for p in out["problems"] if p["torn_tail"])
        print(json.dumps(out))
    else:
        corrupt = [p for p in report.problems if not p.torn_tail]
        verdict = f"CORRUPT ({_plural(len(corrupt), 'problem')})" if corrupt else "ok"
        print(f"journal {args.journal}: {_plural(report.segments, 'segment')}, {_plural(report.records, 'record')} "
              f"({_sequences(report.first_seq, report.last_seq)}), {report.bytes} bytes: {verdict}")
        for problem in report.problems:
            note = " (the next sequencer start truncates it)" if problem.torn_tail else ""
            print(f"  {problem}{note}")
    return EXIT_OK if report.ok else EXIT_FAILURE


def _run_journal_info(args: argparse.Namespace) -> int:
    info = open_journal(args.journal).info()
    if args.json:
        print(json.dumps(info))
        return EXIT_OK
    segments = info["segment_list"]
    print(f"journal {args.journal}: {_sequences(info['first_seq'], info['last_seq'])}, "
          f"{_plural(info['records'], 'record')} in {_plural(info['segments'], 'segment')}, {info['bytes']} bytes")
    rings = sorted({(s["ring"], s["max_payload"], s["schema_id"], s["schema_version"]) for s in segments})
    for ring, max_payload, schema_id, schema_version in rings:
        print(f"written from ring {ring!r}: max payload {max_payload} bytes, schema {schema_id}/{schema_version}")
    by_type = ", ".join(f"{_type_name(int(t))} {n}" for t, n in info["by_type"].items())
    print(f"by type: {by_type or '-'}")
    if any(not s["complete"] for s in segments):
        print("a segment ends in a record that is not valid: `pyseq journal verify` says what it is")
    for line in _table(segments, [("file", "segment"), ("first_seq", "first"), ("last_seq", "last"),
                                  ("records", "records"), ("bytes", "bytes"), ("complete", "complete")]):
        print(line)
    return EXIT_OK


# ---- replay ------------------------------------------------------------------------------------

def _check_replay_args(args: argparse.Namespace) -> None:
    if args.start is not None and args.stop is not None and args.start > args.stop:
        raise UsageError(f"--from {args.start} is after --to {args.stop}")
    ring_only = [flag for flag, given in (("--capacity", args.capacity is not None),
                                          ("--slot-size", args.slot_size is not None),
                                          ("--rate", args.rate is not None), ("--wait-readers", args.wait_readers),
                                          ("--remove-after", args.remove_after), ("--json", args.json)) if given]
    if args.into is None and ring_only:
        raise UsageError(f"{', '.join(ring_only)}: only with --into RING")
    if args.into is not None and (args.raw or args.schema):
        raise UsageError("--raw and --schema are for printing; --into republishes the payloads as they are")
    if args.into is not None and INBOUND_INFIX in args.into:
        raise UsageError(f"--into {args.into}: {INBOUND_INFIX!r} marks a client's inbound ring; choose another name")


def _no_match_note(journal: Journal) -> str:
    segments = journal.segments()
    first, last = segments[0].first_sequence, journal.last_sequence()
    held = f"sequences {first}..{last}" if last >= first else "no records"
    return f"no records matched (the journal holds {held})"


def _run_replay(args: argparse.Namespace) -> int:
    _check_replay_args(args)
    journal = open_journal(args.journal)
    if args.into is not None:
        return _replay_into(args, journal)
    _import_schemas(args.schema)
    wanted = None if args.types is None else set(args.types)
    sources: dict[int, str] = {}
    shown = 0
    names = None if wanted is None else wanted | {CLIENT_JOINED, CLIENT_LEFT}
    write = sys.stdout.write
    messages = journal.records(args.start, args.stop, names)
    for msg in messages:
        if msg.msg_type in (CLIENT_JOINED, CLIENT_LEFT):
            sources[msg.source] = msg.payload.decode(errors="replace")
        if wanted is None or msg.msg_type in wanted:
            write(format_message(msg, sources, args.raw) + "\n")
            shown += 1
    sys.stdout.flush()
    if not shown:
        print(f"{args.parser.prog}: {_no_match_note(journal)}", file=sys.stderr)
    return EXIT_OK


def replay_slot_size(journal: Journal) -> int:
    """The smallest slot size of a ring that holds every payload of ``journal``."""
    largest = max((s.max_payload for s in journal.segments()), default=0)
    return max(64, (largest + FRAME_LENGTH + 63) // 64 * 64)


def _wait_for_readers(ring: Ring, count: int) -> None:
    if count <= 0:
        return
    print(f"ring {ring.name}: waiting for {_plural(count, 'reader')} to attach", file=sys.stderr, flush=True)
    while sum(r["state"] == "active" and r["alive"] for r in ring.readers()) < count:
        time.sleep(0.005)


def _replay_into(args: argparse.Namespace, journal: Journal) -> int:
    own = {s.ring_name for s in journal.segments()}
    if args.into in own:
        raise UsageError(f"--into {args.into}: this journal was written from that ring; replaying into it would "
                         f"replace it (choose another name)")
    need = replay_slot_size(journal)
    slot_size = args.slot_size or need
    if slot_size < need:
        raise UsageError(f"--slot-size {slot_size}: the journal's payloads need slots of at least {need} bytes")
    messages = journal.records(args.start, args.stop, args.types)
    first = next(messages, None)
    first_sequence = first.seq if first is not None else (args.start or journal.segments()[0].first_sequence)
    try:
        ring = Ring.create(args.into, args.capacity or REPLAY_CAPACITY, slot_size, first_sequence=first_sequence,
                           idle=BackoffIdle())
    except errors.RingConfigError as e:
        raise UsageError(str(e)) from None
    count, last, started, interrupted = 0, None, time.monotonic(), False
    try:
        _wait_for_readers(ring, args.wait_readers)
        publish, rate, due = ring.publish, args.rate, 0
        started = time.monotonic()
        msg = first
        while msg is not None:
            if rate is not None and due == 0:  # the deadline schedule: message i is due at started + i / rate
                while True:
                    now = time.monotonic()
                    due = int((now - started) * rate) + 1 - count  # due by now, not yet published
                    if due > 0:
                        break
                    time.sleep(started + count / rate - now)
            publish(msg.msg_type, msg.payload, source=msg.source, schema_version=msg.schema_version,
                    timestamp_ns=msg.timestamp_ns)
            count, last, due = count + 1, msg.seq, due - 1
            msg = next(messages, None)
    except KeyboardInterrupt:
        interrupted = True
    except BaseException:  # a corrupt record: what was published stays in the ring
        ring.close()
        report = _replay_report(args, ring, first, last, count, time.monotonic() - started, removed=False)
        _print_replay_report(report, sys.stderr, "before the error")
        raise
    elapsed = time.monotonic() - started if count else 0.0
    removed = bool(args.remove_after) and ring.unlink()
    ring.close()  # the writer closes the ring: its readers see the end of the stream
    report = _replay_report(args, ring, first, last, count, elapsed, removed, interrupted)
    if args.json:
        print(json.dumps(report), flush=True)
    else:
        _print_replay_report(report, sys.stdout, "(interrupted)" if interrupted else "")
    if first is None:
        print(f"{args.parser.prog}: {_no_match_note(journal)}", file=sys.stderr)
    return EXIT_OK


def _replay_report(args: argparse.Namespace, ring: Ring, first: Optional[Message], last: Optional[int], count: int,
                   elapsed: float, removed: bool, interrupted: bool = False) -> dict[str, Any]:
    return {"ring": ring.name, "count": count, "first_seq": first.seq if count and first else None,
            "last_seq": last, "ring_first_seq": ring.first_sequence,
            "ring_last_seq": ring.first_sequence + count - 1 if count else None,
            "elapsed_s": round(elapsed, 6), "rate": round(count / elapsed, 1) if elapsed > 0 and count else None,
            "target_rate": args.rate, "removed": removed, "interrupted": interrupted}


def _print_replay_report(r: dict[str, Any], out: Any, note: str) -> None:
    span = f" (journal sequences {r['first_seq']}..{r['last_seq']}, ring sequences {r['ring_first_seq']}.." \
           f"{r['ring_last_seq']})" if r["count"] else ""
    print(f"replayed {_plural(r['count'], 'message')}{span} into ring {r['ring']} in {r['elapsed_s']:.3f} s: "
          f"{'-' if r['rate'] is None else r['rate']} msg/s{' ' + note if note else ''}", file=out)
    if r["removed"]:
        print(f"ring {r['ring']} removed", file=out)
    else:
        print(f"ring {r['ring']} stays in /dev/shm; remove it with: "
              f"python -c \"import pyseq; pyseq.Ring.remove('{r['ring']}')\"", file=out)
    out.flush()


if __name__ == "__main__":
    sys.exit(main())
