"""Every exception pyseq raises.

All derive from :class:`PyseqError`, so ``except pyseq.PyseqError`` catches anything the library
raises on purpose.  Where a builtin meaning exists (a timeout, a bad value) the class derives from
that builtin too, so ``except TimeoutError`` works as a user would expect.
"""
from __future__ import annotations

import builtins


class PyseqError(Exception):
    """Base of every pyseq error."""


class RingNameError(PyseqError, ValueError):
    """A ring name is empty, too long, or holds a character other than [A-Za-z0-9._-]."""


class RingNotFoundError(PyseqError, FileNotFoundError):
    """No shared-memory object of that name exists (nobody created the ring, or it was removed)."""


class RingExistsError(PyseqError, FileExistsError):
    """``create`` found a ring of that name whose writer is still alive."""


class ClientNameInUseError(RingExistsError):
    """``Client.connect`` with a client name a live process already uses on that ring."""


class RingFormatError(PyseqError):
    """The shared-memory object is not a pyseq ring this version can read: wrong magic, wrong layout
    version, inconsistent sizes, or a truncated file."""


class RingNotReadyError(RingFormatError):
    """The ring exists but its creator has not finished initialising it (layout version still 0)."""


class RingClosedError(PyseqError):
    """The ring, reader or writer object was closed and cannot be used any more."""


class ReaderTableFullError(PyseqError):
    """Every cursor slot in the ring header is held by a live reader."""


class ReaderEvictedError(PyseqError):
    """This gating reader was evicted by the writer (found dead or stale) and no longer holds it back."""


class LappedError(PyseqError):
    """A reader was overtaken by the writer: messages it had not read were overwritten.

    ``first_missed`` is the first sequence the reader did not get, ``missed`` how many were lost
    (at least; the writer may have gone on since), and ``resume_at`` the oldest sequence still in the
    ring, where :meth:`Reader.skip_to` can restart the reader.  The missed messages can be read
    from the journal.
    """

    def __init__(self, first_missed: int, missed: int, resume_at: int, detail: str = "") -> None:
        self.first_missed = first_missed
        self.missed = missed
        self.resume_at = resume_at
        msg = (f"reader lapped by the writer: sequences {first_missed}..{first_missed + missed - 1} "
               f"({missed} messages) were overwritten before they were read; "
               f"oldest still in the ring is {resume_at}")
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)


class EndOfStreamError(PyseqError):
    """A blocking read found nothing left to read and the ring's writer gone: it closed the ring, or
    its process ended.  Nothing more will be published into this ring."""


class WriterStalledError(PyseqError):
    """A reader with ``stale_after`` found nothing to read and the ring's writer heartbeat older than
    that: the writer process is alive but not running its loop (stopped, hung, or swapped out)."""


class SequencerNotRunningError(PyseqError):
    """``Client.connect`` found no live sequencer for the ring, or none took the client's inbound ring
    within the timeout."""


class SequencerStoppedError(PyseqError):
    """The sequencer a client was connected to stopped (closed, died, or its heartbeat went stale)."""


class BackPressureError(PyseqError):
    """The writer could not publish within its timeout because a gating reader has not consumed
    the slot it would overwrite."""


class MessageTooLargeError(PyseqError, ValueError):
    """A payload longer than the ring's slot can hold (slot_size - frame header)."""


class TimeoutError(PyseqError, builtins.TimeoutError):  # noqa: A001 - deliberately shadows the builtin
    """A blocking call waited its whole timeout."""


class SchemaError(PyseqError, ValueError):
    """A message declaration is invalid, or a payload does not fit the declared layout."""


class SchemaCompatibilityError(SchemaError):
    """A new schema is not a compatible successor of the old one (removed, reordered or retyped field)."""


class RingConfigError(PyseqError, ValueError):
    """A ring shape out of range: capacity not a power of two, slot size not a multiple of 64, ..."""


class RingPermissionError(PyseqError, PermissionError):
    """The shared-memory object exists but this process may not open it (see ``mode`` in create)."""


class NotWriterError(PyseqError):
    """A write was attempted through a handle that attached to the ring as a reader."""


class JournalError(PyseqError):
    """A journal cannot be opened, written or read as asked."""


class JournalNotFoundError(JournalError, FileNotFoundError):
    """The journal directory does not exist or holds no segment."""


class JournalLockedError(JournalError):
    """Another process (a sequencer) is writing this journal."""


class JournalCorruptError(JournalError):
    """A record that is not valid where valid records must be: in a segment before the last, or with
    valid records after it.  Names the segment file, the byte offset and the sequence expected there."""

    def __init__(self, segment: str, offset: int, sequence: int, reason: str) -> None:
        self.segment = segment
        self.offset = offset
        self.sequence = sequence
        self.reason = reason
        super().__init__(f"journal corrupt: {segment} at offset {offset} (sequence {sequence}): {reason}")


class SnapshotError(PyseqError):
    """A snapshot file that cannot be used: corrupt, truncated, of another state machine, or whose
    restored state does not have the digest the file records."""


class ReplicaError(PyseqError):
    """A replica cannot continue: a gap in what it was given (a journal that starts too late, a ring
    that no longer holds what it needs and no journal), or a stream that went backwards."""


class DivergenceError(PyseqError):
    """Two replicas of the same state machine reported different digests at the same sequence."""


class NatsError(PyseqError):
    """Talking to NATS JetStream failed: no server reachable within the timeout, a request refused,
    or a stream that is missing or not a pyseq stream (``pip install "pyseq[nats]"`` brings the client)."""


class NatsConfigError(NatsError, ValueError):
    """A NATS URL, stream name or subject that cannot be right (checked before connecting)."""


class BridgeError(NatsError):
    """The bridge cannot go on without losing or reordering a message: a gap neither the journal nor
    the ring can fill, a stream holding another pyseq stream, or a stream sequence that is not the
    pyseq sequence."""


class RemoteError(NatsError):
    """A remote reader cannot go on: the stream is gone, starts after the sequence asked for, or holds
    a message that is not a pyseq message at the sequence expected."""
