/*
 * cacheline_pingpong.c - the hardware floor under pyseq's latency and throughput benches.
 *
 * Two processes (fork) share memory mapped MAP_SHARED | MAP_ANONYMOUS before the fork.
 *
 *   mode "cacheline": one 64-byte line, no payload: the least any cross-process handoff costs.
 *
 *     CPU a (parent, initiator)                      CPU b (child, echoer)
 *     +---------------------------+   one cache line   +---------------------------+
 *     | t0 = clock()              |  +-------------+   |                           |
 *     | store-release 2i+1  ------+->|   counter   |---+-> load-acquire == 2i+1     |
 *     | load-acquire == 2i+2 <----+--|             |<--+-- store-release 2i+2      |
 *     | rtt = clock() - t0        |  +-------------+   |                           |
 *     +---------------------------+                    +---------------------------+
 *
 *   mode "ring": 64-byte messages through two SPSC rings (A->B, B->A) with the slot protocol and
 *   geometry of bench/pure_python_ring.py (4096 slots of 128 bytes, per-slot sequence stored
 *   last); every echoed payload is compared with what was sent.  The best a C-core ring can do.
 *
 *   mode "throughput": one writer (CPU a) streams COUNT 64-byte messages through one such ring to
 *   a reader (CPU b), which checks the sequence and every payload byte.
 *
 *   mode "pyseq" (only when compiled with -DPYSEQ_RING csrc/ring.c -Icsrc): the "ring" ping-pong
 *   through two real pyseq rings (csrc/ring_layout.h, formatted by pyseq_ring_format) with
 *   pyseq_writer_try_publish, pyseq_reader_read (busy-spin) and, in the echoer,
 *   pyseq_writer_try_forward: pyseq's C path with no Python in it, beside the floor.
 *
 * Usage:  cacheline_pingpong MODE ITERS WARMUP CPU_A CPU_B TIMEOUT_S [SAMPLES_PATH]
 *   ITERS        measured round trips (throughput: messages); WARMUP round trips not recorded
 *   CPU_A/CPU_B  CPUs to pin the two processes to; -1 leaves a process unpinned
 *   TIMEOUT_S    longest any wait may spin before the run fails (a stuck or dead peer)
 *   SAMPLES_PATH optional: raw round-trip times written as native int64 nanoseconds
 * Output: key=value lines on stdout (one-way = rtt / 2; preempted_a/_b: involuntary context
 * switches of each process, i.e. other load wanted its CPU; check=ok last, only if every check
 * passed).  Exit status 0 ok, 1 a check failed, 2 a wait timed out or the peer died, 64 bad usage.
 *
 * Memory ordering: the store-release of the counter (or of a slot's sequence) pairs with the
 * peer's load-acquire of it; the reader's store-release of reader_position pairs with the
 * writer's load-acquire at the wrap point.  On x86-64 all of these compile to plain moves; the
 * orderings are stated for correctness on any CPU.
 *
 * This file is standalone (the bench compiles it with gcc -O2 into a temporary directory at run
 * time); the floor modes do not use csrc/, so the floor stays fixed while the core changes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#define HAVE_RDTSC 1
#endif

#define CACHE_LINE 64
#define RING_CAPACITY 4096
#define RING_MASK (RING_CAPACITY - 1)
#define SLOT_SIZE 128
#define MESSAGE_LENGTH 64
#define SPINS_PER_CLOCK_CHECK 4096u

enum { OK = 0, CHECK_FAILED = 1, TIMEOUT = 2, USAGE = 64 };

/* ---- clocks ------------------------------------------------------------------------------- */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

#ifdef HAVE_RDTSC
static inline uint64_t ticks(void)
{
    _mm_lfence();
    uint64_t t = __rdtsc();
    _mm_lfence();
    return t;
}
#else
static inline uint64_t ticks(void) { return now_ns(); }
#endif

static double ticks_per_ns = 1.0;

static void calibrate_ticks(void)
{
#ifdef HAVE_RDTSC
    uint64_t n0 = now_ns(), t0 = ticks();
    struct timespec pause = {0, 50 * 1000 * 1000};
    nanosleep(&pause, NULL);
    uint64_t n1 = now_ns(), t1 = ticks();
    ticks_per_ns = (double)(t1 - t0) / (double)(n1 - n0);
#endif
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

/* ---- shared layout -------------------------------------------------------------------------- */

typedef struct {
    _Atomic int64_t sequence; /* writer; store-release LAST: the slot holds this sequence */
    int32_t length;           /* writer, before sequence */
    int32_t msg_type;         /* writer, before sequence */
    uint8_t payload[SLOT_SIZE - 16];
} slot_t;

typedef struct {
    alignas(CACHE_LINE) _Atomic int64_t reader_position; /* reader; store-release after copy-out */
    uint8_t pad[CACHE_LINE - sizeof(int64_t)];
    alignas(CACHE_LINE) slot_t slots[RING_CAPACITY];
} ring_t;

typedef struct {
    alignas(CACHE_LINE) _Atomic uint64_t counter; /* the bounced line (mode cacheline) */
    uint8_t pad0[CACHE_LINE - sizeof(uint64_t)];
    alignas(CACHE_LINE) _Atomic int32_t child_ready; /* child; store-release once pinned */
    _Atomic uint64_t writer_start_ns;                /* throughput: writer, before message 1 */
    _Atomic int64_t child_preempted;                 /* child; before it exits */
    uint8_t pad1[CACHE_LINE - 24];
    ring_t ab; /* A -> B */
    ring_t ba; /* B -> A */
} shared_t;

_Static_assert(sizeof(slot_t) == SLOT_SIZE, "slot is 128 bytes");
_Static_assert(offsetof(slot_t, length) == 8, "slot.length");
_Static_assert(offsetof(slot_t, payload) == 16, "slot.payload");
_Static_assert(offsetof(ring_t, slots) == 64, "ring.slots");
_Static_assert(offsetof(shared_t, child_ready) == 64, "child_ready on its own line");
_Static_assert(offsetof(shared_t, ab) % CACHE_LINE == 0, "ring aligned");

/* ---- SPSC ring (same protocol as bench/pure_python_ring.py; sequences start at 1) ------------ */

typedef struct {
    ring_t *ring;
    int64_t sequence;     /* next to publish */
    int64_t gating_cache; /* writer-local copy of reader_position */
} writer_t;

typedef struct {
    ring_t *ring;
    int64_t sequence; /* next to read */
} reader_t;

static void ring_init(ring_t *ring)
{
    atomic_store_explicit(&ring->reader_position, 1, memory_order_release);
}

static int ring_publish(writer_t *w, int32_t msg_type, const uint8_t *payload, int32_t length,
                        uint64_t timeout_ns)
{
    int64_t s = w->sequence;
    if (s - w->gating_cache >= RING_CAPACITY) { /* wrap point: look at the reader */
        uint64_t deadline = now_ns() + timeout_ns;
        unsigned spins = 0;
        for (;;) {
            int64_t position = atomic_load_explicit(&w->ring->reader_position, memory_order_acquire);
            if (s - position < RING_CAPACITY) {
                w->gating_cache = position;
                break;
            }
            cpu_relax();
            if (++spins % SPINS_PER_CLOCK_CHECK == 0 && now_ns() > deadline)
                return TIMEOUT;
        }
    }
    slot_t *slot = &w->ring->slots[s & RING_MASK];
    memcpy(slot->payload, payload, (size_t)length);
    slot->length = length;
    slot->msg_type = msg_type;
    atomic_store_explicit(&slot->sequence, s, memory_order_release);
    w->sequence = s + 1;
    return OK;
}

static int ring_read(reader_t *r, uint8_t *out, int32_t *length, uint64_t timeout_ns)
{
    int64_t s = r->sequence;
    slot_t *slot = &r->ring->slots[s & RING_MASK];
    if (atomic_load_explicit(&slot->sequence, memory_order_acquire) != s) {
        uint64_t deadline = now_ns() + timeout_ns;
        unsigned spins = 0;
        while (atomic_load_explicit(&slot->sequence, memory_order_acquire) != s) {
            cpu_relax();
            if (++spins % SPINS_PER_CLOCK_CHECK == 0 && now_ns() > deadline)
                return TIMEOUT;
        }
    }
    *length = slot->length;
    memcpy(out, slot->payload, (size_t)*length);
    atomic_store_explicit(&r->ring->reader_position, s + 1, memory_order_release);
    r->sequence = s + 1;
    return OK;
}

static int wait_counter(_Atomic uint64_t *counter, uint64_t want, uint64_t timeout_ns)
{
    if (atomic_load_explicit(counter, memory_order_acquire) == want)
        return OK;
    uint64_t deadline = now_ns() + timeout_ns;
    unsigned spins = 0;
    while (atomic_load_explicit(counter, memory_order_acquire) != want) {
        cpu_relax();
        if (++spins % SPINS_PER_CLOCK_CHECK == 0 && now_ns() > deadline)
            return TIMEOUT;
    }
    return OK;
}

static void make_message(uint8_t *m, uint64_t index)
{
    memcpy(m, &index, sizeof index);
    for (int k = 8; k < MESSAGE_LENGTH; k++)
        m[k] = (uint8_t)(index * 31u + (uint64_t)k);
}

/* involuntary context switches so far: a pinned spinning process is switched out only when
 * another task wants its CPU (other load on the machine) */
static int64_t preemptions(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_nivcsw;
}

/* ---- roles ---------------------------------------------------------------------------------- */

typedef struct {
    const char *mode;
    long iters, warmup;
    int cpu_a, cpu_b;
    uint64_t timeout_ns;
    const char *samples_path;
} config_t;

/* ---- pyseq's C path (mode "pyseq") ------------------------------------------------------------ */

#ifdef PYSEQ_RING
#include "ring.h"
#define PYSEQ_CAPACITY 4096
#define PYSEQ_SLOT 128
static uint8_t *pyseq_rings[2]; /* A->B and B->A, mapped shared before the fork */
static const pyseq_idle_t pyseq_busy = {PYSEQ_IDLE_BUSY_SPIN, 0, 0, 0, 1000, 1000000};

static int pyseq_map(void)
{
    uint64_t length = pyseq_ring_file_length(PYSEQ_CAPACITY, PYSEQ_SLOT, 4, 4096);
    for (int i = 0; i < 2; i++) {
        pyseq_rings[i] = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (pyseq_rings[i] == MAP_FAILED ||
            pyseq_ring_format(pyseq_rings[i], length, PYSEQ_CAPACITY, PYSEQ_SLOT, 4, 4096, 1, "floor", getpid()) != 0)
            return -1;
    }
    return 0;
}

static void pyseq_open(int out, pyseq_writer_t *w, pyseq_reader_t *r)
{
    pyseq_ring_header_t *ho = (pyseq_ring_header_t *)pyseq_rings[out];
    pyseq_ring_header_t *hi = (pyseq_ring_header_t *)pyseq_rings[1 - out];
    pyseq_writer_init(w, ho, (uint8_t *)ho + ho->cursors_offset, (uint8_t *)ho + ho->slots_offset);
    pyseq_reader_init(r, hi, (uint8_t *)hi + hi->cursors_offset, (uint8_t *)hi + hi->slots_offset, NULL, 1);
}

/* the echoer's side: read each message and forward it unchanged */
static int pyseq_echoer(const config_t *c)
{
    pyseq_writer_t w;
    pyseq_reader_t r;
    uint8_t buf[PYSEQ_SLOT];
    pyseq_open(1, &w, &r);
    for (long i = 0; i < c->iters + c->warmup; i++) {
        if (pyseq_reader_read(&r, buf, sizeof buf, (int64_t)c->timeout_ns, &pyseq_busy) <= 0 ||
            pyseq_writer_try_forward(&w, buf, 0) <= 0) {
            fprintf(stderr, "pyseq echoer: no message %ld within the timeout\n", i);
            return TIMEOUT;
        }
    }
    return OK;
}
#endif

static void pin(int cpu)
{
    if (cpu < 0)
        return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0)
        fprintf(stderr, "warning: cannot pin to CPU %d: %s\n", cpu, strerror(errno));
}

static int echoer_run(const config_t *c, shared_t *sh);

static int echoer(const config_t *c, shared_t *sh)
{
    int64_t before = preemptions();
    int rc = echoer_run(c, sh);
    atomic_store_explicit(&sh->child_preempted, preemptions() - before, memory_order_release);
    return rc;
}

static int echoer_run(const config_t *c, shared_t *sh)
{
    long total = c->iters + c->warmup;
#ifdef PYSEQ_RING
    if (strcmp(c->mode, "pyseq") == 0)
        return pyseq_echoer(c);
#endif
    if (strcmp(c->mode, "cacheline") == 0) {
        for (long i = 0; i < total; i++) {
            if (wait_counter(&sh->counter, 2 * (uint64_t)i + 1, c->timeout_ns) != OK) {
                fprintf(stderr, "echoer: no ping %ld within the timeout\n", i);
                return TIMEOUT;
            }
            atomic_store_explicit(&sh->counter, 2 * (uint64_t)i + 2, memory_order_release);
        }
        return OK;
    }
    if (strcmp(c->mode, "ring") == 0) {
        reader_t in = {&sh->ab, 1};
        writer_t out = {&sh->ba, 1, 1};
        uint8_t m[SLOT_SIZE];
        int32_t length;
        for (long i = 0; i < total; i++) {
            if (ring_read(&in, m, &length, c->timeout_ns) != OK) {
                fprintf(stderr, "echoer: no message %ld within the timeout\n", i);
                return TIMEOUT;
            }
            if (ring_publish(&out, 1, m, length, c->timeout_ns) != OK)
                return TIMEOUT;
        }
        return OK;
    }
    /* throughput: the child is the reader and checks every message */
    reader_t in = {&sh->ab, 1};
    uint8_t m[SLOT_SIZE], want[MESSAGE_LENGTH];
    int32_t length;
    for (long i = 0; i < c->iters; i++) {
        if (ring_read(&in, m, &length, c->timeout_ns) != OK) {
            fprintf(stderr, "reader: no message %ld within the timeout\n", i);
            return TIMEOUT;
        }
        make_message(want, (uint64_t)i);
        if (length != MESSAGE_LENGTH || memcmp(m, want, MESSAGE_LENGTH) != 0) {
            fprintf(stderr, "reader: message %ld wrong (length %d)\n", i, length);
            return CHECK_FAILED;
        }
    }
    uint64_t end = now_ns();
    double seconds = (double)(end - atomic_load(&sh->writer_start_ns)) / 1e9;
    printf("messages=%ld\nseconds=%.6f\nmsgs_per_s=%.0f\nmb_per_s=%.1f\n", c->iters, seconds,
           (double)c->iters / seconds, (double)c->iters * MESSAGE_LENGTH / seconds / 1e6);
    fflush(stdout);
    return OK;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static uint64_t percentile(const uint64_t *sorted, long n, double p)
{
    long rank = (long)((p / 100.0) * (double)n + 0.999999); /* nearest rank, 1-based */
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return sorted[rank - 1];
}

static int initiator(const config_t *c, shared_t *sh)
{
    long total = c->iters + c->warmup;
    if (strcmp(c->mode, "throughput") == 0) {
        writer_t out = {&sh->ab, 1, 1};
        uint8_t m[MESSAGE_LENGTH];
        int64_t before = preemptions();
        atomic_store(&sh->writer_start_ns, now_ns());
        for (long i = 0; i < c->iters; i++) {
            make_message(m, (uint64_t)i);
            if (ring_publish(&out, 1, m, MESSAGE_LENGTH, c->timeout_ns) != OK) {
                fprintf(stderr, "writer: reader stuck at message %ld\n", i);
                return TIMEOUT;
            }
        }
        printf("preempted_a=%lld\n", (long long)(preemptions() - before));
        fflush(stdout);
        return OK;
    }

    uint64_t *rtt = malloc((size_t)c->iters * sizeof *rtt);
    if (rtt == NULL) {
        fprintf(stderr, "out of memory\n");
        return USAGE;
    }
    int ring = strcmp(c->mode, "ring") == 0;
    int pyseq = strcmp(c->mode, "pyseq") == 0;
#ifdef PYSEQ_RING
    pyseq_writer_t pw;
    pyseq_reader_t pr;
    if (pyseq) {
        pyseq_open(0, &pw, &pr);
        ring = 1; /* same message check as mode "ring" */
    }
#endif
    writer_t out = {&sh->ab, 1, 1};
    reader_t in = {&sh->ba, 1};
    uint8_t m[MESSAGE_LENGTH], reply[SLOT_SIZE];
    int32_t length;
    uint64_t start = 0;
    int64_t preempted = 0;
    for (long i = 0; i < total; i++) {
        if (i == c->warmup) {
            start = now_ns();
            preempted = preemptions();
        }
        if (ring)
            make_message(m, (uint64_t)i);
        uint64_t t0 = ticks();
        if (pyseq) {
#ifdef PYSEQ_RING
            if (pyseq_writer_try_publish(&pw, 1, 0, 0, 0, m, MESSAGE_LENGTH) <= 0 ||
                pyseq_reader_read(&pr, reply, sizeof reply, (int64_t)c->timeout_ns, &pyseq_busy) <= 0) {
                fprintf(stderr, "initiator: no echo of message %ld within the timeout\n", i);
                return TIMEOUT;
            }
            length = (int32_t)((pyseq_frame_t *)reply)->length;
            memmove(reply, reply + PYSEQ_FRAME_LENGTH, (size_t)length);
#endif
        } else if (ring) {
            if (ring_publish(&out, 1, m, MESSAGE_LENGTH, c->timeout_ns) != OK ||
                ring_read(&in, reply, &length, c->timeout_ns) != OK) {
                fprintf(stderr, "initiator: no echo of message %ld within the timeout\n", i);
                return TIMEOUT;
            }
        } else {
            atomic_store_explicit(&sh->counter, 2 * (uint64_t)i + 1, memory_order_release);
            if (wait_counter(&sh->counter, 2 * (uint64_t)i + 2, c->timeout_ns) != OK) {
                fprintf(stderr, "initiator: no pong %ld within the timeout\n", i);
                return TIMEOUT;
            }
        }
        uint64_t t1 = ticks();
        if (ring && (length != MESSAGE_LENGTH || memcmp(reply, m, MESSAGE_LENGTH) != 0)) {
            fprintf(stderr, "initiator: echo of message %ld differs from what was sent\n", i);
            return CHECK_FAILED;
        }
        if (i >= c->warmup)
            rtt[i - c->warmup] = t1 - t0;
    }
    double seconds = (double)(now_ns() - start) / 1e9;
    preempted = preemptions() - preempted;
    if (!ring && atomic_load(&sh->counter) != 2 * (uint64_t)total) {
        fprintf(stderr, "initiator: counter ended at %llu, expected %llu\n",
                (unsigned long long)atomic_load(&sh->counter), 2 * (unsigned long long)total);
        return CHECK_FAILED;
    }

    for (long i = 0; i < c->iters; i++)
        rtt[i] = (uint64_t)((double)rtt[i] / ticks_per_ns + 0.5);
    if (c->samples_path != NULL) {
        FILE *f = fopen(c->samples_path, "wb");
        if (f == NULL || fwrite(rtt, sizeof *rtt, (size_t)c->iters, f) != (size_t)c->iters ||
            fclose(f) != 0) {
            fprintf(stderr, "cannot write %s: %s\n", c->samples_path, strerror(errno));
            return USAGE;
        }
    }
    qsort(rtt, (size_t)c->iters, sizeof *rtt, cmp_u64);
#ifdef HAVE_RDTSC
    const char *timer = "rdtsc";
#else
    const char *timer = "clock_gettime";
#endif
    printf("round_trips=%ld\nwarmup=%ld\ntimer=%s\nticks_per_ns=%.4f\n", c->iters, c->warmup, timer,
           ticks_per_ns);
    static const struct { const char *name; double p; } ps[] = {
        {"p50", 50.0}, {"p90", 90.0}, {"p99", 99.0}, {"p99_9", 99.9}, {"max", 100.0}};
    for (size_t k = 0; k < sizeof ps / sizeof ps[0]; k++)
        printf("one_way_ns_%s=%.1f\n", ps[k].name, (double)percentile(rtt, c->iters, ps[k].p) / 2.0);
    printf("seconds=%.6f\nmsgs_per_s=%.0f\npreempted_a=%lld\n", seconds, 2.0 * (double)c->iters / seconds,
           (long long)preempted);
    fflush(stdout);
    free(rtt);
    return OK;
}

/* ---- process plumbing ------------------------------------------------------------------------ */

static int usage(void)
{
    fprintf(stderr, "usage: cacheline_pingpong cacheline|ring|throughput ITERS WARMUP CPU_A CPU_B TIMEOUT_S "
                    "[SAMPLES_PATH]\n");
    return USAGE;
}

int main(int argc, char **argv)
{
    if (argc < 7 || argc > 8)
        return usage();
    config_t c = {argv[1], atol(argv[2]), atol(argv[3]), atoi(argv[4]), atoi(argv[5]),
                  (uint64_t)(atof(argv[6]) * 1e9), argc == 8 ? argv[7] : NULL};
    if ((strcmp(c.mode, "cacheline") != 0 && strcmp(c.mode, "ring") != 0 &&
         strcmp(c.mode, "throughput") != 0
#ifdef PYSEQ_RING
         && strcmp(c.mode, "pyseq") != 0
#endif
         ) ||
        c.iters <= 0 || c.warmup < 0 || c.timeout_ns == 0)
        return usage();
    printf("mode=%s\ncpu_a=%d\ncpu_b=%d\n", c.mode, c.cpu_a, c.cpu_b);
    fflush(stdout);
    calibrate_ticks();

    shared_t *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) {
        perror("mmap");
        return USAGE;
    }
    ring_init(&sh->ab);
    ring_init(&sh->ba);
#ifdef PYSEQ_RING
    if (strcmp(c.mode, "pyseq") == 0 && pyseq_map() != 0) {
        perror("pyseq rings");
        return USAGE;
    }
#endif

    pid_t parent = getpid();
    pid_t child = fork();
    if (child < 0) {
        perror("fork");
        return USAGE;
    }
    if (child == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the initiator */
        if (getppid() != parent)
            _exit(TIMEOUT);
        pin(c.cpu_b);
        atomic_store_explicit(&sh->child_ready, 1, memory_order_release);
        _exit(echoer(&c, sh));
    }

    pin(c.cpu_a);
    int rc = OK;
    uint64_t deadline = now_ns() + c.timeout_ns;
    while (atomic_load_explicit(&sh->child_ready, memory_order_acquire) == 0) {
        if (now_ns() > deadline) {
            fprintf(stderr, "child did not start within the timeout\n");
            rc = TIMEOUT;
            break;
        }
        usleep(100);
    }
    if (rc == OK)
        rc = initiator(&c, sh);

    /* reap the child, with a deadline: a stuck child is killed, never waited on forever */
    int status = 0;
    pid_t got = 0;
    deadline = now_ns() + (rc == OK ? c.timeout_ns : 0);
    while ((got = waitpid(child, &status, WNOHANG)) == 0 && now_ns() <= deadline)
        usleep(1000);
    if (got == 0) {
        kill(child, SIGKILL);
        waitpid(child, &status, 0);
        if (rc == OK) {
            fprintf(stderr, "child still running after the timeout; killed\n");
            rc = TIMEOUT;
        }
    } else if (got == child && rc == OK) {
        if (!WIFEXITED(status))
            rc = TIMEOUT;
        else
            rc = WEXITSTATUS(status);
    }
    if (rc == OK) /* printed last, after both sides have printed everything */
        printf("preempted_b=%lld\ncheck=ok\n", (long long)atomic_load(&sh->child_preempted));
    munmap(sh, sizeof *sh);
    return rc;
}
