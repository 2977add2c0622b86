// The control protocol between producers (librelayfs) and the daemon, over a Unix SOCK_SEQPACKET socket.
//
// Every message is a fixed header followed by `length` payload bytes. The header carries a magic
// number and a protocol version, so a stranger or an incompatible peer is refused at once; the
// length is bounded, so a peer cannot make the receiver allocate or wait for more than
// kMaxPayload bytes. File descriptors (the buffers' memfds, the doorbell eventfd) travel with a
// reply as SCM_RIGHTS. All integers are in the host's byte order: both ends run on one machine.
//
// The parser (decode_*) treats its input as hostile: it checks every length and field and
// returns -EPROTO / -EINVAL instead of reading past the message.
#pragma once

#include <linux/ioctl.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/stats.h"

namespace relayfs::proto {

inline constexpr uint32_t kMagic = 0x52465343;  // "RFSC"
// 3: kAdopt; buffers are shared-memory layout 4 (with the consumer record).
// 4: kRecord resumes (RecordRequest's flags, offset, stream, position; the state descriptor),
//    and its reply says where the buffer's reader stands.
// 5: kBell, kBellGone; kReaderOpenReply may carry a reader's bell (core/bell.h).
// 6: a bell rings through a pair of Unix stream sockets, not an eventfd (core/bell.h: a holder
//    of a shared eventfd could make every write to it block). Later within 6: kBellRefused, a
//    producer's event that an earlier daemon of 6 answers with kError, which producers ignore.
inline constexpr uint16_t kVersion = 6;
inline constexpr uint32_t kMaxPayload = 8192;
inline constexpr size_t kMaxName = 255;  // NAME_MAX
inline constexpr size_t kMaxFds = 253;   // SCM_MAX_FD

enum class Type : uint16_t {
  kOpen = 1,   // producer -> daemon: create a channel
  kOpenReply,  // daemon -> producer: status, geometry, fds
  kClose,      // producer -> daemon: close a channel (finalize; files go once drained)
  kCloseReply,
  kMapped,               // daemon -> producer: a reader opened a buffer's file (buf_mapped)
  kUnmapped,             // daemon -> producer: the last reader closed it (buf_unmapped)
  kError,                // daemon -> producer: a message was refused; with seq 0 and
                         // unasked, the connection itself (over a limit), then it hangs up
  kConsumed,             // producer -> daemon: relay_subbufs_consumed (no reply)
  kReaderOpen,           // reader -> daemon: map a relay file's buffer (relay_reader_open)
  kReaderOpenReply,      // daemon -> reader: status, geometry, a read-only fd of the buffer
  kReaderConsumed,       // reader -> daemon: sub-buffers consumed through the mapping
  kReaderConsumedReply,  // daemon -> reader: Status, once the sub-buffers are released
  kControl,              // anyone -> daemon: flush, reset or close a channel (relayctl)
  kControlReply,         // daemon -> requester: Status, once the producer answered
  kControlRequest,       // daemon -> producer: do this to your channel
  kControlDone,          // producer -> daemon: Status of a kControlRequest (same seq)
  kRecord,               // recorder -> daemon: record a buffer to files it passes (relayctl)
  kRecordReply,          // daemon -> recorder: RecordReply
  kRecordStop,           // recorder -> daemon: Status 0; end every recording of the connection
  kRecordEvent,          // daemon -> recorder: progress or end of one recording (RecordEvent)
  kAdopt,                // producer -> daemon: re-create a channel with the buffers it brings
                         // from a daemon that died (OpenRequest, adopt > 0); kOpenReply
  kBell,                 // daemon -> producer: a reader's bell for one buffer (BellEvent); its
                         // page memfd and ringing socket follow
  kBellGone,             // daemon -> producer: that reader went away (BellEvent, no fds)
  kBellRefused,          // producer -> daemon: it could not take that bell (BellEvent, no fds)
  kLastType = kBellRefused
};

struct Header {
  uint32_t magic;
  uint16_t version;
  uint16_t type;
  uint32_t length;  // payload bytes after the header
  uint32_t seq;     // chosen by the requester, echoed in the reply
};
static_assert(sizeof(Header) == 16);

// Channel flags (OpenRequest::flags).
inline constexpr uint32_t kFlagGlobal = 1u << 0;  // one buffer for all CPUs (the spec's is_global)
inline constexpr uint32_t kFlagOverwrite = 1u << 1;  // declared overwrite (flight recorder) mode
inline constexpr uint32_t kFlagBlocking = 1u << 2;   // writers wait for room instead of dropping
inline constexpr uint32_t kFlagHookMode = 1u << 3;   // a client subbuf_start decides the mode
inline constexpr uint32_t kFlagControl = 1u << 4;    // the producer takes kControlRequest
inline constexpr uint32_t kFlagsKnown =
    kFlagGlobal | kFlagOverwrite | kFlagBlocking | kFlagHookMode | kFlagControl;

struct OpenRequest {
  uint64_t parent_ino = 0;  // the directory, by its inode number in the mount
  uint32_t subbuf_size = 0;
  uint32_t n_subbufs = 0;
  uint32_t mode = 0;  // permission bits of the relay files (0 means the spec's 0400)
  uint32_t flags = 0;
  std::string base_filename;
  // kAdopt: the number of buffers handed over, whose memfds come with the message, in order
  // (the channel's geometry and layout, with their shared state as it is), then the doorbell
  // eventfd, which the new daemon keeps. 0 for kOpen.
  uint32_t adopt = 0;
};

struct OpenReply {
  int32_t status = 0;  // 0 or -errno
  uint32_t channel_id = 0;
  uint32_t n_buffers = 0;  // one fd per buffer follows, then the doorbell (none after kAdopt)
  uint32_t subbuf_size = 0;
  uint32_t n_subbufs = 0;
};

struct CloseRequest {
  uint32_t channel_id = 0;
};

struct Status {  // kCloseReply, kError
  int32_t status = 0;
};

struct BufferEvent {  // kMapped, kUnmapped
  uint32_t channel_id = 0;
  uint32_t buffer = 0;
};

struct ConsumedRequest {  // kConsumed
  uint32_t channel_id = 0;
  uint32_t buffer = 0;
  uint64_t count = 0;
};

// ReaderOpenRequest::flags.
inline constexpr uint32_t kReaderBell = 1u << 0;  // give the reader a bell (core/bell.h)
inline constexpr uint32_t kReaderFlagsKnown = kReaderBell;

struct ReaderOpenRequest {  // kReaderOpen
  uint64_t ino = 0;         // the relay file, by its inode number in the mount
  uint32_t flags = 0;       // kReader*
};

struct BellEvent {  // kBell, kBellGone, kBellRefused
  uint32_t channel_id = 0;
  uint32_t buffer = 0;
  uint32_t bell = 0;  // the daemon's number for it, never 0
};

// kReaderOpenReply; on success the buffer's read-only fd follows, then, if the reader asked for
// a bell (kReaderBell) and the daemon gave one, its page memfd and its socket (three in all).
struct ReaderOpenReply {
  int32_t status = 0;
  uint32_t subbuf_size = 0;
  uint32_t n_subbufs = 0;
  uint32_t buffer = 0;  // index of the buffer in its channel (the CPU)
};

struct ReaderConsumed {  // kReaderConsumed
  uint32_t gen = 0;      // reset generation the count belongs to (tag of the published position)
  uint64_t upto = 0;     // every sub-buffer before this sequence number is consumed
};

// Outside control of a channel (relayctl flush/reset/close), for producers that allow it. The
// values are relay.h's RELAY_CTL_* (src/client/common.h checks it); a number becomes a ControlOp
// only through control_op.
enum class ControlOp : uint32_t { kFlush = 1, kReset = 2, kClose = 3 };

// The ControlOp numbered v. Returns false, *out untouched, if there is none.
constexpr bool control_op(uint32_t v, ControlOp* out) {
  switch (static_cast<ControlOp>(v)) {  // -Wswitch: a new ControlOp must be listed here
    case ControlOp::kFlush:
    case ControlOp::kReset:
    case ControlOp::kClose:
      *out = static_cast<ControlOp>(v);
      return true;
  }
  return false;
}

struct ControlRequest {  // kControl
  uint64_t ino = 0;      // any file of the channel, by its inode number in the mount
  ControlOp op = ControlOp::kFlush;
};

struct ChannelControl {  // kControlRequest
  uint32_t channel_id = 0;
  ControlOp op = ControlOp::kFlush;
};

// Recording to disk in the daemon (relayctl record): the daemon writes whole sub-buffers from
// its io_uring-registered buffer to files the recorder opened and passes along, and consumes
// them once written. Two to four fds follow a kRecord: the output file, the index (O_APPEND),
// with kRecordState the state file (record_state.h), and where the filesystem has direct I/O an
// O_DIRECT descriptor of the output file.
//
// With a state file, the daemon writes there, after each extent reached the output and before
// it consumes it, where the recording stands: a daemon killed at any point leaves a state that
// is true of the output. With kRecordResume, a recording goes on from such a state after a
// daemon restart: the daemon checks that the buffer is the one recorded (stream) and holds
// `position`, passes over what it delivers again up to there (the last daemon wrote it to disk
// but did not live to consume it), and writes from `offset` on.
inline constexpr uint32_t kRecordState = 1u << 0;   // a state descriptor follows the index
inline constexpr uint32_t kRecordResume = 1u << 1;  // go on from offset, stream and position
inline constexpr uint32_t kRecordFlagsKnown = kRecordState | kRecordResume;

struct RecordRequest {    // kRecord
  uint64_t ino = 0;       // the relay file (one buffer), by its inode number in the mount
  uint32_t cookie = 0;    // the recorder's number for it, echoed in its events
  uint32_t mem_align = 0; // O_DIRECT memory and file-offset alignment of the output (statx
  uint32_t off_align = 0; // STATX_DIOALIGN): powers of two up to kMaxDirectAlign, 0 without
  uint32_t flags = 0;     // kRecord*
  uint64_t offset = 0;    // where the recording starts in the output file (the bytes it holds)
  uint64_t stream = 0;    // kRecordResume: the buffer recorded (RecordState::stream)
  uint64_t position = 0;  // kRecordResume: the stream position the output ends at
};
inline constexpr uint32_t kMaxDirectAlign = 1u << 20;

struct RecordReply {     // kRecordReply
  int32_t status = 0;    // 0 or -errno; a resume: -ESTALE for another buffer than the state's,
                         // -ERANGE for a position past what the buffer ever held
  uint32_t fixed = 0;    // 1: writes come from io_uring fixed (registered) buffers
  uint32_t buffer = 0;   // index of the buffer in its channel (the CPU)
  uint64_t position = 0; // where the buffer's reader stood when the recording started (stream
                         // position; a resume past it passes over what lies between)
};

enum class RecordKind : uint32_t { kProgress = 1, kEnd = 2 };

// How a recording ended (RecordEvent::ended_by of a kEnd event).
enum RecordEnd : uint32_t {
  kEndClosed = 1,       // the channel closed and the buffer is drained
  kEndStopped = 2,      // kRecordStop, or the recorder went away
  kEndFailed = 3,       // a write to the output file failed (status)
  kEndIndexFailed = 4,  // a write to the index failed (status)
  kEndStateFailed = 5,  // a write to the state file failed (status)
  kEndResumeFailed = 6, // a resume could not pass over what the output already holds (status)
  kEndLast = kEndResumeFailed
};

struct RecordEvent {  // kRecordEvent; totals so far for one recording
  uint32_t cookie = 0;
  RecordKind kind = RecordKind::kProgress;
  int32_t status = 0;     // kEnd: 0, or -errno of the failure that ended it
  uint32_t ended_by = 0;  // kEnd: a RecordEnd
  uint64_t bytes = 0;     // written to the output file (as cat gives them)
  uint64_t subbufs = 0;   // whole sub-buffers written
  uint64_t tail = 0;      // bytes of the last, never-closed sub-buffer
  uint64_t lapped = 0;    // sub-buffers taken back: the writer overwrote them mid-write
  uint64_t direct = 0;    // writes that went with O_DIRECT
  uint64_t fixed = 0;     // writes from fixed buffers
  // The buffer's loss counters at the time (relay(7) ATTRIBUTES), so the recorder can report
  // them after the drained buffer's file is gone: RELAYFS_LOSS_COUNTERS, in its order.
#define RELAYFS_RECORD_EVENT_MEMBER(name, what) uint64_t name = 0;
  RELAYFS_LOSS_COUNTERS(RELAYFS_RECORD_EVENT_MEMBER)
#undef RELAYFS_RECORD_EVENT_MEMBER

  // Takes st's loss counters.
  void set_losses(const core::BufferStats& st) noexcept {
#define RELAYFS_RECORD_EVENT_SET(name, what) name = st.name;
    RELAYFS_LOSS_COUNTERS(RELAYFS_RECORD_EVENT_SET)
#undef RELAYFS_RECORD_EVENT_SET
  }
};

// ioctl on an open relay file (no argument): from now on poll() on this open file reports POLLIN
// only for a whole sub-buffer ready (the kernel's relay poll()), not for any readable byte.
// relay_reader_open sets it on the descriptor it hands out.
inline constexpr unsigned int kIocSubbufPoll = _IO('R', 0x51);

// Encoding: returns the whole message (header + payload).
std::vector<char> encode(const OpenRequest& m, uint32_t seq);  // kAdopt if m.adopt, else kOpen
std::vector<char> encode(const OpenReply& m, uint32_t seq);
std::vector<char> encode(const CloseRequest& m, uint32_t seq);
std::vector<char> encode_status(Type t, const Status& m, uint32_t seq);
std::vector<char> encode_event(Type t, const BufferEvent& m);
std::vector<char> encode_event(Type t, const BellEvent& m);  // kBell, kBellGone, kBellRefused
std::vector<char> encode(const ConsumedRequest& m, uint32_t seq);
std::vector<char> encode(const ReaderOpenRequest& m, uint32_t seq);
std::vector<char> encode(const ReaderOpenReply& m, uint32_t seq);
std::vector<char> encode(const ReaderConsumed& m, uint32_t seq);
std::vector<char> encode(const ControlRequest& m, uint32_t seq);
std::vector<char> encode(const ChannelControl& m, uint32_t seq);
std::vector<char> encode(const RecordRequest& m, uint32_t seq);
std::vector<char> encode(const RecordReply& m, uint32_t seq);
std::vector<char> encode(const RecordEvent& m);

// Checks a header. Returns 0, or -EPROTO (bad magic, unknown type, length above kMaxPayload),
// or -EPROTONOSUPPORT (another protocol version).
int check_header(const Header& h);

// Decoding of a payload whose header passed check_header and whose type matches. Returns 0, or
// -EPROTO when the payload is malformed (wrong size, lengths that do not add up), -ENAMETOOLONG
// for a name above kMaxName bytes, or -EINVAL when a field is out of range (empty name, a name
// with '/' or a control character, "." or "..", unknown flags or mode bits).
int decode(const char* payload, size_t len, OpenRequest* out);  // -EINVAL: adopt >= kMaxFds
int decode(const char* payload, size_t len, OpenReply* out);
int decode(const char* payload, size_t len, CloseRequest* out);
int decode(const char* payload, size_t len, Status* out);
int decode(const char* payload, size_t len, BufferEvent* out);
int decode(const char* payload, size_t len, BellEvent* out);  // -EPROTO: bell 0
int decode(const char* payload, size_t len, ConsumedRequest* out);
int decode(const char* payload, size_t len, ReaderOpenRequest* out);  // -EINVAL: unknown flags
int decode(const char* payload, size_t len, ReaderOpenReply* out);
int decode(const char* payload, size_t len, ReaderConsumed* out);
int decode(const char* payload, size_t len, ControlRequest* out);  // -EINVAL: unknown op
int decode(const char* payload, size_t len, ChannelControl* out);  // -EINVAL: unknown op
int decode(const char* payload, size_t len, RecordRequest* out);   // -EINVAL: bad alignment
int decode(const char* payload, size_t len, RecordReply* out);
int decode(const char* payload, size_t len, RecordEvent* out);     // -EINVAL: unknown kind

// Why name cannot be one directory entry: 0 if it can; -ENAMETOOLONG above kMaxName bytes, as
// the kernel says for a path component; -EINVAL if it is empty, "." or "..", or holds '/', NUL
// or a control character (a name that would break `ls`, scripts and log lines).
int name_error(const std::string& name);
inline bool valid_name(const std::string& name) {
  return name_error(name) == 0;
}

}  // namespace relayfs::proto
