#include "proto/protocol.h"

#include <cerrno>
#include <cstdint>
#include <cstring>

namespace relayfs::proto {

namespace {

// Appends a header and the fixed part of a payload.
template <typename Fixed>
std::vector<char> message(Type t, uint32_t seq, const Fixed& fixed, const std::string& tail = {}) {
  const Header h{kMagic, kVersion, static_cast<uint16_t>(t),
                 static_cast<uint32_t>(sizeof(Fixed) + tail.size()), seq};
  std::vector<char> out(sizeof h + sizeof fixed);
  std::memcpy(out.data(), &h, sizeof h);
  std::memcpy(out.data() + sizeof h, &fixed, sizeof fixed);
  out.insert(out.end(), tail.begin(), tail.end());
  return out;
}

// Wire forms: fixed-size, no pointers, explicit padding.
struct OpenWire {
  uint64_t parent_ino;
  uint32_t subbuf_size;
  uint32_t n_subbufs;
  uint32_t mode;
  uint32_t flags;
  uint32_t name_len;
  uint32_t adopt;  // OpenRequest::adopt
};
struct OpenReplyWire {
  int32_t status;
  uint32_t channel_id;
  uint32_t n_buffers;
  uint32_t subbuf_size;
  uint32_t n_subbufs;
  uint32_t reserved;
};
struct CloseWire {
  uint32_t channel_id;
  uint32_t reserved;
};
struct StatusWire {
  int32_t status;
  uint32_t reserved;
};
struct EventWire {
  uint32_t channel_id;
  uint32_t buffer;
};
struct ConsumedWire {
  uint32_t channel_id;
  uint32_t buffer;
  uint64_t count;
};

struct ReaderOpenWire {
  uint64_t ino;
  uint32_t flags;
  uint32_t reserved;
};
struct BellWire {
  uint32_t channel_id;
  uint32_t buffer;
  uint32_t bell;
};
struct ReaderOpenReplyWire {
  int32_t status;
  uint32_t subbuf_size;
  uint32_t n_subbufs;
  uint32_t buffer;
};
struct ReaderConsumedWire {
  uint32_t gen;
  uint32_t reserved;
  uint64_t upto;
};

struct ControlWire {
  uint64_t ino;
  uint32_t op;
  uint32_t reserved;
};
struct ChannelControlWire {
  uint32_t channel_id;
  uint32_t op;
};

template <typename Wire>
int fixed(const char* p, size_t len, Wire* w, size_t* tail) {
  if (len < sizeof(Wire)) return -EPROTO;
  std::memcpy(w, p, sizeof(Wire));
  *tail = len - sizeof(Wire);
  return 0;
}

struct RecordWire {
  uint64_t ino;
  uint32_t cookie;
  uint32_t mem_align;
  uint32_t off_align;
  uint32_t flags;
  uint64_t offset;
  uint64_t stream;
  uint64_t position;
};
struct RecordReplyWire {
  int32_t status;
  uint32_t fixed;
  uint32_t buffer;
  uint32_t reserved;
  uint64_t position;
};
struct RecordEventWire {
  uint32_t cookie;
  uint32_t kind;
  int32_t status;
  uint32_t ended_by;
  uint64_t bytes, subbufs, tail, lapped, direct, fixed;
#define RELAYFS_WIRE_MEMBER(name, what) uint64_t name;
  RELAYFS_LOSS_COUNTERS(RELAYFS_WIRE_MEMBER)
#undef RELAYFS_WIRE_MEMBER
};
// Protocol 2's layout, nine loss counters: a counter added to RELAYFS_LOSS_COUNTERS changes the
// message, and kVersion with it.
static_assert(sizeof(RecordEventWire) == 16 + 6 * 8 + 9 * 8);

// A recording's totals, between RecordEvent and its wire form (the same names).
template <typename From, typename To>
void copy_totals(const From& f, To* t) {
  t->cookie = f.cookie;
  t->status = f.status;
  t->ended_by = f.ended_by;
  t->bytes = f.bytes;
  t->subbufs = f.subbufs;
  t->tail = f.tail;
  t->lapped = f.lapped;
  t->direct = f.direct;
  t->fixed = f.fixed;
#define RELAYFS_COPY_COUNTER(name, what) t->name = f.name;
  RELAYFS_LOSS_COUNTERS(RELAYFS_COPY_COUNTER)
#undef RELAYFS_COPY_COUNTER
}

// A payload that is exactly one Wire and nothing after it.
template <typename Wire>
int exact(const char* p, size_t len, Wire* w) {
  size_t tail;
  if (int rc = fixed(p, len, w, &tail); rc) return rc;
  return tail == 0 ? 0 : -EPROTO;
}

// Decodes a message with nothing to check beyond its size: *out = make(the Wire).
template <typename Wire, typename Out, typename Make>
int plain(const char* p, size_t len, Out* out, Make make) {
  Wire w;
  if (int rc = exact(p, len, &w); rc) return rc;
  *out = make(w);
  return 0;
}

}  // namespace

int name_error(const std::string& name) {
  if (name.size() > kMaxName) return -ENAMETOOLONG;
  if (name.empty() || name == "." || name == "..") return -EINVAL;
  for (unsigned char c : name)
    if (c == '/' || c < 0x20 || c == 0x7f) return -EINVAL;
  return 0;
}

int check_header(const Header& h) {
  if (h.magic != kMagic) return -EPROTO;
  if (h.version != kVersion) return -EPROTONOSUPPORT;
  if (h.type < static_cast<uint16_t>(Type::kOpen) ||
      h.type > static_cast<uint16_t>(Type::kLastType))
    return -EPROTO;
  if (h.length > kMaxPayload) return -EPROTO;
  return 0;
}

std::vector<char> encode(const OpenRequest& m, uint32_t seq) {
  const OpenWire w{m.parent_ino,
                   m.subbuf_size,
                   m.n_subbufs,
                   m.mode,
                   m.flags,
                   static_cast<uint32_t>(m.base_filename.size()),
                   m.adopt};
  return message(m.adopt ? Type::kAdopt : Type::kOpen, seq, w, m.base_filename);
}

std::vector<char> encode(const OpenReply& m, uint32_t seq) {
  const OpenReplyWire w{m.status, m.channel_id, m.n_buffers, m.subbuf_size, m.n_subbufs, 0};
  return message(Type::kOpenReply, seq, w);
}

std::vector<char> encode(const CloseRequest& m, uint32_t seq) {
  return message(Type::kClose, seq, CloseWire{m.channel_id, 0});
}

std::vector<char> encode_status(Type t, const Status& m, uint32_t seq) {
  return message(t, seq, StatusWire{m.status, 0});
}

std::vector<char> encode_event(Type t, const BufferEvent& m) {
  return message(t, 0, EventWire{m.channel_id, m.buffer});
}

std::vector<char> encode_event(Type t, const BellEvent& m) {
  return message(t, 0, BellWire{m.channel_id, m.buffer, m.bell});
}

std::vector<char> encode(const ConsumedRequest& m, uint32_t seq) {
  return message(Type::kConsumed, seq, ConsumedWire{m.channel_id, m.buffer, m.count});
}

int decode(const char* p, size_t len, ConsumedRequest* out) {
  return plain<ConsumedWire>(p, len, out, [](const ConsumedWire& w) {
    return ConsumedRequest{w.channel_id, w.buffer, w.count};
  });
}

int decode(const char* p, size_t len, OpenRequest* out) {
  OpenWire w;
  size_t tail;
  if (int rc = fixed(p, len, &w, &tail); rc) return rc;
  if (w.name_len != tail) return -EPROTO;
  if (w.adopt >= kMaxFds) return -EINVAL;  // the buffers' fds could not all come with it
  out->adopt = w.adopt;
  out->parent_ino = w.parent_ino;
  out->subbuf_size = w.subbuf_size;
  out->n_subbufs = w.n_subbufs;
  out->mode = w.mode;
  out->flags = w.flags;
  out->base_filename.assign(p + sizeof w, tail);
  if ((w.flags & ~kFlagsKnown) != 0 || (w.mode & ~07777u) != 0) return -EINVAL;
  return name_error(out->base_filename);
}

int decode(const char* p, size_t len, OpenReply* out) {
  OpenReplyWire w;
  if (int rc = exact(p, len, &w); rc) return rc;
  if (w.status > 0 || (w.status == 0 && (w.n_buffers == 0 || w.n_buffers >= kMaxFds)))
    return -EPROTO;
  *out = {w.status, w.channel_id, w.n_buffers, w.subbuf_size, w.n_subbufs};
  return 0;
}

int decode(const char* p, size_t len, CloseRequest* out) {
  return plain<CloseWire>(p, len, out, [](const CloseWire& w) { return CloseRequest{w.channel_id}; });
}

int decode(const char* p, size_t len, Status* out) {
  StatusWire w;
  if (int rc = exact(p, len, &w); rc) return rc;
  if (w.status > 0) return -EPROTO;
  out->status = w.status;
  return 0;
}

int decode(const char* p, size_t len, BufferEvent* out) {
  return plain<EventWire>(p, len, out,
                          [](const EventWire& w) { return BufferEvent{w.channel_id, w.buffer}; });
}

int decode(const char* p, size_t len, BellEvent* out) {
  BellWire w;
  if (int rc = exact(p, len, &w); rc) return rc;
  if (w.bell == 0) return -EPROTO;
  *out = {w.channel_id, w.buffer, w.bell};
  return 0;
}

std::vector<char> encode(const ReaderOpenRequest& m, uint32_t seq) {
  return message(Type::kReaderOpen, seq, ReaderOpenWire{m.ino, m.flags, 0});
}

std::vector<char> encode(const ReaderOpenReply& m, uint32_t seq) {
  return message(Type::kReaderOpenReply, seq,
                 ReaderOpenReplyWire{m.status, m.subbuf_size, m.n_subbufs, m.buffer});
}

std::vector<char> encode(const ReaderConsumed& m, uint32_t seq) {
  return message(Type::kReaderConsumed, seq, ReaderConsumedWire{m.gen, 0, m.upto});
}

int decode(const char* p, size_t len, ReaderOpenRequest* out) {
  ReaderOpenWire w;
  if (int rc = exact(p, len, &w); rc) return rc;
  if (w.reserved != 0) return -EPROTO;
  if (w.flags & ~kReaderFlagsKnown) return -EINVAL;
  *out = {w.ino, w.flags};
  return 0;
}

int decode(const char* p, size_t len, ReaderOpenReply* out) {
  ReaderOpenReplyWire w;
  if (int rc = exact(p, len, &w); rc) return rc;
  if (w.status > 0) return -EPROTO;
  *out = {w.status, w.subbuf_size, w.n_subbufs, w.buffer};
  return 0;
}

int decode(const char* p, size_t len, ReaderConsumed* out) {
  ReaderConsumedWire w;
  if (int rc = exact(p, len, &w); rc) return rc;
  if (w.reserved != 0) return -EPROTO;
  *out = {w.gen, w.upto};
  return 0;
}

std::vector<char> encode(const ControlRequest& m, uint32_t seq) {
  return message(Type::kControl, seq, ControlWire{m.ino, static_cast<uint32_t>(m.op), 0});
}

std::vector<char> encode(const ChannelControl& m, uint32_t seq) {
  return message(Type::kControlRequest, seq,
                 ChannelControlWire{m.channel_id, static_cast<uint32_t>(m.op)});
}

int decode(const char* p, size_t len, ControlRequest* out) {
  ControlWire w;
  if (int rc = exact(p, len, &w); rc) return rc;
  if (w.reserved != 0) return -EPROTO;
  if (!control_op(w.op, &out->op)) return -EINVAL;
  out->ino = w.ino;
  return 0;
}

int decode(const char* p, size_t len, ChannelControl* out) {
  ChannelControlWire w;
  if (int rc = exact(p, len, &w); rc) return rc;
  if (!control_op(w.op, &out->op)) return -EINVAL;
  out->channel_id = w.channel_id;
  return 0;
}

namespace {
bool valid_align(uint32_t a) {
  return a == 0 || (a <= kMaxDirectAlign && (a & (a - 1)) == 0);
}
}  // namespace

std::vector<char> encode(const RecordRequest& m, uint32_t seq) {
  return message(Type::kRecord, seq,
                 RecordWire{m.ino, m.cookie, m.mem_align, m.off_align, m.flags, m.offset,
                            m.stream, m.position});
}

std::vector<char> encode(const RecordReply& m, uint32_t seq) {
  return message(Type::kRecordReply, seq,
                 RecordReplyWire{m.status, m.fixed, m.buffer, 0, m.position});
}

std::vector<char> encode(const RecordEvent& m) {
  RecordEventWire w{};
  copy_totals(m, &w);
  w.kind = static_cast<uint32_t>(m.kind);
  return message(Type::kRecordEvent, 0, w);
}

int decode(const char* p, size_t len, RecordRequest* out) {
  RecordWire w;
  if (int rc = exact(p, len, &w); rc) return rc;
  if (!valid_align(w.mem_align) || !valid_align(w.off_align)) return -EINVAL;
  // A resume writes its state as it goes: it needs the state descriptor.
  if ((w.flags & ~kRecordFlagsKnown) != 0 ||
      ((w.flags & kRecordResume) && !(w.flags & kRecordState)))
    return -EINVAL;
  // Only a resume continues an output: offset, stream and position are a resume's.
  if (!(w.flags & kRecordResume) && (w.offset != 0 || w.stream != 0 || w.position != 0))
    return -EINVAL;
  if (w.offset > static_cast<uint64_t>(INT64_MAX)) return -EINVAL;  // beyond any off_t
  *out = {w.ino, w.cookie, w.mem_align, w.off_align, w.flags, w.offset, w.stream, w.position};
  return 0;
}

int decode(const char* p, size_t len, RecordReply* out) {
  RecordReplyWire w;
  if (int rc = exact(p, len, &w); rc) return rc;
  if (w.status > 0 || w.fixed > 1 || w.reserved != 0) return -EPROTO;
  *out = {w.status, w.fixed, w.buffer, w.position};
  return 0;
}

int decode(const char* p, size_t len, RecordEvent* out) {
  RecordEventWire w;
  if (int rc = exact(p, len, &w); rc) return rc;
  if (w.status > 0 || w.ended_by > kEndLast) return -EPROTO;
  if (w.kind != static_cast<uint32_t>(RecordKind::kProgress) &&
      w.kind != static_cast<uint32_t>(RecordKind::kEnd))
    return -EINVAL;
  copy_totals(w, out);
  out->kind = static_cast<RecordKind>(w.kind);
  return 0;
}

}  // namespace relayfs::proto
