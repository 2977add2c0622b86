// A real nats-server cluster for tests: 1 or 3 nodes on 127.0.0.1 with ports of their own, each
// with its own JetStream store under one temp dir; nodes killed with SIGKILL and restarted on
// the same ports and store; stream leaders and replica state from the JetStream API.
//
//   relayfs::test::NatsCluster cluster(3);            // waits until JetStream serves R3 streams
//   relayfs::test::NatsConnection conn(cluster.urls());
//   ... js_AddStream(..., Replicas 3) ...
//   cluster.kill(cluster.stream_leader("S"));
//   cluster.wait_stream_ready("S", 2);                 // a new leader, the other replica current
//
// Every node it started dies with it: the destructor SIGKILLs and reaps them and removes the
// temp dir (also when a doctest REQUIRE throws); SIGTERM or SIGINT to the test process does the
// same before the process ends (when the test had no handler of its own); and each node has
// PR_SET_PDEATHSIG SIGKILL, so it dies with the thread that started it even on a crash. Hence:
// construct, restart() and destroy a cluster from a thread that outlives it (the test's main).
// Methods throw std::runtime_error (NatsError for nats.c failures) and are not thread-safe.
#pragma once

#include <sys/types.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace relayfs::test {

class NatsConnection;

struct NatsClusterOptions {
  std::string server = "nats-server";  // the binary, found on PATH (or $RELAYFS_NATS_SERVER)
  std::string max_file_store = "8G";   // each node's JetStream limits
  std::string max_memory_store = "256M";
  std::string max_payload = "8MB";  // nats-server's own default is 1MB; 64MB at most
  std::chrono::milliseconds start_timeout = std::chrono::seconds(30);
};

class NatsCluster {
 public:
  // Starts `nodes` (1 or 3) servers and waits until JetStream is usable cluster-wide: a meta
  // leader exists and, with 3 nodes, a stream of 3 replicas can be created and elects a leader.
  // A port taken meanwhile by someone else (bind(0) then close leaves a race) starts all over
  // on new ports, up to 5 times. On failure, throws with the tail of each node's log.
  explicit NatsCluster(int nodes = 3, NatsClusterOptions options = {});
  ~NatsCluster();
  NatsCluster(const NatsCluster&) = delete;
  NatsCluster& operator=(const NatsCluster&) = delete;

  int size() const { return static_cast<int>(nodes_.size()); }
  // "nats://127.0.0.1:p1,nats://127.0.0.1:p2,...", every node, up or not.
  std::string urls() const;
  std::string url(int i) const;
  // The node's server_name ("n0", "n1", ...), as stream info's Cluster->Leader names it.
  std::string server_name(int i) const;
  // The running node's pid, or 0 once killed.
  pid_t pid(int i) const;
  // Every pid this cluster has started, alive or reaped (for checks that they are gone).
  const std::vector<pid_t>& started_pids() const { return started_; }
  // The temp dir: n<i>.conf, n<i>.log (the node's stdout and stderr, appended across
  // restarts) and n<i>/ (its JetStream store).
  const std::string& dir() const { return dir_; }
  std::string log_path(int i) const;

  // SIGKILLs node i and reaps it. A node already down is left as it is.
  void kill(int i);
  // Starts node i again with its config: same ports, same store. Waits until its client port
  // answers and, from it, JetStream does (the node has rejoined and found a meta leader).
  void restart(int i);
  // The index of the node that leads `stream`, or -1 while it has none (an election).
  int stream_leader(const std::string& stream);
  // Waits until `stream` has a leader and replicas-1 followers, all current and online.
  void wait_stream_ready(const std::string& stream, int replicas,
                         std::chrono::milliseconds timeout = std::chrono::seconds(30));

 private:
  struct Node {
    std::string name;
    int client_port = 0;
    int cluster_port = 0;
    pid_t pid = 0;
  };
  bool start_all();  // false: a node could not bind its ports (try again on new ones)
  void write_config(int i) const;
  void spawn(int i);
  // Until a node answers at url, or it exits (false), or the deadline passes (throws).
  bool wait_listening(int i, std::chrono::steady_clock::time_point deadline);
  void wait_jetstream(const std::string& urls, std::chrono::steady_clock::time_point deadline);
  void wait_replicated_streams(std::chrono::steady_clock::time_point deadline);
  void stop_all();
  std::string log_tail(int i, size_t lines = 30) const;
  [[noreturn]] void fail(const std::string& what) const;
  NatsConnection& connection();

  NatsClusterOptions options_;
  pid_t creator_ = getpid();
  std::string dir_;
  int dir_slot_ = -1;  // in the SIGTERM/SIGINT handler's list of dirs to remove
  std::vector<Node> nodes_;
  std::vector<pid_t> started_;
  std::unique_ptr<NatsConnection> conn_;  // to all nodes, for the JetStream API; lazily made
};

}  // namespace relayfs::test
