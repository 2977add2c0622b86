// relayctl write: standard input into a channel, read back with cat exactly.
#include <random>

#include "relayctl/tool.h"

using namespace relayfs::test;

TEST_CASE("write: lines go in one record each and cat gives them back exactly") {
  Mount m({"-o", "blocking"});  // cat waits for data instead of stopping at an empty buffer
  TempDir t;
  // Empty lines, long lines, and a last line without a newline.
  std::string input;
  for (int i = 0; i < 5000; ++i) input += (i % 7 == 0 ? std::string() : std::string(i % 300, 'a' + i % 26)) + "\n";
  input += "no newline at the end";
  write_file(t.path("in"), input);
  // 620 KiB through a 16 KiB channel: the writer waits for cat, cat for the writer, until the
  // channel closes and cat gets end of file.
  const Outcome o = relayctl("write -s 4K -n 4 --blocking " + m.path("log") + " <" + t.path("in") +
                             " & until [ -e " + m.path("log0") + " ]; do sleep 0.01; done; cat " +
                             m.path("log0") + " >" + t.path("got") + "; wait");
  CHECK(o.status == 0);
  const std::string got = read_file(t.path("got"));
  CHECK(got.size() == input.size());
  CHECK(got == input);
  CHECK(o.err.empty());
}

TEST_CASE("write: fixed-size records, with padding, and a short last record") {
  Mount m;
  TempDir t;
  std::mt19937 rng(7);
  std::string input(300 * 40 + 50, '\0');
  for (auto& c : input) c = static_cast<char>(rng());
  write_file(t.path("in"), input);
  // 3 records of 300 bytes fill 900 of each 1000-byte sub-buffer: 100 bytes of padding each,
  // which cat must not show. 41 records: 14 sub-buffers, of the 16 the channel holds.
  const Outcome o = relayctl("write -r 300 -s 1000 -n 16 " + m.path("fix") + " <" + t.path("in"));
  REQUIRE(o.status == 0);
  CHECK(o.err.empty());
  const Attrs a = getfattr(m.path("fix0"));
  CHECK(num(a, "bytes_produced") == input.size());
  CHECK(num(a, "lost_full") == 0);
  CHECK(num(a, "subbufs_produced") == 14);  // 13 full ones, and the 14th closed by the flush
  const std::string got = slurp(m.path("fix0"));
  CHECK(got.size() == input.size());
  CHECK(got == input);
}

TEST_CASE("write: geometry, overwrite mode, per-CPU buffers and the files' mode") {
  Mount m;
  TempDir t;
  write_file(t.path("in"), "data\n");
  // A channel with nothing in it goes as soon as it closes: these keep data in it, or keep it
  // open while they look.
  SUBCASE("overwrite, global, mode 0440") {
    const Outcome o = relayctl("write -o -s 8K -n 2 -m 0440 " + m.path("ow") + " <" + t.path("in"));
    REQUIRE(o.status == 0);
    const Attrs a = getfattr(m.path("ow0"));
    CHECK(text(a, "mode") == "overwrite");
    CHECK(num(a, "subbuf_size") == 8192);
    CHECK(num(a, "n_subbufs") == 2);
    struct stat st;
    REQUIRE(::stat(m.path("ow0").c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0440);
    CHECK_FALSE(exists(m.path("ow1")));
  }
  SUBCASE("per-CPU, blocking") {
    REQUIRE(run("sleep 3 | '" + relayctl_path() + "' write -p -b -t 100 " + m.path("pc") +
                " >/dev/null 2>&1 &") == 0);
    REQUIRE(wait_for([&] { return exists(m.path("pc" + std::to_string(ncpus() - 1))); }));
    for (unsigned i = 0; i < ncpus(); ++i) {
      CAPTURE(i);
      CHECK(text(getfattr(m.path("pc" + std::to_string(i))), "blocking") == "1");
    }
  }
}

TEST_CASE("write: records the channel drops are reported on stderr") {
  Mount m;
  TempDir t;
  // A 100-byte line cannot fit a 64-byte sub-buffer; the others can.
  write_file(t.path("in"), "short\n" + std::string(100, 'x') + "\nshort again\n");
  const Outcome o = relayctl("write -s 64 -n 4 " + m.path("big") + " <" + t.path("in"));
  CHECK(o.status == 0);
  CHECK(o.err.find("1 of 3 records lost") != std::string::npos);
  CHECK(o.err.find("too big 1") != std::string::npos);
  CHECK(num(getfattr(m.path("big0")), "lost_too_big") == 1);
  CHECK(slurp(m.path("big0")) == "short\nshort again\n");
}

TEST_CASE("write: a channel outside relayfs, or one that exists, is a clear error") {
  Mount m;
  TempDir t;
  Outcome o = relayctl("write " + t.path("log") + " </dev/null");
  CHECK(o.status == 1);
  CHECK(o.err.find(t.path("log")) != std::string::npos);
  CHECK(o.err.find(std::strerror(ENOTSUP)) != std::string::npos);

  rchan* c = open_global(m.dir, "busy");
  o = relayctl("write " + m.path("busy") + " </dev/null");
  CHECK(o.status == 1);
  CHECK(o.err.find(std::strerror(EEXIST)) != std::string::npos);
  relay_close(c);
}
