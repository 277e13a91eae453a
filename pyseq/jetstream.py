"""What the bridge and the remote readers share: the wire format of a pyseq message in NATS
JetStream, the stream's shape, URLs, connecting with a deadline, and an event loop thread.

The wire format
---------------
One JetStream message per pyseq message; its stream sequence is the pyseq sequence.

- subject: ``<prefix>.<message type>`` (prefix ``pyseq.<STREAM>`` unless chosen); the stream takes
  ``<prefix>.>``, so a consumer can filter by message type.
- headers (written by the bridge, stored by JetStream): ``Nats-Msg-Id: <sequence>`` and
  ``Nats-Expected-Last-Sequence: <sequence - 1>``; JetStream refuses a message that would not land
  at stream sequence = pyseq sequence.
- data: the ring's 32-byte frame header, then the payload (the same bytes as a ring slot or a
  journal record, see csrc/ring_layout.h)::

      offset  size  field            (little-endian)
       0       8    sequence         int64, = the stream sequence
       8       8    timestamp_ns     int64, the sequencing time (CLOCK_REALTIME)
      16       4    length           uint32, payload bytes that follow the frame
      20       2    message type     uint16
      22       2    schema version   uint16
      24       4    source           uint32, the client's source id (CRC-32 of its name)
      28       4    reserved         0 (the ring's ``origin``, meaningless off the host)
      32       -    payload          ``length`` bytes

The stream is created with metadata ``pyseq.format`` (= FORMAT), ``pyseq.ring``,
``pyseq.slot_size`` (remote batches use the ring's dtype) and ``pyseq.journal_id`` (the bridge
refuses a stream filled from another journal).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import re
import threading
import urllib.parse
from typing import Any, Coroutine, Optional, TypeVar

from . import errors
from .message import FRAME, FRAME_LENGTH, Message

log = logging.getLogger("pyseq.jetstream")

FORMAT = "pyseq-frame32-v1"
META_FORMAT, META_RING, META_SLOT_SIZE, META_JOURNAL_ID = ("pyseq.format", "pyseq.ring", "pyseq.slot_size",
                                                          "pyseq.journal_id")
MSG_ID, EXPECTED_LAST = "Nats-Msg-Id", "Nats-Expected-Last-Sequence"
STREAM_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")
SUBJECT_PREFIX = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
DEFAULT_TIMEOUT = 10.0
T = TypeVar("T")


def require_nats() -> Any:
    """The nats-py package, or a clear error naming the extra that brings it."""
    try:
        import nats
        import nats.js.api  # noqa: F401
    except ImportError as e:
        raise errors.NatsError(f"the NATS bridge needs nats-py: pip install \"pyseq[nats]\" ({e})") from None
    return nats


def servers(url: str) -> list[str]:
    """``url`` (one, or several comma-separated: the servers of a cluster) as a list of checked URLs."""
    if not isinstance(url, str) or not url.strip():
        raise errors.NatsConfigError(f"a NATS URL is a non-empty str such as nats://127.0.0.1:4222, not {url!r}")
    out = []
    for part in url.split(","):
        part = part.strip()
        if "://" not in part:
            part = "nats://" + part
        u = urllib.parse.urlsplit(part)
        try:
            port = u.port
        except ValueError:
            port = -1
        if u.scheme not in ("nats", "tls") or not u.hostname or port == -1 or (u.path not in ("", "/")):
            raise errors.NatsConfigError(f"{part!r} is not a NATS server URL (nats://HOST:PORT or tls://HOST:PORT)")
        out.append(part)
    return out


def check_stream_name(stream: str) -> str:
    if not isinstance(stream, str) or not STREAM_NAME.fullmatch(stream):
        raise errors.NatsConfigError(f"{stream!r} is not a JetStream stream name (letters, digits, '_' and '-')")
    return stream


def subject_prefix(stream: str, prefix: Optional[str] = None) -> str:
    prefix = prefix if prefix is not None else f"pyseq.{stream}"
    if not SUBJECT_PREFIX.fullmatch(prefix):
        raise errors.NatsConfigError(f"{prefix!r} is not a subject prefix (tokens of letters, digits, '_', '-' "
                                     f"separated by '.')")
    return prefix


# ---- the wire format -----------------------------------------------------------------------------

def encode(msg: Message) -> bytes:
    """A pyseq message as the data of its JetStream message: frame header, then payload."""
    return FRAME.pack(msg.seq, msg.timestamp_ns, len(msg.payload), msg.msg_type, msg.schema_version, msg.source,
                      0) + msg.payload


def frame_sequence(data: bytes) -> int:
    """The sequence in a message's frame; -1 if ``data`` is not a pyseq message."""
    if len(data) < FRAME_LENGTH:
        return -1
    seq, _, length = FRAME.unpack_from(data)[:3]
    return seq if length == len(data) - FRAME_LENGTH else -1


def decode(data: bytes) -> Message:
    """The Message whose wire form is ``data`` (checked by frame_sequence first)."""
    seq, ts, _length, msg_type, version, source, _ = FRAME.unpack_from(data)
    return Message(seq, ts, msg_type, version, source, bytes(data[FRAME_LENGTH:]))


# ---- connecting ------------------------------------------------------------------------------------

async def connect(urls: list[str], timeout: float, name: str) -> Any:
    """A connection to one of ``urls`` (it reconnects to any server of the cluster for ever after);
    :class:`pyseq.NatsError` if none answers within ``timeout`` seconds."""
    nats = require_nats()

    async def quiet(e: Exception) -> None:  # nats-py reports every failed reconnect: keep it short
        log.debug("%s: NATS: %s", name, e)

    nc = nats.NATS()
    try:
        await asyncio.wait_for(nc.connect(servers=urls, name=name, connect_timeout=min(timeout, 2.0),
                                          allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=0.25,
                                          ping_interval=5, max_outstanding_pings=2, error_cb=quiet), timeout)
    except (asyncio.TimeoutError, OSError, nats.errors.Error) as e:
        await _close_quietly(nc)
        raise errors.NatsError(f"no NATS server reachable at {','.join(urls)} within {timeout} s "
                               f"({type(e).__name__}{': ' + str(e) if str(e) else ''})") from None
    except BaseException:
        await _close_quietly(nc)
        raise
    return nc


async def _close_quietly(nc: Any) -> None:
    try:
        await asyncio.wait_for(nc.close(), 2.0)
    except Exception:
        pass


async def close(nc: Any) -> None:
    await _close_quietly(nc)


async def stream_info(nc: Any, stream: str, timeout: float) -> Any:
    """The stream's info (config and state); None if there is no such stream.  Raises nats-py's
    errors when JetStream does not answer (no leader, timeout)."""
    nats = require_nats()
    try:
        return await nc.jsm(timeout=timeout).stream_info(stream)
    except nats.js.errors.NotFoundError:
        return None


def api_error_code(exc: BaseException) -> Optional[int]:
    return getattr(exc, "err_code", None)


def transient(exc: BaseException) -> bool:
    """True for what a cluster in trouble answers for a while (no answer, no responders, no leader,
    a connection being re-established); False for a refusal that asking again will not change."""
    nats = require_nats()
    if isinstance(exc, nats.js.errors.APIError):
        return getattr(exc, "code", None) in (None, 503, 500)
    return isinstance(exc, (asyncio.TimeoutError, nats.errors.Error))


# ---- a private event loop thread, for the synchronous facades --------------------------------------

class LoopThread:
    """An asyncio event loop in a daemon thread of its own; :meth:`call` runs a coroutine there and
    waits for its result.  :meth:`close` cancels what still runs, stops the loop and joins the
    thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T], timeout: Optional[float]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise errors.TimeoutError(f"no answer within {timeout} s") from None

    def soon(self, fn: Any, *args: Any) -> None:
        """Run ``fn(*args)`` on the loop (from any thread); nothing if the loop is closed."""
        if not self.loop.is_closed():
            try:
                self.loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:
                pass

    def close(self, timeout: float = 5.0) -> None:
        if self.loop.is_closed():
            return

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(timeout)
            except Exception:
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()
