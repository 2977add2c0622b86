#include "nats/cluster.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "nats/connection.h"

namespace relayfs::test {

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// What a SIGTERM or SIGINT handler must clean up: every live node's pid and every cluster's temp
// dir, in fixed arrays a signal handler may read (no allocation, no lock).
constexpr int kMaxPids = 64;
constexpr int kMaxDirs = 16;
std::atomic<pid_t> g_pids[kMaxPids];
std::atomic<bool> g_dir_used[kMaxDirs];
char g_dirs[kMaxDirs][PATH_MAX];
// The process whose nodes these are: a fork of the test that did not exec inherits the handler
// and the lists, and must not kill its parent's nodes when it gets SIGTERM.
std::atomic<pid_t> g_owner{0};

void register_pid(pid_t pid) {
  for (auto& slot : g_pids) {
    pid_t expected = 0;
    if (slot.compare_exchange_strong(expected, pid)) return;
  }
  // More than kMaxPids live nodes: this one is left to PR_SET_PDEATHSIG and the destructor.
}

void unregister_pid(pid_t pid) {
  for (auto& slot : g_pids) {
    pid_t expected = pid;
    if (slot.compare_exchange_strong(expected, 0)) return;
  }
}

int register_dir(const std::string& dir) {
  if (dir.size() >= PATH_MAX) return -1;
  for (int i = 0; i < kMaxDirs; ++i) {
    bool expected = false;
    if (!g_dir_used[i].compare_exchange_strong(expected, true)) continue;
    std::memcpy(g_dirs[i], dir.c_str(), dir.size() + 1);
    return i;
  }
  return -1;
}

void unregister_dir(int slot) {
  if (slot >= 0) g_dir_used[slot].store(false);
}

// SIGTERM (meson's timeout) or SIGINT (Ctrl-C): kill and reap every node, remove every temp dir
// (rm -rf in a child: nothing else that removes a tree is async-signal-safe), then end the
// process as the signal would have.
void on_fatal_signal(int sig) {
  if (getpid() != g_owner.load()) {
    signal(sig, SIG_DFL);
    raise(sig);
    return;
  }
  for (auto& slot : g_pids) {
    const pid_t pid = slot.exchange(0);
    if (pid <= 0) continue;
    ::kill(pid, SIGKILL);
    while (waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
  }
  for (int i = 0; i < kMaxDirs; ++i) {
    if (!g_dir_used[i].exchange(false)) continue;
    const pid_t rm = _Fork();
    if (rm == 0) {
      execl("/bin/rm", "rm", "-rf", "--", g_dirs[i], static_cast<char*>(nullptr));
      _exit(127);
    }
    if (rm > 0) {
      while (waitpid(rm, nullptr, 0) < 0 && errno == EINTR) {
      }
    }
  }
  signal(sig, SIG_DFL);
  raise(sig);
}

// Once per process, and only where the test has no handler of its own.
void install_signal_handlers() {
  static std::once_flag once;
  std::call_once(once, [] {
    g_owner.store(getpid());
    for (int sig : {SIGTERM, SIGINT}) {
      struct sigaction old {};
      if (sigaction(sig, nullptr, &old) != 0 || old.sa_handler != SIG_DFL) continue;
      struct sigaction sa {};
      sa.sa_handler = on_fatal_signal;
      sigemptyset(&sa.sa_mask);
      sigaction(sig, &sa, nullptr);
    }
  });
}

// n free TCP ports on 127.0.0.1: each bound to port 0 and held until all are chosen, so they
// differ; another process may still take one before the server binds it (the caller retries).
std::vector<int> free_ports(size_t n) {
  std::vector<int> fds, ports;
  for (size_t i = 0; i < n; ++i) {
    const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) break;
    fds.push_back(fd);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0)
      break;
    ports.push_back(ntohs(a.sin_port));
  }
  for (int fd : fds) close(fd);
  if (ports.size() != n) throw std::runtime_error("NatsCluster: no free port on 127.0.0.1");
  return ports;
}

bool port_answers(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  const bool ok = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  close(fd);
  return ok;
}

// The server binary: $RELAYFS_NATS_SERVER, a path, or a name searched on PATH and then in
// /usr/sbin and /usr/bin (Debian's nats-server is in /usr/sbin, which a user's PATH may lack).
std::string find_server(const std::string& name) {
  if (const char* env = getenv("RELAYFS_NATS_SERVER"); env != nullptr && *env != '\0') return env;
  if (name.find('/') != std::string::npos) return name;
  std::string path = getenv("PATH") != nullptr ? getenv("PATH") : "";
  path += ":/usr/sbin:/usr/bin";
  std::istringstream dirs(path);
  for (std::string d; std::getline(dirs, d, ':');) {
    if (d.empty()) continue;
    const std::string p = d + "/" + name;
    if (access(p.c_str(), X_OK) == 0) return p;
  }
  throw std::runtime_error("NatsCluster: " + name +
                           " not found on PATH (scripts/deps installs nats-server)");
}

std::string make_temp_dir() {
  const char* tmp = getenv("TMPDIR");
  std::string templ =
      std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/relayfs-nats-XXXXXX";
  if (mkdtemp(templ.data()) == nullptr)
    throw std::runtime_error("NatsCluster: mkdtemp " + templ + ": " + strerror(errno));
  return templ;
}

void reap(pid_t pid) {
  while (waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
  }
}

}  // namespace

NatsCluster::NatsCluster(int nodes, NatsClusterOptions options) : options_(std::move(options)) {
  if (nodes != 1 && nodes != 3) throw std::invalid_argument("NatsCluster: 1 or 3 nodes");
  options_.server = find_server(options_.server);
  install_signal_handlers();
  dir_ = make_temp_dir();
  dir_slot_ = register_dir(dir_);
  nodes_.resize(nodes);
  for (int i = 0; i < nodes; ++i) nodes_[i].name = "n" + std::to_string(i);
  try {
    const auto deadline = Clock::now() + options_.start_timeout;
    bool started = false;
    for (int attempt = 0; attempt < 5 && !started; ++attempt) {
      const std::vector<int> ports = free_ports(2 * nodes_.size());
      for (size_t i = 0; i < nodes_.size(); ++i) {
        nodes_[i].client_port = ports[2 * i];
        nodes_[i].cluster_port = ports[2 * i + 1];
      }
      started = start_all();
      if (!started) {
        stop_all();
        for (int i = 0; i < size(); ++i) std::filesystem::remove_all(dir_ + "/" + nodes_[i].name);
      }
    }
    if (!started) fail("NatsCluster: the nodes' ports were taken 5 times over");
    for (int i = 0; i < size(); ++i) wait_jetstream(url(i), deadline);
    if (size() > 1) wait_replicated_streams(deadline);
  } catch (...) {
    conn_.reset();
    stop_all();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
    unregister_dir(dir_slot_);
    throw;
  }
}

NatsCluster::~NatsCluster() {
  // A fork of the test that unwinds through this scope leaves its parent's nodes alone.
  if (getpid() != creator_) return;
  // The client first, while its servers still answer: it then closes without reconnecting.
  conn_.reset();
  stop_all();
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
  unregister_dir(dir_slot_);
}

std::string NatsCluster::url(int i) const {
  return "nats://127.0.0.1:" + std::to_string(nodes_.at(i).client_port);
}

std::string NatsCluster::urls() const {
  std::string s;
  for (int i = 0; i < size(); ++i) s += (i ? "," : "") + url(i);
  return s;
}

std::string NatsCluster::server_name(int i) const {
  return nodes_.at(i).name;
}
pid_t NatsCluster::pid(int i) const {
  return nodes_.at(i).pid;
}
std::string NatsCluster::log_path(int i) const {
  return dir_ + "/" + nodes_.at(i).name + ".log";
}

void NatsCluster::write_config(int i) const {
  const Node& n = nodes_.at(i);
  std::ofstream f(dir_ + "/" + n.name + ".conf", std::ios::trunc);
  f << "server_name: \"" << n.name << "\"\n"
    << "listen: \"127.0.0.1:" << n.client_port << "\"\n"
    << "max_payload: " << options_.max_payload << "\n"
    << "jetstream {\n"
    << "  store_dir: \"" << dir_ << "/" << n.name << "\"\n"
    << "  max_memory_store: " << options_.max_memory_store << "\n"
    << "  max_file_store: " << options_.max_file_store << "\n"
    << "}\n";
  if (size() > 1) {
    f << "cluster {\n"
      << "  name: \"relayfs-test\"\n"
      << "  listen: \"127.0.0.1:" << n.cluster_port << "\"\n"
      << "  routes: [\n";
    for (int j = 0; j < size(); ++j)
      if (j != i) f << "    \"nats-route://127.0.0.1:" << nodes_[j].cluster_port << "\"\n";
    f << "  ]\n}\n";
  }
  if (!f.flush()) throw std::runtime_error("NatsCluster: cannot write " + n.name + ".conf");
}

void NatsCluster::spawn(int i) {
  Node& n = nodes_.at(i);
  const std::string conf = dir_ + "/" + n.name + ".conf";
  const std::string log = log_path(i);
  const int log_fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) throw std::runtime_error("NatsCluster: open " + log + ": " + strerror(errno));
  const pid_t parent = getpid();
  const char* argv[] = {options_.server.c_str(), "-c", conf.c_str(), nullptr};
  const pid_t pid = fork();
  if (pid == 0) {
    // Only async-signal-safe calls from here to exec: the parent has threads (nats.c's).
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);  // the parent died before prctl
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    const int null_fd = open("/dev/null", O_RDONLY);
    if (null_fd >= 0) dup2(null_fd, 0);
    dup2(log_fd, 1);
    dup2(log_fd, 2);
    execv(argv[0], const_cast<char* const*>(argv));
    static const char msg[] = "NatsCluster: exec of nats-server failed\n";
    [[maybe_unused]] ssize_t w = write(2, msg, sizeof msg - 1);
    _exit(127);
  }
  const int fork_errno = errno;
  close(log_fd);
  if (pid < 0) throw std::runtime_error(std::string("NatsCluster: fork: ") + strerror(fork_errno));
  n.pid = pid;
  started_.push_back(pid);
  register_pid(pid);
}

bool NatsCluster::wait_listening(int i, Clock::time_point deadline) {
  Node& n = nodes_.at(i);
  while (true) {
    int status = 0;
    if (waitpid(n.pid, &status, WNOHANG) == n.pid) {
      unregister_pid(n.pid);
      n.pid = 0;
      if (log_tail(i).find("address already in use") != std::string::npos) return false;
      fail("NatsCluster: " + n.name + " exited at start (status " + std::to_string(status) + ")");
    }
    if (port_answers(n.client_port)) return true;
    if (Clock::now() > deadline) fail("NatsCluster: " + n.name + " does not listen");
    std::this_thread::sleep_for(20ms);
  }
}

bool NatsCluster::start_all() {
  const auto deadline = Clock::now() + options_.start_timeout;
  for (int i = 0; i < size(); ++i) {
    write_config(i);
    spawn(i);
  }
  for (int i = 0; i < size(); ++i)
    if (!wait_listening(i, deadline)) return false;
  return true;
}

void NatsCluster::wait_jetstream(const std::string& urls, Clock::time_point deadline) {
  std::string last = "no connection";
  while (Clock::now() < deadline) {
    for (int i = 0; i < size(); ++i) {
      if (nodes_[i].pid != 0 && waitpid(nodes_[i].pid, nullptr, WNOHANG) == nodes_[i].pid) {
        unregister_pid(nodes_[i].pid);
        nodes_[i].pid = 0;
        fail("NatsCluster: " + nodes_[i].name + " exited");
      }
    }
    try {
      NatsConnection conn(urls, 1s);
      while (Clock::now() < deadline) {
        jsAccountInfo* ai = nullptr;
        jsErrCode code = static_cast<jsErrCode>(0);
        const natsStatus s = js_GetAccountInfo(&ai, conn.js(), nullptr, &code);
        jsAccountInfo_Destroy(ai);
        if (s == NATS_OK) return;
        last = NatsError("JetStream account info from " + urls, s, code).what();
        std::this_thread::sleep_for(100ms);
      }
    } catch (const NatsError& e) {
      last = e.what();
      std::this_thread::sleep_for(100ms);
    }
  }
  fail("NatsCluster: JetStream not ready in time: " + last);
}

// A stream of size() replicas needs every node known to the meta leader as a live peer, which
// a meta leader alone does not prove: create one (retrying "insufficient resources"), wait for
// its replicas, and delete it.
void NatsCluster::wait_replicated_streams(Clock::time_point deadline) {
  static constexpr const char* kProbe = "RELAYFS_HARNESS_PROBE";
  while (true) {
    try {
      add_stream(connection().js(), kProbe, "relayfs-harness-probe", size(), true);
      break;
    } catch (const NatsError& e) {
      if (Clock::now() > deadline) fail(std::string("NatsCluster: ") + e.what());
    }
    std::this_thread::sleep_for(200ms);
  }
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  wait_stream_ready(kProbe, size(), std::max(left, std::chrono::milliseconds(1000)));
  jsErrCode code = static_cast<jsErrCode>(0);
  nats_check(js_DeleteStream(connection().js(), kProbe, nullptr, &code), "delete the probe", code);
}

NatsConnection& NatsCluster::connection() {
  if (!conn_) conn_ = std::make_unique<NatsConnection>(urls(), 2s);
  return *conn_;
}

void NatsCluster::kill(int i) {
  Node& n = nodes_.at(i);
  if (n.pid == 0) return;
  ::kill(n.pid, SIGKILL);
  reap(n.pid);
  unregister_pid(n.pid);
  n.pid = 0;
}

void NatsCluster::restart(int i) {
  Node& n = nodes_.at(i);
  if (n.pid != 0) throw std::logic_error("NatsCluster::restart: " + n.name + " is running");
  const auto deadline = Clock::now() + options_.start_timeout;
  // The port of a node just killed may still be held by a socket being torn down: try a few
  // times before blaming someone else.
  for (int attempt = 0;; ++attempt) {
    spawn(i);
    if (wait_listening(i, deadline)) break;
    if (attempt == 20) fail("NatsCluster: " + n.name + "'s ports stay taken");
    std::this_thread::sleep_for(250ms);
  }
  wait_jetstream(url(i), deadline);
}

int NatsCluster::stream_leader(const std::string& stream) {
  jsStreamInfo* si = nullptr;
  const natsStatus s = js_GetStreamInfo(&si, connection().js(), stream.c_str(), nullptr, nullptr);
  int leader = -1;
  if (s == NATS_OK && si->Cluster != nullptr && si->Cluster->Leader != nullptr) {
    for (int i = 0; i < size(); ++i)
      if (nodes_[i].name == si->Cluster->Leader) leader = i;
  }
  jsStreamInfo_Destroy(si);
  return leader;
}

void NatsCluster::wait_stream_ready(const std::string& stream, int replicas,
                                    std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  std::string last;
  while (true) {
    jsStreamInfo* si = nullptr;
    jsErrCode code = static_cast<jsErrCode>(0);
    natsStatus s = NATS_OK;
    try {
      s = js_GetStreamInfo(&si, connection().js(), stream.c_str(), nullptr, &code);
    } catch (const NatsError& e) {  // no node answers the connection yet
      s = e.status;
    }
    bool ready = false;
    if (s != NATS_OK) {
      last = NatsError("stream info", s, code).what();
    } else if (si->Cluster == nullptr) {
      ready = replicas == 1;  // a single server reports no cluster
      last = "no cluster info";
    } else {
      const jsClusterInfo& c = *si->Cluster;
      std::ostringstream d;
      d << "leader " << (c.Leader != nullptr ? c.Leader : "(none)") << ", replicas";
      int current = 0;
      for (int r = 0; r < c.ReplicasLen; ++r) {
        const jsPeerInfo& p = *c.Replicas[r];
        d << " " << p.Name << (p.Current ? " current" : " behind") << (p.Offline ? " offline" : "")
          << " lag " << p.Lag;
        if (p.Current && !p.Offline) ++current;
      }
      last = d.str();
      ready = c.Leader != nullptr && *c.Leader != '\0' && current == replicas - 1;
    }
    jsStreamInfo_Destroy(si);
    if (ready) return;
    if (Clock::now() > deadline)
      fail("NatsCluster: stream " + stream + " not ready with " + std::to_string(replicas) +
           " replicas: " + last);
    std::this_thread::sleep_for(100ms);
  }
}

void NatsCluster::stop_all() {
  for (Node& n : nodes_) {
    if (n.pid == 0) continue;
    ::kill(n.pid, SIGKILL);
    reap(n.pid);
    unregister_pid(n.pid);
    n.pid = 0;
  }
}

std::string NatsCluster::log_tail(int i, size_t lines) const {
  std::ifstream f(log_path(i));
  std::deque<std::string> tail;
  for (std::string line; std::getline(f, line);) {
    tail.push_back(line);
    if (tail.size() > lines) tail.pop_front();
  }
  std::string s;
  for (const auto& l : tail) s += "    " + l + "\n";
  return s;
}

void NatsCluster::fail(const std::string& what) const {
  std::string m = what + "\n";
  for (int i = 0; i < size(); ++i) m += "  " + log_path(i) + ", last lines:\n" + log_tail(i);
  throw std::runtime_error(m);
}

}  // namespace relayfs::test
