/*
 * relayfs: the inline fast path of relay_write (relay_write(3), "INLINE FAST PATH").
 *
 * relay.h includes this file; include relay.h, not this one. It holds the rules a record's
 * reservation and commit follow on a buffer bound to its CPU, written once, as C: the library's
 * own producer (src/core) is built on the same primitives, and a program built against relay.h
 * inlines them into its calls of relay_write. Everything named relay_fast_* or RELAY_FAST_* here,
 * but for the structs' use by relay.h, is not API: it may change with RELAY_FAST_VERSION.
 *
 * The ABI rule. A program compiled with this header calls relay_write inline. The inline code
 * reads the channel's descriptor (struct relay_fast, below) only if the library's relay_fast_abi
 * is the RELAY_FAST_VERSION the program was compiled with (the descriptor's own version field says
 * the same, for debuggers); otherwise, or when anything is unusual (no rseq, the thread moved to
 * another CPU, a record that does not fit, a closed buffer, a pending wake-up), it calls the
 * library: the exported relay_write, or relay_fast_commit_remote / relay_fast_commit_events. A
 * library that changes the descriptor, or the shared layout it points into, bumps
 * RELAY_FAST_VERSION, so programs built before take the exported path from then on: slower,
 * never wrong. A program built against an older relay.h calls the exported relay_write and never
 * sees the descriptor. A program built against this one references relay_fast_abi, of symbol
 * version RELAYFS_0.4 (src/client/librelayfs.map), so the dynamic linker refuses to start it with
 * an older library. Define RELAYFS_NO_INLINE before including relay.h to call the exported
 * function always.
 */
#ifndef RELAYFS_RELAY_FAST_H
#define RELAYFS_RELAY_FAST_H

#include <stddef.h>
#include <stdint.h>

/* x86-64 with glibc's rseq registration (2.35+, which exports __rseq_offset), and not under
 * ThreadSanitizer, which cannot see inside the asm: elsewhere relay_write is always the exported
 * function, and the library's producer reserves and commits with locked instructions. The
 * kernel's rseq ABI is used directly (struct relay_fast_rseq_abi), not <sys/rseq.h>, so that
 * including relay.h declares no struct rseq of its own in the program. */
#if defined(__x86_64__) && defined(__LP64__) && defined(__GNUC__) && defined(__GLIBC__) && \
    (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 35)) && !defined(__SANITIZE_THREAD__)
/* Not x32 either (__LP64__): its pointers would not fit the asm nor the descriptor's layout. Nor
 * under MemorySanitizer, which would take what the asm stores for uninitialised. */
#if defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(memory_sanitizer)
#define RELAY_FAST_NO_RSEQ 1
#endif
#endif
#if !defined(RELAY_FAST_NO_RSEQ)
#define RELAY_FAST_HAVE_RSEQ 1
#endif
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Every function here: inline only, never a symbol of its own (as glibc's fortified functions),
 * so that the inline relay_write of relay.h, which has external linkage, may use them. */
#define RELAY_FAST_INLINE extern __inline__ __attribute__((gnu_inline, always_inline))

/* The position word of a buffer: where the next record goes (src/core/layout.h has the whole
 * rule). Bits 0..31: offset in the current sub-buffer, or a marker (busy, closed, stopped) above
 * every sub-buffer size; bits 32..47: the sub-buffer's slot. */
#define RELAY_FAST_WORD_OFF(w) ((uint32_t)(w))
#define RELAY_FAST_WORD_SLOT(w) ((uint32_t)((w) >> 32) & 0xffffu)
/* A record of len bytes fits at offset off of a sub-buffer of size bytes. One test covers "does
 * not fit", "switching", "stopped" and "closed", since the markers are above every size; len is
 * tested alone first so that off + len cannot wrap. */
#define RELAY_FAST_FITS(off, len, size) (!((len) - 1 >= (size) || (off) + (len) > (size)))
/* The offset of a stopped buffer: its last switch was refused (a no-overwrite buffer was full). */
#define RELAY_FAST_OFF_STOPPED 0xffffffffu
/* Where slot's sub-buffer starts in the data area. */
#define RELAY_FAST_SLOT_OFFSET(slot, size) ((uint64_t)(slot) * (size))

/* The consumed count the consumer publishes carries the low 16 bits of the reset generation it
 * belongs to (bits 48..63); a count tagged with another generation means nothing consumed since
 * the reset. */
#define RELAY_FAST_CONSUMED_MASK ((((uint64_t)1) << 48) - 1)
#define RELAY_FAST_CONSUMED_TAG(gen) (((uint64_t)((gen) & 0xffffu)) << 48)
#define RELAY_FAST_CONSUMED_COUNT(tagged, gen)                                   \
  ((((tagged) & ~RELAY_FAST_CONSUMED_MASK) == RELAY_FAST_CONSUMED_TAG(gen)) ? \
       ((tagged) & RELAY_FAST_CONSUMED_MASK)                                     \
       : 0)

/* relay_buf_full(): every sub-buffer produced and none consumed, from the header's `produced`,
 * `consumed` and `reset_gen` (src/core/layout.h). A consumed count above produced cannot come
 * from an honest reader: it reads as nothing consumed. */
RELAY_FAST_INLINE int relay_fast_buf_full(const uint64_t *produced_p, const uint64_t *consumed_p,
                                      const uint32_t *gen_p, uint32_t n) {
  const uint64_t produced = __atomic_load_n(produced_p, __ATOMIC_ACQUIRE) & RELAY_FAST_CONSUMED_MASK;
  const uint64_t tagged = __atomic_load_n(consumed_p, __ATOMIC_ACQUIRE);
  const uint32_t gen = __atomic_load_n(gen_p, __ATOMIC_RELAXED);
  const uint64_t consumed = RELAY_FAST_CONSUMED_COUNT(tagged, gen);
  return consumed <= produced ? produced - consumed >= n : produced >= n;
}

/* One sub-buffer's bookkeeping in shared memory: the layout of SubbufMeta (layout.h, which
 * checks that the two agree). A slot's committed count is commit + commit_cpu: commit_cpu is
 * written only by rseq sections on the buffer's CPU, commit by atomic adds from anywhere else. */
struct relay_fast_subbuf_meta {
  uint64_t commit;
  uint64_t ready;
  uint32_t padding;
  uint32_t unused;
  uint64_t start_bytes;
  uint64_t commit_cpu;
};

/* What a commit leaves for the library to do (relay_fast_after_commit). */
#define RELAY_FAST_EV_COMPLETE 1u /* the commit completed its closed sub-buffer: deliver, wake */
#define RELAY_FAST_EV_LATE 2u     /* the sub-buffer was closed already: wake every kind of waiter */
#define RELAY_FAST_EV_RING 4u     /* a reader armed the doorbell for the next record */

/* The second half of every commit, once the committed count v is known (v counts this commit):
 * raises the sub-buffer's proven-committed prefix (`ready`) and says what is left to do.
 * wpos is loaded after v's counters, so every commit v counts was reserved before that word: if
 * v reaches the word's offset, nothing is in flight and the whole reserved prefix is proven (a
 * plain store). Otherwise the proof is extended over this record if it starts where the proof
 * ends (a CAS: only out of order). The store is made on every commit, waiting reader or not:
 * a reader's own proof fails while a reservation is held (relay_reserve, or a writer killed
 * mid-record), and the records committed before it would then wait for it, or be counted lost
 * with it. The load of waiters is seq_cst: with the commit's store it is one side of the
 * doorbell's Dekker pair (the arming side's membarrier stands in for the fence an rseq commit
 * lacks; core/doorbell.h). */
RELAY_FAST_INLINE unsigned relay_fast_after_commit(const uint64_t *wpos, struct relay_fast_subbuf_meta *m,
                                               const uint32_t *waiters, uint32_t slot,
                                               uint32_t off, uint32_t len, uint64_t base,
                                               uint32_t size, uint64_t v) {
  const uint64_t w = __atomic_load_n(wpos, __ATOMIC_ACQUIRE);
  unsigned ev = 0;
  if (__builtin_expect(RELAY_FAST_WORD_SLOT(w) == slot && v == base + RELAY_FAST_WORD_OFF(w), 1)) {
    __atomic_store_n(&m->ready, v, __ATOMIC_RELEASE);
  } else {
    uint64_t start = base + off;
    __atomic_compare_exchange_n(&m->ready, &start, start + len, 0, __ATOMIC_RELEASE,
                                __ATOMIC_RELAXED);
  }
  if (__builtin_expect(v == base + size, 0)) ev |= RELAY_FAST_EV_COMPLETE;
  const uint32_t want = __atomic_load_n(waiters, __ATOMIC_SEQ_CST);
  if (__builtin_expect(RELAY_FAST_WORD_SLOT(w) != slot || RELAY_FAST_WORD_OFF(w) > size, 0))
    ev |= RELAY_FAST_EV_LATE;
  else if (__builtin_expect(want & 1u, 0)) /* kWakeRecord */
    ev |= RELAY_FAST_EV_RING;
  return ev;
}

#ifdef RELAY_FAST_HAVE_RSEQ

/* The calling thread's rseq area, which glibc registered: the thread pointer plus __rseq_offset. */
/* The head of the kernel's struct rseq (linux/rseq.h), which glibc registers for every thread:
 * fixed by the kernel's ABI. */
struct relay_fast_rseq_abi {
  uint32_t cpu_id_start;
  uint32_t cpu_id;
  uint64_t rseq_cs; /* the running section's descriptor, or 0 */
};
/* glibc's, as <sys/rseq.h> declares it: where the thread's area is, from the thread pointer. */
extern const ptrdiff_t __rseq_offset __attribute__((visibility("default")));

RELAY_FAST_INLINE struct relay_fast_rseq_abi *relay_fast_rseq_area(void) {
  char *tp;
  __asm__("movq %%fs:0, %0" : "=r"(tp));
  return (struct relay_fast_rseq_abi *)(tp + __rseq_offset);
}

/* The CPU the calling thread runs on, as the kernel last stored it (no system call). Above every
 * CPU number when rseq is not registered (RSEQ_CPU_ID_UNINITIALIZED and _REGISTRATION_FAILED are
 * negative). */
RELAY_FAST_INLINE uint32_t relay_fast_cpu_at(const struct relay_fast_rseq_abi *rs) {
  return __atomic_load_n(&rs->cpu_id, __ATOMIC_RELAXED);
}
RELAY_FAST_INLINE uint32_t relay_fast_cpu(void) {
  return relay_fast_cpu_at(relay_fast_rseq_area());
}

/* The abort handler's signature, which the kernel checks before it jumps there: glibc registered
 * every thread with this value (RSEQ_SIG on x86; src/core/rseq.h checks that they agree). */
#define RELAY_FAST_RSEQ_SIG 0x53053053

/* The frame of every rseq section (asm text; labels 1 = start, 2 = post-commit, 3 = descriptor,
 * 4 = abort handler; operand [rseq_cs] and label other_cpu are the section's). The "?" flag puts
 * the descriptor and the abort handler in the section group of the code around them: an inline
 * C++ function's code is a COMDAT group, and when the linker drops a duplicate copy it must drop
 * the descriptor that points into it too. The abort handler is preceded by glibc's signature
 * (RSEQ_SIG) in a ud1, so that falling into it traps. An abort restarts nothing: the caller
 * looks again from its loop. */
#define RELAY_FAST_RSEQ_BEGIN                  \
  ".pushsection __rseq_cs, \"aw?\"\n\t"     \
  ".balign 32\n\t"                         \
  "3:\n\t"                                 \
  ".long 0, 0\n\t"                         \
  ".quad 1f, (2f - 1f), 4f\n\t"            \
  ".popsection\n\t"                        \
  "leaq 3b(%%rip), %%rax\n\t"              \
  "movq %%rax, %[rseq_cs]\n\t"             \
  "1:\n\t"
#define RELAY_FAST_RSEQ_END                    \
  "2:\n\t"                                 \
  ".pushsection __rseq_failure, \"ax?\"\n\t" \
  ".byte 0x0f, 0xb9, 0x3d\n\t"             \
  ".long 0x53053053\n\t" /* RELAY_FAST_RSEQ_SIG */ \
  "4:\n\t"                                 \
  "jmp %l[other_cpu]\n\t"                  \
  ".popsection\n\t"

/* Outcomes of relay_fast_cas_on_cpu. */
#define RELAY_FAST_STORED 0  /* *word was expect; it is now desired */
#define RELAY_FAST_CHANGED 1 /* *word was not expect; nothing stored */
#define RELAY_FAST_OTHER 2   /* not on cpu, or moved, preempted or signalled before the store */

/* If the calling thread (whose rseq area is rs, relay_fast_rseq_area(): the caller finds it once
 * for all its sections) runs on cpu and *word == expect, stores desired: all or nothing with
 * respect to every other rseq section on that CPU, so as good as a CAS on a word that only such
 * sections (and remote changes that fence them out) write. A plain store: release on x86, as the
 * compare's load is acquire; the "memory" clobber keeps the compiler from moving accesses across
 * it. */
RELAY_FAST_INLINE int relay_fast_cas_on_cpu(struct relay_fast_rseq_abi *rs, uint64_t *word,
                                        uint64_t expect, uint64_t desired, uint32_t cpu) {
  __asm__ goto(RELAY_FAST_RSEQ_BEGIN
               "cmpl %[cpu], %[cpu_id]\n\t"
               "jnz %l[other_cpu]\n\t"
               "cmpq %[word], %[expect]\n\t"
               "jnz %l[changed]\n\t"
               "movq %[desired], %[word]\n\t"
               RELAY_FAST_RSEQ_END
               :
               : [rseq_cs] "m"(rs->rseq_cs), [cpu_id] "m"(rs->cpu_id), [cpu] "r"(cpu),
                 [word] "m"(*word), [expect] "r"(expect), [desired] "r"(desired)
               : "memory", "cc", "rax"
               : other_cpu, changed);
  return RELAY_FAST_STORED;
changed:
  return RELAY_FAST_CHANGED;
other_cpu:
  return RELAY_FAST_OTHER;
}

/* If the calling thread (rseq area rs) runs on cpu: *word += add, all or nothing with respect to
 * every other rseq section on that CPU. Returns 0 if the thread is not on cpu or the section was
 * aborted before its store: nothing stored. Only rseq sections on cpu may ever write *word: a
 * remote atomic add landing between the load and the store would be lost. The store is plain
 * (release on x86: the record's bytes, stored before, are visible to whoever sees the new count);
 * it is not ordered before later loads (see relay_fast_after_commit). A constant add is an
 * immediate ("e"). */
RELAY_FAST_INLINE int relay_fast_add_on_cpu(struct relay_fast_rseq_abi *rs, uint64_t *word,
                                        uint64_t add, uint32_t cpu) {
  __asm__ goto(RELAY_FAST_RSEQ_BEGIN
               "cmpl %[cpu], %[cpu_id]\n\t"
               "jnz %l[other_cpu]\n\t"
               "movq %[word], %%rax\n\t"
               "addq %[add], %%rax\n\t"
               "movq %%rax, %[word]\n\t"
               RELAY_FAST_RSEQ_END
               :
               : [rseq_cs] "m"(rs->rseq_cs), [cpu_id] "m"(rs->cpu_id), [cpu] "r"(cpu),
                 [word] "m"(*word), [add] "er"(add)
               : "memory", "cc", "rax"
               : other_cpu);
  return 1;
other_cpu:
  return 0;
}

/* The rseq commit of len bytes into slot meta m on cpu: adds to commit_cpu and sets *v to the
 * slot's committed count as seen after it (commit_cpu, then commit, each loaded with acquire: the
 * bytes of the commits they count). A lower bound of the true count that counts this commit: the
 * counters are loaded after our store, one after the other, and each only grows. Loading
 * commit_cpu back (the store forwards it) is cheaper than getting the sum out of the section
 * through memory. Returns 0 if the section did not store (the caller looks at the CPU again and
 * retries, or commits remotely). */
RELAY_FAST_INLINE int relay_fast_commit_on_cpu(struct relay_fast_rseq_abi *rs,
                                           struct relay_fast_subbuf_meta *m, uint32_t len,
                                           uint32_t cpu, uint64_t *v) {
  if (!relay_fast_add_on_cpu(rs, &m->commit_cpu, len, cpu)) return 0;
  *v = __atomic_load_n(&m->commit_cpu, __ATOMIC_ACQUIRE) +
       __atomic_load_n(&m->commit, __ATOMIC_ACQUIRE);
  return 1;
}

#endif /* RELAY_FAST_HAVE_RSEQ */

/* The inline path's view of one buffer: the library fills it when it binds the buffer to its
 * CPU, and never changes it while the channel is open. Process-local memory: pointers into this
 * process's mapping of the buffer, and to its producer's lap bases. */
struct relay_fast_buf {
  uint64_t *wpos;                   /* the position word */
  struct relay_fast_subbuf_meta *meta;  /* n_subbufs entries */
  char *data;                       /* the data area: n_subbufs * subbuf_size bytes */
  const uint64_t *lap_base;         /* each slot's committed count at the start of its lap */
  const uint32_t *waiters;          /* the doorbell */
  const uint64_t *produced;         /* for relay_fast_buf_full */
  const uint64_t *consumed;
  const uint32_t *reset_gen;
  uint64_t *lost_full;              /* records dropped: buffer full */
  uint32_t subbuf_size;
  uint32_t n_subbufs;
  uint32_t on;        /* nonzero: bound to CPU == its index, with rseq reservation and commit */
  uint32_t drop_full; /* nonzero: a stopped buffer still full drops a record here (the default
                       * subbuf_start, which would refuse again, and not RELAY_BLOCKING) */
};

/* A channel's descriptor (struct rchan's fast): buf[i] serves CPU i. */
#define RELAY_FAST_VERSION 2u
struct relay_fast {
  uint32_t version; /* RELAY_FAST_VERSION of the library that made it */
  uint32_t n_buffers;
  const struct relay_fast_buf *buf;
};

#ifdef __cplusplus
}
#endif

#endif /* RELAYFS_RELAY_FAST_H */
