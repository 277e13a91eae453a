/*
 * atomics.h - the only file in pyseq that includes <stdatomic.h>.
 *
 * Shared-memory fields are plain integers in the layout structs (so the layout header stays a
 * document and cffi can read it); every concurrent access goes through these primitives, which
 * cast to the matching _Atomic type.  On x86-64 and AArch64 an aligned 8-byte _Atomic is
 * lock-free and has the same size and representation as the plain type (checked below).
 */
#ifndef PYSEQ_ATOMICS_H
#define PYSEQ_ATOMICS_H

#include <stdatomic.h>
#include <stdint.h>

_Static_assert(sizeof(_Atomic int64_t) == sizeof(int64_t), "_Atomic int64_t must be plain-sized");
_Static_assert(sizeof(_Atomic uint32_t) == sizeof(uint32_t), "_Atomic uint32_t must be plain-sized");
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "64-bit atomics must be lock-free for shared memory");

#define PYSEQ_A64(p) ((_Atomic int64_t *)(p))
#define PYSEQ_AU64(p) ((_Atomic uint64_t *)(p))
#define PYSEQ_A32(p) ((_Atomic uint32_t *)(p))

static inline int64_t pyseq_load_acquire(const int64_t *p)
{
    return atomic_load_explicit(PYSEQ_A64(p), memory_order_acquire);
}

static inline int64_t pyseq_load_relaxed(const int64_t *p)
{
    return atomic_load_explicit(PYSEQ_A64(p), memory_order_relaxed);
}

static inline void pyseq_store_release(int64_t *p, int64_t v)
{
    atomic_store_explicit(PYSEQ_A64(p), v, memory_order_release);
}

static inline void pyseq_store_relaxed(int64_t *p, int64_t v)
{
    atomic_store_explicit(PYSEQ_A64(p), v, memory_order_relaxed);
}

static inline uint32_t pyseq_load_acquire_u32(const uint32_t *p)
{
    return atomic_load_explicit(PYSEQ_A32(p), memory_order_acquire);
}

static inline void pyseq_store_release_u32(uint32_t *p, uint32_t v)
{
    atomic_store_explicit(PYSEQ_A32(p), v, memory_order_release);
}

static inline int pyseq_cas_u32(uint32_t *p, uint32_t expected, uint32_t desired)
{
    return atomic_compare_exchange_strong_explicit(PYSEQ_A32(p), &expected, desired,
                                                   memory_order_acq_rel, memory_order_acquire);
}

static inline uint32_t pyseq_load_relaxed_u32(const uint32_t *p)
{
    return atomic_load_explicit(PYSEQ_A32(p), memory_order_relaxed);
}

static inline uint32_t pyseq_fetch_add_u32(uint32_t *p, uint32_t v) /* seq_cst: a full barrier */
{
    return atomic_fetch_add_explicit(PYSEQ_A32(p), v, memory_order_seq_cst);
}

static inline uint32_t pyseq_fetch_sub_u32(uint32_t *p, uint32_t v)
{
    return atomic_fetch_sub_explicit(PYSEQ_A32(p), v, memory_order_seq_cst);
}

static inline uint64_t pyseq_fetch_add_u64(uint64_t *p, uint64_t v)
{
    return atomic_fetch_add_explicit(PYSEQ_AU64(p), v, memory_order_relaxed);
}

static inline void pyseq_fence_acquire(void) { atomic_thread_fence(memory_order_acquire); }
static inline void pyseq_fence_release(void) { atomic_thread_fence(memory_order_release); }
static inline void pyseq_fence_seq_cst(void) { atomic_thread_fence(memory_order_seq_cst); }

static inline void pyseq_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#else
    atomic_signal_fence(memory_order_seq_cst);
#endif
}

#endif /* PYSEQ_ATOMICS_H */
