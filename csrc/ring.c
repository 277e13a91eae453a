/* ring.c - publish, poll, batch read, gating and idle strategies; see ring_layout.h for the protocol. */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE /* syscall(2) for the futex */

#include "ring.h"

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>

#include "atomics.h"
#include "ring_inline.h"

int64_t pyseq_clock_realtime_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int64_t pyseq_clock_monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline uint64_t round_up(uint64_t value, uint64_t align)
{
    return (value + align - 1) & ~(align - 1);
}

static inline int is_power_of_two(uint64_t v)
{
    return v != 0 && (v & (v - 1)) == 0;
}

uint64_t pyseq_ring_file_length(uint64_t capacity, uint32_t slot_size, uint32_t max_readers, uint64_t page_size)
{
    if (!is_power_of_two(capacity) || capacity < 2 || capacity > (1ULL << 32))
        return 0;
    if (slot_size < PYSEQ_SLOT_ALIGN || slot_size % PYSEQ_SLOT_ALIGN != 0 || slot_size > (1u << 24))
        return 0;
    if (max_readers < 1 || max_readers > 4096 || !is_power_of_two(page_size))
        return 0;
    uint64_t cursors_offset = round_up(PYSEQ_RING_HEADER_LENGTH, page_size);
    uint64_t slots_offset = round_up(cursors_offset + (uint64_t)max_readers * sizeof(pyseq_cursor_t), page_size);
    return round_up(slots_offset + capacity * slot_size, page_size);
}

int pyseq_ring_format(void *base, uint64_t file_length, uint64_t capacity, uint32_t slot_size,
                      uint32_t max_readers, uint64_t page_size, int64_t first_sequence, const char *name,
                      int64_t writer_pid)
{
    uint64_t needed = pyseq_ring_file_length(capacity, slot_size, max_readers, page_size);
    if (needed == 0 || file_length < needed || first_sequence < 1)
        return PYSEQ_EINVAL;
    pyseq_ring_header_t *h = (pyseq_ring_header_t *)base;
    h->magic = PYSEQ_RING_MAGIC;
    h->slot_size = slot_size;
    h->capacity = capacity;
    h->max_readers = max_readers;
    h->flags = 0;
    h->cursors_offset = round_up(PYSEQ_RING_HEADER_LENGTH, page_size);
    h->slots_offset = round_up(h->cursors_offset + (uint64_t)max_readers * sizeof(pyseq_cursor_t), page_size);
    h->file_length = file_length;
    h->created_ns = pyseq_clock_realtime_ns();
    h->first_sequence = first_sequence;
    strncpy(h->name, name, PYSEQ_RING_NAME_LENGTH - 1);
    h->name[PYSEQ_RING_NAME_LENGTH - 1] = '\0';
    h->writer_pid = writer_pid;
    h->writer_heartbeat_ns = h->created_ns;
    h->writer_state = PYSEQ_WRITER_OPEN;
    pyseq_store_release(&h->published_sequence, first_sequence - 1);
    pyseq_store_release(&h->journaled_sequence, first_sequence - 1);
    pyseq_store_release_u32(&h->layout_version, PYSEQ_RING_LAYOUT_VERSION);
    return 0;
}

void pyseq_ring_view(pyseq_ring_t *ring, void *header, void *cursors, void *slots)
{
    ring->header = (pyseq_ring_header_t *)header;
    ring->cursors = (pyseq_cursor_t *)cursors;
    ring->slots = (uint8_t *)slots;
    ring->capacity = (int64_t)ring->header->capacity;
    ring->mask = ring->capacity - 1;
    ring->slot_size = ring->header->slot_size;
    ring->max_readers = ring->header->max_readers;
}

/* ---- writer ----------------------------------------------------------------------------------- */

int64_t pyseq_writer_gating_scan(pyseq_writer_t *writer)
{
    const pyseq_ring_t *r = &writer->ring;
    int64_t lowest = writer->next_sequence - 1;
    pyseq_fence_seq_cst(); /* pairs with the fence in pyseq_cursor_activate (see ring_layout.h) */
    for (uint32_t i = 0; i < r->max_readers; i++) {
        pyseq_cursor_t *c = &r->cursors[i];
        if (pyseq_load_acquire_u32(&c->state) != PYSEQ_CURSOR_ACTIVE || !c->gating)
            continue;
        int64_t consumed = pyseq_load_acquire(&c->sequence);
        if (consumed < lowest)
            lowest = consumed;
    }
    writer->gating_cache = lowest;
    return lowest;
}

void pyseq_writer_init(pyseq_writer_t *writer, void *header, void *cursors, void *slots)
{
    pyseq_ring_view(&writer->ring, header, cursors, slots);
    int64_t published = pyseq_load_acquire(&writer->ring.header->published_sequence);
    int64_t first = writer->ring.header->first_sequence;
    writer->next_sequence = published >= first ? published + 1 : first;
    writer->watch_ns = 0;
    writer->watched_ns = 0;
    writer->woke_nobody_at = 0;
    pyseq_writer_gating_scan(writer);
}

void pyseq_writer_heartbeat(pyseq_writer_t *writer)
{
    pyseq_store_relaxed(&writer->ring.header->writer_heartbeat_ns, pyseq_clock_realtime_ns());
}

/* Highest sequence the writer may publish now without overwriting an unread gating slot. */
static inline int64_t writable_limit(pyseq_writer_t *writer, int64_t wanted)
{
    int64_t limit = writer->gating_cache + writer->ring.capacity;
    if (wanted > limit)
        limit = pyseq_writer_gating_scan(writer) + writer->ring.capacity;
    return limit;
}

static inline void write_slot(const pyseq_ring_t *r, int64_t s, uint16_t msg_type, uint16_t schema_version,
                              uint32_t source, int64_t timestamp_ns, const void *payload, uint32_t length,
                              uint32_t origin)
{
    pyseq_frame_t *f = slot_at(r, s);
    pyseq_store_relaxed(&f->sequence, -s); /* step 1: being written */
    pyseq_fence_release();
    f->timestamp_ns = timestamp_ns;        /* step 2 */
    f->length = length;
    f->msg_type = msg_type;
    f->schema_version = schema_version;
    f->source = source;
    f->origin = origin;
    memcpy((uint8_t *)f + PYSEQ_FRAME_LENGTH, payload, length);
    pyseq_store_release(&f->sequence, s);  /* step 3: complete */
}

int64_t pyseq_writer_try_publish(pyseq_writer_t *writer, uint16_t msg_type, uint16_t schema_version,
                                 uint32_t source, int64_t timestamp_ns, const void *payload, uint32_t length)
{
    return pyseq_writer_try_publish_at(writer, msg_type, schema_version, source, timestamp_ns, payload, length, 0, 0);
}

int64_t pyseq_writer_try_publish_at(pyseq_writer_t *writer, uint16_t msg_type, uint16_t schema_version,
                                    uint32_t source, int64_t timestamp_ns, const void *payload, uint32_t length,
                                    int64_t now, uint32_t origin)
{
    const pyseq_ring_t *r = &writer->ring;
    if (length > r->slot_size - PYSEQ_FRAME_LENGTH)
        return PYSEQ_ETOO_LARGE;
    int64_t s = writer->next_sequence;
    if (s > writable_limit(writer, s)) {
        pyseq_fetch_add_u64(&r->header->full_count, 1);
        return PYSEQ_EFULL;
    }
    if (now == 0)
        now = pyseq_clock_realtime_ns();
    if (writer->watch_ns > 0 && now - writer->watched_ns >= writer->watch_ns) {
        writer->watched_ns = now;
        return PYSEQ_EWATCH;
    }
    write_slot(r, s, msg_type, schema_version, source, timestamp_ns ? timestamp_ns : now, payload, length, origin);
    pyseq_store_release(&r->header->published_sequence, s); /* step 4 */
    pyseq_store_relaxed(&r->header->writer_heartbeat_ns, now);
    wake_parked(r->header, r->cursors, &writer->woke_nobody_at);
    writer->next_sequence = s + 1;
    return s;
}

int64_t pyseq_writer_try_forward(pyseq_writer_t *writer, const void *frame, int keep_timestamp)
{
    const pyseq_frame_t *f = (const pyseq_frame_t *)frame;
    return pyseq_writer_try_publish(writer, f->msg_type, f->schema_version, f->source,
                                    keep_timestamp ? f->timestamp_ns : 0, (const uint8_t *)frame + PYSEQ_FRAME_LENGTH,
                                    f->length);
}

int64_t pyseq_writer_try_publish_batch(pyseq_writer_t *writer, uint16_t msg_type, uint16_t schema_version,
                                       uint32_t source, int64_t timestamp_ns, const void *records,
                                       uint32_t record_length, int64_t count)
{
    const pyseq_ring_t *r = &writer->ring;
    if (record_length > r->slot_size - PYSEQ_FRAME_LENGTH)
        return PYSEQ_ETOO_LARGE;
    if (count < 0)
        return PYSEQ_EINVAL;
    int64_t s = writer->next_sequence;
    int64_t limit = writable_limit(writer, s + count - 1);
    int64_t n = limit - s + 1 < count ? limit - s + 1 : count;
    if (n <= 0) {
        pyseq_fetch_add_u64(&r->header->full_count, 1);
        return 0;
    }
    int64_t now = pyseq_clock_realtime_ns();
    if (writer->watch_ns > 0 && now - writer->watched_ns >= writer->watch_ns) {
        writer->watched_ns = now;
        return PYSEQ_EWATCH;
    }
    int64_t ts = timestamp_ns ? timestamp_ns : now;
    const uint8_t *src = (const uint8_t *)records;
    for (int64_t i = 0; i < n; i++)
        write_slot(r, s + i, msg_type, schema_version, source, ts, src + (size_t)i * record_length, record_length, 0);
    pyseq_store_release(&r->header->published_sequence, s + n - 1);
    pyseq_store_relaxed(&r->header->writer_heartbeat_ns, now);
    wake_parked(r->header, r->cursors, &writer->woke_nobody_at);
    writer->next_sequence = s + n;
    return n;
}

int pyseq_writer_wait_capacity(pyseq_writer_t *writer, int64_t count, int64_t timeout_ns, const pyseq_idle_t *idle)
{
    if (count < 1)
        count = 1;
    if (count > writer->ring.capacity)
        count = writer->ring.capacity;
    int64_t wanted = writer->next_sequence + count - 1;
    if (wanted <= writable_limit(writer, wanted))
        return 1;
    int64_t deadline = pyseq_clock_monotonic_ns() + timeout_ns; /* intervals: monotonic */
    idle_state_t st;
    idle_start(idle, &st);
    for (;;) {
        idle_step(idle, &st);
        if (wanted <= pyseq_writer_gating_scan(writer) + writer->ring.capacity)
            return 1;
        if (idle_clock_due(idle, &st)) {
            pyseq_store_relaxed(&writer->ring.header->writer_heartbeat_ns, pyseq_clock_realtime_ns());
            if (pyseq_clock_monotonic_ns() >= deadline)
                return 0;
        }
    }
}

/* ---- reader ----------------------------------------------------------------------------------- */

void pyseq_reader_init(pyseq_reader_t *reader, void *header, void *cursors, void *slots,
                       pyseq_cursor_t *cursor, int64_t next_sequence)
{
    pyseq_ring_view(&reader->ring, header, cursors, slots);
    reader->cursor = cursor;
    reader->next_sequence = next_sequence;
    reader->lapped_by = 0;
    reader->durable = 0;
    reader->journaled = 0;
}

void pyseq_reader_heartbeat(pyseq_reader_t *reader)
{
    if (reader->cursor)
        pyseq_store_relaxed(&reader->cursor->heartbeat_ns, pyseq_clock_realtime_ns());
}

void pyseq_reader_skip_to(pyseq_reader_t *reader, int64_t sequence)
{
    reader->next_sequence = sequence;
    reader->lapped_by = 0;
    if (reader->cursor)
        pyseq_store_release(&reader->cursor->sequence, sequence - 1);
}

static inline int64_t poll_one(pyseq_reader_t *reader, void *out, uint32_t out_length)
{
    int64_t s = reader->next_sequence;
    const pyseq_frame_t *f = slot_at(&reader->ring, s);
    int state = slot_state(reader, f, s);
    if (state != 1)
        return state;
    uint32_t n = PYSEQ_FRAME_LENGTH + f->length;
    if (n > reader->ring.slot_size)
        n = reader->ring.slot_size; /* a torn length; the check below rejects the copy */
    if (n > out_length)
        n = out_length;
    memcpy(out, f, n);
    if (!still_holds(reader, f, s))
        return PYSEQ_ELAPPED;
    consumed(reader, s);
    return s;
}

int64_t pyseq_reader_poll(pyseq_reader_t *reader, void *out, uint32_t out_length)
{
    return poll_one(reader, out, out_length);
}

/* Sleep on the header's wake_seq until the writer publishes (or `max_ns` pass); the slot state
 * seen at the last look (see "Parking" in ring_layout.h). */
static int park_until_published(pyseq_reader_t *reader, const pyseq_frame_t *f, int64_t max_ns)
{
    pyseq_ring_header_t *h = reader->ring.header;
    pyseq_cursor_t *park = reader->ring.cursors; /* entry 0 holds the ring-wide counters */
    if (!reader->blocking) {
        pyseq_fetch_add_u32(&park->blocking_readers, 1);
        reader->blocking = 1;
    }
    uint32_t w = pyseq_load_acquire_u32(&h->wake_seq);
    pyseq_fetch_add_u32(&park->park_seq, 1);
    pyseq_fetch_add_u32(&park->parked_readers, 1); /* seq_cst: before the last look at the slot */
    int state = slot_state(reader, f, reader->next_sequence);
    if (state == 0) {
        struct timespec ts = {max_ns / 1000000000LL, max_ns % 1000000000LL};
        futex(&h->wake_seq, FUTEX_WAIT, w, &ts); /* returns at a wake, a timeout, a signal, or w stale */
        state = slot_state(reader, f, reader->next_sequence);
    }
    pyseq_fetch_sub_u32(&park->parked_readers, 1);
    return state;
}

void pyseq_reader_unblock(pyseq_reader_t *reader)
{
    if (reader->blocking) {
        pyseq_fetch_sub_u32(&reader->ring.cursors->blocking_readers, 1);
        reader->blocking = 0;
    }
}

/* Wait until the next sequence is published: 1, or PYSEQ_EMPTY on timeout, or PYSEQ_ELAPPED. */
static int64_t wait_next(pyseq_reader_t *reader, int64_t timeout_ns, const pyseq_idle_t *idle)
{
    const pyseq_frame_t *f = slot_at(&reader->ring, reader->next_sequence);
    int state = slot_state(reader, f, reader->next_sequence);
    if (state != 0 || timeout_ns <= 0)
        return state;
    int64_t deadline = pyseq_clock_monotonic_ns() + timeout_ns; /* intervals: monotonic */
    idle_state_t st;
    idle_start(idle, &st);
    for (;;) {
        if (idle->kind == PYSEQ_IDLE_BLOCKING && st.iterations >= (uint64_t)idle->spins + idle->yields) {
            int64_t left = deadline - pyseq_clock_monotonic_ns();
            state = park_until_published(reader, f, left < idle->max_park_ns ? (left > 0 ? left : 1) : idle->max_park_ns);
            st.iterations++;
        } else {
            idle_step(idle, &st);
            state = slot_state(reader, f, reader->next_sequence);
        }
        if (state != 0)
            return state;
        if (idle_clock_due(idle, &st)) {
            if (reader->cursor)
                pyseq_store_relaxed(&reader->cursor->heartbeat_ns, pyseq_clock_realtime_ns());
            if (pyseq_clock_monotonic_ns() >= deadline)
                return PYSEQ_EMPTY;
        }
    }
}

int64_t pyseq_reader_wait(pyseq_reader_t *reader, int64_t timeout_ns, const pyseq_idle_t *idle)
{
    return wait_next(reader, timeout_ns, idle);
}

int64_t pyseq_reader_read(pyseq_reader_t *reader, void *out, uint32_t out_length, int64_t timeout_ns,
                          const pyseq_idle_t *idle)
{
    for (;;) {
        int64_t r = poll_one(reader, out, out_length);
        if (r != PYSEQ_EMPTY || timeout_ns <= 0)
            return r;
        r = wait_next(reader, timeout_ns, idle);
        if (r != 1)
            return r;
        timeout_ns = 1; /* published now: one more poll copies it (a lap is reported by poll_one) */
    }
}

int64_t pyseq_reader_read_batch(pyseq_reader_t *reader, void *out, int64_t limit, int64_t timeout_ns,
                                const pyseq_idle_t *idle)
{
    const pyseq_ring_t *r = &reader->ring;
    if (limit <= 0)
        return PYSEQ_EINVAL;
    if (limit > r->capacity)
        limit = r->capacity;
    int64_t ready = wait_next(reader, timeout_ns, idle);
    if (ready != 1)
        return ready;
    int64_t s = reader->next_sequence;
    int64_t n = 1;
    while (n < limit) {
        int state = slot_state(reader, slot_at(r, s + n), s + n);
        if (state != 1)
            break; /* not yet published, or already overwritten: the check of slot s decides */
        n++;
    }
    int64_t index = s & r->mask;
    int64_t first_run = r->capacity - index < n ? r->capacity - index : n;
    memcpy(out, slot_at(r, s), (size_t)first_run * r->slot_size);
    if (n > first_run)
        memcpy((uint8_t *)out + (size_t)first_run * r->slot_size, r->slots, (size_t)(n - first_run) * r->slot_size);
    if (!still_holds(reader, slot_at(r, s), s))
        return PYSEQ_ELAPPED;
    consumed(reader, s + n - 1);
    return n;
}

/* ---- cursors ---------------------------------------------------------------------------------- */

int pyseq_cursor_claim(pyseq_cursor_t *cursor, uint32_t expected_state, int64_t pid)
{
    if (pid <= 0 || pid > (int64_t)(UINT32_MAX >> 2))
        return 0;
    if (!pyseq_cas_u32(&cursor->state, expected_state, PYSEQ_CURSOR_CLAIMED_BY(pid)))
        return 0;
    pyseq_store_relaxed(&cursor->pid, pid);
    return 1;
}

void pyseq_cursor_activate(pyseq_cursor_t *cursor, int64_t sequence, uint32_t gating, int64_t pid, const char *name)
{
    pyseq_store_release(&cursor->sequence, sequence);
    cursor->gating = gating;
    cursor->pid = pid;
    cursor->heartbeat_ns = pyseq_clock_realtime_ns();
    memset(cursor->name, 0, sizeof(cursor->name));
    strncpy(cursor->name, name, PYSEQ_CURSOR_NAME_LENGTH - 1);
    pyseq_store_release_u32(&cursor->state, PYSEQ_CURSOR_ACTIVE);
    pyseq_fence_seq_cst(); /* the writer's next scan must see it before we read published_sequence */
}

int pyseq_cursor_evict(pyseq_cursor_t *cursor, pyseq_ring_header_t *header)
{
    if (!pyseq_cas_u32(&cursor->state, PYSEQ_CURSOR_ACTIVE, PYSEQ_CURSOR_EVICTED))
        return 0;
    pyseq_fetch_add_u64(&header->eviction_count, 1);
    return 1;
}

void pyseq_cursor_release(pyseq_cursor_t *cursor)
{
    cursor->gating = 0;
    pyseq_store_relaxed(&cursor->pid, 0);
    pyseq_store_release_u32(&cursor->state, PYSEQ_CURSOR_FREE);
}

uint32_t pyseq_cursor_state(const pyseq_cursor_t *cursor)
{
    return pyseq_load_acquire_u32(&cursor->state);
}

int64_t pyseq_cursor_sequence(const pyseq_cursor_t *cursor)
{
    return pyseq_load_acquire(&cursor->sequence);
}

int64_t pyseq_header_published(const pyseq_ring_header_t *header)
{
    return pyseq_load_acquire(&header->published_sequence);
}

/* 1 if process `pid` has ended: gone, or a zombie its parent has not reaped yet (cold path). */
int pyseq_process_ended(int64_t pid)
{
    if (kill(pid, 0) != 0)
        return errno == ESRCH;
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0; /* no /proc: trust kill() */
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *close_paren = strrchr(buf, ')'); /* "pid (comm) S ..." - comm may hold spaces */
    return close_paren != NULL && close_paren[1] == ' ' && (close_paren[2] == 'Z' || close_paren[2] == 'X');
}

int pyseq_header_writer_gone(const pyseq_ring_header_t *header)
{
    if (pyseq_load_acquire_u32(&header->writer_state) == PYSEQ_WRITER_CLOSED)
        return 1;
    pid_t pid = (pid_t)header->writer_pid;
    return pid > 0 && pyseq_process_ended(pid);
}

int64_t pyseq_header_heartbeat(const pyseq_ring_header_t *header)
{
    return pyseq_load_relaxed(&header->writer_heartbeat_ns);
}

uint32_t pyseq_header_layout_version(const pyseq_ring_header_t *header)
{
    return pyseq_load_acquire_u32(&header->layout_version);
}

void pyseq_header_set_writer(pyseq_ring_header_t *header, int64_t pid, uint32_t state)
{
    header->writer_pid = pid;
    header->writer_heartbeat_ns = pyseq_clock_realtime_ns();
    pyseq_store_release_u32(&header->writer_state, state);
}
