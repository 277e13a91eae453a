/*
 * sequencer.h - the sequencer's copy loop: client inbound rings -> the sequenced ring.
 *
 * Every client writes only its own inbound ring (pyseq.<ring>.in.<client>); the sequencer is a
 * gating reader of each and the one writer of the sequenced ring.  One round visits every inbound
 * ring in turn and moves at most `batch_limit` messages from it, fewer if the client's token bucket
 * (rate_per_s, burst) or the room in the sequenced ring says so: messages left behind stay in the
 * client's own ring, which back-pressures that client and nobody else.  Each moved message gets the
 * next sequence, the sequencing time and the client's source id; its type, schema version and
 * payload are copied as they are (the messages of one round share one clock reading as their
 * sequencing time: a round lasts microseconds).  The loop runs for a slice of time with the GIL released (cffi),
 * then returns to Python for housekeeping (new clients, dead clients, signals).
 *
 * The structs here are process-local (the sequencer's memory, allocated by cffi), not shared.
 */
#ifndef PYSEQ_SEQUENCER_H
#define PYSEQ_SEQUENCER_H

#include <stdint.h>

#include "ring.h"

#define PYSEQ_NANO_TOKENS 1000000000LL /* one message's worth of tokens */
/* Message types from a client: anything below PYSEQ_SYSTEM_FIRST, and the admin block (TakeSnapshot,
 * ActivateSchema, ReplicaDigest, ...); the rest of the system range (CLIENT_JOINED, CLIENT_LEFT,
 * END_OF_STREAM, ...) is the sequencer's own: a client's message of such a type is refused. */
#define PYSEQ_SYSTEM_FIRST 0xFF00u
#define PYSEQ_ADMIN_FIRST 0xFF10u
#define PYSEQ_ADMIN_LAST 0xFF1Fu

typedef struct pyseq_inbound_s {
    pyseq_reader_t reader;  /* a gating reader of the client's inbound ring */
    uint32_t source;        /* stamped into every message of this client */
    uint32_t active;        /* 0: the entry is unused */
    int64_t rate_per_s;     /* 0: unlimited */
    int64_t burst;          /* bucket size in messages */
    int64_t tokens;         /* in nano-tokens (PYSEQ_NANO_TOKENS per message) */
    int64_t refilled_ns;    /* CLOCK_MONOTONIC time of the last refill */
    uint64_t sequenced;     /* messages moved into the sequenced ring */
    uint64_t deferred;      /* messages the rate limit left waiting at least once (each counted once) */
    int64_t deferred_upto;  /* the highest inbound sequence counted in deferred */
    int64_t status;         /* last negative status from the inbound ring (a lap: never expected) */
    uint64_t refused;       /* messages of a system type only the sequencer may write (dropped, counted) */
} pyseq_inbound_t;

typedef struct pyseq_sequencer_s {
    pyseq_writer_t *out;       /* the sequenced ring */
    pyseq_inbound_t *inbound;  /* `count` entries */
    uint32_t count;
    uint32_t batch_limit;      /* per client per round */
    uint8_t *scratch;          /* one slot: the copy of the message being moved */
    uint32_t scratch_length;
    uint32_t pad;
    uint64_t rounds;
    uint64_t idle_rounds;
    uint64_t out_full;         /* rounds in which the sequenced ring had no room (a gating reader) */
} pyseq_sequencer_t;

/* One round over every inbound ring; returns the number of messages moved. */
int64_t pyseq_sequencer_round(pyseq_sequencer_t *seq);

/* Rounds until `duration_ns` has passed, idling by `idle` when a round moves nothing; refreshes the
 * sequenced ring's writer heartbeat.  Returns the number of messages moved. */
int64_t pyseq_sequencer_run(pyseq_sequencer_t *seq, int64_t duration_ns, const pyseq_idle_t *idle);

/* Messages waiting in an inbound ring (published there, not yet moved). */
int64_t pyseq_inbound_pending(const pyseq_inbound_t *in);

#endif /* PYSEQ_SEQUENCER_H */
