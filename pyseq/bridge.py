"""Bridge: mirrors the sequenced stream into a NATS JetStream stream, stream sequence = pyseq sequence.

::

    pyseq bridge --ring market --journal ./journal --nats nats://127.0.0.1:4222 --stream MARKET

    ring (non-gating reader) ─┐
                              ├─> Bridge ── publish, window of acks ──> JetStream stream MARKET
    journal (when lapped) ────┘   (Nats-Msg-Id = seq, Nats-Expected-Last-Sequence = seq - 1)

Theory of operation
-------------------
- **The sequencer never waits for the network.**  The bridge reads the ring with a *non-gating*
  reader: when NATS is down or slow the bridge falls behind, the ring overtakes it (LappedError),
  and it continues from the journal, then merges back into the ring, like a Replica.
- **Exactly once, in order.**  Every message is published with ``Nats-Msg-Id`` = its sequence and
  ``Nats-Expected-Last-Sequence`` = sequence - 1, so JetStream stores it only at stream sequence =
  pyseq sequence.  Publishes are pipelined (``window`` unacknowledged at most); an ack is the
  stream's word that everything up to that sequence is stored (a publish that fails breaks the
  expected-last-sequence chain, so every later one fails too: one publish in ACK_EVERY, and the
  last of a batch, ask for an ack).  On any error (a refused publish, no
  ack within ``ack_timeout``, a lost connection) the bridge drops what it had in flight, asks the
  stream for its last sequence and resumes right after it: a message in flight that lands meanwhile
  makes the next publish fail its expected-last-sequence check, which resyncs again.  No gap, no
  duplicate, also after ``kill -9`` of the bridge at any moment: a restart begins the same way.
- **The stream.**  Created if missing (file storage, ``replicas``, a duplicate window, subjects
  ``<prefix>.>``, metadata naming the ring, its slot size and the journal's id), with its first
  sequence set to the first sequence the journal (or the ring) holds, so a journal that starts
  after 1 (a sequencer started with ``first_sequence``) lines up too.  An existing stream is checked:
  its subjects, its retention (limits only: a work queue deletes messages), the journal it was filled
  from, and that its last message is the journal's message at that sequence.  An empty stream whose
  next sequence is below the journal's first is moved forward (a purge up to it); a non-empty one
  that stops before the journal starts is a gap: :class:`BridgeError`.

The wire format is in :mod:`pyseq.jetstream`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

from . import errors, jetstream
from .idle import BackoffIdle, IdleStrategy
from .journal import Journal
from .journaler import ID_NAME
from .message import Message
from .ring import Reader, Ring

log = logging.getLogger("pyseq.bridge")

BRIDGE_CURSOR = "pyseq-bridge"
TAKE_LIMIT = 256        # messages moved from the source per executor call
IDLE_WAIT_S = 0.05      # a wait for the ring, in the source thread, when nothing is new
INFO_TIMEOUT_S = 2.0    # one stream-info request while resyncing
RESYNC_BACKOFF_S = (0.05, 1.0)
ACK_EVERY = 64          # publishes that ask for an ack: one in ACK_EVERY, and the last of each batch


class _Source:
    """The sequenced stream from any sequence on: the journal while the ring no longer holds it,
    then the ring through a non-gating reader.  Used from one thread only (the bridge's source
    thread)."""

    def __init__(self, ring: str, journal: Optional[str], idle: IdleStrategy) -> None:
        self.ring_name = ring
        self.journal_path = journal
        self.idle = idle
        self.next = 0
        self.from_journal = 0
        self.from_ring = 0
        self._ring: Optional[Ring] = None
        self._reader: Optional[Reader] = None
        self._journal_iter: Any = None

    def first_available(self) -> Optional[int]:
        """The first sequence the journal holds, else the oldest the ring holds (its first if it
        published nothing); None if neither exists yet."""
        if self.journal_path is not None:
            try:
                for msg in Journal(self.journal_path).records():
                    return msg.seq
            except errors.JournalNotFoundError:
                pass
        ring = self._attach()
        if ring is None:
            return None
        return max(ring.first_sequence, ring.published_sequence - ring.capacity + 1)

    def journal_record(self, seq: int) -> Optional[Message]:
        if self.journal_path is None:
            return None
        try:
            for msg in Journal(self.journal_path).records(start=seq, stop=seq):
                return msg
        except errors.JournalNotFoundError:
            pass
        return None

    def take(self, start: int, limit: int, wait: float) -> list[Message]:
        """Up to ``limit`` messages from sequence ``start`` on, waiting up to ``wait`` seconds for
        the first one; fewer (or none) if no more are published yet."""
        if start != self.next:
            self._close_reader()
            self._close_journal()
            self.next = start
        out: list[Message] = []
        if self._reader is None and self._journal_iter is None:
            self._choose()
        if self._journal_iter is not None:
            for msg in self._journal_iter:
                if msg.seq != self.next:
                    raise errors.BridgeError(f"journal {self.journal_path!r} has sequence {msg.seq} where {self.next} "
                                             f"was expected: sequences are missing")
                out.append(msg)
                self.next += 1
                if len(out) >= limit:
                    self.from_journal += len(out)
                    return out
            self._close_journal()  # read to its end: the ring from here
            self.from_journal += len(out)
            if out:
                return out
            self._choose()
        reader = self._reader
        if reader is None:
            time.sleep(min(wait, 0.01))
            return out
        try:
            while len(out) < limit:
                msg = reader.poll()
                if msg is None:
                    break
                out.append(msg)
            if not out and wait > 0:
                out.append(reader.read(timeout=wait))
        except errors.TimeoutError:
            pass
        except errors.LappedError as e:
            log.info("bridge: overtaken by ring %r (%s); continuing from the journal", self.ring_name, e)
            self._close_reader()
        except errors.EndOfStreamError:
            self._close_ring()  # the sequencer stopped: a restarted one makes a new ring of this name
        self.next += len(out)
        self.from_ring += len(out)
        return out

    def _choose(self) -> None:
        """Open the ring reader at ``next`` if the ring holds it, else the journal from ``next``."""
        ring = self._attach()
        if ring is not None:
            published = ring.published_sequence
            oldest = max(ring.first_sequence, published - ring.capacity + 1)
            if oldest <= self.next <= published + 1 and not (ring.writer_gone and self.next > published):
                self._reader = ring.reader(BRIDGE_CURSOR, start=self.next, gating=False, idle=self.idle)
                return
            if self.next > published + 1:
                if not ring.writer_gone:
                    raise errors.BridgeError(
                        f"the stream holds sequences up to {self.next - 1} but ring {self.ring_name!r} has published "
                        f"only up to {published}: the stream was filled from another pyseq stream (or the journal "
                        f"lost messages the stream has)")
                self._close_ring()  # a stopped sequencer's ring: its successor makes a new one
        if self.journal_path is None:
            if ring is not None and self.next < max(ring.first_sequence, ring.published_sequence - ring.capacity + 1):
                raise errors.BridgeError(
                    f"ring {self.ring_name!r} no longer holds sequence {self.next} and the bridge has no journal")
            return
        try:
            journal = Journal(self.journal_path)
        except errors.JournalNotFoundError:
            return
        it = journal.records(start=self.next)
        first = next(it, None)
        if first is None:
            return  # not journaled yet
        if first.seq != self.next:
            it.close()
            raise errors.BridgeError(f"journal {self.journal_path!r} starts at sequence {first.seq}; the stream needs "
                                     f"{self.next} next, which neither the journal nor ring {self.ring_name!r} holds")

        def chained() -> Any:
            yield first
            yield from it

        self._journal_iter = chained()

    def _attach(self) -> Optional[Ring]:
        if self._ring is not None and not self._ring.closed:
            return self._ring
        try:
            self._ring = Ring.attach(self.ring_name)
        except (errors.RingNotFoundError, errors.RingNotReadyError):
            self._ring = None
        return self._ring

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _close_journal(self) -> None:
        if self._journal_iter is not None:
            self._journal_iter.close()
            self._journal_iter = None

    def _close_ring(self) -> None:
        self._close_reader()
        if self._ring is not None:
            self._ring.close()
            self._ring = None

    def close(self) -> None:
        self._close_journal()
        self._close_ring()


def _journal_id(path: Optional[str]) -> Optional[str]:
    """The journal directory's id (its ID file; the bridge only reads it), as 16 hex digits."""
    if path is None:
        return None
    try:
        with open(os.path.join(path, ID_NAME)) as f:
            return f"{int(f.read().strip(), 16):016x}"
    except (OSError, ValueError):
        return None


class Bridge:
    """Publishes every message of ring ``ring`` (and of its ``journal`` when the ring has overtaken
    the bridge) to the JetStream stream ``stream`` at ``nats`` (a URL, or several comma-separated),
    stream sequence = pyseq sequence.  :meth:`run` blocks; :meth:`stop` (any thread, a signal
    handler) ends it.  ``replicas`` and ``duplicate_window`` (seconds) apply when the stream is
    created; ``window`` is how many publishes may await their ack."""

    def __init__(self, ring: str, journal: Optional[str], nats: str, stream: str, *, subject: Optional[str] = None,
                 replicas: int = 1, window: int = 1024, duplicate_window: float = 120.0, ack_timeout: float = 5.0,
                 connect_timeout: float = jetstream.DEFAULT_TIMEOUT, idle: Optional[IdleStrategy] = None,
                 create: bool = True) -> None:
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be an int >= 1, not {window!r}")
        if not isinstance(replicas, int) or not 1 <= replicas <= 5:
            raise ValueError(f"replicas must be 1 to 5, not {replicas!r}")
        self.ring_name = ring
        self.journal_path = journal
        self.urls = jetstream.servers(nats)
        self.stream = jetstream.check_stream_name(stream)
        self.prefix = jetstream.subject_prefix(stream, subject)
        self.replicas = replicas
        self.window = window
        self.duplicate_window = duplicate_window
        self.ack_timeout = ack_timeout
        self.connect_timeout = connect_timeout
        self.create = create
        self.idle = idle or BackoffIdle()
        self.acked = 0          # the stream's last sequence as its acks (or its info) say
        self.published = 0      # publishes sent (a message sent again after a resync counts again)
        self.resyncs = 0
        self.resumed_at: Optional[int] = None  # the first sequence published by this run
        self.last_error: Optional[str] = None
        self._stop = threading.Event()
        self._gen = 0
        self._failure: Optional[str] = None
        self._fatal: Optional[BaseException] = None
        self._ack_event: Optional[asyncio.Event] = None
        self._inbox = ""
        self._subjects: dict[int, str] = {}
        self._source = _Source(ring, journal, self.idle)
        self.on_ready: Any = None  # called with the first sequence to publish, once the stream is checked

    # ---- control -------------------------------------------------------------------------------

    def run(self, duration: Optional[float] = None, until_sequence: Optional[int] = None) -> int:
        """Publish until :meth:`stop`, for ``duration`` seconds, or until ``until_sequence`` is
        acknowledged; returns the last sequence the stream acknowledged."""
        self._stop.clear()
        try:
            asyncio.run(self._main(duration, until_sequence))
        finally:
            self._source.close()
        return self.acked

    def stop(self) -> None:
        self._stop.set()

    @property
    def stats(self) -> dict[str, Any]:
        return {"acked": self.acked, "published": self.published, "resyncs": self.resyncs,
                "resumed_at": self.resumed_at, "from_journal": self._source.from_journal,
                "from_ring": self._source.from_ring, "last_error": self.last_error}

    # ---- the session ---------------------------------------------------------------------------

    async def _main(self, duration: Optional[float], until_sequence: Optional[int]) -> None:
        deadline = None if duration is None else time.monotonic() + duration
        nc = await jetstream.connect(self.urls, self.connect_timeout, f"pyseq-bridge-{self.stream}")
        executor = ThreadPoolExecutor(1, thread_name_prefix="pyseq-bridge-source")
        try:
            self._ack_event = asyncio.Event()
            self._inbox = nc.new_inbox()
            await nc.subscribe(self._inbox + ".>", cb=self._on_ack)
            await self._prepare_stream(nc, executor)
            await self._pump(nc, executor, deadline, until_sequence)
        finally:
            executor.shutdown(wait=True)
            await jetstream.close(nc)

    async def _prepare_stream(self, nc: Any, executor: ThreadPoolExecutor) -> None:
        """Create the stream, or check the one there; line its next sequence up with the journal's."""
        loop = asyncio.get_running_loop()
        api = jetstream.require_nats().js.api
        info = await self._retry(lambda: jetstream.stream_info(nc, self.stream, INFO_TIMEOUT_S), "stream info")
        first = await self._first_available(loop, executor)
        if info is None:
            if not self.create:
                raise errors.BridgeError(f"no stream {self.stream!r} at {','.join(self.urls)} (and create=False)")
            meta = {jetstream.META_FORMAT: jetstream.FORMAT, jetstream.META_RING: self.ring_name}
            slot = await loop.run_in_executor(executor, self._slot_size)
            if slot:
                meta[jetstream.META_SLOT_SIZE] = str(slot)
            jid = _journal_id(self.journal_path)
            if jid:
                meta[jetstream.META_JOURNAL_ID] = jid
            config = api.StreamConfig(name=self.stream, subjects=[f"{self.prefix}.>"], storage=api.StorageType.FILE,
                                      retention=api.RetentionPolicy.LIMITS, num_replicas=self.replicas,
                                      duplicate_window=self.duplicate_window, allow_direct=True,
                                      first_seq=first if first > 1 else None, metadata=meta)
            try:
                await nc.jsm(timeout=self.connect_timeout).add_stream(config)
            except jetstream.require_nats().js.errors.APIError as e:
                if jetstream.api_error_code(e) != 10058:  # 10058: created meanwhile (another bridge)
                    raise errors.BridgeError(f"cannot create stream {self.stream!r}: {e}") from None
            log.info("bridge: created stream %r (subjects %s.>, %d replica(s), first sequence %d)", self.stream,
                     self.prefix, self.replicas, first)
            return
        self._check_shape(info)
        state = info.state
        if state.last_seq + 1 < first:
            if state.messages:
                raise errors.BridgeError(
                    f"stream {self.stream!r} ends at sequence {state.last_seq} but journal {self.journal_path!r} starts "
                    f"at {first}: sequences {state.last_seq + 1}..{first - 1} are nowhere")
            await nc.jsm(timeout=self.connect_timeout).purge_stream(self.stream, seq=first)
            log.info("bridge: empty stream %r moved to first sequence %d, the journal's first", self.stream, first)
        elif state.last_seq >= 1 and state.messages:
            await self._check_last(nc, loop, executor, state.last_seq)

    async def _first_available(self, loop: asyncio.AbstractEventLoop, executor: ThreadPoolExecutor) -> int:
        waited = False
        while True:
            first = await loop.run_in_executor(executor, self._source.first_available)
            if first is not None:
                return first
            if not waited:
                log.warning("bridge: neither ring %r nor journal %r exists yet; waiting", self.ring_name,
                            self.journal_path)
                waited = True
            if self._stop.is_set():
                raise errors.BridgeError("stopped before the ring or the journal existed")
            await asyncio.sleep(0.1)

    def _slot_size(self) -> Optional[int]:
        try:
            with Ring.attach(self.ring_name) as ring:
                return ring.slot_size
        except (errors.RingNotFoundError, errors.RingNotReadyError):
            return None

    def _check_shape(self, info: Any) -> None:
        config = info.config
        want = f"{self.prefix}.>"
        if want not in (config.subjects or []):
            raise errors.BridgeError(f"stream {self.stream!r} takes subjects {config.subjects}, not {want!r}: not a "
                                     f"stream of this bridge (see --subject)")
        retention = getattr(config.retention, "value", config.retention)
        if retention not in (None, "limits"):
            raise errors.BridgeError(f"stream {self.stream!r} has {retention!r} retention, which deletes messages; "
                                     f"a pyseq stream keeps them (limits retention)")
        meta = config.metadata or {}
        if meta.get(jetstream.META_FORMAT, jetstream.FORMAT) != jetstream.FORMAT:
            raise errors.BridgeError(f"stream {self.stream!r} holds format {meta[jetstream.META_FORMAT]!r}, not "
                                     f"{jetstream.FORMAT!r}")
        jid = _journal_id(self.journal_path)
        if jid and meta.get(jetstream.META_JOURNAL_ID, jid) != jid:
            raise errors.BridgeError(f"stream {self.stream!r} was filled from journal {meta[jetstream.META_JOURNAL_ID]}, "
                                     f"not from {self.journal_path!r} (id {jid})")

    async def _check_last(self, nc: Any, loop: asyncio.AbstractEventLoop, executor: ThreadPoolExecutor,
                          last: int) -> None:
        """The stream's last message must be the journal's at that sequence (when it has it)."""
        mine = await loop.run_in_executor(executor, self._source.journal_record, last)
        if mine is None:
            return
        stored = await nc.jsm(timeout=self.connect_timeout).get_msg(self.stream, last)
        data = stored.data or b""
        if jetstream.frame_sequence(data) != last or jetstream.decode(data) != mine:
            raise errors.BridgeError(f"stream {self.stream!r} holds another message at sequence {last} than journal "
                                     f"{self.journal_path!r}: it mirrors another pyseq stream")

    async def _retry(self, request: Any, what: str) -> Any:
        """``await request()`` until it succeeds or the bridge is stopped (NATS down: keep trying)."""
        nats = jetstream.require_nats()
        pause, warned = RESYNC_BACKOFF_S[0], False
        while True:
            try:
                return await request()
            except (asyncio.TimeoutError, nats.errors.Error) as e:
                if not jetstream.transient(e):
                    raise errors.BridgeError(f"{what} for stream {self.stream!r}: {e}") from None
                if not warned:
                    log.warning("bridge: %s for stream %r failed (%s); retrying", what, self.stream,
                                type(e).__name__)
                    warned = True
            if self._stop.is_set():
                raise errors.BridgeError(f"stopped while waiting for NATS ({what})")
            await asyncio.sleep(pause)
            pause = min(RESYNC_BACKOFF_S[1], pause * 2)

    async def _resync(self, nc: Any) -> int:
        """Forget what is in flight; the stream's last sequence + 1."""
        self._gen += 1
        self._failure = None
        info = await self._retry(lambda: jetstream.stream_info(nc, self.stream, INFO_TIMEOUT_S), "stream info")
        if info is None:
            raise errors.BridgeError(f"stream {self.stream!r} was deleted while the bridge ran")
        self.acked = info.state.last_seq
        return self.acked + 1

    async def _pump(self, nc: Any, executor: ThreadPoolExecutor, deadline: Optional[float],
                    until_sequence: Optional[int]) -> None:
        loop = asyncio.get_running_loop()
        assert self._ack_event is not None
        nats = jetstream.require_nats()
        next_seq = await self._resync(nc)
        self.resumed_at = next_seq
        log.info("bridge: ring %r -> stream %r: resuming at sequence %d", self.ring_name, self.stream, next_seq)
        if self.on_ready is not None:
            self.on_ready(next_seq)
        publish, gen_prefix = nc.publish, f"{self._inbox}.{self._gen}."
        last_progress, last_acked = time.monotonic(), self.acked
        while True:
            if self._fatal is not None:
                raise self._fatal
            if self._stop.is_set() or (deadline is not None and time.monotonic() >= deadline):
                await self._drain(nc, next_seq - 1)
                return
            if until_sequence is not None and self.acked >= until_sequence:
                return
            now = time.monotonic()
            in_flight = next_seq - 1 - self.acked
            if self.acked != last_acked or in_flight <= 0:
                last_progress, last_acked = now, self.acked
            if in_flight > 0 and now - last_progress > self.ack_timeout and self._failure is None:
                self._failure = f"no ack within {self.ack_timeout} s ({in_flight} in flight)"
            if self._failure is not None:
                self.resyncs += 1
                self.last_error = self._failure
                log.warning("bridge: %s; resyncing from the stream's last sequence", self._failure)
                next_seq = await self._resync(nc)
                gen_prefix = f"{self._inbox}.{self._gen}."
                last_progress, last_acked = time.monotonic(), self.acked
                continue
            room = min(self.window - in_flight, TAKE_LIMIT)
            if until_sequence is not None:
                room = min(room, until_sequence - next_seq + 1)
            if room <= 0:
                self._ack_event.clear()
                try:
                    await asyncio.wait_for(self._ack_event.wait(), 0.05)
                except asyncio.TimeoutError:
                    pass
                continue
            wait = IDLE_WAIT_S if in_flight == 0 else 0.0
            msgs = await loop.run_in_executor(executor, self._source.take, next_seq, room, wait)
            if not msgs:
                if in_flight:
                    await asyncio.sleep(0.0005)  # let the acks in
                continue
            try:
                last = msgs[-1].seq
                for msg in msgs:
                    seq = msg.seq
                    # an ack for every ACK_EVERY-th and the batch's last: the expected-last-sequence chain
                    # makes every later publish fail after one that failed, so an ack covers all before it
                    reply = gen_prefix + str(seq) if seq == last or seq % ACK_EVERY == 0 else ""
                    await publish(self._subject(msg.msg_type), jetstream.encode(msg), reply=reply,
                                  headers={jetstream.MSG_ID: str(seq), jetstream.EXPECTED_LAST: str(seq - 1)})
                    self.published += 1
                    next_seq = seq + 1
            except nats.errors.Error as e:
                self._failure = f"publish failed ({type(e).__name__})"
            await asyncio.sleep(0)

    async def _drain(self, nc: Any, sent: int) -> None:
        """Wait a little for the acks of what was sent (so the stats say where the stream is)."""
        assert self._ack_event is not None
        end = time.monotonic() + min(self.ack_timeout, 2.0)
        try:
            await asyncio.wait_for(nc.flush(), max(0.1, end - time.monotonic()))
            while self.acked < sent and self._failure is None and time.monotonic() < end:
                self._ack_event.clear()
                await asyncio.wait_for(self._ack_event.wait(), max(0.01, end - time.monotonic()))
        except (asyncio.TimeoutError, jetstream.require_nats().errors.Error):
            pass

    def _subject(self, msg_type: int) -> str:
        s = self._subjects.get(msg_type)
        if s is None:
            s = self._subjects[msg_type] = f"{self.prefix}.{msg_type}"
        return s

    async def _on_ack(self, msg: Any) -> None:
        tokens = msg.subject.rsplit(".", 2)
        try:
            gen, seq = int(tokens[-2]), int(tokens[-1])
        except (ValueError, IndexError):
            return
        if gen != self._gen:
            return  # an ack from before a resync
        if msg.headers and msg.headers.get("Status"):  # 503: no responders (no stream, no leader)
            self._failure = self._failure or f"publish of {seq}: status {msg.headers.get('Status')}"
            return
        try:
            resp = json.loads(msg.data)
        except ValueError:
            self._failure = self._failure or f"publish of {seq}: an ack that is not JSON"
            return
        err = resp.get("error")
        if err:
            self._failure = self._failure or f"publish of {seq} refused: {err.get('description', err)}"
            return
        if resp.get("seq") != seq:
            self._fatal = errors.BridgeError(
                f"stream {self.stream!r} stored pyseq sequence {seq} at stream sequence {resp.get('seq')}: the stream "
                f"has another publisher")
            return
        if seq > self.acked:
            self.acked = seq
            assert self._ack_event is not None
            self._ack_event.set()


# ---- the command -----------------------------------------------------------------------------------

def add_parser(sub: Any) -> None:
    from .cli import _number, _positive, _ring_name

    p = sub.add_parser("bridge", help="mirror the sequenced stream into a NATS JetStream stream",
                       description="Publish every message of ring RING (from JOURNAL where the ring has overtaken "
                                   "the bridge) to the JetStream stream STREAM, stream sequence = pyseq sequence, "
                                   "exactly once and in order; a restart resumes after the stream's last sequence. "
                                   "The bridge never holds the sequencer back. Runs until SIGTERM/SIGINT.")
    p.add_argument("--ring", required=True, type=_ring_name, help="the sequenced ring")
    p.add_argument("--journal", required=True, metavar="DIR", help="its journal (what the ring no longer holds)")
    p.add_argument("--nats", required=True, metavar="URL", help="NATS server URL(s), comma-separated")
    p.add_argument("--stream", required=True, help="the JetStream stream (created if missing)")
    p.add_argument("--subject", metavar="PREFIX", help="subject prefix (default pyseq.STREAM; messages go to "
                   "PREFIX.<message type>)")
    p.add_argument("--replicas", type=_number(int, 1, "an integer from 1 to 5"), default=1,
                   help="stream replicas when it is created (default 1; 3 on a 3-node cluster)")
    p.add_argument("--window", type=_number(int, 1, "an integer >= 1"), default=1024,
                   help="publishes awaiting their ack at most (default 1024)")
    p.add_argument("--connect-timeout", type=_positive(float, "a number of seconds > 0"),
                   default=jetstream.DEFAULT_TIMEOUT, help="give up if no server answers at start (default 10 s)")
    p.add_argument("--duration", type=_positive(float, "a number of seconds > 0"), help="stop after S seconds")
    p.set_defaults(run=_run_bridge, parser=p)


def _run_bridge(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    bridge = Bridge(args.ring, args.journal, args.nats, args.stream, subject=args.subject, replicas=args.replicas,
                    window=args.window, connect_timeout=args.connect_timeout)
    bridge.on_ready = lambda seq: print(f"bridge {args.ring} -> {args.stream} ready pid {os.getpid()} resuming at "
                                        f"{seq}", flush=True)

    def on_signal(signum: int, _frame: Any) -> None:
        bridge.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    bridge.run(duration=args.duration)
    s = bridge.stats
    print(f"bridge stopped: stream {args.stream} at sequence {s['acked']}; {s['published']} published "
          f"({s['from_journal']} from the journal, {s['from_ring']} from the ring), {s['resyncs']} resyncs",
          flush=True)
    return 0
