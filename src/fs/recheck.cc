// The doorbell's backstop. A reader that waits (a parked read, a poller asking for data) arms
// its buffer's doorbell and relies on the producer's next commit to ring it. A producer whose
// commits are rseq stores (no locked instruction) is fenced against the arming only by the
// arming side's membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED) (core/doorbell.h). Measured on
// Linux 6.18, that membarrier skips a CPU whose run queue never learnt that the producer's
// process registered: the CPU ran a thread of it before the registration and switched to
// another of its threads without running another process in between, or a thread of the
// process exited there (the scheduler's per-CPU membarrier state is refreshed only when the
// CPU switches to a different mm). The producer's commit store may then still sit in its store
// buffer while it loads the doorbell before the arming is visible: neither side sees the other,
// and the reader sleeps with a record there until something else rings.
//
// So, while any reader waits, the loop looks at every source again once per tick, as if its
// doorbell had rung (Daemon::news answers what has data and arms again what still waits). A
// ring lost that way costs at most a tick; nothing runs while nobody waits. The tick is
// -o recheck_ms (relayfs(8)), 250 ms by default: a lost ring is rare (a race the kernel should
// have closed), so a quarter second late is enough, and a waiting reader costs the daemon four
// wake-ups a second. Recordings are left out: they wait for whole sub-buffers, which the switch
// rings after a locked RMW.
#include <algorithm>
#include <cstdio>

#include "fs/channel.h"
#include "fs/daemon.h"
#include "fs/ring_tag.h"

namespace relayfs::fs {

namespace {

// Whether a reader waits on s for data: a parked read, or a poller that asked for POLLIN.
// Loop thread (parked is the loop's).
bool waited_on(Source& s) {
  if (!s.parked.empty()) return true;
  std::lock_guard lk(s.mu);
  return std::any_of(s.polls.begin(), s.polls.end(), [](const Poller& p) { return p.data; });
}

}  // namespace

void Daemon::arm_recheck() noexcept {
  // -o recheck_ms=0: no backstop; a waiting reader depends on the producer's ring alone.
  if (recheck_armed_ || opts_.recheck_ms == 0) return;
  recheck_tick_ = Loop::period_ms(opts_.recheck_ms);
  if (loop_.timeout(&recheck_tick_, tag(kRecheck, 0)) != 0) {
    std::fprintf(stderr,
                 "relayfs: no room in the ring for the doorbell's backstop tick: a "
                 "waiting reader depends on the producer's ring alone until the next arming\n");
    return;
  }
  recheck_armed_ = true;
}

void Daemon::recheck() {
  // Armed again on every way out while someone may still wait, an exception from news()
  // included (the loop reports it and goes on): only a pass that finished knows nobody does.
  struct Again {
    Daemon* d;
    bool waiting = true;
    ~Again() {
      if (waiting) d->arm_recheck();
    }
  } again{this};
  bool waiting = false;
  for (auto& ch : registry_.all()) {
    for (auto& s : ch->sources()) {
      if (!waited_on(*s)) continue;
      news(s);
      waiting = waiting || waited_on(*s);
    }
  }
  again.waiting = waiting;
}

}  // namespace relayfs::fs
