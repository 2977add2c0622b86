// The control protocol: encoding round trips, the parser against malformed input, and messages
// with descriptors over a real socket pair.
#include "proto/protocol.h"
#include "proto/record_state.h"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "proto/wire.h"

using namespace relayfs;
using namespace relayfs::proto;

namespace {

Header header_of(const std::vector<char>& m) {
  Header h;
  std::memcpy(&h, m.data(), sizeof h);
  return h;
}

const char* payload_of(const std::vector<char>& m) {
  return m.data() + sizeof(Header);
}

struct Pair {
  core::UniqueFd a, b;
  Pair() {
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0);
    a.reset(sv[0]);
    b.reset(sv[1]);
  }
};

}  // namespace

TEST_CASE("an open request round-trips") {
  OpenRequest in{42, 4096, 8, 0640, kFlagGlobal, "cpu"};
  const auto m = encode(in, 7);
  const Header h = header_of(m);
  REQUIRE(check_header(h) == 0);
  CHECK(h.type == static_cast<uint16_t>(Type::kOpen));
  CHECK(h.seq == 7);
  OpenRequest out;
  REQUIRE(decode(payload_of(m), h.length, &out) == 0);
  CHECK(out.parent_ino == 42);
  CHECK(out.subbuf_size == 4096);
  CHECK(out.n_subbufs == 8);
  CHECK(out.mode == 0640);
  CHECK(out.flags == kFlagGlobal);
  CHECK(out.base_filename == "cpu");
}

TEST_CASE("an adopt request is an open request with the buffers it hands over") {
  OpenRequest in{42, 4096, 8, 0640, kFlagBlocking, "cpu", 2};
  const auto m = encode(in, 7);
  const Header h = header_of(m);
  REQUIRE(check_header(h) == 0);
  CHECK(h.type == static_cast<uint16_t>(Type::kAdopt));
  OpenRequest out;
  REQUIRE(decode(payload_of(m), h.length, &out) == 0);
  CHECK(out.adopt == 2);
  CHECK(out.base_filename == "cpu");
  in.adopt = kMaxFds;  // more than one message can carry
  const auto bad = encode(in, 8);
  CHECK(decode(payload_of(bad), header_of(bad).length, &out) == -EINVAL);
}

TEST_CASE("every other message round-trips") {
  OpenReply r{0, 3, 2, 4096, 8};
  auto m = encode(r, 1);
  OpenReply r2;
  REQUIRE(decode(payload_of(m), header_of(m).length, &r2) == 0);
  CHECK(r2.channel_id == 3);
  CHECK(r2.n_buffers == 2);
  CloseRequest c{9};
  m = encode(c, 2);
  CloseRequest c2;
  REQUIRE(decode(payload_of(m), header_of(m).length, &c2) == 0);
  CHECK(c2.channel_id == 9);
  m = encode_status(Type::kError, Status{-EINVAL}, 3);
  Status s;
  REQUIRE(decode(payload_of(m), header_of(m).length, &s) == 0);
  CHECK(s.status == -EINVAL);
  m = encode_event(Type::kMapped, BufferEvent{4, 1});
  BufferEvent e;
  REQUIRE(decode(payload_of(m), header_of(m).length, &e) == 0);
  CHECK(e.channel_id == 4);
  CHECK(e.buffer == 1);
  m = encode(ConsumedRequest{5, 1, 3}, 4);
  ConsumedRequest cr;
  REQUIRE(decode(payload_of(m), header_of(m).length, &cr) == 0);
  CHECK(cr.count == 3);
  m = encode(ReaderOpenRequest{77, kReaderBell}, 5);
  ReaderOpenRequest ro;
  REQUIRE(decode(payload_of(m), header_of(m).length, &ro) == 0);
  CHECK(ro.ino == 77);
  CHECK(ro.flags == kReaderBell);
  m = encode(ReaderOpenRequest{77, 1u << 7}, 5);  // a flag nobody knows
  CHECK(decode(payload_of(m), header_of(m).length, &ro) == -EINVAL);
  m = encode_event(Type::kBell, BellEvent{4, 1, 9});
  BellEvent be;
  REQUIRE(decode(payload_of(m), header_of(m).length, &be) == 0);
  CHECK(be.channel_id == 4);
  CHECK(be.buffer == 1);
  CHECK(be.bell == 9);
  m = encode_event(Type::kBellGone, BellEvent{4, 1, 0});  // bell 0 is nobody's
  CHECK(decode(payload_of(m), header_of(m).length, &be) == -EPROTO);
  CHECK(decode(payload_of(m), header_of(m).length - 1, &be) == -EPROTO);
  m = encode(ReaderOpenReply{0, 4096, 8, 1}, 6);
  ReaderOpenReply rr;
  REQUIRE(decode(payload_of(m), header_of(m).length, &rr) == 0);
  CHECK(rr.subbuf_size == 4096);
  CHECK(rr.n_subbufs == 8);
  CHECK(rr.buffer == 1);
  m = encode(ReaderConsumed{2, 1234567890123ull}, 7);
  ReaderConsumed rc;
  REQUIRE(decode(payload_of(m), header_of(m).length, &rc) == 0);
  CHECK(rc.gen == 2);
  CHECK(rc.upto == 1234567890123ull);
  CHECK(check_header(header_of(m)) == 0);
}

TEST_CASE("malformed reader messages are refused") {
  char junk[64] = {};
  ReaderOpenRequest ro;
  CHECK(decode(junk, 7, &ro) == -EPROTO);
  CHECK(decode(junk, 9, &ro) == -EPROTO);
  ReaderOpenReply rr;
  CHECK(decode(junk, 15, &rr) == -EPROTO);
  const int32_t positive = 5;  // statuses are 0 or -errno
  std::memcpy(junk, &positive, 4);
  CHECK(decode(junk, 16, &rr) == -EPROTO);
  ReaderConsumed rc;
  CHECK(decode(junk, 15, &rc) == -EPROTO);
  auto m = encode(ReaderConsumed{1, 2}, 1);
  std::vector<char> bad(payload_of(m), payload_of(m) + header_of(m).length);
  bad[4] = 1;  // the reserved word must be zero
  CHECK(decode(bad.data(), bad.size(), &rc) == -EPROTO);
}

TEST_CASE("outside-control messages round-trip; unknown operations and junk are refused") {
  auto m = encode(ControlRequest{77, ControlOp::kReset}, 3);
  CHECK(header_of(m).type == static_cast<uint16_t>(Type::kControl));
  CHECK(check_header(header_of(m)) == 0);
  ControlRequest cr;
  REQUIRE(decode(payload_of(m), header_of(m).length, &cr) == 0);
  CHECK(cr.ino == 77);
  CHECK(cr.op == ControlOp::kReset);
  std::vector<char> bad(payload_of(m), payload_of(m) + header_of(m).length);
  bad[8] = 4;  // op 4 does not exist
  CHECK(decode(bad.data(), bad.size(), &cr) == -EINVAL);
  bad[8] = 0;
  CHECK(decode(bad.data(), bad.size(), &cr) == -EINVAL);
  bad[8] = 1;
  bad[12] = 1;  // the reserved word must be zero
  CHECK(decode(bad.data(), bad.size(), &cr) == -EPROTO);
  CHECK(decode(bad.data(), bad.size() - 1, &cr) == -EPROTO);

  m = encode(ChannelControl{5, ControlOp::kClose}, 9);
  CHECK(header_of(m).type == static_cast<uint16_t>(Type::kControlRequest));
  CHECK(header_of(m).seq == 9);
  ChannelControl cc;
  REQUIRE(decode(payload_of(m), header_of(m).length, &cc) == 0);
  CHECK(cc.channel_id == 5);
  CHECK(cc.op == ControlOp::kClose);
  std::vector<char> junk(payload_of(m), payload_of(m) + header_of(m).length);
  junk[4] = 9;
  CHECK(decode(junk.data(), junk.size(), &cc) == -EINVAL);
  CHECK(decode(junk.data(), junk.size() - 1, &cc) == -EPROTO);

  Header h{kMagic, kVersion, static_cast<uint16_t>(Type::kControlDone), 8, 0};
  CHECK(check_header(h) == 0);
}

TEST_CASE("recording messages round-trip; bad alignments, kinds and junk are refused") {
  auto m = encode(RecordRequest{42, 7, 512, 4096}, 3);
  CHECK(header_of(m).type == static_cast<uint16_t>(Type::kRecord));
  CHECK(header_of(m).seq == 3);
  RecordRequest rq;
  REQUIRE(decode(payload_of(m), header_of(m).length, &rq) == 0);
  CHECK(rq.ino == 42);
  CHECK(rq.cookie == 7);
  CHECK(rq.mem_align == 512);
  CHECK(rq.off_align == 4096);
  for (uint32_t bad : {3u, 1000u, kMaxDirectAlign * 2}) {
    CAPTURE(bad);
    m = encode(RecordRequest{42, 7, bad, 0}, 3);
    CHECK(decode(payload_of(m), header_of(m).length, &rq) == -EINVAL);
    m = encode(RecordRequest{42, 7, 0, bad}, 3);
    CHECK(decode(payload_of(m), header_of(m).length, &rq) == -EINVAL);
  }
  CHECK(decode(payload_of(m), header_of(m).length - 1, &rq) == -EPROTO);

  // A resume: offset, stream and position go along, and need the state descriptor.
  RecordRequest resume{42, 7, 0, 0, kRecordState | kRecordResume, 8192, 77, 123456};
  m = encode(resume, 3);
  REQUIRE(decode(payload_of(m), header_of(m).length, &rq) == 0);
  CHECK(rq.flags == (kRecordState | kRecordResume));
  CHECK(rq.offset == 8192);
  CHECK(rq.stream == 77);
  CHECK(rq.position == 123456);
  for (RecordRequest bad : {RecordRequest{42, 7, 0, 0, kRecordResume, 1, 1, 1},  // no state
                            RecordRequest{42, 7, 0, 0, kRecordState, 8192, 0, 0},  // not a resume
                            RecordRequest{42, 7, 0, 0, kRecordState, 0, 77, 0},
                            RecordRequest{42, 7, 0, 0, kRecordState, 0, 0, 5},
                            RecordRequest{42, 7, 0, 0, kRecordState | 4u, 0, 0, 0},  // unknown
                            RecordRequest{42, 7, 0, 0, kRecordState | kRecordResume,
                                          uint64_t{1} << 63, 1, 1}}) {  // beyond any off_t
    m = encode(bad, 3);
    CHECK(decode(payload_of(m), header_of(m).length, &rq) == -EINVAL);
  }

  m = encode(RecordReply{0, 1, 2, 99}, 4);
  RecordReply rp;
  REQUIRE(decode(payload_of(m), header_of(m).length, &rp) == 0);
  CHECK(rp.fixed == 1);
  CHECK(rp.buffer == 2);
  CHECK(rp.position == 99);
  m = encode(RecordReply{1, 0, 0}, 4);  // a positive status is not an errno
  CHECK(decode(payload_of(m), header_of(m).length, &rp) == -EPROTO);

  RecordEvent ev{9, RecordKind::kEnd, -ENOSPC, 3, 100, 2, 10, 1, 0, 2, 11, 12, 13, 14, 15};
  m = encode(ev);
  CHECK(header_of(m).type == static_cast<uint16_t>(Type::kRecordEvent));
  RecordEvent got;
  REQUIRE(decode(payload_of(m), header_of(m).length, &got) == 0);
  CHECK(got.cookie == 9);
  CHECK(got.kind == RecordKind::kEnd);
  CHECK(got.status == -ENOSPC);
  CHECK(got.ended_by == 3);
  CHECK(got.bytes == 100);
  CHECK(got.subbufs == 2);
  CHECK(got.tail == 10);
  CHECK(got.lapped == 1);
  CHECK(got.fixed == 2);
  CHECK(got.lost_full == 11);
  CHECK(got.lost_too_big == 12);
  CHECK(got.lost_wrap == 13);
  CHECK(got.overruns == 14);
  CHECK(got.lost_uncommitted == 15);
  std::vector<char> junk(payload_of(m), payload_of(m) + header_of(m).length);
  junk[4] = 5;  // kind
  CHECK(decode(junk.data(), junk.size(), &got) == -EINVAL);

  Header h{kMagic, kVersion, static_cast<uint16_t>(Type::kRecordEvent), 8, 0};
  CHECK(check_header(h) == 0);
  h.type = static_cast<uint16_t>(Type::kLastType) + 1;
  CHECK(check_header(h) == -EPROTO);
}

TEST_CASE("a record event carries every loss counter of the table, at protocol 2's offsets") {
  RecordEvent ev{};
  ev.cookie = 1;
  ev.kind = RecordKind::kEnd;
  ev.ended_by = kEndIndexFailed;
  uint64_t v = 100;
#define SET_COUNTER(name, what) ev.name = v++;
  RELAYFS_LOSS_COUNTERS(SET_COUNTER)
#undef SET_COUNTER
  const auto m = encode(ev);
  // 16 bytes of cookie, kind, status and ended_by, six totals, then the nine loss counters in
  // the table's order: the layout protocol 2 peers expect.
  REQUIRE(header_of(m).length == 16 + 6 * 8 + 9 * 8);
  for (uint64_t i = 0; i < 9; ++i) {
    uint64_t w;
    std::memcpy(&w, payload_of(m) + 16 + 6 * 8 + i * 8, sizeof w);
    CHECK(w == 100 + i);
  }
  RecordEvent got;
  REQUIRE(decode(payload_of(m), header_of(m).length, &got) == 0);
  CHECK(got.ended_by == kEndIndexFailed);
  v = 100;
#define CHECK_COUNTER(name, what) CHECK_MESSAGE(got.name == v++, #name);
  RELAYFS_LOSS_COUNTERS(CHECK_COUNTER)
#undef CHECK_COUNTER
  std::vector<char> junk(payload_of(m), payload_of(m) + header_of(m).length);
  junk[12] = kEndLast + 1;  // ended_by
  CHECK(decode(junk.data(), junk.size(), &got) == -EPROTO);
}

TEST_CASE("control ops convert from their numbers only when known") {
  ControlOp op = ControlOp::kFlush;
  CHECK(control_op(2, &op));
  CHECK(op == ControlOp::kReset);
  for (uint32_t bad : {0u, 4u, 0xffffffffu}) {
    CHECK_FALSE(control_op(bad, &op));
    CHECK(op == ControlOp::kReset);  // untouched
  }
}

TEST_CASE("headers with a bad magic, version, type or length are refused") {
  Header h{kMagic, kVersion, static_cast<uint16_t>(Type::kOpen), 10, 0};
  CHECK(check_header(h) == 0);
  Header bad = h;
  bad.magic = 0x12345678;
  CHECK(check_header(bad) == -EPROTO);
  bad = h;
  bad.version = kVersion + 1;
  CHECK(check_header(bad) == -EPROTONOSUPPORT);
  bad.version = kVersion - 1;  // the last version's peers: refused, not misread
  CHECK(check_header(bad) == -EPROTONOSUPPORT);
  bad = h;
  bad.type = 0;
  CHECK(check_header(bad) == -EPROTO);
  bad.type = 999;
  CHECK(check_header(bad) == -EPROTO);
  bad.type = static_cast<uint16_t>(Type::kLastType) + 1;  // the last type + 1
  CHECK(check_header(bad) == -EPROTO);
  bad = h;
  bad.length = kMaxPayload + 1;
  CHECK(check_header(bad) == -EPROTO);
}

TEST_CASE("malformed open payloads are refused without reading past them") {
  const auto good = encode(OpenRequest{1, 4096, 4, 0, 0, "x"}, 0);
  const size_t len = header_of(good).length;
  OpenRequest out;
  SUBCASE("every truncation") {
    for (size_t n = 0; n < len; ++n) {
      std::vector<char> cut(payload_of(good),
                            payload_of(good) + n);  // heap copy: ASan sees overreads
      CHECK(decode(cut.data(), n, &out) == -EPROTO);
    }
  }
  SUBCASE("a name length that does not match") {
    std::vector<char> p(payload_of(good), payload_of(good) + len);
    p.push_back('y');
    CHECK(decode(p.data(), p.size(), &out) == -EPROTO);
  }
  SUBCASE("unknown flags, mode bits and bad names") {
    CHECK(decode(payload_of(encode(OpenRequest{1, 1, 1, 0, 0x80, "x"}, 0)), len, &out) == -EINVAL);
    CHECK(decode(payload_of(encode(OpenRequest{1, 1, 1, 010000, 0, "x"}, 0)), len, &out) ==
          -EINVAL);
    for (const char* name : {".", "..", "a/b", "/", "tab\there", "nl\n"}) {
      CAPTURE(name);
      const auto m = encode(OpenRequest{1, 1, 1, 0, 0, name}, 0);
      CHECK(decode(payload_of(m), header_of(m).length, &out) == -EINVAL);
    }
    const auto empty = encode(OpenRequest{1, 1, 1, 0, 0, ""}, 0);
    CHECK(decode(payload_of(empty), header_of(empty).length, &out) == -EINVAL);
    const auto longname = encode(OpenRequest{1, 1, 1, 0, 0, std::string(256, 'a')}, 0);
    CHECK(decode(payload_of(longname), header_of(longname).length, &out) == -ENAMETOOLONG);
    const auto maxname = encode(OpenRequest{1, 1, 1, 0, 0, std::string(255, 'a')}, 0);
    CHECK(decode(payload_of(maxname), header_of(maxname).length, &out) == 0);
  }
}

TEST_CASE("valid_name accepts ordinary names, including UTF-8") {
  CHECK(valid_name("cpu"));
  CHECK(valid_name("trace-2026.log"));
  CHECK(valid_name("caf\xc3\xa9"));
  CHECK_FALSE(valid_name(std::string("a\0b", 3)));
  CHECK_FALSE(valid_name("del\x7f"));
}

TEST_CASE("name_error says why: -ENAMETOOLONG above NAME_MAX, -EINVAL for the rest") {
  CHECK(name_error(std::string(255, 'a')) == 0);
  CHECK(name_error(std::string(256, 'a')) == -ENAMETOOLONG);
  CHECK(name_error(std::string(10000, '/')) == -ENAMETOOLONG);  // length is judged first
  for (const char* bad : {"", ".", "..", "/", "a/b", "a\nb", "\x01", "tab\t", "del\x7f"}) {
    CAPTURE(bad);
    CHECK(name_error(bad) == -EINVAL);
  }
  CHECK(name_error(std::string("a\0b", 3)) == -EINVAL);
  CHECK(name_error("...") == 0);  // only "." and ".." are special
}

TEST_CASE("messages carry descriptors over a seqpacket socket") {
  Pair p;
  core::UniqueFd memfd(::memfd_create("t", MFD_CLOEXEC));
  REQUIRE(memfd);
  REQUIRE(::write(memfd.get(), "hello", 5) == 5);
  const int fds[] = {memfd.get()};
  REQUIRE(send_message(p.a.get(), encode(OpenReply{0, 1, 1, 4096, 2}, 5), fds, 1) == 0);
  Received r;
  REQUIRE(recv_message(p.b.get(), &r, 4) == 1);
  CHECK(r.header.seq == 5);
  REQUIRE(r.fds.size() == 1);
  char buf[5];
  CHECK(::pread(r.fds[0].get(), buf, 5, 0) == 5);
  CHECK(std::string(buf, 5) == "hello");
}

TEST_CASE("the receiver refuses garbage, short and lying messages, and survives them") {
  Pair p;
  Received r;
  SUBCASE("garbage") {
    REQUIRE(::send(p.a.get(), "not a message at all", 20, 0) == 20);
    CHECK(recv_message(p.b.get(), &r) == -EPROTO);
  }
  SUBCASE("shorter than a header") {
    REQUIRE(::send(p.a.get(), "abc", 3, 0) == 3);
    CHECK(recv_message(p.b.get(), &r) == -EPROTO);
  }
  SUBCASE("a length that is not what arrived") {
    auto m = encode(CloseRequest{1}, 0);
    Header h = header_of(m);
    h.length += 4;
    std::memcpy(m.data(), &h, sizeof h);
    REQUIRE(send_message(p.a.get(), m) == 0);
    CHECK(recv_message(p.b.get(), &r) == -EPROTO);
  }
  SUBCASE("descriptors nobody asked for are closed, not leaked") {
    core::UniqueFd extra(::memfd_create("extra", MFD_CLOEXEC));
    const int fds[] = {extra.get()};
    REQUIRE(send_message(p.a.get(), encode(CloseRequest{1}, 0), fds, 1) == 0);
    CHECK(recv_message(p.b.get(), &r, 0) == -EPROTO);  // control data truncated
    CHECK(r.fds.empty());
  }
  // The next, good message still arrives whole.
  REQUIRE(send_message(p.a.get(), encode(CloseRequest{8}, 9)) == 0);
  REQUIRE(recv_message(p.b.get(), &r) == 1);
  CloseRequest c;
  REQUIRE(decode(r.payload.data(), r.payload.size(), &c) == 0);
  CHECK(c.channel_id == 8);
  p.a.reset();
  CHECK(recv_message(p.b.get(), &r) == 0);  // end of stream
}

TEST_CASE("a recording's state file round-trips, and anything else is refused, not half read") {
  RecordState s{77, 1, 4096, 8, 2, 40, 163636, true, 151360};
  const std::string text = format_record_state(s);
  REQUIRE(text.size() == kRecordStateSize);
  CHECK(text.back() == '\n');
  RecordState got;
  REQUIRE(parse_record_state(text.data(), text.size(), &got) == 0);
  CHECK(got.stream == 77);
  CHECK(got.buffer == 1);
  CHECK(got.subbuf_size == 4096);
  CHECK(got.n_subbufs == 8);
  CHECK(got.gen == 2);
  CHECK(got.seq == 40);
  CHECK(got.position == 163636);
  CHECK(got.exact);
  CHECK(got.offset == 151360);
  CHECK(parse_record_state("", 0, &got) == -ENODATA);  // nothing recorded yet
  CHECK(parse_record_state(text.data(), text.size() - 1, &got) == -EINVAL);  // torn
  for (size_t at : {size_t{0}, text.find("position=") + 9, text.find("offset=") + 7,
                    text.find("sum=") + 4, text.size() - 2}) {
    CAPTURE(at);
    std::string bad = text;
    bad[at] = bad[at] == '1' ? '2' : '1';  // one character changed
    CHECK(parse_record_state(bad.data(), bad.size(), &got) == -EINVAL);
  }
  std::string nul = text;
  nul[text.size() - 3] = '\0';
  CHECK(parse_record_state(nul.data(), nul.size(), &got) == -EINVAL);
  std::string plus = text;  // a sign sscanf would take
  plus.insert(plus.find("position=") + 9, "+");
  plus.pop_back();
  plus.back() = '\n';
  CHECK(parse_record_state(plus.data(), plus.size(), &got) == -EINVAL);
}
