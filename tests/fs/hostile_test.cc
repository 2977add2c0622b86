// Hostile names, geometry and record sizes through a real mount: through the producer library
// (relay_open, relay_write, ...), raw to the daemon's control socket (bypassing the library's own
// checks), and through the kernel (mkdir). Each gets its own clear errno, and nothing else is
// disturbed: a bystander channel opened first keeps every record, the directory holds no
// half-made files, and the daemon goes on serving.
#include <dirent.h>
#include <doctest/doctest.h>
#include <relayfs/relay.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <set>
#include <string>

#include "proto/protocol.h"
#include "proto/wire.h"
#include "helpers.h"
#include "mount.h"

using namespace relayfs::test;
namespace proto = relayfs::proto;

namespace {

// relay_open's answer as an errno: 0 if it opened the channel (which is then closed again).
int open_errno(const std::string& base, const std::string& dir, size_t subbuf, size_t n,
               bool global = false) {
  rchan_callbacks cb{};
  if (global) cb.create_buf_file = &make_global<0400>;
  errno = 0;
  rchan* c = relay_open(base.c_str(), dir.c_str(), subbuf, n, &cb, nullptr);
  if (!c) return errno;
  REQUIRE(relay_close(c) == 0);
  return 0;
}

// An open request sent raw on connection s; the daemon's answer as an errno (0: it created the
// channel, owned by s until s closes).
int raw_open(int s, const proto::OpenRequest& req, uint32_t seq) {
  return control_answer(s, proto::encode(req, seq));
}

// Decimal digits of the largest CPU number: what the per-CPU file names add to the base name.
size_t cpu_digits() {
  return std::to_string(ncpus() - 1).size();
}

}  // namespace

TEST_CASE("hostile channel names get EINVAL or ENAMETOOLONG from relay_open, and nothing else") {
  Mount m;
  REQUIRE(::mkdir(m.path("app").c_str(), 0755) == 0);
  const std::string app = m.path("app");
  Bystander keep(app, "keep");
  const auto before = entries(app);
  struct Case {
    std::string name;
    int err;
  };
  const size_t fits = proto::kMaxName - cpu_digits();  // longest per-CPU base name
  const Case cases[] = {
      {"", EINVAL},
      {".", EINVAL},
      {"..", EINVAL},
      {"/", EINVAL},
      {"a/b", EINVAL},
      {"../escape", EINVAL},
      {"\n", EINVAL},
      {"line\nbreak", EINVAL},
      {"\x01", EINVAL},
      {"bell\a", EINVAL},
      {"esc\x1b[31m", EINVAL},
      {"del\x7f", EINVAL},
      {std::string(fits + 1, 'l'), ENAMETOOLONG},  // fits alone, not with its CPU number
      {std::string(proto::kMaxName, 'l'), ENAMETOOLONG},
      {std::string(proto::kMaxName + 1, 'l'), ENAMETOOLONG},       // above NAME_MAX by itself
      {std::string(proto::kMaxPayload + 100, 'l'), ENAMETOOLONG},  // above the protocol's limit
  };
  for (const Case& c : cases) {
    CAPTURE(c.name.size());
    CAPTURE(c.name.substr(0, 16));
    CHECK(open_errno(c.name, app, 4096, 4) == c.err);
    keep.write_more();
  }
  // No half-made channel was left behind, and names at the limits do work.
  CHECK(entries(app) == before);
  CHECK(open_errno(std::string(fits, 'f'), app, 4096, 4) == 0);
  CHECK(open_errno(std::string(proto::kMaxName - 1, 'g'), app, 4096, 4, true) == 0);  // g..g0
  CHECK(open_errno(std::string(proto::kMaxName, 'g'), app, 4096, 4, true) == ENAMETOOLONG);
  CHECK(open_errno("caf\xc3\xa9 \xe2\x9c\x93", app, 4096, 4) == 0);  // UTF-8 and a space are fine
  keep.check();
  CHECK(is_mounted(m.dir));
}

TEST_CASE("hostile names and fields sent raw to the control socket are refused the same way") {
  Mount m;
  Bystander keep(m.dir, "keep");
  const uint64_t root = ino_of(m.dir);
  const int s = connect_control(m.dir);
  uint32_t seq = 1;
  auto req = [&](std::string name) { return proto::OpenRequest{root, 4096, 4, 0, 0, name}; };
  for (const std::string& name :
       {std::string(), std::string("."), std::string(".."), std::string("/"), std::string("a/b"),
        std::string("\n"), std::string("\x01"), std::string("a\0b", 3), std::string("del\x7f")}) {
    CAPTURE(name);
    CHECK(raw_open(s, req(name), seq++) == EINVAL);
  }
  CHECK(raw_open(s, req(std::string(proto::kMaxName + 1, 'l')), seq++) == ENAMETOOLONG);
  // The library would never send these: a name above the protocol's payload limit (the whole
  // message is refused), a name length that lies, unknown flags and mode bits, a parent that is
  // no directory of this mount.
  CHECK(raw_open(s, req(std::string(proto::kMaxPayload, 'l')), seq++) == EPROTO);
  {
    auto lie = proto::encode(req("lie"), seq++);
    const uint32_t len = 2;  // name_len, at offset 24 of the payload, says 2; 3 bytes follow
    std::memcpy(lie.data() + sizeof(proto::Header) + 24, &len, sizeof len);
    CHECK(control_answer(s, lie) == EPROTO);
  }
  CHECK(raw_open(s, {root, 4096, 4, 0, 1u << 20, "flags"}, seq++) == EINVAL);
  CHECK(raw_open(s, {root, 4096, 4, 010000, 0, "mode"}, seq++) == EINVAL);
  CHECK(raw_open(s, {0, 4096, 4, 0, 0, "noparent"}, seq++) == ENOENT);
  CHECK(raw_open(s, {999999, 4096, 4, 0, 0, "noparent"}, seq++) == ENOENT);
  CHECK(raw_open(s, {ino_of(keep.file), 4096, 4, 0, 0, "intofile"}, seq++) == ENOTDIR);
  CHECK(raw_open(s, {root, 4096, 4, 0, 0, "keep"}, seq++) == EEXIST);
  keep.write_more();
  // The same connection still works, and only the channel it finally asked for exists.
  CHECK(raw_open(s, {root, 64, 2, 0444, proto::kFlagGlobal, "rawok"}, seq++) == 0);
  CHECK(entries(m.dir) == std::set<std::string>{"keep", "keep0", "rawok", "rawok0"});
  ::close(s);  // its channel is finalized; empty, so its files go
  CHECK(wait_for([&] { return !exists(m.path("rawok0")); }));
  keep.check();
}

TEST_CASE("mkdir with hostile names gets the kernel's or the daemon's clear error") {
  Mount m;
  Bystander keep(m.dir, "keep");
  auto mkdir_errno = [&](const std::string& name) {
    errno = 0;
    return ::mkdir(m.path(name).c_str(), 0755) == 0 ? 0 : errno;
  };
  CHECK(mkdir_errno("line\nbreak") == EINVAL);  // the daemon: as for channel names
  CHECK(mkdir_errno("\x01") == EINVAL);
  CHECK(mkdir_errno("del\x7f") == EINVAL);
  CHECK(mkdir_errno(std::string(proto::kMaxName + 1, 'd')) == ENAMETOOLONG);  // the kernel
  CHECK(mkdir_errno(".") == EEXIST);
  CHECK(mkdir_errno("..") == EEXIST);
  CHECK(mkdir_errno("missing/child") == ENOENT);
  CHECK(mkdir_errno(std::string(proto::kMaxName, 'd')) == 0);
  CHECK(entries(m.dir) ==
        std::set<std::string>{"keep", "keep0", std::string(proto::kMaxName, 'd')});
  keep.check();
}

TEST_CASE("hostile geometry: zero is EINVAL, too large is EFBIG, from the library and raw") {
  Mount m;
  Bystander keep(m.dir, "keep");
  const std::string d = m.dir;
  constexpr size_t kMax = size_t{1} << 30;
  struct Case {
    size_t subbuf, n;
    int err;
  };
  const Case cases[] = {
      {0, 4, EINVAL},
      {4096, 0, EINVAL},
      {0, 0, EINVAL},
      {kMax + 1, 1, EFBIG},                       // one sub-buffer above 1 GiB
      {4096, 65537, EFBIG},                       // above 2^16 sub-buffers
      {kMax, 2, EFBIG},                           // each within its limit, the product not
      {size_t{1} << 20, size_t{1} << 12, EFBIG},  // 4 GiB
      {(size_t{1} << 32) + 4096, 4, EFBIG},       // 4096 if it were cut to 32 bits
      {4096, (size_t{1} << 32) + 4, EFBIG},
      {SIZE_MAX / 2 + 1, 2, EFBIG},  // the product wraps to 0 in 64 bits
      {SIZE_MAX, SIZE_MAX, EFBIG},
  };
  for (const Case& c : cases) {
    CAPTURE(c.subbuf);
    CAPTURE(c.n);
    CHECK(open_errno("geo", d, c.subbuf, c.n) == c.err);
    keep.write_more();
  }
  // Raw, where sizes are 32 bits: the daemon applies the same limits itself.
  const int s = connect_control(m.dir);
  const uint64_t root = ino_of(m.dir);
  uint32_t seq = 1;
  CHECK(raw_open(s, {root, 0, 0, 0, 0, "geo"}, seq++) == EINVAL);
  CHECK(raw_open(s, {root, 0xffffffffu, 1, 0, 0, "geo"}, seq++) == EFBIG);
  CHECK(raw_open(s, {root, 1, 0xffffffffu, 0, 0, "geo"}, seq++) == EFBIG);
  CHECK(raw_open(s, {root, 65536, 65536, 0, 0, "geo"}, seq++) == EFBIG);
  ::close(s);
  // The limits themselves are accepted: 65536 sub-buffers of one byte.
  CHECK(open_errno("tiny", d, 1, 65536, true) == 0);
  CHECK(entries(m.dir) == std::set<std::string>{"keep", "keep0"});
  keep.check();
}

// geometry.h demands nothing of a sub-buffer's size but 1 B .. 1 GiB: there is no page or
// alignment multiple. Only the data area as a whole is page aligned, and rounded up to a page
// in the memfd (Layout::of); the reader never reads that rounding. These sizes go end to end:
// records written, read back through the mount (the zero-copy path and io_uring registration
// see a data area that is no multiple of the page), and counted.
TEST_CASE("sub-buffer sizes that are no multiple of anything work end to end") {
  Mount m;
  for (size_t subbuf :
       {size_t{1}, size_t{3}, size_t{11}, size_t{4095}, size_t{4097}, size_t{12345}}) {
    CAPTURE(subbuf);
    const size_t n = 3;
    const std::string base = "odd" + std::to_string(subbuf);
    rchan* c = open_global(m.dir, base.c_str(), subbuf, n);
    // Records as large as fit (at most an 11-byte numbered line, cut to the sub-buffer), until
    // the buffer is full.
    const size_t len = std::min(subbuf, kRec);
    std::string want;
    int i = 0, refused = 0;
    for (; refused == 0; ++i) {
      const std::string r = record(i).substr(kRec - len);
      if (relay_write(c, r.data(), r.size()) == 0)
        want += r;
      else {
        CHECK(errno == ENOSPC);
        ++refused;
      }
    }
    CHECK(want.size() == n * (subbuf / len) * len);  // each sub-buffer holds whole records
    const std::string file = m.path(base + "0");
    const Attrs a = getfattr(file);
    CHECK(num(a, "subbuf_size") == subbuf);
    CHECK(num(a, "n_subbufs") == n);
    CHECK(num(a, "bytes_produced") == want.size());
    CHECK(num(a, "lost_full") == 1);
    CHECK(slurp(file) == want);
    CHECK(relay_close(c) == 0);
  }
}

TEST_CASE("records of size 0 are EINVAL, records larger than a sub-buffer EMSGSIZE and counted") {
  Mount m;
  constexpr size_t kSub = 256;
  rchan* c = open_global(m.dir, "rec", kSub, 4);
  const std::string file = m.path("rec0");
  std::string want;
  const std::string big(kSub + 1, 'B'), whole(kSub, 'W');
  errno = 0;
  CHECK(relay_write(c, "x", 0) == -1);
  CHECK(errno == EINVAL);
  errno = 0;
  CHECK(relay_reserve(c, 0) == nullptr);
  CHECK(errno == EINVAL);
  CHECK(relay_printf(c, "%s", "") == 0);            // nothing to write: no record, no error
  CHECK(num(getfattr(file), "lost_too_big") == 0);  // a zero-size record is no lost record

  int too_big = 0;
  errno = 0;
  CHECK(relay_write(c, big.data(), big.size()) == -1);
  CHECK(errno == EMSGSIZE);
  ++too_big;
  errno = 0;
  CHECK(relay_write(c, big.data(), SIZE_MAX) == -1);  // refused before a byte is copied
  CHECK(errno == EMSGSIZE);
  ++too_big;
  errno = 0;
  CHECK(relay_reserve(c, kSub + 1) == nullptr);
  CHECK(errno == EMSGSIZE);
  ++too_big;
  errno = 0;
  CHECK(relay_printf(c, "%0*d", static_cast<int>(kSub) + 10, 7) == -1);
  CHECK(errno == EMSGSIZE);
  ++too_big;
  // A record exactly a sub-buffer long fits; so do the small ones around it.
  REQUIRE(relay_write(c, "ab", 2) == 0);
  want += "ab";
  REQUIRE(relay_write(c, whole.data(), whole.size()) == 0);
  want += whole;
  REQUIRE(relay_write(c, "cd", 2) == 0);
  want += "cd";

  const Attrs a = getfattr(file);
  CHECK(num(a, "lost_too_big") == static_cast<unsigned long long>(too_big));
  CHECK(num(a, "lost_full") == 0);
  CHECK(num(a, "lost_wrap") == 0);
  CHECK(stats_of(c).lost_too_big == static_cast<unsigned long long>(too_big));
  CHECK(slurp(file) == want);
  CHECK(relay_close(c) == 0);
}

// As in the kernel (relay_switch_subbuf), a record that fits a sub-buffer but not the current one
// causes a switch, and only then is found larger than what the new sub-buffer's header leaves.
TEST_CASE("with header bytes, a record larger than what a sub-buffer has left is EMSGSIZE") {
  Mount m;
  constexpr size_t kSub = 64;
  rchan_callbacks cb{};
  cb.create_buf_file = &make_global;
  cb.subbuf_start = [](rchan_buf* buf, void*, void*, size_t) {
    if (relay_buf_full(buf)) return 0;
    subbuf_start_reserve(buf, 8);
    return 1;
  };
  rchan* c = relay_open("hdr", m.dir.c_str(), kSub, 4, &cb, nullptr);
  REQUIRE(c != nullptr);
  const std::string fits(kSub - 8, 'f'), over(kSub - 7, 'o');
  CHECK(relay_write(c, fits.data(), fits.size()) == 0);  // fills sub-buffer 0 exactly
  errno = 0;
  CHECK(relay_write(c, over.data(), over.size()) == -1);  // switches to 1, then is too big
  CHECK(errno == EMSGSIZE);
  CHECK(relay_write(c, "ab", 2) == 0);  // after sub-buffer 1's header
  CHECK(stats_of(c).lost_too_big == 1);
  CHECK(num(getfattr(m.path("hdr0")), "lost_too_big") == 1);
  const std::string got = slurp(m.path("hdr0"));
  REQUIRE(got.size() == 8 + fits.size() + 8 + 2);  // header, record, header, record
  CHECK(got.substr(8, fits.size()) == fits);
  CHECK(got.substr(8 + fits.size() + 8) == "ab");
  CHECK(relay_close(c) == 0);
}
