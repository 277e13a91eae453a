/*
 * ring_inline.h - the inline pieces of ring.c that other C modules of pyseq reuse (journal.c):
 * slot addressing, the reader's seqlock steps and the idle strategies.  Internal: not in any cdef.
 */
#ifndef PYSEQ_RING_INLINE_H
#define PYSEQ_RING_INLINE_H

#include <linux/futex.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "atomics.h"
#include "ring.h"

#define PYSEQ_CLOCK_CHECK_SPINS 128 /* busy-spin iterations between clock reads */

static inline pyseq_frame_t *slot_at(const pyseq_ring_t *ring, int64_t sequence)
{
    return (pyseq_frame_t *)(ring->slots + (size_t)(sequence & ring->mask) * ring->slot_size);
}

/* ---- idle strategies ------------------------------------------------------------------------ */

typedef struct idle_state_s {
    uint64_t iterations;
    int64_t park_ns;
} idle_state_t;

/* Sleep `park_ns`.  Linux lets a sleep end up to the thread's timer slack late (50 us by default):
 * a 1 us park measured 59 us p50 on the project's machine, 7 us with the slack at 1 us.  So the
 * park lowers the calling thread's slack to 1/16 of the park (at least 1 ns) for the sleep and puts
 * the thread's own slack back after it: two prctl calls (~0.2 us each) per park, nothing changed
 * for the caller. */
static inline void idle_park(int64_t park_ns)
{
    struct timespec ts = {park_ns / 1000000000LL, park_ns % 1000000000LL};
    int own = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
    unsigned long slack = park_ns >= 16 ? (unsigned long)(park_ns / 16) : 1UL;
    int lowered = own > 0 && (unsigned long)own > slack && prctl(PR_SET_TIMERSLACK, slack, 0, 0, 0) == 0;
    nanosleep(&ts, NULL);
    if (lowered)
        prctl(PR_SET_TIMERSLACK, (unsigned long)own, 0, 0, 0);
}

/* ---- parking on the writer (PYSEQ_IDLE_BLOCKING; the protocol is in ring_layout.h, "Parking") -- */

static inline long futex(uint32_t *word, int op, uint32_t value, const struct timespec *timeout)
{
    return syscall(SYS_futex, word, op, value, timeout, NULL, 0); /* shared: the word is in shm */
}

/* The writer's side, after it moved published_sequence (or the journaler journaled_sequence).
 * `woke_nobody_at`: the caller's memory of park_seq + 1 at a wake that woke nobody (NULL: none). */
static inline void wake_parked(pyseq_ring_header_t *h, pyseq_cursor_t *cursors, uint32_t *woke_nobody_at)
{
    pyseq_cursor_t *park = cursors; /* entry 0 holds the ring-wide counters */
    if (pyseq_load_relaxed_u32(&park->blocking_readers) == 0)
        return;
    pyseq_fence_seq_cst(); /* the publish before the look at parked_readers: pairs with the reader's RMW */
    if (pyseq_load_relaxed_u32(&park->parked_readers) == 0)
        return;
    uint32_t parks = pyseq_load_relaxed_u32(&park->park_seq) + 1;
    if (woke_nobody_at && *woke_nobody_at == parks)
        return; /* no park since a wake that found nobody asleep: the count is a dead reader's */
    pyseq_fetch_add_u32(&h->wake_seq, 1);
    long woken = futex(&h->wake_seq, FUTEX_WAKE, INT32_MAX, NULL);
    if (woke_nobody_at)
        *woke_nobody_at = woken == 0 ? parks : 0;
}

static inline void idle_step(const pyseq_idle_t *idle, idle_state_t *st)
{
    uint64_t i = st->iterations++;
    if (idle->kind == PYSEQ_IDLE_BUSY_SPIN || i < idle->spins) {
        pyseq_cpu_relax();
    } else if (idle->kind == PYSEQ_IDLE_SPIN_YIELD || i < (uint64_t)idle->spins + idle->yields) {
        sched_yield();
    } else {
        idle_park(st->park_ns);
        st->park_ns = st->park_ns * 2 > idle->max_park_ns ? idle->max_park_ns : st->park_ns * 2;
    }
}

/* True when this iteration should read the clock: every time once the strategy has stopped spinning. */
static inline int idle_clock_due(const pyseq_idle_t *idle, const idle_state_t *st)
{
    if (idle->kind != PYSEQ_IDLE_BUSY_SPIN && st->iterations >= idle->spins)
        return 1;
    return (st->iterations % PYSEQ_CLOCK_CHECK_SPINS) == 0;
}

static inline void idle_start(const pyseq_idle_t *idle, idle_state_t *st)
{
    st->iterations = 0;
    st->park_ns = idle->min_park_ns > 0 ? idle->min_park_ns : 1000;
}

/* Read step 1 for sequence s: 1 published (and, for a durable reader, journaled), 0 not yet,
 * PYSEQ_ELAPPED overwritten. */
static inline int slot_state(pyseq_reader_t *reader, const pyseq_frame_t *f, int64_t s)
{
    int64_t v = pyseq_load_acquire(&f->sequence);
    if (v == s) {
        if (reader->durable && s > reader->journaled) { /* a durable reader: journaled yet? */
            reader->journaled = pyseq_load_acquire(&reader->ring.header->journaled_sequence);
            if (s > reader->journaled)
                return 0;
        }
        return 1;
    }
    int64_t a = v < 0 ? -v : v;
    if (a > s) {
        reader->lapped_by = a;
        return PYSEQ_ELAPPED;
    }
    return 0;
}

/* Read step 3: the copy of slot s is whole iff the slot still holds s. */
static inline int still_holds(pyseq_reader_t *reader, const pyseq_frame_t *f, int64_t s)
{
    pyseq_fence_acquire();
    int64_t v = pyseq_load_relaxed(&f->sequence);
    if (v == s)
        return 1;
    reader->lapped_by = v < 0 ? -v : v;
    return 0;
}

static inline void consumed(pyseq_reader_t *reader, int64_t last)
{
    reader->next_sequence = last + 1;
    if (reader->cursor)
        pyseq_store_release(&reader->cursor->sequence, last); /* step 4 */
}

#endif /* PYSEQ_RING_INLINE_H */
