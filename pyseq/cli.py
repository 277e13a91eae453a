"""The ``pyseq`` command: ``sequencer``, ``stat`` and ``tail`` (``pyseq <command> --help``).

Exit codes: 0 done (Ctrl-C included), 1 a runtime failure (a missing ring, a live writer in the
way), 2 a usage error.  ``stat`` and ``tail`` only attach: they never create a ring.  The scripts in
``tools/`` call :func:`main` and hold no logic of their own.
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
from .idle import BackoffIdle, BusySpin, IdleStrategy, SpinYield, default_idle
from .message import Message
from .ring import Ring, Start, validate_name
from .sequencer import (CLIENT_JOINED, CLIENT_LEFT, END_OF_STREAM, SEQUENCER_CURSOR, Limit, Limits,
                        Sequencer, inbound_clients, inbound_name, source_id)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
IDLE: dict[str, Callable[[], IdleStrategy]] = {"busy-spin": BusySpin, "spin-yield": SpinYield, "backoff": BackoffIdle}
SYSTEM_TYPES = {CLIENT_JOINED: "CLIENT_JOINED", CLIENT_LEFT: "CLIENT_LEFT", END_OF_STREAM: "END_OF_STREAM"}
RATE_SAMPLE_S = 0.2  # stat measures rates over this interval
TAIL_CURSOR = "pyseq-tail"

log = logging.getLogger("pyseq.cli")


class UsageError(Exception):
    """Arguments that parse but do not make sense (together, or for the ring): exit 2."""


# ---- argument types (argparse turns their errors into usage errors) ----------------------------

def _ring_name(text: str) -> str:
    try:
        return validate_name(text)
    except errors.RingNameError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _number(kind: Callable[[str], Any], minimum: float, what: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value
    parse.__name__ = what  # argparse names the type in its messages
    return parse


_count = _number(int, 1, "an integer >= 1")
_sequence = _number(int, 1, "a sequence >= 1")
_rate_arg = _number(float, 0, "a number >= 0")
_seconds = _number(float, 0, "a number of seconds >= 0")


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
        prog="pyseq", description="Run a pyseq sequencer, or look at its rings.",
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
    p.add_argument("--first-sequence", type=_sequence, default=1, help="sequence of the first message (default 1)")
    p.add_argument("--duration", type=_seconds, help="stop by itself after this many seconds")
    p.set_defaults(run=_run_sequencer, parser=p)

    p = sub.add_parser("stat", help="positions, lag, rates, liveness and per-client counts",
                       description="Show the sequenced ring RING: its writer, every cursor (lag, rate) and every "
                                   "client's inbound ring (submitted, sequenced, back-pressured, deferred). "
                                   f"Rates are measured over {RATE_SAMPLE_S} s. Attaches read-only.")
    p.add_argument("ring", metavar="RING", type=_ring_name)
    p.add_argument("--json", action="store_true", help="one JSON object (keys: ring, clients, readers) a sample")
    p.add_argument("--watch", metavar="SECONDS", type=_number(float, 0.01, "a number of seconds >= 0.01"),
                   help="repeat every SECONDS until Ctrl-C")
    p.set_defaults(run=_run_stat, parser=p)

    p = sub.add_parser("tail", help="print messages as they are sequenced, decoded",
                       description="Print one line a message: sequence, time, type, source, payload. Ends at "
                                   "END_OF_STREAM, after --count messages or --timeout seconds with nothing new; "
                                   "else follows until Ctrl-C.")
    p.add_argument("ring", metavar="RING", type=_ring_name)
    p.add_argument("--from", dest="start", type=_start, default="earliest", metavar="earliest|latest|SEQ",
                   help="where to start (default earliest)")
    p.add_argument("--count", type=_count, help="stop after N messages")
    p.add_argument("--timeout", type=_seconds, help="stop after S seconds with nothing new")
    p.add_argument("--raw", action="store_true", help="payloads as hex, not decoded")
    p.add_argument("--schema", metavar="MODULE", action="append", default=[],
                   help="import MODULE (its record declarations decode payloads); repeatable")
    p.set_defaults(run=_run_tail, parser=p)
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
        print(f"pyseq {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:  # e.g. `pyseq tail RING | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (errors.PyseqError, OSError) as e:
        print(f"pyseq {args.command}: {e}", file=sys.stderr)
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


def _run_sequencer(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    limits = _limits(args)
    try:
        idle = IDLE[args.idle]() if args.idle else default_idle()
        sequencer = Sequencer(args.ring, capacity=args.capacity, slot_size=args.slot_size, limits=limits,
                              batch=args.batch, max_clients=args.max_clients, max_readers=args.max_readers,
                              first_sequence=args.first_sequence, idle=idle)
    except ValueError as e:  # RingConfigError, a bad PYSEQ_IDLE, a name too long for inbound rings
        raise UsageError(str(e)) from None

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


def _run_tail(args: argparse.Namespace) -> int:
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # a console script does not see modules in the current directory
    for module in args.schema:
        try:
            importlib.import_module(module)
        except Exception as e:
            raise errors.PyseqError(f"--schema {module}: cannot import it: {type(e).__name__}: {e}") from None
    sources = {source_id(c): c for c in client_names(args.ring)}
    shown = 0
    with Ring.attach(args.ring) as ring, ring.reader(TAIL_CURSOR, start=args.start, idle=BackoffIdle()) as reader:
        while args.count is None or shown < args.count:
            try:
                msg = reader.poll()
                if msg is None:
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
            if msg.msg_type == END_OF_STREAM:
                break
    sys.stdout.flush()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
