// relayctl ship against real nats-server clusters on loopback (tests/nats/cluster.h) and a real
// mount: every record of framed, self-checking producers reaches the stream once, whole and in
// order per buffer, read back by the tests' own nats.c reader (tests/nats/stream_reader.h), not
// by relayctl fetch: through a plain run (with the contract's subjects, headers and ids), ship
// SIGKILLed and started again, and a 3-node cluster losing a node and then the stream's leader.
// Bad input ends with a message and a non-zero status, and consumes nothing. Every cluster,
// mount and relayctl started here is stopped, also when a check fails.
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <relayfs/relay.h>
#include <sys/socket.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <thread>

#include "fs/helpers.h"
#include "fs/mount.h"
#include "nats/cluster.h"
#include "nats/connection.h"
#include "nats/stream_reader.h"
#include "relayctl/framed.h"
#include "relayctl/tool.h"

using namespace relayfs::test;
using namespace std::chrono_literals;

namespace {

std::string short_host() {
  char h[256] = {};
  REQUIRE(::gethostname(h, sizeof h - 1) == 0);
  std::string s(h);
  return s.substr(0, s.find('.'));
}

// A per-CPU channel (one buffer per possible CPU) of the given mode.
rchan* open_channel(const std::string& dir, const char* base, unsigned flags, size_t subbuf,
                    size_t n) {
  relay_options o{};
  o.flags = flags;
  o.block_timeout_ms = -1;
  rchan_callbacks cb{};
  rchan* c = relay_open_opts(base, dir.c_str(), subbuf, n, &cb, nullptr, &o);
  REQUIRE_MESSAGE(c != nullptr, "relay_open_opts: " << std::strerror(errno));
  return c;
}

// Messages in the stream now (0 if it does not exist).
uint64_t stream_msgs(NatsConnection& nc, const std::string& stream) {
  jsStreamInfo* si = nullptr;
  jsErrCode code{};
  if (js_GetStreamInfo(&si, nc.js(), stream.c_str(), nullptr, &code) != NATS_OK) return 0;
  const uint64_t n = si->State.Msgs;
  jsStreamInfo_Destroy(si);
  return n;
}

// Reads the whole stream back and checks it: no message twice, every group's bytes whole
// records, each accepted record exactly once.
StreamReport check_stream(const std::string& urls, const std::string& stream,
                          const std::set<std::pair<uint32_t, uint64_t>>& accepted,
                          std::vector<StreamMessage>* all = nullptr) {
  std::vector<StreamMessage> msgs = read_stream(urls, stream);
  StreamReport report = group_stream(msgs);
  for (const auto& d : report.duplicates) FAIL_CHECK("in the stream twice: " << d);
  CHECK(report.unlabelled.empty());
  FrameCheck fc;
  for (const auto& [key, g] : report.groups)
    fc.buffer(g.bytes, key.channel + "/" + std::to_string(key.cpu) + "/" + key.generation);
  fc.expect(accepted);
  if (all) *all = std::move(msgs);
  return report;
}

unsigned long long xattr_number(const std::string& file, const char* name) {
  char v[64] = {};
  const ssize_t n = ::getxattr(file.c_str(), (std::string("user.relayfs.") + name).c_str(), v,
                               sizeof v - 1);
  REQUIRE(n > 0);
  return std::stoull(std::string(v, static_cast<size_t>(n)));
}

// A loopback port nobody listens on (bound, then closed).
int closed_port() {
  const int s = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(s >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  socklen_t len = sizeof a;
  REQUIRE(::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) == 0);
  ::close(s);
  return ntohs(a.sin_port);
}

// A single nats-server with JetStream and `extra` in its configuration (a user and password,
// TLS): started here, SIGKILLed and reaped by pid at scope end.
struct AuthServer {
  TempDir dir;
  pid_t pid = -1;
  int port = closed_port();
  explicit AuthServer(const std::string& extra = "authorization { user: ship, password: right }") {
    write_file(dir.path("a.conf"), "listen: 127.0.0.1:" + std::to_string(port) +
                                       "\njetstream { store_dir: \"" + dir.path("js") +
                                       "\" }\n" + extra + "\n");
    pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      const int null = ::open("/dev/null", O_RDWR);
      ::dup2(null, 1);
      ::dup2(null, 2);
      const std::string conf = dir.path("a.conf");
      ::execlp("nats-server", "nats-server", "-c", conf.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    REQUIRE(wait_for([&] {
      const int s = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_port = htons(static_cast<uint16_t>(port));
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      const bool up = ::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
      ::close(s);
      return up;
    }, 10s));
  }
  ~AuthServer() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  }
};

}  // namespace

TEST_CASE("ship carries a per-CPU channel to JetStream: every record once, whole and in order, "
          "the tail included; the contract's subjects, headers and ids; the files drained") {
  NatsCluster nats(1);
  Mount m;
  rchan* c = open_channel(m.dir, "log", RELAY_BLOCKING, 16384, 4);
  TempDir t;
  const pid_t ship = spawn_relayctl({"ship", m.dir + "/log", nats.urls()}, t.path("err"));
  {
    FramedProducers p(c, 4, 20000);
    p.join();
    REQUIRE(relay_close(c) == 0);  // no relay_flush: the last sub-buffers' tails go too
    CHECK(wait_exit(ship, 60s) == 0);
    INFO(read_file(t.path("err")));
    std::vector<StreamMessage> msgs;
    const StreamReport report = check_stream(nats.urls(), "RELAYFS", p.accepted(), &msgs);
    CHECK(p.drops() == 0);
    const std::string host = short_host();
    std::set<int> cpus;
    for (const auto& msg : msgs) {
      REQUIRE(msg.cpu.has_value());
      REQUIRE(msg.subbuf.has_value());
      cpus.insert(*msg.cpu);
      CHECK(msg.subject == "relayfs." + host + ".log." + std::to_string(*msg.cpu));
      CHECK(msg.host == host);
      CHECK(msg.channel == "log");
      CHECK(msg.msg_id == host + "/log/" + std::to_string(*msg.cpu) + "/" + msg.generation + "/" +
                              std::to_string(*msg.subbuf));
      CHECK(msg.payload.size() <= 16384);
      CHECK(!msg.payload.empty());
    }
    // Each buffer's stream in sub-buffer order, in order in the stream too (no failover here).
    for (const auto& [key, g] : report.groups) {
      CHECK(g.max_delay == 0);
      CHECK(g.gaps == 0);
    }
    CHECK(cpus.size() >= 1);
  }
  // Everything acknowledged was consumed: the finalized channel's files are gone.
  CHECK(wait_for([&] { return !exists(m.dir + "/log0"); }, 10s));
  NatsConnection nc(nats.urls());
  jsStreamInfo* si = nullptr;
  jsErrCode code{};
  REQUIRE(js_GetStreamInfo(&si, nc.js(), "RELAYFS", nullptr, &code) == NATS_OK);
  CHECK(si->Config->Duplicates >= 120LL * 1000 * 1000 * 1000);
  REQUIRE(si->Config->SubjectsLen == 1);
  CHECK(std::string(si->Config->Subjects[0]) == "relayfs.>");
  jsStreamInfo_Destroy(si);
}

TEST_CASE("ship SIGKILLed mid-stream and started again: nothing lost, nothing twice") {
  NatsCluster nats(1);
  NatsConnection nc(nats.urls());
  Mount m;
  rchan* c = open_channel(m.dir, "app", RELAY_BLOCKING, 8192, 4);
  TempDir t;
  std::vector<std::string> args{"ship", "--window", "64", m.dir + "/app", nats.urls()};
  FramedProducers p(c, 4, 60000);
  pid_t ship = spawn_relayctl(args, t.path("err"));
  uint64_t seen = 0;
  int ahead = 0;  // kills that left messages in the stream which the buffer had not consumed
  for (int kill = 0; kill < 4; ++kill) {
    // Kill it with messages in flight: once the stream has grown. Stopped first, so that
    // JetStream stores what was in flight while ship cannot take the acknowledgements and
    // consume: then the next run must send those again, and the stream keep one copy.
    REQUIRE(wait_for([&] { return stream_msgs(nc, "RELAYFS") > seen + 200; }, 60s));
    REQUIRE(::kill(ship, SIGSTOP) == 0);
    for (uint64_t was = 0, now = stream_msgs(nc, "RELAYFS"); now != was;
         was = now, now = stream_msgs(nc, "RELAYFS"))
      std::this_thread::sleep_for(300ms);
    REQUIRE(::kill(ship, SIGKILL) == 0);
    int st;
    REQUIRE(::waitpid(ship, &st, 0) == ship);
    CHECK(WIFSIGNALED(st));
    seen = stream_msgs(nc, "RELAYFS");
    // What JetStream holds past each buffer's consumed position: the next run sends it again,
    // under the same ids, and the stream must keep one copy.
    std::map<int, uint64_t> top;
    for (const auto& msg : read_stream(nats.urls(), "RELAYFS"))
      if (msg.cpu && msg.subbuf) top[*msg.cpu] = std::max(top[*msg.cpu], *msg.subbuf + 1);
    for (const auto& [cpu, end] : top)
      if (end > xattr_number(m.dir + "/app" + std::to_string(cpu), "subbufs_consumed")) ++ahead;
    ship = spawn_relayctl(args, t.path("err"));
  }
  CHECK(ahead > 0);
  p.join();
  REQUIRE(relay_close(c) == 0);
  CHECK(wait_exit(ship, 120s) == 0);
  INFO(read_file(t.path("err")));
  check_stream(nats.urls(), "RELAYFS", p.accepted());
  CHECK(p.drops() == 0);
}

TEST_CASE("a 3-node cluster loses a node, then the stream's leader, while ship carries a "
          "directory of channels: every record once, in sub-buffer order within the window") {
  NatsCluster nats(3);
  NatsConnection nc(nats.urls());
  Mount m;
  REQUIRE(::mkdir((m.dir + "/svc").c_str(), 0755) == 0);
  TempDir t;
  const pid_t ship = spawn_relayctl(
      {"ship", "--replicas", "3", "--stream", "FLEET", m.dir + "/svc", nats.urls()}, t.path("err"));
  // A blocking channel and a dropping one, written all along, at a pace that lasts the
  // failovers; a channel made after ship started is found too.
  rchan* bl = open_channel(m.dir + "/svc", "bl", RELAY_BLOCKING, 16384, 8);
  FramedProducers pb(bl, 2, 4000000, 0, 20);
  std::this_thread::sleep_for(1500ms);
  rchan* nb = open_channel(m.dir + "/svc", "nb", 0, 16384, 8);
  FramedProducers pn(nb, 2, 4000000, 100, 20);
  REQUIRE(wait_for([&] { return stream_msgs(nc, "FLEET") > 100; }, 60s));
  nats.wait_stream_ready("FLEET", 3);
  // A node that does not lead the stream: killed, and back.
  const int leader = nats.stream_leader("FLEET");
  REQUIRE(leader >= 0);
  const int other = (leader + 1) % 3;
  nats.kill(other);
  std::this_thread::sleep_for(2s);
  nats.restart(other);
  nats.wait_stream_ready("FLEET", 3, 60s);
  const uint64_t before = stream_msgs(nc, "FLEET");
  // The leader: the stream stalls for an election, and goes on.
  const int old_leader = nats.stream_leader("FLEET");
  REQUIRE(old_leader >= 0);
  nats.kill(old_leader);
  nats.wait_stream_ready("FLEET", 2, 60s);
  CHECK(nats.stream_leader("FLEET") != old_leader);
  REQUIRE(wait_for([&] { return stream_msgs(nc, "FLEET") > before + 100; }, 60s));
  pb.stop();
  pn.stop();
  pb.join();
  pn.join();
  REQUIRE(relay_close(bl) == 0);
  REQUIRE(relay_close(nb) == 0);
  // Everything acknowledged and consumed: the finalized channels' files go.
  CHECK(wait_for([&] {
    return !exists(m.dir + "/svc/bl0") && !exists(m.dir + "/svc/nb0");
  }, 120s));
  REQUIRE(::kill(ship, SIGTERM) == 0);
  CHECK(wait_exit(ship, 60s) == 0);
  nats.restart(old_leader);
  nats.wait_stream_ready("FLEET", 3, 60s);
  const std::string err = read_file(t.path("err"));
  INFO(err);
  auto accepted = pb.accepted();
  for (const auto& a : pn.accepted()) accepted.insert(a);
  MESSAGE("records: " << pb.tried() << " blocking, " << pn.tried() << " dropping ("
                      << pn.drops() << " dropped and counted)");
  const StreamReport report = check_stream(nats.urls(), "FLEET", accepted);
  CHECK(pb.drops() == 0);
  std::set<std::string> channels;
  for (const auto& [key, g] : report.groups) {
    channels.insert(key.channel);
    CHECK(g.max_delay <= 31);  // the contract's bound: WINDOW - 1
  }
  CHECK(channels == std::set<std::string>{"svc/bl", "svc/nb"});
}

TEST_CASE("ship's bad input: a clear message, a non-zero status, nothing consumed") {
  NatsCluster nats(1);
  Mount m;
  rchan* c = open_global(m.dir, "keep", 4096, 4);  // one buffer: keep0
  FramedProducers p(c, 1, 300);
  p.join();
  REQUIRE(relay_flush(c) == 0);
  const std::string path = m.dir + "/keep";
  const std::string file = m.dir + "/keep0";
  auto untouched = [&] { CHECK(xattr_number(file, "bytes_consumed") == 0); };
  REQUIRE(xattr_number(file, "bytes_unread") > 0);

  SUBCASE("an unreachable server") {
    const Outcome o = relayctl("ship " + path + " nats://127.0.0.1:" +
                               std::to_string(closed_port()));
    CHECK(o.status == 1);
    CHECK(o.err.find("no server answers") != std::string::npos);
  }
  SUBCASE("a missing stream with --no-create") {
    const Outcome o = relayctl("ship --no-create --stream NOPE " + path + " " + nats.urls());
    CHECK(o.status == 1);
    CHECK(o.err.find("stream NOPE does not exist") != std::string::npos);
  }
  SUBCASE("a subject JetStream would not take") {
    NatsConnection nc(nats.urls());
    add_stream(nc.js(), "OTHER", "other.>", 1);
    const Outcome o = relayctl("ship --stream OTHER " + path + " " + nats.urls());
    CHECK(o.status == 1);
    CHECK(o.err.find("is not one of stream OTHER's subjects") != std::string::npos);
    const Outcome bad = relayctl("ship --subject 'a..b' " + path + " " + nats.urls());
    CHECK(bad.status == 2);
    CHECK(bad.err.find("is not a subject prefix") != std::string::npos);
    const Outcome wild = relayctl("ship --subject 'a.*' " + path + " " + nats.urls());
    CHECK(wild.status == 2);
  }
  SUBCASE("bad credentials") {
    AuthServer auth;
    const std::string at = "127.0.0.1:" + std::to_string(auth.port);
    const Outcome o = relayctl("ship " + path + " nats://ship:wrong@" + at);
    CHECK(o.status == 1);
    CHECK(o.err.find("authorization failed") != std::string::npos);
    CHECK(o.err.find("wrong") == std::string::npos);  // the password is not shown
    const Outcome none = relayctl("ship " + path + " nats://" + at);
    CHECK(none.status == 1);
    const Outcome creds = relayctl("ship --creds /nonexistent.creds " + path + " nats://" + at);
    CHECK(creds.status == 1);
    CHECK(creds.err.find("/nonexistent.creds") != std::string::npos);
  }
  SUBCASE("malformed URLs") {
    for (const char* url : {"nats://127.0.0.1:99999", "http://127.0.0.1:4222", "nats://:4222",
                            "nats://127.0.0.1:", "nats://127.0.0.1:42x2", ","}) {
      CAPTURE(url);
      const Outcome o = relayctl("ship " + path + " '" + url + "'");
      CHECK(o.status == 1);
      CHECK(o.err.find("malformed URL") != std::string::npos);
    }
  }
  SUBCASE("no such channel, and bad options") {
    CHECK(relayctl("ship " + m.dir + "/nothing " + nats.urls()).status == 1);
    CHECK(relayctl("ship --window 0 " + path + " " + nats.urls()).status == 2);
    CHECK(relayctl("ship --replicas 9 " + path + " " + nats.urls()).status == 2);
    CHECK(relayctl("ship --stream 'a.b' " + path + " " + nats.urls()).status == 2);
    CHECK(relayctl("ship " + path).status == 2);
  }
  untouched();
  REQUIRE(relay_close(c) == 0);
}

TEST_CASE("ship over TLS: --tls-ca trusts the server's certificate; without it, a clear refusal") {
  TempDir pki;
  // A CA, and a server certificate it signed for 127.0.0.1.
  const std::string d = pki.dir;
  REQUIRE(run("cd '" + d + "' && openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=ca "
              "-keyout ca.key -out ca.pem 2>/dev/null && openssl req -newkey rsa:2048 -nodes "
              "-subj /CN=127.0.0.1 -keyout srv.key -out srv.csr 2>/dev/null && printf "
              "'subjectAltName=IP:127.0.0.1' > ext && openssl x509 -req -in srv.csr -CA ca.pem "
              "-CAkey ca.key -CAcreateserial -days 2 -extfile ext -out srv.pem 2>/dev/null") == 0);
  AuthServer tls("tls { cert_file: \"" + d + "/srv.pem\", key_file: \"" + d + "/srv.key\" }");
  Mount m;
  rchan* c = open_global(m.dir, "sec", 4096, 4);
  FramedProducers p(c, 1, 500);
  p.join();
  const std::string url = "tls://127.0.0.1:" + std::to_string(tls.port);
  const Outcome refused = relayctl("ship " + m.dir + "/sec " + url);
  CHECK(refused.status == 1);
  CHECK(refused.err.find("TLS") != std::string::npos);
  CHECK(xattr_number(m.dir + "/sec0", "bytes_consumed") == 0);
  REQUIRE(relay_close(c) == 0);
  const Outcome o = relayctl("ship --tls-ca " + d + "/ca.pem " + m.dir + "/sec " + url);
  CHECK(o.status == 0);
  CHECK(o.err.find("channel closed") != std::string::npos);
  // JetStream acknowledged all of it: the buffer was consumed to the end, and its file went.
  CHECK(wait_for([&] { return !exists(m.dir + "/sec0"); }, 10s));
}

TEST_CASE("ship, then fetch: the round trip gives each buffer's bytes as the tests' own reader "
          "does, also when fetch is killed and run again") {
  NatsCluster nats(1);
  Mount m;
  rchan* c = open_channel(m.dir, "rt", RELAY_BLOCKING, 8192, 8);
  TempDir t;
  const pid_t ship = spawn_relayctl({"ship", m.dir + "/rt", nats.urls()}, t.path("err"));
  FramedProducers p(c, 2, 150000);
  p.join();
  REQUIRE(relay_close(c) == 0);
  REQUIRE(wait_exit(ship, 120s) == 0);
  const StreamReport report = check_stream(nats.urls(), "RELAYFS", p.accepted());
  REQUIRE(!report.groups.empty());
  const std::string host = short_host();
  const std::string out = t.path("fetched");
  // Killed as soon as it has written something, then run to the end.
  const pid_t fetch = spawn_relayctl({"fetch", nats.urls(), out}, t.path("fetch-err"));
  const std::string first = out + "/" + host + "/rt" + std::to_string(report.groups.begin()->first.cpu);
  REQUIRE(wait_for([&] {
    struct stat st;
    return ::stat(first.c_str(), &st) == 0 && st.st_size > 0;
  }, 60s));
  ::kill(fetch, SIGKILL);
  ::waitpid(fetch, nullptr, 0);
  const Outcome again = relayctl("fetch " + nats.urls() + " " + out);
  CHECK(again.status == 0);
  INFO(again.err);
  for (const auto& [key, g] : report.groups) {
    const std::string file = out + "/" + host + "/rt" + std::to_string(key.cpu);
    CAPTURE(file);
    const std::string got = read_file(file);
    CHECK(got.size() == g.bytes.size());
    CHECK(got == g.bytes);
  }
}
