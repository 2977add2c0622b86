// relayctl stat --prometheus, read back by real parsers: promtool check metrics (Debian package
// prometheus) must pass it, its values must be stat --json's, and a prometheus-node-exporter's
// textfile collector, run on a loopback port of the test's own, must load it and serve every
// series with its labels and value. Both programs are required (scripts/deps installs them):
// without them the test fails, it does not skip.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/xattr.h>

#include <climits>
#include <cstdlib>
#include <map>

#include "core/stats.h"
#include "relayctl/tool.h"

using namespace relayfs::test;

namespace {

// path as one shell word.
std::string q(const std::string& path) {
  REQUIRE(path.find('\'') == std::string::npos);
  return "'" + path + "'";
}

// ---- The text format, parsed by the test's own reader --------------------------------------

using Labels = std::map<std::string, std::string>;

struct Exposition {
  std::map<std::string, std::map<Labels, std::string>> samples;  // family -> labels -> value
  std::map<std::string, std::string> type;                       // family -> TYPE
  std::map<std::string, int> help_lines, type_lines;             // family -> how many
};

// Parses text in the format version 0.0.4 as the specification reads (label values unescaped:
// \\, \" and \n). A line it cannot read fails the test.
Exposition parse(const std::string& text) {
  Exposition e;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    CAPTURE(line);
    if (line.empty()) continue;
    if (line[0] == '#') {
      std::istringstream w(line.substr(1));
      std::string kind, name, rest;
      w >> kind >> name >> std::ws;
      std::getline(w, rest);
      if (kind == "HELP") ++e.help_lines[name];
      if (kind == "TYPE") {
        ++e.type_lines[name];
        e.type[name] = rest;
      }
      continue;
    }
    size_t at = line.find_first_of("{ ");
    REQUIRE(at != std::string::npos);
    const std::string name = line.substr(0, at);
    Labels labels;
    if (line[at] == '{') {
      ++at;
      while (line.at(at) != '}') {
        const size_t eq = line.find("=\"", at);
        REQUIRE(eq != std::string::npos);
        const std::string key = line.substr(at, eq - at);
        std::string value;
        for (at = eq + 2; line.at(at) != '"'; ++at) {
          if (line[at] != '\\') {
            value += line[at];
            continue;
          }
          const char c = line.at(++at);
          REQUIRE((c == '\\' || c == '"' || c == 'n'));
          value += c == 'n' ? '\n' : c;
        }
        labels[key] = value;
        if (line.at(++at) == ',') ++at;
      }
      ++at;
    }
    REQUIRE(line.at(at) == ' ');
    const std::string value = line.substr(at + 1);
    REQUIRE(value.find(' ') == std::string::npos);  // no timestamp
    CHECK(e.samples[name].emplace(labels, value).second);
  }
  return e;
}

// ---- What relayctl stat --json says ---------------------------------------------------------

// Each buffer's attributes from stat --json, by path, through python3's json parser; the
// fields travel NUL-separated, since a path may hold a newline.
std::map<std::string, std::map<std::string, std::string>> json_buffers(const std::string& json) {
  TempDir t;
  write_file(t.path("j"), json);
  const std::string flat = capture(
      "python3 -c 'import json,sys\n"
      "for b in json.load(open(sys.argv[1])):\n"
      "  for k, v in b.items(): sys.stdout.write(\"%s\\0%s\\0%s\\0\" % (b[\"path\"], k, "
      "v))' '" +
      t.path("j") + "'");
  std::map<std::string, std::map<std::string, std::string>> out;
  std::vector<std::string> f;
  for (size_t at = 0, nul; (nul = flat.find('\0', at)) != std::string::npos; at = nul + 1)
    f.push_back(flat.substr(at, nul - at));
  REQUIRE(f.size() % 3 == 0);
  for (size_t i = 0; i < f.size(); i += 3) out[f[i]][f[i + 1]] = f[i + 2];
  return out;
}

// The family a counter is shown in, as relayctl(1) documents it.
std::string family(size_t i) {
  return std::string("relayfs_") + relayfs::core::kCounterNames[i] +
         (relayfs::core::is_level(i) ? "" : "_total");
}

// ---- The external programs --------------------------------------------------------------------

std::string program(const char* env, const char* package) {
  const char* p = std::getenv(env);
  REQUIRE_MESSAGE(
      (p != nullptr && *p != '\0' && ::access(p, X_OK) == 0),
      env << " is not installed: scripts/deps installs it (Debian package " << package << ")");
  return p;
}

// A prometheus-node-exporter with only the textfile collector, reading dir, on a free loopback
// port. The destructor stops it (SIGTERM, then SIGKILL) and reaps it; PR_SET_PDEATHSIG takes it
// with the test if the test dies.
class NodeExporter {
 public:
  NodeExporter(const std::string& dir, const std::string& log) : log_(log) {
    const std::string exe = program("NODE_EXPORTER", "prometheus-node-exporter");
    // The port is free when asked; another program may take it before the exporter listens:
    // then the exporter exits, and the next port is tried.
    for (int attempt = 0; attempt < 5 && pid_ <= 0; ++attempt) {
      port_ = free_port();
      pid_ = ::fork();
      REQUIRE(pid_ >= 0);
      if (pid_ == 0) {
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd < 0 || ::dup2(fd, 1) < 0 || ::dup2(fd, 2) < 0) ::_exit(126);
        const std::string textfile = "--collector.textfile.directory=" + dir;
        const std::string listen = "--web.listen-address=127.0.0.1:" + std::to_string(port_);
        ::execl(exe.c_str(), exe.c_str(), "--collector.disable-defaults", "--collector.textfile",
                textfile.c_str(), listen.c_str(), static_cast<char*>(nullptr));
        ::_exit(127);
      }
      const auto until = Clock::now() + std::chrono::seconds(10);
      while (alive(pid_) && Clock::now() < until && !listening())
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      if (!listening()) stop();
    }
    REQUIRE_MESSAGE(pid_ > 0, "prometheus-node-exporter did not listen; its log:\n"
                                  << read_file(log_));
  }
  ~NodeExporter() { stop(); }
  NodeExporter(const NodeExporter&) = delete;
  NodeExporter& operator=(const NodeExporter&) = delete;

  // GET path over HTTP/1.0: the body of a 200 answer (anything else fails the test).
  std::string get(const std::string& path) {
    const int s = connect_to();
    REQUIRE(s >= 0);
    const std::string req = "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    std::string answer;
    if (::send(s, req.data(), req.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(req.size())) {
      char buf[65536];
      for (ssize_t n; (n = ::recv(s, buf, sizeof buf, 0)) > 0;) answer.append(buf, n);
    }
    ::close(s);
    const size_t body = answer.find("\r\n\r\n");
    REQUIRE_MESSAGE(body != std::string::npos, "no HTTP answer: " << answer);
    REQUIRE_MESSAGE(answer.rfind("HTTP/1.", 0) == 0, answer.substr(0, body));
    REQUIRE_MESSAGE(answer.compare(8, 5, " 200 ") == 0, answer.substr(0, body));
    return answer.substr(body + 4);
  }

 private:
  static int free_port() {
    const int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(s >= 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    const bool ok = ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
                    ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) == 0;
    ::close(s);
    REQUIRE(ok);
    return ntohs(a.sin_port);
  }
  // A connected socket to the exporter, with a 10 s limit on each receive, or -1.
  int connect_to() const {
    const int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) return -1;
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<uint16_t>(port_));
    const timeval limit{10, 0};
    if (::setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit) != 0 ||
        ::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      ::close(s);
      return -1;
    }
    return s;
  }
  bool listening() const {
    if (!alive(pid_)) return false;
    const int s = connect_to();
    if (s >= 0) ::close(s);
    return s >= 0;
  }
  void stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    bool killed;
    wait_or_kill(pid_, std::chrono::seconds(5), &killed);
    pid_ = -1;
  }

  std::string log_;
  pid_t pid_ = -1;
  int port_ = 0;
};

// ---- The channels -----------------------------------------------------------------------------

// A mount whose counters are not all zero, at a mount point whose path needs every escape of a
// label value (relayfs refuses a control character in a name of its own, but not a quote or a
// backslash: the odd directory has those).
struct Busy {
  Busy() {
    REQUIRE(::mkdir(m.path("app").c_str(), 0755) == 0);
    REQUIRE(::mkdir(m.path(odd_dir).c_str(), 0755) == 0);
    // A global channel of two small sub-buffers, overfilled: records dropped for a full
    // buffer and one too big, 1100 bytes read.
    log = open_global(m.path("app"), "log", 4096, 2);
    for (int i = 0; i < 1000; ++i) {
      const std::string r = record(i);
      relay_write(log, r.data(), r.size());
    }
    const std::string big(5000, 'x');
    CHECK(relay_write(log, big.data(), big.size()) == -1);
    CHECK(errno == EMSGSIZE);
    const int fd = ::open(m.path("app/log0").c_str(), O_RDONLY);
    REQUIRE(fd >= 0);
    CHECK(read_exactly(fd, 1100, 1100).size() == 1100);
    ::close(fd);
    // One buffer per CPU, each written from its CPU: i + 1 records into buffer i.
    percpu = relay_open("cpu", m.path("app").c_str(), 4096, 4, nullptr, nullptr);
    REQUIRE(percpu != nullptr);
    for (unsigned cpu = 0; cpu < ncpus(); ++cpu) {
      std::thread([&] {
        if (!pin_to(cpu)) return;  // offline
        written[cpu] = write_records(percpu, 0, static_cast<int>(cpu) + 1).size();
      }).join();
    }
    odd = open_global(m.path(odd_dir), "odd");
    write_records(odd, 0, 3);
  }
  ~Busy() {
    relay_close(odd);
    relay_close(percpu);
    relay_close(log);
  }
  static std::string make_dir(const TempDir& t) {
    const std::string at = t.path("mount \"quoted\" back\\slash\nnewline");
    REQUIRE(::mkdir(at.c_str(), 0755) == 0);
    return at;
  }
  static constexpr const char* odd_dir = "quote\" back\\slash";
  TempDir base;
  Mount m{{}, make_dir(base)};
  rchan* log = nullptr;
  rchan* percpu = nullptr;
  rchan* odd = nullptr;
  std::map<unsigned, size_t> written;  // CPU -> bytes written into its buffer
};

// The labels stat --prometheus gives buffer path (BASE<n>) of channel base in directory dir of
// the mount at root.
Labels labels_of(const std::string& root, const std::string& dir, const std::string& base,
                 unsigned cpu) {
  return {{"mount", root}, {"channel", dir + "/" + base}, {"cpu", std::to_string(cpu)}};
}

// The channel a buffer file belongs to (its user.relayfs.channel attribute).
std::string channel_of(const std::string& path) {
  char v[NAME_MAX + 1];
  const ssize_t n = ::getxattr(path.c_str(), "user.relayfs.channel", v, sizeof v);
  REQUIRE(n >= 0);
  return std::string(v, static_cast<size_t>(n));
}

std::string real(const std::string& path) {
  char buf[PATH_MAX];
  REQUIRE(::realpath(path.c_str(), buf) != nullptr);
  return buf;
}

}  // namespace

TEST_CASE("stat --prometheus passes promtool, and says what stat --json says") {
  const std::string promtool = program("PROMTOOL", "prometheus");
  Busy b;
  const Outcome prom = relayctl("stat --prometheus " + q(b.m.dir));
  REQUIRE(prom.status == 0);
  CHECK(prom.err.empty());
  TempDir t;
  write_file(t.path("relayfs.prom"), prom.out);
  const std::string lint =
      capture("'" + promtool + "' check metrics <'" + t.path("relayfs.prom") + "' 2>&1; echo $?");
  CHECK_MESSAGE(lint == "0\n", "promtool check metrics:\n" << lint << "of:\n" << prom.out);

  const Outcome json = relayctl("stat --json " + q(b.m.dir));
  REQUIRE(json.status == 0);
  const auto buffers = json_buffers(json.out);
  const Exposition e = parse(prom.out);
  const std::string root = real(b.m.dir);
  // Every counter a family of its own, with its HELP and TYPE once, and a series per buffer
  // whose value is stat --json's.
  for (size_t i = 0; i < relayfs::core::kCounterCount; ++i) {
    const std::string f = family(i);
    CAPTURE(f);
    CHECK(e.help_lines.count(f) == 1);
    CHECK(e.help_lines.at(f) == 1);
    CHECK(e.type_lines.at(f) == 1);
    CHECK(e.type.at(f) == (relayfs::core::is_level(i) ? "gauge" : "counter"));
    CHECK(e.samples.at(f).size() == buffers.size());
  }
  CHECK(e.samples.size() == relayfs::core::kCounterCount + 1);  // and relayfs_buffer_info
  auto series_of = [&](const std::string& path) {
    // path is MOUNT/DIR/BASE<n>; its channel DIR/BASE comes from the channel attribute.
    const std::string dir = path.substr(b.m.dir.size() + 1, path.rfind('/') - b.m.dir.size() - 1);
    const std::string name = path.substr(path.rfind('/') + 1);
    const std::string base = channel_of(path);
    return labels_of(root, dir, base, static_cast<unsigned>(std::stoul(name.substr(base.size()))));
  };
  for (const auto& [path, attrs] : buffers) {
    CAPTURE(path);
    const Labels l = series_of(path);
    for (size_t i = 0; i < relayfs::core::kCounterCount; ++i) {
      CAPTURE(relayfs::core::kCounterNames[i]);
      const auto& s = e.samples.at(family(i));
      REQUIRE(s.count(l) == 1);
      CHECK(s.at(l) == attrs.at(relayfs::core::kCounterNames[i]));
    }
    Labels info = l;
    info["mode"] = attrs.at("mode");
    info["blocking"] = attrs.at("blocking");
    CHECK(e.samples.at("relayfs_buffer_info").at(info) == "1");
  }

  // The figures the channels were made to have.
  const Labels log = labels_of(root, "app", "log", 0);
  CHECK(std::stoull(e.samples.at("relayfs_lost_full_total").at(log)) > 0);
  CHECK(e.samples.at("relayfs_lost_too_big_total").at(log) == "1");
  CHECK(e.samples.at("relayfs_bytes_consumed_total").at(log) == "1100");
  CHECK(e.samples.at("relayfs_subbuf_size").at(log) == "4096");
  CHECK(e.samples.at("relayfs_n_subbufs").at(log) == "2");
  REQUIRE(!b.written.empty());
  for (const auto& [cpu, bytes] : b.written)
    CHECK(e.samples.at("relayfs_bytes_produced_total").at(labels_of(root, "app", "cpu", cpu)) ==
          std::to_string(bytes));
  CHECK(e.samples.at("relayfs_bytes_produced_total").at(labels_of(root, Busy::odd_dir, "odd", 0)) ==
        std::to_string(3 * kRec));
}

TEST_CASE("stat --prometheus output loads into prometheus-node-exporter's textfile collector") {
  Busy b;
  TempDir t;
  const std::string dir = t.path("textfile");
  REQUIRE(::mkdir(dir.c_str(), 0755) == 0);
  // As relayctl(1) says: into a temporary name the collector ignores, then renamed.
  REQUIRE(run("'" + relayctl_path() + "' stat --prometheus '" + b.m.dir + "' >'" + dir +
              "/relayfs.prom.tmp' && mv '" + dir + "/relayfs.prom.tmp' '" + dir +
              "/relayfs.prom'") == 0);
  const Exposition mine = parse(read_file(dir + "/relayfs.prom"));

  NodeExporter exporter(dir, t.path("exporter.log"));
  const std::string scraped = exporter.get("/metrics");
  const Exposition e = parse(scraped);
  CAPTURE(read_file(t.path("exporter.log")));
  REQUIRE(e.samples.count("node_textfile_scrape_error") == 1);
  CHECK(e.samples.at("node_textfile_scrape_error").at({}) == "0");
  const auto& mtimes = e.samples.at("node_textfile_mtime_seconds");  // the file it read
  CHECK(std::count_if(mtimes.begin(), mtimes.end(), [](const auto& s) {
          return s.first.at("file").ends_with("relayfs.prom");
        }) == 1);
  // Every family with its TYPE, every series with its labels and value (the exporter writes
  // numbers its own way: compared as numbers).
  size_t series = 0;
  for (const auto& [f, samples] : mine.samples) {
    CAPTURE(f);
    REQUIRE(e.samples.count(f) == 1);
    CHECK(e.type.at(f) == mine.type.at(f));
    CHECK(e.samples.at(f).size() == samples.size());
    for (const auto& [labels, value] : samples) {
      REQUIRE(e.samples.at(f).count(labels) == 1);
      CHECK(std::stod(e.samples.at(f).at(labels)) == std::stod(value));
      ++series;
    }
  }
  CHECK(series > 3 * relayfs::core::kCounterCount);
  const std::string root = real(b.m.dir);
  CHECK(std::stod(
            e.samples.at("relayfs_lost_too_big_total").at(labels_of(root, "app", "log", 0))) == 1);
  CHECK(std::stod(e.samples.at("relayfs_bytes_produced_total")
                      .at(labels_of(root, Busy::odd_dir, "odd", 0))) == 3 * kRec);
}

TEST_CASE("stat --prometheus: each buffer once, and errors as the rest of relayctl") {
  Busy b;
  // The channel named again inside its directory, and twice: one series each still.
  const Outcome once = relayctl("stat --prometheus " + q(b.m.path("app")));
  REQUIRE(once.status == 0);
  const Outcome twice = relayctl("stat --prometheus " + q(b.m.path("app/log")) + " " +
                                 q(b.m.path("app")) + " " + q(b.m.path("app/log0")));
  REQUIRE(twice.status == 0);
  CHECK(parse(twice.out).samples == parse(once.out).samples);  // in another order
  CHECK(parse(once.out).samples.at("relayfs_lost_full_total").size() == 1 + ncpus());

  // A missing PATH: status 1 and a message naming it; the other PATH's series are still there.
  const Outcome missing =
      relayctl("stat --prometheus " + q(b.m.path("nothing")) + " " + q(b.m.path("app/log")));
  CHECK(missing.status == 1);
  CHECK(missing.err.find(b.m.path("nothing") + ": " + std::strerror(ENOENT)) != std::string::npos);
  CHECK(parse(missing.out).samples.at("relayfs_bytes_unread").size() == 1);
  // Nothing to show: no output at all, which the collector takes as no series.
  TempDir t;
  const Outcome none = relayctl("stat --prometheus " + t.dir);
  CHECK(none.status == 0);
  CHECK(none.out.empty());
  // Output that cannot be written is a failure, so that a script never renames half a file.
  const std::string full = capture("'" + relayctl_path() + "' stat --prometheus '" + b.m.dir +
                                   "' 2>&1 >/dev/full; echo $?");
  CHECK(full.find(std::strerror(ENOSPC)) != std::string::npos);
  CHECK(full.ends_with("\n1\n"));
}
