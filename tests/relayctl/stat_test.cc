// relayctl stat: the table and --json show what the channel's buffers hold; with --users, what
// each user holds in the mount and its limits (with a second user, made for the test: needs root).
#include "core/geometry.h"
#include "relayctl/tool.h"

using namespace relayfs::test;

namespace {

// Field `key` of the object for `path` in relayctl stat --json output, through python3's json
// parser (so the output must be valid JSON too); "" if there is none.
std::string json_field(const std::string& json, const std::string& path, const std::string& key) {
  TempDir t;
  write_file(t.path("j"), json);
  return capture("python3 -c 'import json,sys\n"
                 "for b in json.load(open(sys.argv[1])):\n"
                 "  if b[\"path\"] == sys.argv[2]: print(b[sys.argv[3]])' '" +
                 t.path("j") + "' '" + path + "' '" + key + "'");
}

// The table row of `path`, split into its columns (empty if there is none).
std::vector<std::string> row(const std::string& table, const std::string& path) {
  const auto rows = lines_starting(table, path);
  return rows.empty() ? std::vector<std::string>{} : rows[0];
}

}  // namespace

TEST_CASE("stat: a channel's buffers, in a table and as JSON, with what was written") {
  Mount m;
  REQUIRE(::mkdir(m.path("app").c_str(), 0755) == 0);
  rchan* c = open_global(m.path("app"), "log", 4096, 4);
  const std::string data = write_records(c, 0, 500);  // 5500 bytes: two sub-buffers switched
  // Something consumed, so produced and consumed differ.
  const int fd = ::open(m.path("app/log0").c_str(), O_RDONLY);
  REQUIRE(fd >= 0);
  CHECK(read_exactly(fd, 1100, 1100).size() == 1100);
  ::close(fd);

  const std::string buf = m.path("app/log0");
  const Outcome table = relayctl("stat " + m.path("app/log"));
  REQUIRE(table.status == 0);
  const auto cols = row(table.out, buf);
  REQUIRE(cols.size() == 16);
  CHECK(cols[1] == "no-overwrite");
  CHECK(cols[2] == "4096x4");
  CHECK(cols[3] == std::to_string(data.size()));         // PRODUCED
  CHECK(cols[4] == "1100");                              // CONSUMED
  CHECK(cols[5] == std::to_string(data.size() - 1100));  // UNREAD
  CHECK(cols[13] == "0");                                // LOST_BYTES
  CHECK(table.out.rfind("FILE", 0) == 0);

  const Outcome json = relayctl("stat --json " + m.path("app/log"));
  REQUIRE(json.status == 0);
  CHECK(run("echo '" + json.out + "' | python3 -m json.tool >/dev/null") == 0);
  CHECK(json_field(json.out, buf, "bytes_produced") == std::to_string(data.size()) + "\n");
  CHECK(json_field(json.out, buf, "bytes_consumed") == "1100\n");
  CHECK(json_field(json.out, buf, "subbuf_size") == "4096\n");
  CHECK(json_field(json.out, buf, "mode") == "no-overwrite\n");
  CHECK(json_field(json.out, buf, "lost_full") == "0\n");
  relay_close(c);
}

TEST_CASE("stat: a directory tree lists every buffer once, without merged views") {
  Mount m;
  REQUIRE(::mkdir(m.path("a").c_str(), 0755) == 0);
  REQUIRE(::mkdir(m.path("a/b").c_str(), 0755) == 0);
  rchan* one = open_global(m.path("a"), "one");
  rchan* two = relay_open("two", m.path("a/b").c_str(), 4096, 2, nullptr, nullptr);  // per CPU
  REQUIRE(two != nullptr);
  write_records(one, 0, 10);

  const Outcome json = relayctl("--help >/dev/null; '" + relayctl_path() + "' stat -j " + m.dir);
  REQUIRE(json.status == 0);
  CHECK(json_field(json.out, m.path("a/one0"), "bytes_produced") == "110\n");
  CHECK(json_field(json.out, m.path("a/one"), "bytes_produced").empty());  // merged view
  for (unsigned i = 0; i < ncpus(); ++i)
    CHECK(json_field(json.out, m.path("a/b/two" + std::to_string(i)), "n_subbufs") == "2\n");
  const Outcome table = relayctl("stat " + m.dir);
  REQUIRE(table.status == 0);
  CHECK(std::count(table.out.begin(), table.out.end(), '\n') == 2 + static_cast<int>(ncpus()));

  // One file: the merged view, which sums its channel.
  const Outcome merged = relayctl("stat -j " + m.path("a/one"));
  CHECK(merged.status == 0);
  CHECK(json_field(merged.out, m.path("a/one0"), "bytes_produced") == "110\n");
  relay_close(one);
  relay_close(two);
}

TEST_CASE("stat: a path that is no relay file is an error naming it") {
  Mount m;
  TempDir t;
  write_file(t.path("plain"), "x");
  Outcome o = relayctl("stat " + t.path("plain"));
  CHECK(o.status == 1);
  CHECK(o.err.find(t.path("plain")) != std::string::npos);
  CHECK(o.err.find("not a relay file") != std::string::npos);
  o = relayctl("stat --json " + m.path("nothing"));
  CHECK(o.status == 1);
  CHECK(o.err.find(m.path("nothing") + ": " + std::strerror(ENOENT)) != std::string::npos);
  CHECK(o.out == "[]\n");  // still valid JSON
  // A missing PATH whose name begins another file's (a plain file "foo1" beside "foo"): the
  // error is the missing PATH's, not that other file's (it said "No data available").
  write_file(t.path("foo1"), "x");
  o = relayctl("stat " + t.path("foo"));
  CHECK(o.status == 1);
  CHECK(o.err.find(t.path("foo") + ": " + std::strerror(ENOENT)) != std::string::npos);
}

TEST_CASE("stat and record tell a channel's buffers from another channel's files named alike") {
  Mount m;
  // Channel "log" has log0 and the merged view log; channel "log2" has log20 and log2. By
  // name alone, log2 and log20 could be buffers 2 and 20 of "log".
  rchan* log = open_global(m.dir, "log");
  rchan* log2 = open_global(m.dir, "log2");
  const std::string mine = write_records(log, 0, 10);
  write_records(log2, 100, 120);

  const Outcome one = relayctl("stat -j " + m.path("log"));
  REQUIRE(one.status == 0);
  CHECK(json_field(one.out, m.path("log0"), "bytes_produced") == "110\n");
  CHECK(json_field(one.out, m.path("log2"), "bytes_produced").empty());
  CHECK(json_field(one.out, m.path("log20"), "bytes_produced").empty());
  const Outcome tree = relayctl("stat -j " + m.dir);  // every buffer once, no merged view
  REQUIRE(tree.status == 0);
  CHECK(json_field(tree.out, m.path("log0"), "bytes_produced") == "110\n");
  CHECK(json_field(tree.out, m.path("log20"), "bytes_produced") == "220\n");
  CHECK(json_field(tree.out, m.path("log2"), "bytes_produced").empty());

  TempDir out;
  REQUIRE(relay_close(log) == 0);
  const Outcome rec = relayctl("record -q " + m.path("log") + " " + out.path("rec"));
  CHECK(rec.status == 0);
  CHECK(rec.err.empty());
  CHECK(read_file(out.path("rec/log0")) == mine);
  CHECK(::access(out.path("rec/log2").c_str(), F_OK) != 0);
  CHECK(::access(out.path("rec/log20").c_str(), F_OK) != 0);
  CHECK(slurp(m.path("log20")).size() == 220);  // untouched by the recording of "log"
  relay_close(log2);
}

TEST_CASE("stat --users: each user's channels, connections and memory, and the limits") {
  NEED_USERS(alice, bob);
  Mount m({"-o", "allow_other,user_memory=8M,user_connections=2"});
  const std::string home = home_of(m, alice);
  auto memory = [](uint32_t subbuf_size, uint32_t n_subbufs) {
    return std::to_string(relayfs::core::Layout::of({subbuf_size, n_subbufs}).total_size);
  };
  // Alice holds two channels, each with its producer's connection: her limit of two.
  std::vector<rchan*> held;
  Holder a(
      alice,
      [&] {
        rchan_callbacks cb{};
        cb.create_buf_file = &make_global<0440>;
        held.push_back(relay_open("one", home.c_str(), 4096, 4, &cb, nullptr));
        held.push_back(relay_open("two", home.c_str(), 65536, 2, &cb, nullptr));
        return held[0] && held[1] ? 0 : errno;
      },
      [&] {
        for (rchan* c : held) relay_close(c);
        return 0;
      });
  REQUIRE(a.setup_errno() == 0);
  rchan* mine = open_global(m.dir, "root", 4096, 8);
  const std::string alice_memory =
      std::to_string(std::stoull(memory(4096, 4)) + std::stoull(memory(65536, 2)));

  const Outcome table = relayctl("stat --users " + home);  // any directory of the mount
  REQUIRE(table.status == 0);
  CHECK(table.out.rfind("UID", 0) == 0);
  const auto arow = row(table.out, std::to_string(alice.uid));
  REQUIRE(arow.size() == 5);
  CHECK(arow[1] == "relayfs-test");
  CHECK(arow[2] == "2");
  CHECK(arow[3] == "2");
  CHECK(arow[4] == alice_memory);
  const auto rrow = row(table.out, "0");
  REQUIRE(rrow.size() == 6);
  CHECK(rrow[1] == "root");
  CHECK(rrow[2] == "1");
  CHECK(rrow[4] == memory(4096, 8));
  CHECK(rrow[5] == "exempt");
  CHECK(table.out.find("limits: each user 256 channels, 2 connections, 8388608 bytes") !=
        std::string::npos);
  CHECK(table.out.find("held by users with limits: 2 channels, 2 connections, " + alice_memory +
                       " bytes") != std::string::npos);

  const Outcome json = relayctl("stat --users --json " + m.dir);
  REQUIRE(json.status == 0);
  TempDir t;
  write_file(t.path("j"), json.out);
  auto field = [&](const std::string& expr) {
    return capture(
        "python3 -c 'import json,sys\n"
        "d = json.load(open(sys.argv[1]))\n"
        "u = {x[\"uid\"]: x for x in d[\"users\"]}\n"
        "print(" +
        expr + ")' '" + t.path("j") + "'");
  };
  const std::string a_uid = std::to_string(alice.uid);
  CHECK(field("u[" + a_uid + "][\"channels\"], u[" + a_uid + "][\"connections\"]") == "2 2\n");
  CHECK(field("u[" + a_uid + "][\"memory\"]") == alice_memory + "\n");
  CHECK(field("u[" + a_uid + "][\"user\"], u[" + a_uid + "][\"exempt\"]") ==
        "relayfs-test False\n");
  CHECK(field("u[0][\"exempt\"], u[0][\"memory\"]") == "True " + memory(4096, 8) + "\n");
  CHECK(field("d[\"limits\"][\"user_memory\"], d[\"limits\"][\"user_connections\"]") ==
        "8388608 2\n");
  CHECK(field("d[\"limited\"][\"memory\"]") == alice_memory + "\n");
  CHECK(field("d[\"descriptors\"][\"open\"] > 0") == "True\n");

  // At her connection limit, alice cannot record either: relayctl says why.
  TempDir out;
  REQUIRE(::chown(out.dir.c_str(), alice.uid, alice.gid) == 0);
  const Outcome rec =
      relayctl("record " + home + "/one " + out.path("rec"), RunAs{alice.uid, alice.gid, {}});
  CHECK(rec.status == 1);
  CHECK(rec.err.find(std::strerror(EDQUOT)) != std::string::npos);

  // Usage errors, and a path outside any relayfs.
  CHECK(relayctl("stat --users").status == 2);
  CHECK(relayctl("stat --users " + m.dir + " " + home).status == 2);
  const Outcome outside = relayctl("stat --users " + t.dir);
  CHECK(outside.status == 1);
  CHECK(outside.err.find("not in a relayfs mount") != std::string::npos);
  CHECK(a.finish() == 0);
  relay_close(mine);
}
