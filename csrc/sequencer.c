/* sequencer.c - inbound rings -> sequenced ring copy loop with per-client rate limits (sequencer.h). */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE /* syscall(2) for the futex */

#include "sequencer.h"

#include <sched.h>
#include <string.h>
#include <time.h>

#include "atomics.h"
#include "ring_inline.h"

#define REFILL_CAP_NS 1000000000LL /* never credit more than one second at once (no overflow) */

static inline int64_t tokens_allowed(pyseq_inbound_t *in, int64_t now)
{
    if (in->rate_per_s <= 0)
        return INT64_MAX;
    int64_t elapsed = now - in->refilled_ns;
    if (elapsed > 0) {
        if (elapsed > REFILL_CAP_NS)
            elapsed = REFILL_CAP_NS;
        int64_t cap = in->burst * PYSEQ_NANO_TOKENS;
        in->tokens += in->rate_per_s * elapsed;
        if (in->tokens > cap)
            in->tokens = cap;
        in->refilled_ns = now;
    }
    return in->tokens / PYSEQ_NANO_TOKENS;
}

int64_t pyseq_inbound_pending(const pyseq_inbound_t *in)
{
    int64_t published = pyseq_load_acquire(&in->reader.ring.header->published_sequence);
    int64_t pending = published - in->reader.next_sequence + 1;
    return pending > 0 ? pending : 0;
}

/* Room in the sequenced ring now (rescans gating readers if the cache says none). */
static inline int64_t out_room(pyseq_writer_t *w)
{
    int64_t limit = w->gating_cache + w->ring.capacity;
    if (limit < w->next_sequence)
        limit = pyseq_writer_gating_scan(w) + w->ring.capacity;
    return limit - w->next_sequence + 1;
}

int64_t pyseq_sequencer_round(pyseq_sequencer_t *seq)
{
    int64_t moved = 0;
    int64_t now = pyseq_clock_realtime_ns();      /* the round's sequencing time */
    int64_t mono = 0;                              /* the token buckets' clock, read if one is needed */
    seq->rounds++;
    for (uint32_t i = 0; i < seq->count; i++) {
        pyseq_inbound_t *in = &seq->inbound[i];
        if (!in->active)
            continue;
        int64_t pending = pyseq_inbound_pending(in);
        if (pending == 0)
            continue;
        if (in->rate_per_s > 0 && mono == 0)
            mono = pyseq_clock_monotonic_ns();
        int64_t allowed = tokens_allowed(in, mono);
        int64_t n = pending < (int64_t)seq->batch_limit ? pending : (int64_t)seq->batch_limit;
        if (allowed < n) {
            /* messages from next + allowed to the last published wait: count the new ones once */
            int64_t last = in->reader.next_sequence + pending - 1;
            int64_t from = in->reader.next_sequence + allowed;
            if (from <= in->deferred_upto)
                from = in->deferred_upto + 1;
            if (last >= from) {
                in->deferred += (uint64_t)(last - from + 1);
                in->deferred_upto = last;
                if (in->reader.cursor)
                    pyseq_store_relaxed((int64_t *)&in->reader.cursor->held_count, (int64_t)in->deferred);
            }
            n = allowed;
        }
        int64_t room = out_room(seq->out);
        if (room < n) {
            seq->out_full++;
            n = room;
        }
        /* The inbound cursor moves only after the messages are in the sequenced ring (detached while
         * copying, stored once after the run): a crash in between leaves them in the client's ring,
         * and each one's `origin` lets the next sequencer skip those already sequenced. */
        pyseq_cursor_t *cursor = in->reader.cursor;
        in->reader.cursor = NULL;
        int64_t k = 0;
        for (; k < n; k++) {
            int64_t s = pyseq_reader_poll(&in->reader, seq->scratch, seq->scratch_length);
            if (s <= 0) {
                if (s < 0)
                    in->status = s;
                break;
            }
            const pyseq_frame_t *f = (const pyseq_frame_t *)seq->scratch;
            if (f->msg_type >= PYSEQ_SYSTEM_FIRST && (f->msg_type < PYSEQ_ADMIN_FIRST || f->msg_type > PYSEQ_ADMIN_LAST)) {
                in->refused++; /* forged system message: consumed, not sequenced */
                continue;
            }
            int64_t out = pyseq_writer_try_publish_at(seq->out, f->msg_type, f->schema_version, in->source, 0,
                                                      seq->scratch + PYSEQ_FRAME_LENGTH, f->length, now,
                                                      (uint32_t)s);
            if (out <= 0) { /* cannot happen: room was checked and the slot sizes match */
                in->status = out;
                in->reader.next_sequence = s; /* not moved: read it again */
                break;
            }
            if (in->rate_per_s > 0)
                in->tokens -= PYSEQ_NANO_TOKENS;
            in->sequenced++;
            moved++;
        }
        in->reader.cursor = cursor;
        if (cursor && k > 0)
            pyseq_store_release(&cursor->sequence, in->reader.next_sequence - 1);
    }
    return moved;
}

int64_t pyseq_sequencer_run(pyseq_sequencer_t *seq, int64_t duration_ns, const pyseq_idle_t *idle)
{
    int64_t total = 0;
    int64_t deadline = pyseq_clock_monotonic_ns() + duration_ns;
    pyseq_store_relaxed(&seq->out->ring.header->writer_heartbeat_ns, pyseq_clock_realtime_ns());
    idle_state_t st;
    idle_start(idle, &st);
    for (;;) {
        int64_t moved = pyseq_sequencer_round(seq);
        total += moved;
        if (moved > 0) {
            idle_start(idle, &st);
        } else {
            seq->idle_rounds++;
            idle_step(idle, &st);
        }
        if (pyseq_clock_monotonic_ns() >= deadline) { /* a vDSO read; a round costs more */
            pyseq_store_relaxed(&seq->out->ring.header->writer_heartbeat_ns, pyseq_clock_realtime_ns());
            return total;
        }
    }
}
