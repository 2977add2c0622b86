// Arming a buffer's doorbell (ShmHeader::waiters): the one way every reader that is about to wait
// asks the producer to ring (the daemon's Consumer, and any mmap reader). The other half is the
// producer's (Producer::commit, Producer::ring).
//
// The doorbell is a Dekker pair: the reader stores `waiters` and then re-checks for data; a writer
// stores its commit and then loads `waiters`. One of the two must see the other, or a wake-up is
// lost. A locked commit orders the writer's store before its load by itself; a commit with no
// locked instruction (rseq, ShmHeader::fenced_commits) does not, so the arming side pays instead,
// which is rare: a membarrier between arming and re-checking runs a full barrier on every CPU
// running a thread of the producer, which orders that thread's commit store before its later load
// of `waiters` or makes it visible to our re-check.
#pragma once

#include <cstdint>

#include "core/layout.h"

namespace relayfs::core {

// Sets `bits` (kWakeRecord, kWakeSubbuf) in h's doorbell and orders the store before every load
// the caller makes afterwards, against producers of either kind of commit. The caller must then
// re-check for data before it sleeps. Returns 0, or -errno if the membarrier a fenced producer
// needs failed: the arming is then not proven against a racing commit, and the caller should not
// sleep without a timeout. h is shared memory: `fenced_commits` is the producer's word, and the
// worst it can do is make every arming cost one system call.
int arm_doorbell(ShmHeader& h, uint32_t bits) noexcept;

// The ordering half of arm_doorbell, for a reader that armed a word of its own (an mmap
// reader's bell, bell.h) with a seq_cst store: orders that store before the caller's re-check of
// h's buffer, against either kind of commit. Same returns.
int order_arming(const ShmHeader& h) noexcept;

}  // namespace relayfs::core
