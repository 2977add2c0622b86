// relayctl fetch's outputs: one file per host, channel and CPU, OUTDIR/HOST/CHANNEL<CPU>, its
// state file beside it (NAME.state), and the reorder buffer that writes a buffer's sub-buffers
// in order (fetch.cc reads the stream and calls these).
//
// Exactly once, also across a SIGKILL of fetch: a message's bytes are appended, the file is
// synced, then its state is written (and synced) saying the file's length and which positions
// it holds, and only then is the message acknowledged. A restart cuts the file to the state's
// length (bytes written after the last state are not part of it: their messages were not
// acknowledged and come again) and skips every message the state says the file holds.
//
// Positions. A message's place in its buffer is (generation, Relayfs-Subbuf), generations
// (opaque strings) numbered in the order this output first saw them. The state keeps every
// generation, the set `written` of the positions of the last `window` messages written (the
// highest positions), and `floor`, the highest position that dropped out of that set: a
// message at or below floor, or in written, is in the file already (or, being more than the
// window late, could only be a duplicate: the contract lets a resent message come after at
// most WINDOW-1 later ones of its buffer). Anything else is not, and is written.
//
// Order. A buffer's messages come in Relayfs-Subbuf order but for a resend, at most WINDOW-1
// places late (relayctl(1), the contract). The reorder buffer holds what came early and writes
// its smallest position when that is the next one (the same generation, the sub-buffer after
// the last written), when it holds WINDOW messages (then nothing smaller can legitimately
// come), or when told to flush (the end of a run, an idle second with --follow). A gap it so
// wrote past is legitimate (lapped sub-buffers); a message that comes after its place was
// written past (its sender was still retrying when the run ended) is not lost: it is written
// at the end of the file, out of order, and counted as late.
#pragma once

#include <sys/types.h>

#include <compare>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/fd.h"
#include "relayctl/nats_conn.h"
#include "relayctl/record_disk.h"

namespace relayctl::fetch {

// Bounds on what a message may name (hostile input: anyone who may publish on the stream).
inline constexpr size_t kMaxHost = 200;           // bytes, one file name
inline constexpr size_t kMaxChannel = 1024;       // bytes, the whole relative path
inline constexpr size_t kMaxComponent = 200;      // bytes, each name of it
inline constexpr unsigned kMaxCpu = 4096;         // Relayfs-Cpu < this
inline constexpr size_t kMaxGeneration = 128;     // bytes, printable, no space
inline constexpr size_t kMaxGenerations = 65536;  // per output; more is refused

// The contract's headers of one message, checked.
struct Labels {
  std::string host, channel, generation;
  unsigned cpu = 0;
  uint64_t subbuf = 0;
};

// Reads and checks msg's Relayfs-* headers into *out. Returns "" or why the message is
// invalid (a missing header, an empty name, "." or "..", a leading '/', a character that is
// not printable ASCII, a name too long, a Relayfs-Cpu that is not a number below kMaxCpu, ...).
std::string read_labels(natsMsg* msg, Labels* out);

// text, shortened and with anything unprintable escaped, for a message on a terminal.
std::string printable(const std::string& text, size_t max = 80);

struct Pos {
  uint32_t gen = 0;  // index into OutputState::gens
  uint64_t subbuf = 0;
  auto operator<=>(const Pos&) const = default;
};

// What an output's state file says (NAME.state, text). Exact: with the file's length, it says
// which positions the file holds.
struct OutputState {
  std::string host, channel;      // who the output is for: another (host, channel, cpu) mapping
  unsigned cpu = 0;               // to the same name ("log1" cpu 0, "log" cpu 10) is refused
  uint64_t length = 0;            // of the output file
  std::vector<std::string> gens;  // in order of first appearance
  std::optional<Pos> floor;
  std::set<Pos> written;  // above floor

  // The index of generation g, added at the end if new; nullopt when kMaxGenerations are
  // known already.
  std::optional<uint32_t> gen_index(const std::string& g);
  // Whether the file holds position p (or p is too late to be anything but a duplicate).
  bool holds(Pos p) const;
  // The highest position written, if any.
  std::optional<Pos> high() const;
  // Notes that p was written, `bytes` long; keeps `window` positions in written.
  void add(Pos p, uint64_t bytes, size_t window);

  std::string format() const;
  // Parses what format() wrote (anything after its "end" line ignored: the tail of a longer
  // state written before). Returns 0, -ENODATA for an empty text, or -EINVAL.
  int parse(const std::string& text);

 private:
  std::unordered_map<std::string, uint32_t> index_;
};

// What a run did, for the progress line and the summary.
struct Totals {
  uint64_t bytes = 0, messages = 0;  // written
  uint64_t duplicates = 0;           // skipped: the file held them already
  uint64_t late = 0;                 // written at the end of their file, out of order
  uint64_t invalid = 0;              // skipped: headers that break the contract
  uint64_t refused = 0;              // not written, not acknowledged: a local refusal
};

// One output file, its state and its reorder buffer.
class Output {
 public:
  // Opens the output for `labels` below outdir (whose path is outdir_path, for messages):
  // the directories OUTDIR/HOST/CHANNEL-DIRS (OutputDir::open_below), then NAME.state and
  // NAME, created (0644 less the umask) or reopened as an earlier run left them (the caller's
  // regular files only, never through a link), the file cut to the state's length. Returns 0,
  // or a negative errno with *why saying what is wrong (then nothing may be written to it).
  // window: the contract's WINDOW (--window), for the order and for what the state keeps.
  int open(const OutputDir& outdir, const std::string& outdir_path, const Labels& labels,
           mode_t mode, size_t window, std::string* why);

  const std::string& path() const { return path_; }
  // The position of a message of generation g, or nullopt if this output knows too many.
  std::optional<Pos> position(const std::string& g, uint64_t subbuf) {
    const std::optional<uint32_t> i = state_.gen_index(g);
    if (!i) return std::nullopt;
    return Pos{*i, subbuf};
  }

  // Takes a message at p: a duplicate (the file holds p) goes to *ack at once, counted; else
  // it waits in the reorder buffer (a second copy of a waiting position waits with it, to be
  // acknowledged when it is written).
  void take(Pos p, nats::MsgPtr msg, std::vector<nats::MsgPtr>* ack, Totals* t);
  // Writes what the order rules allow (everything, with all), moving the messages written
  // into *ack. Returns 0 or a negative errno (a failed write: *why says where).
  int drain(bool all, std::vector<nats::MsgPtr>* ack, Totals* t, std::string* why);
  // After writes: syncs the file, then writes and syncs the state. Only then may the
  // messages written be acknowledged. Returns 0 or a negative errno (*why says where).
  int save(std::string* why);

  size_t waiting() const { return pending_.size(); }
  uint64_t waiting_bytes() const { return pending_bytes_; }
  bool dirty() const { return dirty_; }
  bool wrote() const { return wrote_; }  // since it was opened

 private:
  struct Waiting {
    nats::MsgPtr msg;
    std::vector<nats::MsgPtr> copies;  // later deliveries of the same position
  };
  int write(Pos p, Waiting& w, std::vector<nats::MsgPtr>* ack, Totals* t, std::string* why);

  std::string path_, state_path_;
  size_t window_ = 1;
  relayfs::core::UniqueFd data_, state_fd_;
  OutputState state_;
  std::map<Pos, Waiting> pending_;
  uint64_t pending_bytes_ = 0;
  bool dirty_ = false;
  bool wrote_ = false;
};

}  // namespace relayctl::fetch
