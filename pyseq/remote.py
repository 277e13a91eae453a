"""RemoteReader: the sequenced stream read from a NATS JetStream stream that a Bridge fills, with
the interface of a ring reader (``poll``, ``read(timeout)``, ``read_batch``, iteration).

::

    with pyseq.RemoteReader("nats://10.0.0.5:4222", "MARKET", start=1) as reader:
        msg = reader.read(timeout=1.0)       # Message(seq=1, timestamp_ns=..., msg_type=..., ...)
        batch = reader.read_batch(1024)      # numpy array of the ring's dtype (its slot size)

Theory of operation: nats-py is asyncio; the reader runs its own event loop in a thread of its own
(closed, with its connection, by :meth:`close`).  There it keeps an ephemeral pull consumer that
starts at the next sequence wanted (memory storage, no acks) and asks it for up to ``window``
messages ahead, so messages stream in without a round trip each, and at most ``window`` wait in
this process.  Each message's frame must carry the next sequence: a message from before is a
repeat and is dropped, one from after is a gap, and so is a consumer that stops sending its
heartbeats (its server died, its stream leader moved): then the consumer is made again from the
next sequence wanted.  The reader thus returns every sequence once, in order, across server
failures, as long as some server of the cluster holds the stream.
"""
from __future__ import annotations

import asyncio
import collections
import json
import logging
import threading
import time
from typing import Any, Iterator, Optional, Union

import numpy as np

from . import errors, jetstream
from .message import FRAME_LENGTH, Message, batch_dtype

log = logging.getLogger("pyseq.remote")

DEFAULT_SLOT_SIZE = 128
HEARTBEAT_S = 1.0          # the consumer's idle heartbeat while a pull request waits
SILENCE_S = 3.5            # no message nor heartbeat for this long while waiting: make the consumer again
PULL_EXPIRES_S = 10.0
Start = Union[str, int]


class RemoteReader:
    """Reads stream ``stream`` at ``url`` (one URL, or a cluster's, comma-separated) from ``start``:
    ``"earliest"`` (the stream's first message), ``"latest"`` (only what comes next) or a sequence.
    ``timeout`` bounds connecting and every request to the server."""

    def __init__(self, url: str, stream: str, start: Start = "earliest", *, window: int = 4096,
                 timeout: float = jetstream.DEFAULT_TIMEOUT, name: Optional[str] = None) -> None:
        if not isinstance(window, int) or window < 2:
            raise ValueError(f"window must be an int >= 2, not {window!r}")
        if not (start in ("earliest", "latest") or (isinstance(start, int) and not isinstance(start, bool)
                                                     and start >= 1)):
            raise ValueError(f"start must be 'earliest', 'latest' or a sequence >= 1, not {start!r}")
        self.urls = jetstream.servers(url)
        self.stream = jetstream.check_stream_name(stream)
        self.window = window
        self.timeout = timeout
        self.name = name or f"pyseq-remote-{stream}"
        self.slot_size = DEFAULT_SLOT_SIZE
        self.dtype = batch_dtype(self.slot_size)
        self.recreated = 0          # consumers made again after a gap or a silent server
        self._queue: collections.deque[bytes] = collections.deque()
        self._cond = threading.Condition()
        self._error: Optional[BaseException] = None
        self._closed = False
        self._next = 0              # the sequence read() returns next
        self._expected = 0          # the sequence the loop expects next from the consumer
        self._outstanding = 0       # messages asked for and not yet come
        self._refill_asked = False
        self._nc: Any = None
        self._sub: Any = None
        self._consumer: Optional[str] = None
        self._inbox = ""
        self._heard = 0.0
        self._fed = 0.0  # when the consumer last gave a message (heartbeats do not count)
        self._watch: Optional[asyncio.Task] = None
        self._io = jetstream.LoopThread(self.name)
        self._recreating = False
        try:
            self._io.call(self._open(start), timeout * 3 + 5)
        except BaseException:
            self._closed = True
            try:
                self._io.call(self._shutdown(), 5)
            finally:
                self._io.close()
            raise

    # ---- reading (any thread but the loop's) ---------------------------------------------------

    @property
    def next_sequence(self) -> int:
        """The sequence this reader returns next."""
        return self._next

    def poll(self) -> Optional[Message]:
        """The next message if one is here, else None."""
        data = self._take(0.0)
        return None if data is None else jetstream.decode(data)

    def read(self, timeout: Optional[float] = None) -> Message:
        """The next message, waiting up to ``timeout`` seconds (None: for ever) for it;
        :class:`pyseq.TimeoutError` if none came."""
        data = self._take(timeout)
        if data is None:
            raise errors.TimeoutError(f"no message on stream {self.stream!r} at sequence {self._next} within "
                                      f"{timeout} s")
        return jetstream.decode(data)

    def read_messages(self, limit: int, timeout: Optional[float] = 0.0) -> list[Message]:
        """Up to ``limit`` messages, waiting up to ``timeout`` seconds for the first one."""
        return [jetstream.decode(d) for d in self._take_many(limit, timeout)]

    def read_batch(self, limit: int, timeout: Optional[float] = 0.0) -> np.ndarray:
        """Up to ``limit`` messages as a numpy array of ``self.dtype`` (the ring's, from the slot size
        the stream's metadata names), waiting up to ``timeout`` seconds for the first one."""
        if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
            raise ValueError(f"limit must be an int > 0, not {limit!r}")
        datas = self._take_many(limit, timeout)
        out = np.zeros(len(datas), dtype=self.dtype)
        raw = out.view(np.uint8).reshape(len(datas), self.slot_size)
        for i, d in enumerate(datas):
            if len(d) > self.slot_size:
                raise errors.RemoteError(f"stream {self.stream!r}: sequence {jetstream.frame_sequence(d)} has "
                                         f"{len(d) - FRAME_LENGTH} payload bytes, more than a {self.slot_size}-byte slot")
            raw[i, :len(d)] = np.frombuffer(d, dtype=np.uint8)
        return out

    def __iter__(self) -> Iterator[Message]:
        """Every message, waiting for the next (until closed)."""
        while True:
            yield self.read(timeout=None)

    def last_sequence(self) -> int:
        """The stream's last sequence now (a request to the server)."""
        self._check_open()
        return int(self._io.call(self._last_sequence(), self.timeout + 1))

    @property
    def lag(self) -> int:
        """Messages in the stream this reader has not returned yet (a request to the server)."""
        return max(0, self.last_sequence() - self._next + 1)

    def _take(self, timeout: Optional[float]) -> Optional[bytes]:
        got = self._take_many(1, timeout)
        return got[0] if got else None

    def _take_many(self, limit: int, timeout: Optional[float]) -> list[bytes]:
        with self._cond:
            if not self._queue:
                self._check_open()
                if timeout is None or timeout > 0:
                    self._cond.wait_for(lambda: self._queue or self._error is not None or self._closed,
                                        timeout)
                if not self._queue:
                    self._check_open()
                    return []
            q = self._queue
            got = [q.popleft() for _ in range(min(limit, len(q)))]
            self._next += len(got)
            refill = len(q) < self.window // 2 and not self._refill_asked
            if refill:
                self._refill_asked = True
        if refill:
            self._io.soon(self._pull)
        return got

    def _check_open(self) -> None:
        if self._closed:
            raise errors.RingClosedError(f"remote reader of stream {self.stream!r} is closed")
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Delete the consumer, close the connection, stop the thread."""
        if self._closed:
            return
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        try:
            self._io.call(self._shutdown(), 5)
        except Exception as e:
            log.debug("remote reader %r: close: %s", self.name, e)
        finally:
            self._io.close()

    def __enter__(self) -> "RemoteReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"<pyseq.RemoteReader {self.stream!r} at {','.join(self.urls)} next={self._next}>"

    # ---- the loop side -------------------------------------------------------------------------

    async def _open(self, start: Start) -> None:
        self._nc = await jetstream.connect(self.urls, self.timeout, self.name)
        try:
            info = await jetstream.stream_info(self._nc, self.stream, self.timeout)
        except Exception as e:
            raise errors.RemoteError(f"stream {self.stream!r}: no answer from JetStream ({type(e).__name__}: {e})") \
                from None
        if info is None:
            raise errors.RemoteError(f"no stream {self.stream!r} at {','.join(self.urls)}")
        meta = info.config.metadata or {}
        fmt = meta.get(jetstream.META_FORMAT)
        if fmt is not None and fmt != jetstream.FORMAT:
            raise errors.RemoteError(f"stream {self.stream!r} holds format {fmt!r}, not {jetstream.FORMAT!r}")
        try:
            self.slot_size = int(meta.get(jetstream.META_SLOT_SIZE, DEFAULT_SLOT_SIZE))
        except ValueError:
            self.slot_size = DEFAULT_SLOT_SIZE
        self.dtype = batch_dtype(self.slot_size)
        first, last = info.state.first_seq, info.state.last_seq
        if start == "earliest":
            seq = max(first, 1)
        elif start == "latest":
            seq = last + 1
        else:
            seq = int(start)
            if first and seq < first:
                raise errors.RemoteError(f"stream {self.stream!r} holds sequences from {first}; {seq} is not there "
                                         f"any more (or never was)")
        self._next = self._expected = seq
        await self._make_consumer()
        self._watch = asyncio.get_running_loop().create_task(self._watchdog())

    async def _make_consumer(self) -> None:
        api = jetstream.require_nats().js.api
        old_sub, old_consumer = self._sub, self._consumer
        self._sub = self._consumer = None
        if old_sub is not None:
            try:
                await old_sub.unsubscribe()
            except Exception:
                pass
        if old_consumer is not None:
            try:
                await asyncio.wait_for(self._nc.jsm(timeout=1.0).delete_consumer(self.stream, old_consumer), 1.5)
            except Exception:
                pass  # it goes away on its own (inactive threshold)
        info = await jetstream.stream_info(self._nc, self.stream, self.timeout)
        if info is None:
            raise errors.RemoteError(f"stream {self.stream!r} is gone")
        if info.state.first_seq > self._expected:
            raise errors.RemoteError(f"stream {self.stream!r} now starts at sequence {info.state.first_seq}; "
                                     f"{self._expected} is gone (removed by its limits?)")
        config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                                    opt_start_seq=self._expected, ack_policy=api.AckPolicy.NONE,
                                    inactive_threshold=30.0, mem_storage=True, num_replicas=1, max_waiting=16)
        info = await self._nc.jsm(timeout=self.timeout).add_consumer(self.stream, config)
        self._consumer = info.name
        self._inbox = self._nc.new_inbox()
        self._outstanding = 0
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_msg)
        self._heard = self._fed = time.monotonic()
        await self._pull_async(force=True)

    def _pull(self) -> None:
        self._refill_asked = False
        asyncio.get_running_loop().create_task(self._pull_async())

    async def _pull_async(self, force: bool = False) -> None:
        """Ask the consumer for as many messages as the window has room for."""
        if self._consumer is None or self._closed or (self._recreating and not force):
            return
        room = self.window - len(self._queue) - self._outstanding
        if room < self.window // 4 and self._outstanding > 0:
            return
        if room <= 0:
            return
        request = {"batch": room, "expires": int(PULL_EXPIRES_S * 1e9), "idle_heartbeat": int(HEARTBEAT_S * 1e9)}
        self._outstanding += room
        try:
            await self._nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self._consumer}",
                                   json.dumps(request).encode(), reply=self._inbox)
        except jetstream.require_nats().errors.Error as e:
            self._outstanding -= room
            log.debug("remote reader %r: pull request failed: %s", self.name, e)

    async def _on_msg(self, msg: Any) -> None:
        self._heard = time.monotonic()
        headers = msg.headers
        if headers and headers.get("Status"):
            status = headers["Status"]
            if status == "100":
                return  # idle heartbeat
            if status in ("404", "408"):  # the request expired (pending: what it still had asked for)
                pending = int(headers.get("Nats-Pending-Messages", 0) or 0)
                self._outstanding = max(0, self._outstanding - pending) if pending else 0
            else:  # 409: consumer deleted, leadership change, too many waiting requests ...
                self._outstanding = 0
                if "Deleted" in headers.get("Description", ""):
                    self._schedule_recreate("the consumer was deleted")
                    return
            await self._pull_async()
            return
        self._outstanding = max(0, self._outstanding - 1)
        self._fed = self._heard
        data = msg.data
        seq = jetstream.frame_sequence(data)
        if seq == self._expected:
            self._expected += 1
            with self._cond:
                self._queue.append(data)
                self._cond.notify()
            return
        if seq < 0:
            self._fail(errors.RemoteError(f"stream {self.stream!r}: the message after sequence {self._expected - 1} "
                                          f"is not a pyseq message (subject {msg.subject!r})"))
        elif seq > self._expected:
            self._schedule_recreate(f"sequence {seq} came where {self._expected} was expected")
        # seq < expected: a repeat from a consumer made again; dropped

    def _schedule_recreate(self, why: str) -> None:
        """Make the consumer again, in a task of its own (not in a callback of the subscription that
        it ends)."""
        if not self._recreating and not self._closed:
            self._recreating = True
            asyncio.get_running_loop().create_task(self._recreate(why))

    async def _recreate(self, why: str) -> None:
        self._recreating = True
        try:
            await self._recreate_now(why)
        finally:
            self._recreating = False

    async def _recreate_now(self, why: str) -> None:
        log.info("remote reader %r: %s; consumer made again from sequence %d", self.name, why, self._expected)
        self.recreated += 1
        pause = 0.05
        while not self._closed:
            try:
                await self._make_consumer()
                return
            except Exception as e:
                if isinstance(e, errors.RemoteError) or not jetstream.transient(e):
                    self._fail(errors.RemoteError(f"stream {self.stream!r}: cannot read on from sequence "
                                                  f"{self._expected}: {e}"))
                    return
                self._consumer = None
                await asyncio.sleep(pause)
                pause = min(1.0, pause * 2)

    async def _watchdog(self) -> None:
        """A consumer that stays silent (no message, no heartbeat) while asked for messages is gone."""
        while not self._closed:
            await asyncio.sleep(0.25)
            if self._recreating:
                continue
            waiting = self._outstanding > 0 or self._consumer is None
            now = time.monotonic()
            if waiting and now - self._heard > SILENCE_S:
                await self._recreate(f"no word from the consumer for {SILENCE_S} s")
            elif waiting and now - self._fed > SILENCE_S:
                # heartbeats but no message: after a stream leader change a consumer can go on beating
                # while it delivers nothing; if the stream holds what we wait for, make it again
                self._fed = now
                try:
                    last = await self._last_sequence()
                except Exception:
                    continue
                if last >= self._expected:
                    await self._recreate(f"the consumer sent nothing for {SILENCE_S} s while the stream holds "
                                         f"up to {last}")
            elif self._outstanding == 0 and len(self._queue) < self.window // 2:
                await self._pull_async()

    def _fail(self, error: BaseException) -> None:
        with self._cond:
            self._error = error
            self._cond.notify_all()

    async def _last_sequence(self) -> int:
        info = await jetstream.stream_info(self._nc, self.stream, self.timeout)
        if info is None:
            raise errors.RemoteError(f"stream {self.stream!r} is gone")
        return int(info.state.last_seq)

    async def _shutdown(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self._nc is None:
            return
        if self._consumer is not None and self._nc.is_connected:
            try:
                await asyncio.wait_for(self._nc.jsm(timeout=1.0).delete_consumer(self.stream, self._consumer), 1.5)
            except Exception:
                pass
        await jetstream.close(self._nc)
