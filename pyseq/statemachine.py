"""State machines: deterministic, single-threaded state applied from the sequenced stream.

Every replica applies the same messages in the same order (the sequence), so if ``apply`` is a pure
function of the state and the message, every replica holds the same state at the same sequence,
with no other messaging between them.  That is state machine replication, and it holds only if
``apply`` obeys these rules:

- **The message is the only input.**  Time is ``msg.timestamp_ns`` (the sequencing time, the same
  in every replica), never ``time.time()``; no randomness (seed any generator from the stream); no
  reads of files, the environment, other processes, or anything the stream does not carry.
- **No iteration-order surprises.**  Iterate dicts only where insertion order is itself determined
  by the stream; never iterate sets of str (hash randomisation) into state or output; sort where
  order matters.  Floating point is deterministic for the same operations in the same order on
  IEEE-754 machines; avoid anything that is not (``math.fsum`` is fine, parallel reductions are not).
- **Errors are state, not exceptions.**  A message that is invalid for the current state (halt an
  unknown instrument) is rejected the same way in every replica, and the rejection is counted in
  the state; ``apply`` raises only for a bug.
- **One thread.**  ``apply`` is called from one thread, in sequence order, exactly once per message.

``snapshot()`` serialises the state canonically (the same state gives the same bytes in every
replica and every implementation: sort everything), ``restore()`` reads it back, and ``digest()`` is
a hash of that canonical form: equal digests at the same sequence mean equal state.  A digest
mismatch between replicas is an alarm (:class:`pyseq.replica.DigestMonitor`).
"""
from __future__ import annotations

import hashlib
from typing import ClassVar

from .message import Message


class StateMachine:
    """Base class of a replicated state machine.

    Subclasses set ``name`` (what snapshots record, so a snapshot of another machine is refused) and
    implement :meth:`apply`, :meth:`snapshot` and :meth:`restore`; :meth:`digest` defaults to the
    SHA-256 of the snapshot.  ``schema_versions`` maps a message type to the schema version in
    effect (see :class:`pyseq.admin.ActivateSchema`); the replica updates it at the activation's
    sequence, and it is part of every snapshot.
    """

    name: ClassVar[str] = "state-machine"

    def __init__(self) -> None:
        self.schema_versions: dict[int, int] = {}

    def apply(self, msg: Message) -> None:
        """Apply one sequenced message (every message of the stream, in order; ignore what you do
        not handle)."""
        raise NotImplementedError

    def snapshot(self) -> bytes:
        """The whole state, canonically encoded."""
        raise NotImplementedError

    def restore(self, data: bytes) -> None:
        """Replace the state by the one ``snapshot()`` encoded as ``data``."""
        raise NotImplementedError

    def digest(self) -> str:
        """A hex digest of the state (SHA-256 of :meth:`snapshot` unless overridden)."""
        return hashlib.sha256(self.snapshot()).hexdigest()
