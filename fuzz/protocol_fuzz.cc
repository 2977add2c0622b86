// libFuzzer target: the control protocol as the daemon receives it from a producer.
//
// The input is one message exactly as a peer would send it (header + payload). It goes through
// a real SOCK_SEQPACKET socket pair into recv_message (framing, header and length checks), and
// what is accepted is decoded the way the daemon's on_message dispatches it. Every decoder, the
// daemon's and the client's, is also run over the raw payload, whatever the header says.
//
// Beyond "no crash, no out-of-bounds access" (ASan, UBSan), each accepted message is checked:
// decoders return only 0, -EPROTO, -EINVAL or -ENAMETOOLONG; an accepted open request has a
// valid name, known flags and mode bits, and re-encodes to a message that decodes to the same
// request.
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/geometry.h"
#include "proto/protocol.h"
#include "proto/wire.h"

using namespace relayfs;
using namespace relayfs::proto;

namespace {

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "protocol_fuzz: %s\n", what);
  std::abort();
}

void check_rc(int rc) {
  if (rc != 0 && rc != -EPROTO && rc != -EINVAL && rc != -ENAMETOOLONG)
    fail("a decoder returned an undocumented code");
}

// A decoder over a heap copy of exactly len bytes, so that ASan sees any read past the payload.
template <typename M>
int decode_copy(const char* p, size_t len, M* out) {
  std::vector<char> copy(p, p + len);
  const int rc = decode(copy.empty() ? nullptr : copy.data(), len, out);
  check_rc(rc);
  return rc;
}

template <typename M>
void decode_as(const char* p, size_t len) {
  M m;
  decode_copy(p, len, &m);
}

void check_open(const OpenRequest& r, size_t len) {
  if (!valid_name(r.base_filename)) fail("an open request with an invalid name was accepted");
  if (r.base_filename.size() > kMaxName) fail("an over-long name was accepted");
  if (r.flags & ~kFlagsKnown) fail("unknown flags were accepted");
  if (r.mode & ~07777u) fail("mode bits above 07777 were accepted");
  if (len != 32 + r.base_filename.size()) fail("an open payload of the wrong size was accepted");
  // The daemon's next step: the geometry is checked, never trusted.
  core::Geometry g;
  const int rc = core::make_geometry(r.subbuf_size, r.n_subbufs, &g);
  if (rc != 0 && rc != -EINVAL && rc != -EFBIG) fail("make_geometry returned an undocumented code");
  if (rc == 0 && (g.data_size() == 0 || g.data_size() > core::kMaxBufferBytes))
    fail("make_geometry accepted a size outside its limits");
  // Round trip: what the daemon understood is what the producer meant.
  const auto again = encode(r, 1);
  OpenRequest r2;
  if (decode(again.data() + sizeof(Header), again.size() - sizeof(Header), &r2) != 0 ||
      r2.parent_ino != r.parent_ino || r2.subbuf_size != r.subbuf_size ||
      r2.n_subbufs != r.n_subbufs || r2.mode != r.mode || r2.flags != r.flags ||
      r2.base_filename != r.base_filename)
    fail("an accepted open request does not survive encode/decode");
}

// What ControlServer::on_message does with a message of this type.
void dispatch(const Received& m) {
  const char* p = m.payload.data();
  const size_t len = m.payload.size();
  switch (static_cast<Type>(m.header.type)) {
    case Type::kOpen: {
      OpenRequest r;
      if (decode_copy(p, len, &r) == 0) check_open(r, len);
      break;
    }
    case Type::kClose:
      decode_as<CloseRequest>(p, len);
      break;
    case Type::kConsumed:
      decode_as<ConsumedRequest>(p, len);
      break;
    case Type::kReaderOpen:
      decode_as<ReaderOpenRequest>(p, len);
      break;
    case Type::kReaderConsumed:
      decode_as<ReaderConsumed>(p, len);
      break;
    case Type::kRecord: {
      RecordRequest r;
      if (decode_copy(p, len, &r) == 0 &&
          ((r.mem_align & (r.mem_align - 1)) != 0 || (r.off_align & (r.off_align - 1)) != 0 ||
           r.mem_align > kMaxDirectAlign || r.off_align > kMaxDirectAlign))
        fail("a record request with an impossible alignment was accepted");
      if (decode_copy(p, len, &r) == 0 &&
          ((r.flags & ~kRecordFlagsKnown) != 0 ||
           ((r.flags & kRecordResume) && !(r.flags & kRecordState)) ||
           (!(r.flags & kRecordResume) && (r.offset | r.stream | r.position) != 0)))
        fail("an impossible record request was accepted");
      break;
    }
    case Type::kRecordStop:
      decode_as<Status>(p, len);
      break;
    default:  // replies and events: the daemon refuses them from a producer
      break;
  }
}

// Every decoder over the raw bytes (the client decodes the replies and events).
void decode_all(const char* p, size_t len) {
  OpenRequest a;
  if (decode_copy(p, len, &a) == 0) check_open(a, len);
  OpenReply b;
  if (decode_copy(p, len, &b) == 0 && (b.status > 0 || (b.status == 0 && b.n_buffers == 0)))
    fail("an impossible open reply was accepted");
  decode_as<CloseRequest>(p, len);
  Status d;
  if (decode_copy(p, len, &d) == 0 && d.status > 0) fail("a positive status was accepted");
  decode_as<BufferEvent>(p, len);
  decode_as<ConsumedRequest>(p, len);
  decode_as<ReaderOpenRequest>(p, len);
  ReaderOpenReply h;
  if (decode_copy(p, len, &h) == 0 && h.status > 0) fail("a positive reader status was accepted");
  decode_as<ReaderConsumed>(p, len);
  decode_as<RecordRequest>(p, len);
  RecordReply i;
  if (decode_copy(p, len, &i) == 0 && (i.status > 0 || i.fixed > 1))
    fail("an impossible record reply was accepted");
  RecordEvent j;
  if (decode_copy(p, len, &j) == 0 && j.status > 0) fail("a positive record status was accepted");
}

struct Socket {
  int send_fd = -1, recv_fd = -1;
  Socket() {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) fail("socketpair");
    send_fd = sv[0];
    recv_fd = sv[1];
    // Room for the largest input the run script allows (-max_len) and then some.
    const int size = 1 << 20;
    ::setsockopt(send_fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    ::setsockopt(recv_fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Socket sock;
  if (size == 0 || size > 65536) return -1;  // not a message a seqpacket socket can frame here
  const std::vector<char> msg(data, data + size);
  if (send_message(sock.send_fd, msg) != 0) return 0;
  Received r;
  const int rc = recv_message(sock.recv_fd, &r);
  if (rc == 1) {
    if (check_header(r.header) != 0) fail("recv_message accepted a bad header");
    if (r.payload.size() != r.header.length || r.payload.size() > kMaxPayload)
      fail("recv_message accepted a payload of the wrong length");
    if (!r.fds.empty()) fail("descriptors appeared from nowhere");
    dispatch(r);
  } else if (rc != -EPROTO && rc != -EPROTONOSUPPORT) {
    fail("recv_message returned an undocumented code for a whole message");
  }
  // The raw payload (whatever follows 16 bytes), through every decoder.
  if (size >= sizeof(Header))
    decode_all(reinterpret_cast<const char*>(data) + sizeof(Header), size - sizeof(Header));
  decode_all(reinterpret_cast<const char*>(data), size);
  return 0;
}
