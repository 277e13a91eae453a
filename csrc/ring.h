/*
 * ring.h - the C core of a pyseq ring: publish, poll, batch read, gating, idle strategies.
 *
 * C works on memory Python mapped and handed in (ffi.from_buffer), so C owns no lifetimes and
 * makes no system calls on the fast path (clock_gettime is a vDSO read).  Functions return a
 * sequence or a count (>= 0) or a negative PYSEQ_E* status; Python raises on the cold side.
 */
#ifndef PYSEQ_RING_H
#define PYSEQ_RING_H

#include <stdint.h>
#include "ring_layout.h"

/* statuses: every function returns >= 0 on success, one of these otherwise */
#define PYSEQ_EMPTY 0           /* nothing to read (poll), or the wait timed out */
#define PYSEQ_EFULL (-1)        /* a gating reader holds the slot the writer needs */
#define PYSEQ_ELAPPED (-2)      /* the reader was overtaken by the writer */
#define PYSEQ_ETOO_LARGE (-3)   /* payload longer than slot_size - PYSEQ_FRAME_LENGTH */
#define PYSEQ_EINVAL (-4)       /* a size or count out of range */
#define PYSEQ_EEND (-5)         /* nothing left to read and the writer is gone (closed or dead) */
#define PYSEQ_ESTALE (-6)       /* nothing to read and the writer's heartbeat is older than allowed */
#define PYSEQ_EWATCH (-7)       /* nothing written: the writer's watch interval passed; check, then retry */

#define PYSEQ_IDLE_BUSY_SPIN 0  /* pause instruction only: lowest latency, burns a core */
#define PYSEQ_IDLE_SPIN_YIELD 1 /* spin `spins` times, then sched_yield */
#define PYSEQ_IDLE_BACKOFF 2    /* spin, yield, then sleep from min_park_ns doubling to max_park_ns */
#define PYSEQ_IDLE_BLOCKING 3   /* a reader: spin, yield, then sleep on a futex until the writer publishes
                                   (at most max_park_ns a sleep); elsewhere it backs off like BACKOFF */

typedef struct pyseq_idle_s {
    int32_t kind;
    uint32_t spins;
    uint32_t yields;
    uint32_t pad;
    int64_t min_park_ns;
    int64_t max_park_ns;
} pyseq_idle_t;

/* Process-local view of one mapping: three pointers (readers map the parts separately). */
typedef struct pyseq_ring_s {
    pyseq_ring_header_t *header;
    pyseq_cursor_t *cursors;
    uint8_t *slots;
    int64_t capacity;
    int64_t mask;
    uint32_t slot_size;
    uint32_t max_readers;
} pyseq_ring_t;

typedef struct pyseq_writer_s {
    pyseq_ring_t ring;
    int64_t next_sequence;   /* writer-local: the sequence the next publish gives */
    int64_t gating_cache;    /* writer-local: lowest gating cursor at the last scan */
    int64_t watch_ns;        /* > 0: a publish returns PYSEQ_EWATCH once per this interval, so the
                                caller can check what it watches (a client: its sequencer) */
    int64_t watched_ns;      /* when it last did */
    uint32_t woke_nobody_at; /* writer-local: park_seq + 1 when a FUTEX_WAKE last woke nobody (0: none) */
    uint32_t pad;
} pyseq_writer_t;

typedef struct pyseq_reader_s {
    pyseq_ring_t ring;
    pyseq_cursor_t *cursor;  /* this reader's entry in the cursor table */
    int64_t next_sequence;   /* reader-local: the sequence it expects next */
    int64_t lapped_by;       /* after PYSEQ_ELAPPED: the sequence found in the slot */
    int64_t durable;         /* 1: see only what the journal holds (header journaled_sequence) */
    int64_t journaled;       /* reader-local: the journaled_sequence last loaded */
    int64_t blocking;        /* 1: counted in blocking_readers (cursor entry 0): a blocking wait ran */
} pyseq_reader_t;

int64_t pyseq_clock_realtime_ns(void);
int64_t pyseq_clock_monotonic_ns(void); /* for deadlines and intervals */

/* Write the descriptor of a new ring into zeroed memory; layout_version last, with release. */
int pyseq_ring_format(void *base, uint64_t file_length, uint64_t capacity, uint32_t slot_size,
                      uint32_t max_readers, uint64_t page_size, int64_t first_sequence, const char *name,
                      int64_t writer_pid);
/* Bytes a ring of this shape needs; 0 if the shape is invalid. */
uint64_t pyseq_ring_file_length(uint64_t capacity, uint32_t slot_size, uint32_t max_readers, uint64_t page_size);
void pyseq_ring_view(pyseq_ring_t *ring, void *header, void *cursors, void *slots);

void pyseq_writer_init(pyseq_writer_t *writer, void *header, void *cursors, void *slots);
int64_t pyseq_writer_try_publish(pyseq_writer_t *writer, uint16_t msg_type, uint16_t schema_version,
                                 uint32_t source, int64_t timestamp_ns, const void *payload, uint32_t length);
/* the same, with `now` a CLOCK_REALTIME reading the caller made (0: read the clock): the stamp when
 * timestamp_ns is 0, and the heartbeat (the sequencer stamps one round's messages with one reading);
 * `origin` goes into the frame (the sequencer: the message's inbound sequence, low 32 bits) */
int64_t pyseq_writer_try_publish_at(pyseq_writer_t *writer, uint16_t msg_type, uint16_t schema_version,
                                    uint32_t source, int64_t timestamp_ns, const void *payload, uint32_t length,
                                    int64_t now, uint32_t origin);
/* republish a frame + payload copied out by a reader (frame holds PYSEQ_FRAME_LENGTH + length bytes) */
int64_t pyseq_writer_try_forward(pyseq_writer_t *writer, const void *frame, int keep_timestamp);
int64_t pyseq_writer_try_publish_batch(pyseq_writer_t *writer, uint16_t msg_type, uint16_t schema_version,
                                       uint32_t source, int64_t timestamp_ns, const void *records,
                                       uint32_t record_length, int64_t count);
int pyseq_writer_wait_capacity(pyseq_writer_t *writer, int64_t count, int64_t timeout_ns, const pyseq_idle_t *idle);
int64_t pyseq_writer_gating_scan(pyseq_writer_t *writer);
void pyseq_writer_heartbeat(pyseq_writer_t *writer);

void pyseq_reader_init(pyseq_reader_t *reader, void *header, void *cursors, void *slots,
                       pyseq_cursor_t *cursor, int64_t next_sequence);
int64_t pyseq_reader_poll(pyseq_reader_t *reader, void *out, uint32_t out_length);
int64_t pyseq_reader_read(pyseq_reader_t *reader, void *out, uint32_t out_length, int64_t timeout_ns,
                          const pyseq_idle_t *idle);
int64_t pyseq_reader_read_batch(pyseq_reader_t *reader, void *out, int64_t limit, int64_t timeout_ns,
                                const pyseq_idle_t *idle);
int64_t pyseq_reader_wait(pyseq_reader_t *reader, int64_t timeout_ns, const pyseq_idle_t *idle);
void pyseq_reader_heartbeat(pyseq_reader_t *reader);
void pyseq_reader_skip_to(pyseq_reader_t *reader, int64_t sequence);
/* A reader that ran a blocking wait leaves blocking_readers (cursor entry 0); call when it closes. */
void pyseq_reader_unblock(pyseq_reader_t *reader);

int pyseq_cursor_claim(pyseq_cursor_t *cursor, uint32_t expected_state, int64_t pid);
void pyseq_cursor_activate(pyseq_cursor_t *cursor, int64_t sequence, uint32_t gating, int64_t pid, const char *name);
int pyseq_cursor_evict(pyseq_cursor_t *cursor, pyseq_ring_header_t *header);
void pyseq_header_set_writer(pyseq_ring_header_t *header, int64_t pid, uint32_t state);
void pyseq_cursor_release(pyseq_cursor_t *cursor);
uint32_t pyseq_cursor_state(const pyseq_cursor_t *cursor);
int64_t pyseq_cursor_sequence(const pyseq_cursor_t *cursor);
int64_t pyseq_header_published(const pyseq_ring_header_t *header);
/* 1 if the writer closed the ring or its process no longer exists */
int pyseq_header_writer_gone(const pyseq_ring_header_t *header);
int64_t pyseq_header_heartbeat(const pyseq_ring_header_t *header);
/* 1 if the process has ended: gone, or a zombie not reaped yet (reads /proc: cold path only) */
int pyseq_process_ended(int64_t pid);
uint32_t pyseq_header_layout_version(const pyseq_ring_header_t *header);

#endif /* PYSEQ_RING_H */
