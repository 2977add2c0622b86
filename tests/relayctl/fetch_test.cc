// relayctl fetch against a real nats-server (NatsCluster of 1 node): messages published as
// relayctl ship would (the contract, /tmp/spec/ship-contract.md, relayctl(1)), straight with
// nats.c, some out of order within the window, some twice, two generations, gaps; fetched into
// files whose bytes are checked exactly. Also: hostile headers, symbolic links planted in
// OUTDIR, SIGKILL in the middle of a large stream and a second run, --follow, and every bad
// input (no server, no stream, malformed URL, bad credentials) with its message, nothing
// created in OUTDIR.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <nats/nats.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "nats/cluster.h"
#include "nats/connection.h"

using namespace relayfs::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

constexpr const char* kStream = "RELAYFS";

std::string relayctl_path() {
  const char* p = std::getenv("RELAYCTL");
  REQUIRE_MESSAGE(p != nullptr, "RELAYCTL is not set");
  return p;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

struct Tmp {
  Tmp() {
    char tmpl[] = "/tmp/relayfs-fetch-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    dir = tmpl;
  }
  ~Tmp() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  std::string path(const std::string& rel) const { return dir + "/" + rel; }
  std::string dir;
};

// relayctl fetch in the background: stdout to /dev/null, stderr to err_file; with at most
// `nofile` descriptors (soft and hard limit) if not 0.
pid_t spawn_fetch(const std::vector<std::string>& args, const std::string& err_file,
                  rlim_t nofile = 0) {
  const std::string prog = relayctl_path();
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    const rlimit rl{nofile, nofile};
    if (nofile != 0 && ::setrlimit(RLIMIT_NOFILE, &rl) != 0) ::_exit(126);
    const int err = ::open(err_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int null = ::open("/dev/null", O_RDWR);
    ::dup2(null, 0);
    ::dup2(null, 1);
    ::dup2(err, 2);
    std::vector<char*> argv{const_cast<char*>(prog.c_str()), const_cast<char*>("fetch")};
    for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  return pid;
}

// Waits for pid (killing it after `limit`); its exit status, or -1 if it did not exit by itself.
int wait_status(pid_t pid, std::chrono::seconds limit = 120s) {
  const auto until = std::chrono::steady_clock::now() + limit;
  int st = 0;
  while (::waitpid(pid, &st, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > until) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &st, 0);
      FAIL_CHECK("relayctl fetch did not end in time");
      return -1;
    }
    std::this_thread::sleep_for(5ms);
  }
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

struct Outcome {
  int status = -1;
  std::string err;
};

Outcome fetch(const std::vector<std::string>& args, rlim_t nofile = 0) {
  Tmp t;
  const pid_t pid = spawn_fetch(args, t.path("err"), nofile);
  Outcome o;
  o.status = wait_status(pid);
  o.err = slurp(t.path("err"));
  return o;
}

// One message as relayctl ship publishes it; `drop` leaves a header out, `set` overrides one.
struct Msg {
  std::string host = "host1", channel = "app/log";
  std::string cpu = "0", subbuf = "0", gen = "g1";
  std::string payload{};
  std::string msg_id{};   // "" = the contract's <host>/<channel>/<cpu>/<generation>/<subbuf>
  std::string subject{};  // "" = relayfs.<host>.<channel, '/'->'.'>.<cpu>
  std::string drop{};
};

std::string subject_of(const Msg& m) {
  if (!m.subject.empty()) return m.subject;
  std::string ch = m.channel;
  std::replace(ch.begin(), ch.end(), '/', '.');
  return "relayfs." + m.host + "." + ch + "." + m.cpu;
}

natsMsg* make(const Msg& m) {
  natsMsg* n = nullptr;
  nats_check(natsMsg_Create(&n, subject_of(m).c_str(), nullptr, m.payload.data(),
                            static_cast<int>(m.payload.size())),
             "natsMsg_Create");
  const std::pair<const char*, std::string> headers[] = {{"Relayfs-Host", m.host},
                                                         {"Relayfs-Channel", m.channel},
                                                         {"Relayfs-Cpu", m.cpu},
                                                         {"Relayfs-Subbuf", m.subbuf},
                                                         {"Relayfs-Generation", m.gen}};
  for (const auto& [k, v] : headers)
    if (m.drop != k) nats_check(natsMsgHeader_Set(n, k, v.c_str()), "natsMsgHeader_Set");
  const std::string id =
      !m.msg_id.empty() ? m.msg_id
                        : m.host + "/" + m.channel + "/" + m.cpu + "/" + m.gen + "/" + m.subbuf;
  nats_check(natsMsgHeader_Set(n, "Nats-Msg-Id", id.c_str()), "natsMsgHeader_Set");
  return n;
}

// Publishes and waits for JetStream's acknowledgement. Returns whether it was a duplicate.
bool publish(jsCtx* js, const Msg& m) {
  natsMsg* n = make(m);
  jsPubAck* pa = nullptr;
  jsErrCode code = static_cast<jsErrCode>(0);
  const natsStatus s = js_PublishMsg(&pa, js, n, nullptr, &code);
  natsMsg_Destroy(n);
  nats_check(s, "js_PublishMsg", code);
  const bool dup = pa->Duplicate;
  jsPubAck_Destroy(pa);
  return dup;
}

// Many at once: asynchronously, in order, then waits for every acknowledgement.
void publish_all(jsCtx* js, const std::vector<Msg>& msgs) {
  for (const Msg& m : msgs) {
    natsMsg* n = make(m);
    natsStatus s = js_PublishMsgAsync(js, &n, nullptr);
    if (n) natsMsg_Destroy(n);
    nats_check(s, "js_PublishMsgAsync");
  }
  jsPubOptions o;
  jsPubOptions_Init(&o);
  o.MaxWait = 60000;
  nats_check(js_PublishAsyncComplete(js, &o), "js_PublishAsyncComplete");
}

// What a buffer's sub-buffer holds in these tests: its name and number, then filler.
std::string payload(const std::string& who, const std::string& gen, uint64_t subbuf,
                    size_t size = 0) {
  std::string p = "[" + who + " " + gen + " " + std::to_string(subbuf) + "]";
  for (size_t i = 0; p.size() < size; ++i) p += static_cast<char>('a' + (subbuf + i) % 26);
  return p;
}

// A nats-server with JetStream and one stream, the contract's subjects, plus a connection.
struct Server {
  NatsCluster cluster{1};
  NatsConnection conn{cluster.urls()};
  Server() { add_stream(conn.js(), kStream, "relayfs.>", 1); }
  std::string url() const { return cluster.url(0); }
};

// A port nobody listens on (bound, then closed: nobody else takes it in the test's time).
int free_port() {
  const int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  REQUIRE(::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  REQUIRE(::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) == 0);
  ::close(s);
  return ntohs(a.sin_port);
}

// A nats-server of the test's own, configured with `conf` (besides where it listens; "" for
// no JetStream; STORE stands for a store directory of its own): started here, killed by its
// pid (and PR_SET_PDEATHSIG) when the test ends.
struct OwnServer {
  Tmp tmp;
  int port = free_port();
  pid_t pid = 0;
  explicit OwnServer(const std::string& conf, const std::string& userinfo = "") {
    std::string text = conf;
    if (const size_t at = text.find("STORE"); at != std::string::npos)
      text.replace(at, 5, tmp.path("js"));
    std::ofstream(tmp.path("conf")) << "listen: 127.0.0.1:" << port << "\n" << text << "\n";
    pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      const int log = ::open(tmp.path("log").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      ::dup2(log, 1);
      ::dup2(log, 2);
      ::execlp("nats-server", "nats-server", "-c", tmp.path("conf").c_str(),
               static_cast<char*>(nullptr));
      ::_exit(127);
    }
    const auto until = std::chrono::steady_clock::now() + 20s;
    for (;;) {
      natsConnection* nc = nullptr;
      if (natsConnection_ConnectTo(&nc, url(userinfo).c_str()) == NATS_OK) {
        natsConnection_Destroy(nc);
        break;
      }
      REQUIRE_MESSAGE(std::chrono::steady_clock::now() < until, slurp(tmp.path("log")));
      std::this_thread::sleep_for(50ms);
    }
  }
  ~OwnServer() {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
  }
  std::string url(const std::string& userinfo = "") const {
    return "nats://" + userinfo + "127.0.0.1:" + std::to_string(port);
  }
};

// One that wants a user and password.
struct AuthServer : OwnServer {
  AuthServer()
      : OwnServer(
            "jetstream { store_dir: \"STORE\" }\n"
            "authorization { user: relay, password: s3cret }",
            "relay:s3cret@") {}
};

// The test's model of what fetch must write: per output file, per generation in order of
// first appearance, the payload of each sub-buffer (the first copy published).
struct Model {
  struct Out {
    std::vector<std::string> gens;
    std::map<std::pair<size_t, uint64_t>, std::string> subbufs;
  };
  std::map<std::string, Out> outs;  // by path below OUTDIR

  static std::string path_of(const Msg& m) { return m.host + "/" + m.channel + m.cpu; }
  void add(const Msg& m) {
    Out& o = outs[path_of(m)];
    auto g = std::find(o.gens.begin(), o.gens.end(), m.gen);
    if (g == o.gens.end()) g = o.gens.insert(o.gens.end(), m.gen);
    o.subbufs.emplace(std::make_pair(g - o.gens.begin(), std::stoull(m.subbuf)), m.payload);
  }
  std::string bytes(const std::string& path) const {
    std::string b;
    for (const auto& [k, p] : outs.at(path).subbufs) b += p;
    return b;
  }
  // Every file's bytes equal the model's.
  void check(const std::string& outdir) const {
    for (const auto& [path, o] : outs) {
      CAPTURE(path);
      const std::string got = slurp(outdir + "/" + path);
      const std::string want = bytes(path);
      CHECK(got.size() == want.size());
      CHECK_MESSAGE(
          got == want, "first difference at byte " << [&] {
            size_t i = 0;
            while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
            return i;
          }());
    }
  }
};

// Reorders msgs as a failover would: within each block of `block` (< WINDOW), reversed.
void shuffle_within(std::vector<Msg>* msgs, size_t block) {
  for (size_t i = 0; i < msgs->size(); i += block)
    std::reverse(msgs->begin() + static_cast<long>(i),
                 msgs->begin() + static_cast<long>(std::min(msgs->size(), i + block)));
}

bool contains(const std::string& text, const std::string& what) {
  return text.find(what) != std::string::npos;
}

}  // namespace

TEST_CASE("fetch writes each buffer's sub-buffers in order, once, and a second run resumes") {
  Server srv;
  Tmp tmp;
  const std::string out = tmp.path("out");
  Model model;
  std::vector<Msg> all;

  // host1 app/log cpu 0: 1000 sub-buffers, reversed in blocks of 8 (within the window of 32),
  // over several of fetch's batches.
  std::vector<Msg> a;
  for (uint64_t n = 0; n < 1000; ++n)
    a.push_back(
        {.cpu = "0", .subbuf = std::to_string(n), .payload = payload("h1 log0", "g1", n, 300)});
  for (const Msg& m : a) model.add(m);
  shuffle_within(&a, 8);
  // host1 app/log cpu 1: generation g1 0..29 with a gap (10..14 lapped), then the channel reset:
  // g2 from 0 again; a few of g2 come before the last of g1.
  std::vector<Msg> b;
  for (uint64_t n = 0; n < 30; ++n)
    if (n < 10 || n > 14)
      b.push_back({.cpu = "1",
                   .subbuf = std::to_string(n),
                   .gen = "boot1-77-0",
                   .payload = payload("h1 log1", "g1", n, 50)});
  for (uint64_t n = 0; n < 20; ++n)
    b.push_back({.cpu = "1",
                 .subbuf = std::to_string(n),
                 .gen = "boot1-77-1",
                 .payload = payload("h1 log1", "g2", n, 70)});
  for (const Msg& m : b) model.add(m);
  std::swap(b[24], b[26]);  // g1's 29 after g2's 0 and 1
  std::swap(b[24], b[25]);
  // host2, channel "log" at the top, cpu 3: 10 sub-buffers; 4 published twice with its
  // Nats-Msg-Id (JetStream drops it), 6 published twice under another id (stored twice:
  // fetch must skip it).
  std::vector<Msg> c;
  for (uint64_t n = 0; n < 10; ++n)
    c.push_back({.host = "host2",
                 .channel = "log",
                 .cpu = "3",
                 .subbuf = std::to_string(n),
                 .payload = payload("h2 log3", "g1", n, 10)});
  for (const Msg& m : c) model.add(m);

  for (size_t i = 0; i < std::max({a.size(), b.size(), c.size()}); ++i) {
    if (i < a.size()) all.push_back(a[i]);
    if (i < b.size()) all.push_back(b[i]);
    if (i < c.size()) all.push_back(c[i]);
  }
  publish_all(srv.conn.js(), all);
  CHECK(publish(srv.conn.js(), c[4]));  // a duplicate: dropped by JetStream
  Msg again = c[6];
  again.msg_id = "another-id";
  again.payload = "NOT TO BE WRITTEN";
  CHECK_FALSE(publish(srv.conn.js(), again));

  const Outcome o = fetch({srv.url(), out});
  INFO(o.err);
  REQUIRE(o.status == 0);
  model.check(out);
  CHECK(contains(o.err, "caught up"));
  CHECK(contains(o.err, "1 duplicates"));
  // The files are the caller's, 0644 less the umask; each has its state beside it.
  const mode_t mask = ::umask(0);
  ::umask(mask);
  struct stat st;
  REQUIRE(::stat((out + "/host1/app/log0").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == (0644 & ~mask));
  CHECK(st.st_uid == ::geteuid());
  CHECK(fs::is_regular_file(out + "/host1/app/log0.state"));
  CHECK(fs::is_regular_file(out + "/host2/log3.state"));
  CHECK(fs::directory_iterator(out + "/host1/app") != fs::directory_iterator());

  // A second run: nothing new, nothing written again.
  const Outcome o2 = fetch({"-q", srv.url(), out});
  CHECK(o2.status == 0);
  CHECK(o2.err.empty());
  model.check(out);

  // More messages: the third run writes only those.
  std::vector<Msg> more;
  for (uint64_t n = 1000; n < 1040; ++n)
    more.push_back(
        {.cpu = "0", .subbuf = std::to_string(n), .payload = payload("h1 log0", "g1", n, 30)});
  for (const Msg& m : more) model.add(m);
  shuffle_within(&more, 31);
  publish_all(srv.conn.js(), more);
  const Outcome o3 = fetch({srv.url(), out});
  INFO(o3.err);
  CHECK(o3.status == 0);
  CHECK(contains(o3.err, "40 messages into 1 files"));
  model.check(out);
}

TEST_CASE("fetch skips, counts and acknowledges messages whose headers break the contract") {
  Server srv;
  Tmp tmp;
  const std::string out = tmp.path("a/out");
  fs::create_directories(tmp.path("a"));
  Model model;
  std::vector<Msg> good;
  for (uint64_t n = 0; n < 5; ++n)
    good.push_back({.subbuf = std::to_string(n), .payload = payload("good", "g1", n)});
  for (const Msg& m : good) model.add(m);
  publish_all(srv.conn.js(), good);

  const std::string evil = "relayfs.evil.x.0";
  std::vector<Msg> bad = {
      {.channel = "../../etc/x", .subject = evil},
      {.channel = "../x", .subject = evil},
      {.channel = "/etc/x", .subject = evil},
      {.channel = "app//log", .subject = evil},
      {.channel = "app/./log", .subject = evil},
      {.channel = "app/log/", .subject = evil},
      {.channel = "", .subject = evil},
      {.channel = "app/\x1b[2Jlog", .subject = evil},
      {.channel = std::string(300, 'x'), .subject = evil},
      {.host = "..", .subject = evil},
      {.host = "a/b", .subject = evil},
      {.host = "", .subject = evil},
      {.cpu = "4096", .subject = evil},
      {.cpu = "-1", .subject = evil},
      {.cpu = "1a", .subject = evil},
      {.subbuf = "x", .subject = evil},
      {.subbuf = "99999999999999999999999", .subject = evil},
      {.gen = "a b", .subject = evil},
      {.gen = "", .subject = evil},
      {.subject = evil, .drop = "Relayfs-Host"},
      {.subject = evil, .drop = "Relayfs-Channel"},
      {.subject = evil, .drop = "Relayfs-Cpu"},
      {.subject = evil, .drop = "Relayfs-Subbuf"},
      {.subject = evil, .drop = "Relayfs-Generation"},
  };
  for (size_t i = 0; i < bad.size(); ++i) {
    bad[i].msg_id = "bad-" + std::to_string(i);
    bad[i].payload = "EVIL";
  }
  publish_all(srv.conn.js(), bad);

  const Outcome o = fetch({srv.url(), out});
  INFO(o.err);
  CHECK(o.status == 0);
  model.check(out);
  CHECK(contains(o.err, "invalid message on relayfs.evil.x.0: Relayfs-Channel '../../etc/x'"));
  CHECK(contains(o.err, "more invalid messages: counted only"));
  CHECK(contains(o.err, std::to_string(bad.size()) + " invalid skipped"));
  CHECK_FALSE(contains(o.err, "\x1b"));  // shown escaped, never sent to the terminal
  // Nothing outside OUTDIR, nothing in it but the good output.
  CHECK_FALSE(fs::exists(tmp.path("etc")));
  CHECK_FALSE(fs::exists(tmp.path("a/etc")));
  CHECK_FALSE(fs::exists(tmp.path("x")));
  std::vector<std::string> names;
  for (const auto& e : fs::recursive_directory_iterator(out))
    names.push_back(e.path().string().substr(out.size() + 1));
  std::sort(names.begin(), names.end());
  std::string listed;
  for (const std::string& n : names) listed += n + " ";
  CHECK(listed == "host1 host1/app host1/app/log0 host1/app/log0.state ");
  // They were acknowledged: a second run sees none of them.
  const Outcome o2 = fetch({srv.url(), out});
  CHECK(o2.status == 0);
  CHECK_FALSE(contains(o2.err, "invalid message"));
  CHECK(contains(o2.err, "0 invalid skipped"));
}

TEST_CASE("fetch never follows a symbolic link planted in OUTDIR, and leaves those messages") {
  Server srv;
  Tmp tmp;
  const std::string out = tmp.path("out");
  const std::string elsewhere = tmp.path("elsewhere");
  fs::create_directories(out);
  fs::create_directories(elsewhere + "/app");
  fs::create_symlink(elsewhere, out + "/host2");  // a host directory
  fs::create_directories(out + "/host3/app");
  fs::create_symlink(elsewhere + "/app/log0", out + "/host3/app/log0");  // a file
  fs::create_directories(out + "/host4/app");
  std::ofstream(elsewhere + "/state");
  fs::create_symlink(elsewhere + "/state", out + "/host4/app/log0.state");  // a state file

  Model model;
  std::vector<Msg> msgs;
  for (const std::string host : {"host1", "host2", "host3", "host4"})
    for (uint64_t n = 0; n < 5; ++n)
      msgs.push_back(
          {.host = host, .subbuf = std::to_string(n), .payload = payload(host, "g1", n)});
  for (const Msg& m : msgs) model.add(m);
  publish_all(srv.conn.js(), msgs);

  const Outcome o = fetch({srv.url(), out});
  INFO(o.err);
  CHECK(o.status == 1);
  CHECK(contains(o.err, out + "/host2/app: a symbolic link on the way: fetch never follows one"));
  CHECK(contains(o.err, out + "/host3/app/log0: exists without log0.state"));
  CHECK(contains(o.err, out + "/host4/app/log0.state: a symbolic link (never followed)"));
  CHECK(contains(o.err, "15 messages not written"));
  CHECK(slurp(out + "/host1/app/log0") == model.bytes("host1/app/log0"));
  // Nothing reached where the links point.
  CHECK(fs::is_empty(elsewhere + "/app"));
  CHECK(fs::file_size(elsewhere + "/state") == 0);

  // The messages stayed in the stream: once the links are gone, the next run writes them.
  fs::remove(out + "/host2");
  fs::remove(out + "/host3/app/log0");
  fs::remove(out + "/host4/app/log0.state");
  const Outcome o2 = fetch({srv.url(), out});
  INFO(o2.err);
  CHECK(o2.status == 0);
  model.check(out);
}

TEST_CASE("fetch refuses a file whose state it did not write, or that changed since") {
  Server srv;
  Tmp tmp;
  const std::string out = tmp.path("out");
  std::vector<Msg> msgs;
  for (uint64_t n = 0; n < 4; ++n)
    msgs.push_back({.subbuf = std::to_string(n), .payload = payload("s", "g1", n)});
  publish_all(srv.conn.js(), {msgs[0], msgs[1]});
  REQUIRE(fetch({srv.url(), out}).status == 0);
  const std::string file = out + "/host1/app/log0";
  const std::string state = slurp(file + ".state");
  const std::string bytes = slurp(file);
  publish_all(srv.conn.js(), {msgs[2], msgs[3]});

  std::ofstream(file + ".state") << "relayctl-fetch-state 1\nhost host1\nlength 5\n";
  Outcome o = fetch({srv.url(), out});
  CHECK(o.status == 1);
  CHECK(contains(o.err, file + ".state: not a state relayctl fetch wrote"));
  CHECK(slurp(file) == bytes);

  std::ofstream(file + ".state") << state;
  fs::resize_file(file, bytes.size() - 1);
  o = fetch({srv.url(), out});
  CHECK(o.status == 1);
  CHECK(contains(o.err, file + ": " + std::to_string(bytes.size() - 1) + " bytes, fewer than"));

  // Put right: the messages left in the stream come, once.
  std::ofstream(file) << bytes;
  o = fetch({srv.url(), out});
  INFO(o.err);
  CHECK(o.status == 0);
  CHECK(slurp(file) == bytes + msgs[2].payload + msgs[3].payload);
}

TEST_CASE("fetch killed with SIGKILL in the middle of a large stream: the next run ends exact") {
  Server srv;
  Tmp tmp;
  const std::string out = tmp.path("out");
  Model model;
  std::vector<Msg> msgs;
  std::mt19937 rng(16);
  constexpr int kPerCpu = 5000;
  std::vector<std::vector<Msg>> per(4);
  for (int cpu = 0; cpu < 4; ++cpu) {
    for (uint64_t n = 0; n < kPerCpu; ++n) {
      if (cpu == 2 && n % 97 == 5) continue;  // gaps
      // cpu 3 is reset half way: a second generation from 0.
      const bool second = cpu == 3 && n >= kPerCpu / 2;
      const uint64_t sb = second ? n - kPerCpu / 2 : n;
      const std::string gen = second ? "b-9-1" : "b-9-0";
      per[cpu].push_back(
          {.cpu = std::to_string(cpu),
           .subbuf = std::to_string(sb),
           .gen = gen,
           .payload = payload("cpu" + std::to_string(cpu), gen, sb, 100 + rng() % 1900)});
    }
    for (const Msg& m : per[cpu]) model.add(m);
    shuffle_within(&per[cpu], 1 + rng() % 31);
  }
  for (size_t i = 0; i < kPerCpu; ++i)
    for (auto& p : per)
      if (i < p.size()) msgs.push_back(p[i]);
  REQUIRE(msgs.size() > 19000);
  publish_all(srv.conn.js(), msgs);
  uint64_t total = 0;
  for (const auto& [path, o] : model.outs) total += model.bytes(path).size();

  auto written = [&] {
    uint64_t sum = 0;
    std::error_code ec;
    for (int cpu = 0; cpu < 4; ++cpu) {
      const auto n = fs::file_size(out + "/host1/app/log" + std::to_string(cpu), ec);
      if (!ec) sum += n;
    }
    return sum;
  };
  // Whether some file holds bytes its state does not count yet: written, state not saved.
  auto ahead = [&] {
    std::error_code ec;
    for (int cpu = 0; cpu < 4; ++cpu) {
      const std::string path = out + "/host1/app/log" + std::to_string(cpu);
      const std::string state = slurp(path + ".state");
      const size_t at = state.find("\nlength ");
      const auto size = fs::file_size(path, ec);
      if (!ec && at != std::string::npos && size > std::stoull(state.substr(at + 8))) return true;
    }
    return false;
  };
  // Killed five times, from a tenth to nine tenths of the bytes, each time just after a write
  // whose state is not saved yet when that can be caught (then the next run must cut it off),
  // then left to finish.
  int kills = 0, kills_ahead = 0;
  for (double at : {0.1, 0.3, 0.5, 0.7, 0.9}) {
    const pid_t pid = spawn_fetch({"-q", srv.url(), out}, tmp.path("err"));
    auto until = std::chrono::steady_clock::now() + 60s;
    while (written() < at * static_cast<double>(total) &&
           std::chrono::steady_clock::now() < until && ::waitpid(pid, nullptr, WNOHANG) == 0)
      std::this_thread::sleep_for(1ms);
    until = std::chrono::steady_clock::now() + 2s;
    bool was_ahead = false;
    while (!(was_ahead = ahead()) && std::chrono::steady_clock::now() < until) {
    }
    const bool alive = ::kill(pid, SIGKILL) == 0;
    int st = 0;
    ::waitpid(pid, &st, 0);
    if (alive && WIFSIGNALED(st)) {
      ++kills;
      kills_ahead += was_ahead;
    }
    INFO(slurp(tmp.path("err")));
  }
  MESSAGE(kills << " kills, " << kills_ahead << " with a file ahead of its state");
  CHECK(kills_ahead >= 1);  // the case the state and the cut on restart are for
  CHECK(kills >= 4);        // it was killed mid-stream, not after it ended
  const Outcome o = fetch({srv.url(), out});
  INFO(o.err);
  CHECK(o.status == 0);
  CHECK(written() == total);
  model.check(out);
  // And nothing more comes: every message was acknowledged once written.
  const Outcome o2 = fetch({srv.url(), out});
  CHECK(contains(o2.err, "0 messages into 0 files"));
  model.check(out);
}

TEST_CASE("fetch --follow writes messages published later, and quits on SIGTERM") {
  Server srv;
  Tmp tmp;
  const std::string out = tmp.path("out");
  Model model;
  const pid_t pid = spawn_fetch({"--follow", srv.url(), out}, tmp.path("err"));
  auto wait_model = [&] {
    const std::string want = model.bytes("host1/app/log0");
    const auto until = std::chrono::steady_clock::now() + 20s;
    while (slurp(out + "/host1/app/log0") != want && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(20ms);
    model.check(out);
  };
  std::this_thread::sleep_for(500ms);
  std::vector<Msg> first;
  for (uint64_t n = 0; n < 50; ++n)
    first.push_back({.subbuf = std::to_string(n), .payload = payload("f", "g1", n, 100)});
  for (const Msg& m : first) model.add(m);
  shuffle_within(&first, 5);
  publish_all(srv.conn.js(), first);
  wait_model();
  // The server killed and started again: fetch reconnects by itself.
  srv.cluster.kill(0);
  std::this_thread::sleep_for(1500ms);
  srv.cluster.restart(0);
  // Later: with a gap (60) that never fills: written after an idle second.
  std::vector<Msg> second;
  for (uint64_t n = 50; n < 70; ++n)
    if (n != 60) second.push_back({.subbuf = std::to_string(n), .payload = payload("f", "g1", n)});
  for (const Msg& m : second) model.add(m);
  publish_all(srv.conn.js(), second);
  wait_model();
  CHECK(::waitpid(pid, nullptr, WNOHANG) == 0);  // still following
  ::kill(pid, SIGTERM);
  CHECK(wait_status(pid, 10s) == 0);
  const std::string err = slurp(tmp.path("err"));
  INFO(err);
  CHECK(contains(err, "69 messages into 1 files"));
  CHECK(contains(err, "stopped"));
  CHECK(contains(err, "relayctl fetch: connection to NATS lost; reconnecting"));
  CHECK(contains(err, "relayctl fetch: reconnected to " + srv.url()));
}

TEST_CASE("fetch with more outputs than descriptors closes and reopens them, exactly") {
  Server srv;
  Tmp tmp;
  const std::string out = tmp.path("out");
  Model model;
  std::vector<Msg> msgs;
  constexpr int kCpus = 150;
  for (uint64_t n = 0; n < 6; ++n)
    for (int cpu = 0; cpu < kCpus; ++cpu)
      msgs.push_back({.cpu = std::to_string(cpu),
                      .subbuf = std::to_string(n),
                      .payload = payload("cpu" + std::to_string(cpu), "g1", n)});
  for (const Msg& m : msgs) model.add(m);
  publish_all(srv.conn.js(), msgs);
  // 160 descriptors: room for 48 open outputs (two descriptors each), fewer than the 150.
  const Outcome o = fetch({srv.url(), out}, 160);
  INFO(o.err);
  CHECK(o.status == 0);
  CHECK(contains(o.err,
                 std::to_string(6 * kCpus) + " messages into " + std::to_string(kCpus) + " files"));
  model.check(out);
}

TEST_CASE("a sub-buffer that comes after its place was written is appended, not lost") {
  Server srv;
  Tmp tmp;
  const std::string out = tmp.path("out");
  std::vector<Msg> msgs;
  for (uint64_t n = 0; n < 10; ++n)
    msgs.push_back({.subbuf = std::to_string(n), .payload = payload("l", "g1", n)});
  Msg late = msgs[5];
  msgs.erase(msgs.begin() + 5);  // still being retried by ship when the first run ends
  publish_all(srv.conn.js(), msgs);
  Outcome o = fetch({srv.url(), out});
  CHECK(o.status == 0);
  std::string want;
  for (const Msg& m : msgs) want += m.payload;
  CHECK(slurp(out + "/host1/app/log0") == want);
  publish(srv.conn.js(), late);
  o = fetch({srv.url(), out});
  INFO(o.err);
  CHECK(o.status == 0);
  CHECK(contains(o.err, "1 messages came after their place"));
  CHECK(slurp(out + "/host1/app/log0") == want + late.payload);
  // Published once more (a resend after the duplicate window): the file holds it already.
  late.msg_id = "resent";
  publish(srv.conn.js(), late);
  o = fetch({srv.url(), out});
  CHECK(contains(o.err, "1 duplicates"));
  CHECK(slurp(out + "/host1/app/log0") == want + late.payload);
}

TEST_CASE("fetch refuses bad input with a clear message, and creates nothing in OUTDIR") {
  Tmp tmp;
  const std::string out = tmp.path("out");
  auto refused = [&](const std::vector<std::string>& args, const std::string& message,
                     int status = 1) {
    const Outcome o = fetch(args);
    CAPTURE(o.err);
    CHECK(o.status == status);
    CHECK(contains(o.err, message));
    CHECK(std::count(o.err.begin(), o.err.end(), '\n') <= 2);
    CHECK_FALSE(fs::exists(out));
  };
  SUBCASE("no server") {
    const std::string url = "nats://127.0.0.1:" + std::to_string(free_port());
    refused({url, out}, "relayctl: " + url + ": no server answers");
  }
  SUBCASE("malformed URLs") {
    refused({"nats://:4222", out}, "malformed URL 'nats://:4222': no host");
    refused({"http://h:1", out}, "unknown scheme 'http://'");
    refused({"nats://h:70000", out}, "port '70000' is not a number from 1 to 65535");
    refused({"nats://h:1,,nats://h:2", out}, "an empty URL in the list");
    refused({"nats://u:pw@h:1/path", out}, "malformed URL 'nats://u:***@h:1/path'");
    refused({"nats://a:b:c", out}, "an IPv6 address goes in [ ]");
  }
  SUBCASE("no JetStream") {
    OwnServer plain("");
    refused({plain.url(), out}, "stream RELAYFS: JetStream is not enabled on the server");
  }
  SUBCASE("no such stream") {
    Server srv;
    refused({"--stream", "NOPE", srv.url(), out}, "stream NOPE not found");
  }
  SUBCASE("bad credentials") {
    AuthServer auth;
    refused({auth.url("relay:wrong@"), out}, "authorization failed");
    refused({auth.url(""), out}, "authorization failed");
    const Outcome o = fetch({auth.url("relay:wrong@"), out});
    CHECK_FALSE(contains(o.err, "wrong"));  // the password is never shown
    refused({"--creds", tmp.path("missing.creds"), auth.url(""), out},
            "--creds " + tmp.path("missing.creds"));
    refused({"--tls-cert", tmp.path("c.pem"), auth.url(""), out},
            "--tls-cert and --tls-key go together");
    refused({"--tls-ca", tmp.path("missing.pem"), auth.url(""), out},
            "--tls-ca " + tmp.path("missing.pem"));
    // The right password: no stream yet, then a run that works.
    refused({auth.url("relay:s3cret@"), out}, "stream RELAYFS not found");
    NatsConnection conn(auth.url("relay:s3cret@"));
    add_stream(conn.js(), kStream, "relayfs.>", 1);
    publish(conn.js(), {.payload = "x"});
    const Outcome ok = fetch({"--window", "1", auth.url("relay:s3cret@"), out});
    CHECK(ok.status == 0);
    CHECK(slurp(out + "/host1/app/log0") == "x");
  }
  SUBCASE("a consumer of that name with another filter") {
    Server srv;
    const Outcome o = fetch({"--subject", "relayfs.host1.>", srv.url(), out});
    CHECK(o.status == 0);
    fs::remove_all(out);
    refused({srv.url(), out}, "takes subjects 'relayfs.host1.>', not all");
  }
  SUBCASE("usage") {
    refused({}, "missing URL or OUTDIR", 2);
    refused({"nats://h", out, "extra"}, "too many arguments", 2);
    refused({"--window", "0", "nats://h", out}, "--window takes a number", 2);
    refused({"--durable", "a.b", "nats://h", out}, "--durable 'a.b': not a consumer name", 2);
    refused({"--bogus", "nats://h", out}, "unknown option '--bogus'", 2);
  }
}
