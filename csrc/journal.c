/* journal.c - the journaler's copy loop and the scanner; see journal.h and journal_format.h. */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE /* syscall(2) for the futex */

#include "journal.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "atomics.h"
#include "crc32c.h"
#include "ring_inline.h"

/* ---- writing ---------------------------------------------------------------------------------- */

static void publish_durable(pyseq_journal_t *j)
{
    if (j->publish_to && pyseq_load_relaxed(&j->publish_to->journaled_sequence) != j->synced_sequence) {
        pyseq_store_release(&j->publish_to->journaled_sequence, j->synced_sequence);
        wake_parked(j->publish_to, j->reader.ring.cursors, NULL); /* durable readers asleep on it */
    }
}

static int64_t io_failed(pyseq_journal_t *j)
{
    j->last_errno = errno;
    j->errors++;
    if (j->publish_to)
        pyseq_fetch_add_u64(&j->publish_to->journal_errors, 1);
    return PYSEQ_JIO;
}

static int write_all(int fd, const uint8_t *data, int64_t length, int64_t offset)
{
    while (length > 0) {
        ssize_t n = pwrite(fd, data, (size_t)length, (off_t)offset);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        data += n;
        length -= n;
        offset += n;
    }
    return 0;
}

int64_t pyseq_journal_sync(pyseq_journal_t *j)
{
    if (j->synced_sequence == j->written_sequence)
        return 0;
    if (fdatasync(j->fd) != 0)
        return io_failed(j);
    j->syncs++;
    j->synced_ns = pyseq_clock_monotonic_ns();
    j->synced_sequence = j->written_sequence;
    publish_durable(j);
    return 0;
}

/* Sync if the policy wants it now. */
static int64_t sync_due(pyseq_journal_t *j)
{
    if (j->synced_sequence == j->written_sequence)
        return 0;
    if (j->fsync_mode == PYSEQ_FSYNC_NEVER) {
        j->synced_sequence = j->written_sequence;
        publish_durable(j);
        return 0;
    }
    if (j->fsync_mode == PYSEQ_FSYNC_INTERVAL && pyseq_clock_monotonic_ns() - j->synced_ns < j->fsync_interval_ns)
        return 0;
    return pyseq_journal_sync(j);
}

/* Write the pending batch and its index entries; then the ring may reuse the slots. */
static int64_t flush(pyseq_journal_t *j)
{
    if (write_all(j->fd, j->buffer, j->pending, j->offset) != 0)
        return io_failed(j);
    if (j->index_pending > 0 && j->index_fd >= 0) {
        int64_t n = j->index_pending * (int64_t)sizeof(pyseq_index_entry_t);
        if (write_all(j->index_fd, (const uint8_t *)j->index, n, j->index_offset) != 0)
            return io_failed(j);
        j->index_offset += n;
    }
    j->index_pending = 0;
    j->offset += j->pending;
    j->bytes += (uint64_t)j->pending;
    j->writes++;
    j->pending = 0;
    j->written_sequence = j->pending_last;
    consumed(&j->reader, j->pending_last); /* the gating cursor: only now may the writer reuse them */
    return 0;
}

/* Encode the messages the ring holds into the buffer: the count, 0, PYSEQ_JROLL or PYSEQ_ELAPPED. */
static int64_t gather(pyseq_journal_t *j)
{
    pyseq_reader_t *reader = &j->reader;
    const pyseq_ring_t *ring = &reader->ring;
    int64_t first = j->written_sequence + 1;
    int64_t s = first;
    int64_t pos = 0;
    while (s - first < ring->capacity) {
        const pyseq_frame_t *f = slot_at(ring, s);
        int state = slot_state(reader, f, s);
        if (state < 0)
            return state;
        if (state == 0)
            break;
        uint32_t length = f->length;
        if (length > j->max_payload)
            length = j->max_payload; /* only a reader that was overtaken sees this: checked below */
        int64_t record_length = pyseq_record_length(length);
        if (pos + record_length > j->buffer_capacity)
            break;
        int64_t at = j->offset + pos;
        if (at + record_length > j->segment_limit && at > (int64_t)PYSEQ_SEGMENT_HEADER_LENGTH) {
            if (pos == 0)
                return PYSEQ_JROLL;
            break;
        }
        if (at >= j->next_index_at) {
            if (j->index_pending == PYSEQ_JOURNAL_INDEX_BATCH)
                break;
            j->index[j->index_pending].sequence = s;
            j->index[j->index_pending].offset = (uint64_t)at;
            j->index_pending++;
            j->next_index_at = at + PYSEQ_INDEX_STRIDE;
        }
        uint8_t *rec = j->buffer + pos;
        memcpy(rec + PYSEQ_RECORD_HEADER_LENGTH, f, PYSEQ_FRAME_LENGTH + length);
        if (!still_holds(reader, f, s))
            return PYSEQ_ELAPPED;
        memset(rec + PYSEQ_RECORD_OVERHEAD + length, 0, (size_t)(record_length - PYSEQ_RECORD_OVERHEAD - length));
        uint32_t rl = (uint32_t)record_length;
        memcpy(rec + 4, &rl, 4);
        uint32_t crc = pyseq_crc32c(0, rec + 4, 4 + PYSEQ_FRAME_LENGTH + length);
        memcpy(rec, &crc, 4);
        pos += record_length;
        s++;
    }
    j->pending = pos;
    j->pending_last = s - 1;
    j->records += (uint64_t)(s - first);
    return s - first;
}

int64_t pyseq_journal_run(pyseq_journal_t *j, int64_t duration_ns, const pyseq_idle_t *idle)
{
    int64_t deadline = pyseq_clock_monotonic_ns() + duration_ns;
    int64_t total = 0;
    idle_state_t st;
    idle_start(idle, &st);
    for (;;) {
        int64_t rc = j->pending > 0 ? flush(j) : 0;
        if (rc == 0)
            rc = sync_due(j);
        if (rc < 0)
            return rc;
        int64_t n = gather(j);
        if (n < 0)
            return n == PYSEQ_JROLL && total > 0 ? total : n;
        if (n > 0) {
            total += n;
            idle_start(idle, &st);
            continue;
        }
        if (idle_clock_due(idle, &st)) {
            pyseq_reader_heartbeat(&j->reader);
            if (pyseq_clock_monotonic_ns() >= deadline)
                return total;
        }
        idle_step(idle, &st);
    }
}

/* ---- reading ---------------------------------------------------------------------------------- */

/* 0 valid, else the PYSEQ_SCAN_* status of the record at data[offset]. */
static int check_record(const uint8_t *data, uint64_t length, uint64_t offset, uint32_t max_payload)
{
    if (length - offset < PYSEQ_RECORD_OVERHEAD)
        return PYSEQ_SCAN_PARTIAL;
    pyseq_record_header_t h;
    memcpy(&h, data + offset, sizeof h);
    if (h.frame.length > max_payload || h.frame.length > PYSEQ_MAX_JOURNAL_PAYLOAD ||
        h.record_length != pyseq_record_length(h.frame.length))
        return h.record_length != 0 && h.record_length <= length - offset ? PYSEQ_SCAN_BAD_LENGTH
                                                                          : PYSEQ_SCAN_PARTIAL;
    if (h.record_length > length - offset)
        return PYSEQ_SCAN_PARTIAL;
    if (pyseq_crc32c(0, data + offset + 4, 4 + PYSEQ_FRAME_LENGTH + h.frame.length) != h.crc)
        return PYSEQ_SCAN_BAD_CRC;
    return 0;
}

int pyseq_journal_record_valid(const uint8_t *data, uint64_t length, uint64_t offset, uint32_t max_payload)
{
    return offset < length && offset % PYSEQ_RECORD_ALIGN == 0 && check_record(data, length, offset, max_payload) == 0;
}

void pyseq_journal_scan(const uint8_t *data, uint64_t length, uint64_t offset, int64_t expected,
                        uint32_t max_payload, int64_t max_records, int64_t stop_sequence, pyseq_scan_t *out)
{
    out->records = 0;
    out->last_sequence = expected - 1;
    out->found_sequence = 0;
    out->status = PYSEQ_SCAN_END;
    for (;;) {
        out->end_offset = offset;
        if (offset >= length)
            return;
        if (max_records > 0 && out->records >= max_records) {
            out->status = PYSEQ_SCAN_LIMIT;
            return;
        }
        if (offset % PYSEQ_RECORD_ALIGN != 0) {
            out->status = PYSEQ_SCAN_BAD_LENGTH;
            return;
        }
        int status = check_record(data, length, offset, max_payload);
        if (length - offset >= PYSEQ_RECORD_OVERHEAD)
            memcpy(&out->found_sequence, data + offset + PYSEQ_RECORD_HEADER_LENGTH, 8);
        if (status != 0) {
            out->status = status;
            return;
        }
        if (out->found_sequence != out->last_sequence + 1) {
            out->status = PYSEQ_SCAN_BAD_SEQUENCE;
            return;
        }
        if (stop_sequence > 0 && out->found_sequence >= stop_sequence) {
            out->status = PYSEQ_SCAN_LIMIT;
            return;
        }
        uint32_t record_length;
        memcpy(&record_length, data + offset + 4, 4);
        out->records++;
        out->last_sequence = out->found_sequence;
        offset += record_length;
    }
}

int64_t pyseq_journal_find_record(const uint8_t *data, uint64_t length, uint64_t offset, uint32_t max_payload)
{
    offset = (offset + PYSEQ_RECORD_ALIGN - 1) & ~(uint64_t)(PYSEQ_RECORD_ALIGN - 1);
    for (; offset + PYSEQ_RECORD_OVERHEAD <= length; offset += PYSEQ_RECORD_ALIGN)
        if (check_record(data, length, offset, max_payload) == 0)
            return (int64_t)offset;
    return -1;
}
