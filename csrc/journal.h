/*
 * journal.h - the journaler's copy loop and the journal scanner (format: journal_format.h).
 *
 * The journaler is a gating reader of the sequenced ring.  pyseq_journal_run encodes the messages
 * the ring holds into records (frame + payload + CRC32C) in a process-local buffer, writes them with
 * one pwrite(2) at the segment's end, fdatasyncs as the policy says, and only then advances its
 * gating cursor (the ring may reuse those slots) and the header's journaled_sequence (durable
 * readers may see them).  A failed write or fsync leaves the batch in the buffer: the next call
 * writes it again at the same offset (pwrite makes that idempotent), so a full disk stalls the
 * journal, and through the full ring the clients, and loses nothing.  Files are opened, rolled
 * and closed by Python (cold path); the loop runs with the GIL released.
 *
 * The structs are process-local (the sequencer's memory, allocated by cffi), not shared.
 */
#ifndef PYSEQ_JOURNAL_H
#define PYSEQ_JOURNAL_H

#include <stdint.h>

#include "journal_format.h"
#include "ring.h"

#define PYSEQ_JROLL (-20) /* the next record does not fit the segment: open the next one, call again */
#define PYSEQ_JIO (-21)   /* a write or fsync failed (errno in last_errno): call again to retry */
#define PYSEQ_JOURNAL_INDEX_BATCH 64

typedef struct pyseq_journal_s {
    pyseq_reader_t reader;            /* a gating reader of the sequenced ring */
    pyseq_ring_header_t *publish_to;  /* the ring's header, writable: journaled_sequence (NULL: none) */
    int32_t fd;                       /* the current segment */
    int32_t index_fd;                 /* its index (-1: none) */
    int32_t fsync_mode;               /* PYSEQ_FSYNC_* */
    int32_t last_errno;
    int64_t fsync_interval_ns;
    int64_t segment_limit;            /* roll before a record would end past this many bytes */
    int64_t offset;                   /* end of the data written to the segment */
    int64_t index_offset;             /* end of the index file */
    int64_t next_index_at;            /* the data offset from which the next index entry is due */
    uint32_t max_payload;
    uint32_t pad;
    uint8_t *buffer;                  /* encoded records not yet written */
    int64_t buffer_capacity;
    int64_t pending;                  /* bytes in buffer waiting for their write */
    int64_t pending_last;             /* the last sequence in them */
    int64_t index_pending;
    int64_t written_sequence;         /* the last sequence written (in the page cache) */
    int64_t synced_sequence;          /* the last sequence as durable as the policy promises */
    int64_t synced_ns;                /* CLOCK_MONOTONIC time of the last fdatasync */
    uint64_t records;
    uint64_t bytes;
    uint64_t writes;
    uint64_t syncs;
    uint64_t errors;
    pyseq_index_entry_t index[PYSEQ_JOURNAL_INDEX_BATCH];
} pyseq_journal_t;

/* Journal what the ring holds until `duration_ns` passed with nothing more to do (idling by
 * `idle`); returns the records written in this call, or PYSEQ_JROLL, PYSEQ_JIO, PYSEQ_ELAPPED (the
 * journaler's reader was overtaken: it had been evicted).  duration_ns 0: one pass, no waiting. */
int64_t pyseq_journal_run(pyseq_journal_t *j, int64_t duration_ns, const pyseq_idle_t *idle);

/* fdatasync the segment now (whatever the policy) and publish what that made durable. 0 or PYSEQ_JIO */
int64_t pyseq_journal_sync(pyseq_journal_t *j);

/* ---- reading a journal ------------------------------------------------------------------------ */

#define PYSEQ_SCAN_END 0          /* the data ended exactly after a valid record */
#define PYSEQ_SCAN_LIMIT 1        /* stopped at max_records or at stop_sequence */
#define PYSEQ_SCAN_PARTIAL 2      /* fewer bytes left than a record header or its record_length */
#define PYSEQ_SCAN_BAD_LENGTH 3   /* record_length does not match the frame's length, or too large */
#define PYSEQ_SCAN_BAD_CRC 4
#define PYSEQ_SCAN_BAD_SEQUENCE 5 /* a valid record with the wrong sequence */

typedef struct pyseq_scan_s {
    int64_t records;        /* valid records scanned */
    int64_t last_sequence;  /* of the last valid record (expected - 1 if none) */
    uint64_t end_offset;    /* just after the last valid record: where the next one starts */
    int64_t found_sequence; /* the sequence field at end_offset when the status is BAD_* */
    int32_t status;         /* PYSEQ_SCAN_* */
    int32_t pad;
} pyseq_scan_t;

/* Check the records of data[offset..length) (a mapped segment), the first of which must have
 * sequence `expected`; stops at the first invalid record, after `max_records` (<= 0: no limit) or
 * before a record whose sequence is >= stop_sequence (<= 0: no stop). */
void pyseq_journal_scan(const uint8_t *data, uint64_t length, uint64_t offset, int64_t expected,
                        uint32_t max_payload, int64_t max_records, int64_t stop_sequence, pyseq_scan_t *out);

/* The first 8-aligned offset >= `offset` at which a valid record (any sequence) starts, or -1. */
int64_t pyseq_journal_find_record(const uint8_t *data, uint64_t length, uint64_t offset, uint32_t max_payload);

/* 1 if a valid record starts at data[offset] (sequence ignored), 0 otherwise. */
int pyseq_journal_record_valid(const uint8_t *data, uint64_t length, uint64_t offset, uint32_t max_payload);

#endif /* PYSEQ_JOURNAL_H */
