"""pyseq: a sequencer for co-located processes, in Python with a C core.

The public API; everything else is private.
"""
from __future__ import annotations

from .errors import (BackPressureError, ClientNameInUseError, EndOfStreamError, JournalCorruptError, JournalError,
                     JournalLockedError, JournalNotFoundError, LappedError, ReplicaError, SnapshotError, DivergenceError, MessageTooLargeError, NotWriterError, PyseqError,
                     ReaderEvictedError, ReaderTableFullError, RingClosedError, RingConfigError,
                     RingExistsError, RingFormatError, RingNameError, RingNotFoundError, RingNotReadyError,
                     RingPermissionError, SchemaCompatibilityError, SchemaError, SequencerNotRunningError,
                     SequencerStoppedError, TimeoutError, WriterStalledError, NatsError, NatsConfigError, BridgeError,
                     RemoteError)
from .idle import BackoffIdle, BlockingIdle, BusySpin, IdleStrategy, SpinYield, default_idle
from .message import FRAME_LENGTH, Message, batch_dtype, batch_payloads
from .ring import Reader, Ring
from .sequencer import CLIENT_JOINED, CLIENT_LEFT, END_OF_STREAM, SYSTEM_FIRST, Limit, Limits, Sequencer
from .client import Client
from .journal import Journal, VerifyReport
from .journaler import FsyncPolicy, Journaler
from .statemachine import StateMachine
from .admin import ActivateSchema, ReplicaDigest, TakeSnapshot
from .replica import DigestMonitor, Replica
from .bridge import Bridge
from .remote import RemoteReader
from . import schema
from .schema import Record, check_compatible

__version__ = "0.1.0"

__all__ = [
    "Ring", "Reader", "Message", "Sequencer", "Client", "Limit", "Limits",
    "SYSTEM_FIRST", "CLIENT_JOINED", "CLIENT_LEFT", "END_OF_STREAM", "Record", "schema", "check_compatible", "FRAME_LENGTH", "batch_dtype", "batch_payloads",
    "IdleStrategy", "BusySpin", "SpinYield", "BackoffIdle", "BlockingIdle", "default_idle",
    "PyseqError", "RingNameError", "RingNotFoundError", "RingExistsError",
    "RingFormatError", "RingNotReadyError", "RingClosedError", "RingConfigError", "RingPermissionError",
    "NotWriterError", "EndOfStreamError", "ReaderTableFullError", "ReaderEvictedError", "LappedError", "BackPressureError",
    "MessageTooLargeError", "TimeoutError", "WriterStalledError", "ClientNameInUseError",
    "SequencerNotRunningError", "SequencerStoppedError", "SchemaError", "SchemaCompatibilityError",
    "Journal", "VerifyReport", "Journaler", "FsyncPolicy",
    "StateMachine", "Replica", "DigestMonitor", "TakeSnapshot", "ActivateSchema", "ReplicaDigest",
    "ReplicaError", "SnapshotError", "DivergenceError",
    "JournalError", "JournalNotFoundError", "JournalLockedError", "JournalCorruptError",
    "Bridge", "RemoteReader", "NatsError", "NatsConfigError", "BridgeError", "RemoteError",
]
