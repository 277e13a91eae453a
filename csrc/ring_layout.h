/*
 * ring_layout.h - every byte of a pyseq ring, the shared-memory object /dev/shm/pyseq.<name>.
 *
 * This header is the one source of truth for the layout.  The C core includes it; Python reads the
 * same structs through cffi (ffi.offsetof / ffi.sizeof), and tests/test_layout.py compares them with
 * the offsets drawn below.  All integers are little-endian (the host's; a ring never leaves its host).
 * Every time in the ring (timestamps and heartbeats) is CLOCK_REALTIME nanoseconds, so one clock
 * read per publish serves both.
 *
 * The whole file
 * ==============
 *
 *   0                    4096 (PYSEQ_RING_CURSORS_OFFSET)       slots_offset              file_length
 *   +--------------------+------------------------------------+-------------------------+
 *   | header page        | cursor table                       | slots                   |
 *   | 4 KiB              | max_readers x 128 B, page-rounded  | capacity x slot_size B  |
 *   | writer: RW         | each reader: RW (its own entry)    | writer: RW              |
 *   | readers: read-only |                                    | readers: read-only      |
 *   +--------------------+------------------------------------+-------------------------+
 *   file_length = slots_offset + capacity * slot_size, rounded up to the page size.
 *
 * Readers map the three parts separately, so only the cursor table is writable to them: a buggy
 * reader cannot corrupt the header or the stream.  slots_offset is a multiple of the page size.
 *
 * The header page (pyseq_ring_header_t, 4096 bytes)
 * =================================================
 *
 *    0                   1                   2                   3
 *    0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 *   +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *   |                      magic "PYSEQRNG"                           |   0  descriptor: written once by
 *   |                                                               |      the creator, never changed
 *   +---------------------------------------------------------------+
 *   |                 layout_version (store-release LAST)           |   8
 *   +---------------------------------------------------------------+
 *   |                          slot_size                            |  12
 *   +---------------------------------------------------------------+
 *   |                          capacity                             |  16  slots, a power of two
 *   |                                                               |
 *   +---------------------------------------------------------------+
 *   |                         max_readers                           |  24  cursor table entries
 *   +---------------------------------------------------------------+
 *   |                        origin                                 |  28
 *   +---------------------------------------------------------------+
 *   |                       cursors_offset                          |  32  = 4096
 *   |                                                               |
 *   +---------------------------------------------------------------+
 *   |                        slots_offset                           |  40
 *   |                                                               |
 *   +---------------------------------------------------------------+
 *   |                        file_length                            |  48
 *   |                                                               |
 *   +---------------------------------------------------------------+
 *   |                  created_ns (CLOCK_REALTIME)                  |  56
 *   |                                                               |
 *   +---------------------------------------------------------------+
 *   |                       first_sequence                          |  64  first sequence this ring
 *   |                                                               |      gives (>= 1)
 *   +---------------------------------------------------------------+
 *   |                 name[56] (NUL-terminated)                     |  72
 *   ...                                                           ...
 *   +---------------------------------------------------------------+
 *   |                         writer_pid                            | 128  writer liveness line:
 *   |                                                               |      writer only, relaxed
 *   +---------------------------------------------------------------+
 *   |                  writer_heartbeat_ns (CLOCK_REALTIME)         | 136  refreshed on every publish
 *   |                                                               |      and by heartbeat()
 *   +---------------------------------------------------------------+
 *   |                       eviction_count                          | 144  gating readers evicted
 *   |                                                               |
 *   +---------------------------------------------------------------+
 *   |                        writer_state                           | 152  0 none, 1 open, 2 closed
 *   +---------------------------------------------------------------+
 *   |                     pad (4 bytes)                             | 156
 *   +---------------------------------------------------------------+
 *   |                        full_count                             | 160  publishes that found no room
 *   |                                                               |      (back-pressure events)
 *   +---------------------------------------------------------------+
 *   |                   pad to 256                                  | 168
 *   +---------------------------------------------------------------+
 *   |                     published_sequence                        | 256  own 128-byte line: last
 *   |                                                               |      sequence published (0 =
 *   +---------------------------------------------------------------+      none); store-release
 *   |                   pad to 384                                  |
 *   +---------------------------------------------------------------+
 *   |                     journaled_sequence                        | 384  own line, the journaler's: last
 *   |                                                               |      sequence in the journal as far as
 *   +---------------------------------------------------------------+      its fsync policy promises;
 *   |        journal_state          |      journal_fsync            | 392  store-release after the write
 *   +---------------------------------------------------------------+      (never) or the fsync (batch,
 *   |                     journal_errors                            | 400  interval). state: 0 no journal,
 *   |                                                               |      1 journaling, 2 stalled (writes
 *   +---------------------------------------------------------------+      failing), 3 stopped. fsync:
 *   |                        journal_id                             | 408  0 never, 1 interval, 2 batch.
 *   |                                                               |      errors: failed writes/fsyncs.
 *   +---------------------------------------------------------------+      journal_id: the journal
 *   |                   pad to 512                                  | 416  directory's id (its ID file)
 *   +---------------------------------------------------------------+
 *   |                          wake_seq                             | 512  own line (layout 1.2): the
 *   +---------------------------------------------------------------+      futex word blocking readers
 *   |                   reserved, zero, to 1024                     | 516  sleep on; the writer adds 1
 *   |                                                               |      and wakes them ("Parking")
 *   +---------------------------------------------------------------+
 *   |                     notes[3072]                               | 1024 the writer's notes: UTF-8,
 *   ...                                                           ...     NUL-terminated; written once
 *   +---------------------------------------------------------------+     before anyone depends on them
 *                                                                         (the sequencer: its client
 *                                                                         limits, as JSON)
 *
 * A cursor (pyseq_cursor_t, 128 bytes, one per reader, each on its own pair of cache lines)
 * ========================================================================================
 *
 *   +---------------------------------------------------------------+
 *   |                          sequence                             |   0  last sequence consumed;
 *   |                                                               |      owner: store-release
 *   +---------------------------------------------------------------+
 *   |                           state                               |   8  FREE/CLAIMED(pid)/ACTIVE/EVICTED
 *   +---------------------------------------------------------------+
 *   |                           gating                              |  12  1: holds the writer back
 *   +---------------------------------------------------------------+
 *   |                            pid                                |  16
 *   |                                                               |
 *   +---------------------------------------------------------------+
 *   |                 heartbeat_ns (CLOCK_REALTIME)                 |  24  refreshed while waiting
 *   |                                                               |
 *   +---------------------------------------------------------------+
 *   |                         name[32]                              |  32
 *   ...                                                           ...
 *   +---------------------------------------------------------------+
 *   |                         held_count                            |  64  times the owner left published
 *   |                                                               |      messages unread by its own policy
 *   +---------------------------------------------------------------+      (the sequencer's rate limit)
 *   |                         pad to 116                            |  72
 *   +---------------------------------------------------------------+
 *   |                          park_seq                             | 116  entry 0 only, ring-wide
 *   +---------------------------------------------------------------+
 *   |                      blocking_readers                         | 120  entry 0 only, ring-wide
 *   +---------------------------------------------------------------+      (layout 1.2; "Parking"):
 *   |                       parked_readers                          | 124  atomic add/sub by readers
 *   +---------------------------------------------------------------+
 *
 * A slot (slot_size bytes, a multiple of 64; slot of sequence s is at slots + (s & (capacity-1)) * slot_size)
 * =========================================================================================================
 *
 *   +---------------------------------------------------------------+
 *   |                          sequence                             |   0  0 = never written;
 *   |                                                               |      -s = being written;
 *   +---------------------------------------------------------------+      s = complete (release)
 *   |                  timestamp_ns (CLOCK_REALTIME)                |   8  the sequencing time
 *   |                                                               |
 *   +---------------------------------------------------------------+
 *   |                           length                              |  16  payload bytes
 *   +-------------------------------+-------------------------------+
 *   |           msg_type            |        schema_version         |  20
 *   +-------------------------------+-------------------------------+
 *   |                           source                              |  24  who submitted it
 *   +---------------------------------------------------------------+
 *   |                           origin                              |  28  in a sequenced ring: the low
 *   |                                                               |      32 bits of the message's
 *   |                                                               |      sequence in its client's
 *   |                                                               |      inbound ring (a restarted
 *   |                                                               |      sequencer resumes each client
 *   |                                                               |      after it: exactly once); 0 for
 *   |                                                               |      system messages and elsewhere
 *   +---------------------------------------------------------------+
 *   |                  payload (slot_size - 32 bytes)               |  32
 *   ...                                                           ...
 *   +---------------------------------------------------------------+
 *
 * Who writes what, and in which order
 * ===================================
 *
 * Creation: the creator writes the whole descriptor, zeroes the rest (ftruncate does), then stores
 * layout_version with release.  Attach treats layout_version 0 as "not ready yet" and rejects a
 * major version it does not know.
 *
 * Publishing sequence s (the writer, one process):
 *   1. store slot.sequence = -s (relaxed), then a release fence: the slot is "being written";
 *   2. write the frame fields and the payload (plain stores);
 *   3. store slot.sequence = s with release;                     <- pairs with reader step 1
 *   4. store header.published_sequence = s with release (after a batch: once, for its last s).
 *
 * Reading sequence s (a reader; copy, then validate: a seqlock):
 *   1. load slot.sequence with acquire; s: go on; below s: not yet published; else: lapped;
 *   2. copy frame and payload out (plain loads) - for a batch, slots s..s+n-1, each checked as in 1;
 *   3. acquire fence, then load slot(s).sequence again (relaxed): still s means the copy is whole;
 *      anything else means the writer began overwriting it (step 1 of s + capacity): lapped.
 *      For a batch, checking the first slot is enough: the writer overwrites slots in order.
 *   4. store cursor.sequence = last s read, with release.       <- pairs with writer gating scan
 *
 * Gating: before publishing s the writer needs s - capacity <= every ACTIVE gating cursor's
 * sequence (the slot it overwrites was consumed).  It keeps the minimum in a process-local cache
 * and rescans the cursor table (load-acquire of each cursor.sequence) only when s - capacity passes
 * the cache (the wrap point), like the Disruptor's SingleProducerSequencer.
 *
 * Cursor registration: CAS state FREE -> CLAIMED(pid) = (pid << 2) | 1, so a claim names its claimant
 * in the one word the CAS writes; fill pid/name/gating/sequence, store state ACTIVE with release.
 * An entry whose owner is gone (the pid in CLAIMED(pid), or cursor.pid when ACTIVE or EVICTED) may
 * be reclaimed the same way, by a CAS from the exact state word seen.  Release: pid = 0, gating = 0,
 * state FREE with release.
 * A reader that joins at "latest" stores its cursor, issues a seq_cst fence, then reads
 * published_sequence and starts after it; the writer's gating scan opens with a seq_cst fence
 * too, so either the scan sees the new cursor or the reader sees every sequence the writer may
 * publish without scanning again: a "latest" joiner is never lapped by a scan that missed it.
 * Eviction: the writer (or any process that finds the owner dead) CASes ACTIVE -> EVICTED and
 * increments header.eviction_count; the writer ignores cursors that are not ACTIVE.
 *
 * Parking (the blocking idle strategy, layout 1.2)
 * ================================================
 * blocking_readers and parked_readers are ring-wide counters in cursor entry 0 (the cursor table
 * is the part every reader may write); wake_seq is in the header, written by the writer only
 * (FUTEX_WAIT needs only read access).
 * A reader of PYSEQ_IDLE_BLOCKING adds 1 to blocking_readers once (subtracts it when it closes).
 * To sleep on sequence s it loads w = wake_seq, adds 1 to park_seq and to parked_readers (seq_cst), looks at
 * slot s once more, and only if s is still unpublished calls FUTEX_WAIT(wake_seq, w) with a timeout
 * (max_park_ns: the bound for a writer that never wakes anyone, e.g. one of layout 1.1); then it
 * subtracts 1 from parked_readers.  The writer, after publish step 4 (and the journaler after
 * moving journaled_sequence), loads blocking_readers (relaxed); if it is not 0: a seq_cst fence,
 * then if parked_readers is not 0, adds 1 to wake_seq and FUTEX_WAKEs all.  The reader's RMW and
 * the writer's fence order "parked, then look at the slot" against "publish, then look at parked":
 * either the reader sees s published, or the writer sees it parked and wakes it (a wake that comes
 * before the FUTEX_WAIT makes the wait return at once: wake_seq is no longer w).  A ring without
 * blocking readers costs the writer one relaxed load per publish.  A reader that died while
 * registered leaves blocking_readers above 0: the writer then pays the fence on every publish
 * until the ring is made again.  A reader killed while asleep leaves parked_readers above 0 too: a
 * writer whose FUTEX_WAKE woke nobody remembers park_seq (every park adds 1 to it) and wakes again
 * only once park_seq has moved, so a dead sleeper costs it a fence per publish, not a system call.
 *
 * Memory ordering, as pairs
 * =========================
 *   writer store-release slot.sequence (publish step 3)  <->  reader load-acquire slot.sequence (read step 1)
 *   writer release fence after -s (publish step 1)        <->  reader acquire fence before re-check (read step 3)
 *   reader store-release cursor.sequence (read step 4)    <->  writer load-acquire in the gating scan
 *   creator store-release layout_version                  <->  attach load-acquire layout_version
 *   registrant store-release cursor.state = ACTIVE        <->  writer load-acquire of cursor.state in the scan
 */
#ifndef PYSEQ_RING_LAYOUT_H
#define PYSEQ_RING_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#define PYSEQ_CACHE_LINE 64
#define PYSEQ_PADDED_LINE (2 * PYSEQ_CACHE_LINE) /* two lines: defeats the adjacent-line prefetcher */

#define PYSEQ_RING_MAGIC 0x474E525145535950ULL /* "PYSEQRNG" read as a little-endian u64 */
#define PYSEQ_RING_LAYOUT_MAJOR 1u
#define PYSEQ_RING_LAYOUT_MINOR 2u /* 1: journal_state, journal_fsync, journal_errors; 2: parked readers */
#define PYSEQ_RING_LAYOUT_VERSION ((PYSEQ_RING_LAYOUT_MAJOR << 16) | PYSEQ_RING_LAYOUT_MINOR)

#define PYSEQ_RING_HEADER_LENGTH 4096
#define PYSEQ_RING_CURSORS_OFFSET PYSEQ_RING_HEADER_LENGTH
#define PYSEQ_RING_NAME_LENGTH 56
#define PYSEQ_CURSOR_NAME_LENGTH 32
#define PYSEQ_RING_NOTES_OFFSET 1024
#define PYSEQ_RING_NOTES_LENGTH (PYSEQ_RING_HEADER_LENGTH - PYSEQ_RING_NOTES_OFFSET)
#define PYSEQ_FRAME_LENGTH 32
#define PYSEQ_SLOT_ALIGN 64

#define PYSEQ_WRITER_NONE 0u
#define PYSEQ_WRITER_OPEN 1u
#define PYSEQ_WRITER_CLOSED 2u

/* journal_state and journal_fsync (header line 384) */
#define PYSEQ_JOURNAL_NONE 0u       /* no journaler: journaled_sequence does not move */
#define PYSEQ_JOURNAL_RUNNING 1u
#define PYSEQ_JOURNAL_STALLED 2u    /* its writes fail (disk full...): the ring fills, clients back-pressure */
#define PYSEQ_JOURNAL_STOPPED 3u    /* closed with the ring; journaled_sequence is final */
#define PYSEQ_FSYNC_NEVER 0u        /* journaled after write(2): survives a process crash, not a host crash */
#define PYSEQ_FSYNC_INTERVAL 1u     /* journaled after the periodic fdatasync */
#define PYSEQ_FSYNC_BATCH 2u        /* journaled after the fdatasync of its batch */

#define PYSEQ_CURSOR_FREE 0u
#define PYSEQ_CURSOR_CLAIMED 1u /* the low two bits of CLAIMED(pid) */
#define PYSEQ_CURSOR_ACTIVE 2u
#define PYSEQ_CURSOR_EVICTED 3u
#define PYSEQ_CURSOR_STATE_MASK 3u
#define PYSEQ_CURSOR_CLAIMED_BY(pid) ((((uint32_t)(pid)) << 2) | PYSEQ_CURSOR_CLAIMED)

typedef struct pyseq_ring_header_s {
    /* descriptor: written once by the creator; layout_version last, with release */
    uint64_t magic;
    uint32_t layout_version;
    uint32_t slot_size;
    uint64_t capacity;
    uint32_t max_readers;
    uint32_t flags;
    uint64_t cursors_offset;
    uint64_t slots_offset;
    uint64_t file_length;
    int64_t created_ns;
    int64_t first_sequence;
    char name[PYSEQ_RING_NAME_LENGTH];
    /* writer liveness: writer only */
    int64_t writer_pid;
    int64_t writer_heartbeat_ns;
    uint64_t eviction_count;
    uint32_t writer_state;
    uint32_t pad_writer_state;
    uint64_t full_count;
    uint8_t pad_writer[PYSEQ_PADDED_LINE - 5 * sizeof(int64_t)];
    /* published position: writer only, store-release after the slot */
    int64_t published_sequence;
    uint8_t pad_published[PYSEQ_PADDED_LINE - sizeof(int64_t)];
    /* journaled position: the journaler only, store-release after the write (or fsync) */
    int64_t journaled_sequence;
    uint32_t journal_state;   /* the journaler only, relaxed: PYSEQ_JOURNAL_* */
    uint32_t journal_fsync;   /* the journaler only, relaxed: PYSEQ_FSYNC_* */
    uint64_t journal_errors;  /* the journaler only, relaxed: failed writes and fsyncs */
    uint64_t journal_id;      /* the journaler, before it runs: which journal this ring is written to */
    uint8_t pad_journaled[PYSEQ_PADDED_LINE - 4 * sizeof(int64_t)];
    /* the wake-up word (layout 1.2): the futex readers of the blocking idle strategy sleep on */
    uint32_t wake_seq;         /* writer (and journaler) only: add 1, then FUTEX_WAKE every sleeper */
    uint8_t pad_wake[PYSEQ_RING_NOTES_OFFSET - 4 * PYSEQ_PADDED_LINE - sizeof(uint32_t)];
    /* the writer's notes: written by the writer, read by anyone */
    char notes[PYSEQ_RING_NOTES_LENGTH];
} pyseq_ring_header_t;

typedef struct pyseq_cursor_s {
    int64_t sequence;      /* owner: store-release after each read */
    uint32_t state;        /* CAS by the registrant; ACTIVE -> EVICTED by the evictor */
    uint32_t gating;       /* owner, before state = ACTIVE */
    int64_t pid;           /* owner, before state = ACTIVE */
    int64_t heartbeat_ns;  /* owner, relaxed */
    char name[PYSEQ_CURSOR_NAME_LENGTH];
    uint64_t held_count;   /* owner, relaxed */
    uint8_t pad[PYSEQ_PADDED_LINE - 84];
    /* ring-wide, in entry 0 only (layout 1.2; zero and unused in the others): the header is read-only
     * to readers, the cursor table is not.  Atomic add/sub by readers of the blocking idle strategy. */
    uint32_t park_seq;         /* parks begun, ever (wraps): tells a new sleeper from a dead one's count */
    uint32_t blocking_readers; /* readers that may park; 0: the writer does not look for sleepers */
    uint32_t parked_readers;   /* readers asleep on header.wake_seq now */
} pyseq_cursor_t;

typedef struct pyseq_frame_s {
    int64_t sequence;      /* writer: -s (relaxed) first, s (release) last */
    int64_t timestamp_ns;
    uint32_t length;
    uint16_t msg_type;
    uint16_t schema_version;
    uint32_t source;
    uint32_t origin;         /* sequenced ring: low 32 bits of the inbound sequence */
} pyseq_frame_t;

_Static_assert(offsetof(pyseq_ring_header_t, magic) == 0, "magic");
_Static_assert(offsetof(pyseq_ring_header_t, layout_version) == 8, "layout_version");
_Static_assert(offsetof(pyseq_ring_header_t, slot_size) == 12, "slot_size");
_Static_assert(offsetof(pyseq_ring_header_t, capacity) == 16, "capacity");
_Static_assert(offsetof(pyseq_ring_header_t, max_readers) == 24, "max_readers");
_Static_assert(offsetof(pyseq_ring_header_t, flags) == 28, "flags");
_Static_assert(offsetof(pyseq_ring_header_t, cursors_offset) == 32, "cursors_offset");
_Static_assert(offsetof(pyseq_ring_header_t, slots_offset) == 40, "slots_offset");
_Static_assert(offsetof(pyseq_ring_header_t, file_length) == 48, "file_length");
_Static_assert(offsetof(pyseq_ring_header_t, created_ns) == 56, "created_ns");
_Static_assert(offsetof(pyseq_ring_header_t, first_sequence) == 64, "first_sequence");
_Static_assert(offsetof(pyseq_ring_header_t, name) == 72, "name");
_Static_assert(offsetof(pyseq_ring_header_t, writer_pid) == 128, "writer_pid");
_Static_assert(offsetof(pyseq_ring_header_t, writer_heartbeat_ns) == 136, "writer_heartbeat_ns");
_Static_assert(offsetof(pyseq_ring_header_t, eviction_count) == 144, "eviction_count");
_Static_assert(offsetof(pyseq_ring_header_t, writer_state) == 152, "writer_state");
_Static_assert(offsetof(pyseq_ring_header_t, full_count) == 160, "full_count");
_Static_assert(offsetof(pyseq_ring_header_t, published_sequence) == 256, "published_sequence");
_Static_assert(offsetof(pyseq_ring_header_t, journaled_sequence) == 384, "journaled_sequence");
_Static_assert(offsetof(pyseq_ring_header_t, journal_state) == 392, "journal_state");
_Static_assert(offsetof(pyseq_ring_header_t, journal_fsync) == 396, "journal_fsync");
_Static_assert(offsetof(pyseq_ring_header_t, journal_errors) == 400, "journal_errors");
_Static_assert(offsetof(pyseq_ring_header_t, journal_id) == 408, "journal_id");
_Static_assert(offsetof(pyseq_ring_header_t, wake_seq) == 512, "wake_seq");
_Static_assert(offsetof(pyseq_ring_header_t, notes) == 1024, "notes");
_Static_assert(sizeof(pyseq_ring_header_t) == PYSEQ_RING_HEADER_LENGTH, "header is one page");

_Static_assert(offsetof(pyseq_cursor_t, sequence) == 0, "cursor.sequence");
_Static_assert(offsetof(pyseq_cursor_t, state) == 8, "cursor.state");
_Static_assert(offsetof(pyseq_cursor_t, gating) == 12, "cursor.gating");
_Static_assert(offsetof(pyseq_cursor_t, pid) == 16, "cursor.pid");
_Static_assert(offsetof(pyseq_cursor_t, heartbeat_ns) == 24, "cursor.heartbeat_ns");
_Static_assert(offsetof(pyseq_cursor_t, park_seq) == 116, "cursor.park_seq");
_Static_assert(offsetof(pyseq_cursor_t, blocking_readers) == 120, "cursor.blocking_readers");
_Static_assert(offsetof(pyseq_cursor_t, parked_readers) == 124, "cursor.parked_readers");
_Static_assert(offsetof(pyseq_cursor_t, name) == 32, "cursor.name");
_Static_assert(offsetof(pyseq_cursor_t, held_count) == 64, "cursor.held_count");
_Static_assert(sizeof(pyseq_cursor_t) == PYSEQ_PADDED_LINE, "cursor is 128 bytes");

_Static_assert(offsetof(pyseq_frame_t, sequence) == 0, "frame.sequence");
_Static_assert(offsetof(pyseq_frame_t, timestamp_ns) == 8, "frame.timestamp_ns");
_Static_assert(offsetof(pyseq_frame_t, length) == 16, "frame.length");
_Static_assert(offsetof(pyseq_frame_t, msg_type) == 20, "frame.msg_type");
_Static_assert(offsetof(pyseq_frame_t, schema_version) == 22, "frame.schema_version");
_Static_assert(offsetof(pyseq_frame_t, source) == 24, "frame.source");
_Static_assert(offsetof(pyseq_frame_t, origin) == 28, "frame.origin");
_Static_assert(sizeof(pyseq_frame_t) == PYSEQ_FRAME_LENGTH, "frame is 32 bytes");

#endif /* PYSEQ_RING_LAYOUT_H */
