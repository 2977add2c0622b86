// The NATS harness (cluster.h, stream_reader.h) against real nats-server processes: a 3-node
// cluster, an R3 stream deduplicating by Nats-Msg-Id, its leader killed with SIGKILL, a new one
// elected, the node restarted, every message read back exactly once; and no node outlives its
// cluster, whether the test ends, fails, or its process gets SIGTERM or SIGKILL.
#include <doctest/doctest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "nats/cluster.h"
#include "nats/connection.h"
#include "nats/stream_reader.h"

using namespace relayfs::test;
using namespace std::chrono_literals;

namespace {

// Gone: no such process, or a zombie nobody reaped yet (it runs nothing and holds no port).
bool process_gone(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return true;
  const size_t paren = line.rfind(')');
  return paren != std::string::npos && paren + 2 < line.size() && line[paren + 2] == 'Z';
}

bool all_gone(const std::vector<pid_t>& pids, std::chrono::milliseconds within = 5s) {
  const auto deadline = std::chrono::steady_clock::now() + within;
  for (pid_t p : pids) {
    while (!process_gone(p)) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::sleep_for(20ms);
    }
  }
  return true;
}

constexpr const char* kStream = "HARNESS";
constexpr int kCpus = 2;

// Message n of the test: buffer n % kCpus, sub-buffer n / kCpus, headers as ship sets them.
std::string payload_of(int n) {
  return "record " + std::to_string(n) + std::string(n % 50, '.');
}
std::string msg_id_of(int n) {
  return "host1/app/log/" + std::to_string(n % kCpus) + "/g1/" + std::to_string(n / kCpus);
}
natsMsg* message_of(int n, const std::string& payload) {
  const std::string subject = "harness.host1.app.log." + std::to_string(n % kCpus);
  natsMsg* m = nullptr;
  nats_check(natsMsg_Create(&m, subject.c_str(), nullptr, payload.data(),
                            static_cast<int>(payload.size())),
             "natsMsg_Create");
  natsMsgHeader_Set(m, "Relayfs-Host", "host1");
  natsMsgHeader_Set(m, "Relayfs-Channel", "app/log");
  natsMsgHeader_Set(m, "Relayfs-Cpu", std::to_string(n % kCpus).c_str());
  natsMsgHeader_Set(m, "Relayfs-Subbuf", std::to_string(n / kCpus).c_str());
  natsMsgHeader_Set(m, "Relayfs-Generation", "g1");
  return m;
}

// What the async publisher's acknowledgements said.
struct Acks {
  std::mutex mu;
  int stored = 0, duplicate = 0, failed = 0;
  std::string last_error;
};

void on_ack(jsCtx*, natsMsg* msg, jsPubAck* pa, jsPubAckErr* pae, void* closure) {
  auto& acks = *static_cast<Acks*>(closure);
  std::lock_guard lock(acks.mu);
  if (pae != nullptr) {
    ++acks.failed;
    acks.last_error = pae->ErrText != nullptr ? pae->ErrText : natsStatus_GetText(pae->Err);
  } else if (pa != nullptr && pa->Duplicate) {
    ++acks.duplicate;
  } else {
    ++acks.stored;
  }
  natsMsg_Destroy(msg);
}

// Publishes message n synchronously, again with the same Nats-Msg-Id after a timeout or an
// error (the leader is being elected), until acknowledged. Returns whether JetStream called it
// a duplicate.
bool publish_until_acked(NatsConnection& conn, int n, const std::string& payload) {
  const std::string id = msg_id_of(n);
  jsPubOptions po;
  jsPubOptions_Init(&po);
  po.MsgId = id.c_str();
  po.MaxWait = 2000;
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  std::string last;
  while (std::chrono::steady_clock::now() < deadline) {
    natsMsg* m = message_of(n, payload);
    jsPubAck* pa = nullptr;
    jsErrCode code = static_cast<jsErrCode>(0);
    const natsStatus s = js_PublishMsg(&pa, conn.js(), m, &po, &code);
    natsMsg_Destroy(m);
    if (s == NATS_OK) {
      const bool dup = pa->Duplicate;
      jsPubAck_Destroy(pa);
      return dup;
    }
    last = NatsError("publish " + id, s, code).what();
    std::this_thread::sleep_for(100ms);
  }
  FAIL("not acknowledged in 60 s: " << last);
  return false;
}

}  // namespace

TEST_CASE(
    "an R3 stream keeps every message once across dedup, the leader's SIGKILL and its "
    "restart") {
  std::vector<pid_t> pids;
  {
    NatsCluster cluster(3);
    REQUIRE(cluster.size() == 3);
    for (int i = 0; i < 3; ++i) REQUIRE(cluster.pid(i) > 0);
    const std::string urls = cluster.urls();
    CHECK(std::count(urls.begin(), urls.end(), ',') == 2);

    Acks acks;
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.PublishAsync.MaxPending = 16;  // a bounded window, as ship has
    jo.PublishAsync.AckHandler = on_ack;
    jo.PublishAsync.AckHandlerClosure = &acks;
    NatsConnection conn(cluster.urls(), 5s, &jo);
    add_stream(conn.js(), kStream, "harness.>", 3);
    cluster.wait_stream_ready(kStream, 3);

    // 100 messages published async, and message 7 again with other bytes: dropped as a
    // duplicate of its Nats-Msg-Id.
    constexpr int kBefore = 100, kAfter = 100;
    auto publish_async = [&](int n, const std::string& payload) {
      const std::string id = msg_id_of(n);
      jsPubOptions po;
      jsPubOptions_Init(&po);
      po.MsgId = id.c_str();
      natsMsg* m = message_of(n, payload);
      const natsStatus s = js_PublishMsgAsync(conn.js(), &m, &po);
      natsMsg_Destroy(m);  // a no-op once nats.c took it
      nats_check(s, "js_PublishMsgAsync " + id);
    };
    for (int n = 0; n < kBefore; ++n) publish_async(n, payload_of(n));
    publish_async(7, "a resend with other bytes");
    jsPubOptions wait;
    jsPubOptions_Init(&wait);
    wait.MaxWait = 30000;
    REQUIRE(js_PublishAsyncComplete(conn.js(), &wait) == NATS_OK);
    {
      std::lock_guard lock(acks.mu);
      INFO(acks.last_error);
      CHECK(acks.failed == 0);
      CHECK(acks.stored == kBefore);
      CHECK(acks.duplicate == 1);
    }

    // The leader killed: a new one from the other two, the killed node offline.
    const int leader = cluster.stream_leader(kStream);
    REQUIRE(leader >= 0);
    const pid_t killed_pid = cluster.pid(leader);
    cluster.kill(leader);
    CHECK(cluster.pid(leader) == 0);
    CHECK(process_gone(killed_pid));
    cluster.wait_stream_ready(kStream, 2);
    const int new_leader = cluster.stream_leader(kStream);
    CHECK(new_leader >= 0);
    CHECK(new_leader != leader);

    // 100 more through the election's aftermath, each resent until acknowledged, and one of
    // them twice: the second send is a duplicate.
    for (int n = kBefore; n < kBefore + kAfter; ++n)
      CHECK_FALSE(publish_until_acked(conn, n, payload_of(n)));
    CHECK(publish_until_acked(conn, kBefore + 3, payload_of(kBefore + 3)));

    cluster.restart(leader);
    CHECK(cluster.pid(leader) > 0);
    CHECK(cluster.pid(leader) != killed_pid);
    cluster.wait_stream_ready(kStream, 3);

    // Read back two ways, the same messages; every one once, the bytes in sub-buffer order.
    const auto messages = read_stream(cluster.urls(), kStream);
    StreamReadOptions by_seq;
    by_seq.method = StreamReadMethod::get_by_sequence;
    const auto again = read_stream(cluster.urls(), kStream, by_seq);
    REQUIRE(messages.size() == kBefore + kAfter);
    REQUIRE(again.size() == messages.size());
    for (size_t i = 0; i < messages.size(); ++i) {
      CHECK(messages[i].seq == i + 1);
      CHECK(again[i].seq == messages[i].seq);
      CHECK(again[i].msg_id == messages[i].msg_id);
      CHECK(again[i].payload == messages[i].payload);
      CHECK(again[i].headers == messages[i].headers);
    }
    const StreamMessage& first = messages.front();
    CHECK(first.subject == "harness.host1.app.log.0");
    CHECK(first.host == "host1");
    CHECK(first.channel == "app/log");
    CHECK(first.cpu == 0);
    CHECK(first.subbuf == 0u);
    CHECK(first.generation == "g1");
    CHECK(first.msg_id == msg_id_of(0));
    CHECK(first.payload == payload_of(0));

    const StreamReport report = group_stream(messages);
    CHECK(report.clean());
    REQUIRE(report.groups.size() == kCpus);
    for (int cpu = 0; cpu < kCpus; ++cpu) {
      const StreamGroup& g = report.groups.at({"host1", "app/log", cpu, "g1"});
      std::string expected;
      for (int n = cpu; n < kBefore + kAfter; n += kCpus) expected += payload_of(n);
      CHECK(g.subbufs.size() == (kBefore + kAfter) / kCpus);
      CHECK(g.subbufs.front() == 0u);
      CHECK(g.gaps == 0u);
      CHECK(g.max_delay == 0u);
      CHECK(g.bytes == expected);
    }
    pids = cluster.started_pids();
    CHECK(pids.size() == 4);  // three, and the restarted one
  }
  CHECK(all_gone(pids));
}

TEST_CASE("group_stream reports repeats, gaps and messages out of order") {
  auto msg = [](uint64_t seq, int cpu, uint64_t subbuf, std::string id = "") {
    StreamMessage m;
    m.seq = seq;
    m.channel = "c";
    m.cpu = cpu;
    m.subbuf = subbuf;
    m.generation = "g";
    m.msg_id = id.empty() ? "c/" + std::to_string(cpu) + "/" + std::to_string(subbuf) : id;
    m.payload = std::to_string(cpu) + ":" + std::to_string(subbuf) + ";";
    return m;
  };
  std::vector<StreamMessage> ms = {msg(1, 0, 0), msg(2, 0, 2), msg(3, 0, 3),
                                   msg(4, 0, 1), msg(5, 1, 0), msg(6, 1, 0, "other-id"),
                                   msg(7, 0, 3)};
  StreamMessage bare;
  bare.seq = 8;
  ms.push_back(bare);
  const StreamReport r = group_stream(ms);
  CHECK_FALSE(r.clean());
  REQUIRE(r.duplicates.size() == 2);  // seq 6 (same subbuf), seq 7 (same Nats-Msg-Id)
  CHECK(r.duplicates[0].find("seq 7") == 0);
  CHECK(r.duplicates[1].find("seq 6") == 0);
  CHECK(r.unlabelled == std::vector<uint64_t>{8});
  const StreamGroup& g0 = r.groups.at({"", "c", 0, "g"});
  CHECK(g0.subbufs == std::vector<uint64_t>{0, 1, 2, 3});
  CHECK(g0.seqs == std::vector<uint64_t>{1, 4, 2, 3});
  CHECK(g0.bytes == "0:0;0:1;0:2;0:3;");
  CHECK(g0.max_delay == 2);
  CHECK(g0.gaps == 0);
  const StreamGroup& g1 = r.groups.at({"", "c", 1, "g"});
  CHECK(g1.bytes == "1:0;");
  CHECK(group_stream({msg(1, 0, 0), msg(2, 0, 5)}).groups.begin()->second.gaps == 4);
}

TEST_CASE("a cluster kills, reaps and removes everything it started") {
  SUBCASE("at the end of its scope, after a kill and a restart") {
    std::vector<pid_t> pids;
    std::string dir;
    {
      NatsCluster cluster(1);
      dir = cluster.dir();
      CHECK(std::filesystem::exists(cluster.log_path(0)));
      cluster.kill(0);
      cluster.restart(0);
      NatsConnection conn(cluster.urls());  // it serves again
      pids = cluster.started_pids();
    }
    REQUIRE(pids.size() == 2);
    CHECK(all_gone(pids));
    CHECK_FALSE(std::filesystem::exists(dir));
  }
  SUBCASE("when a REQUIRE throws") {
    std::vector<pid_t> pids;
    std::string dir;
    bool threw = false;
    try {
      NatsCluster cluster(1);
      pids = cluster.started_pids();
      dir = cluster.dir();
      throw std::runtime_error("as a failed REQUIRE throws");
    } catch (const std::runtime_error&) {
      threw = true;
    }
    CHECK(threw);
    REQUIRE(pids.size() == 1);
    CHECK(all_gone(pids));
    CHECK_FALSE(std::filesystem::exists(dir));
  }
}

// A child process holds a cluster; it is ended with SIGTERM (the handler kills the nodes and
// removes the dir) or SIGKILL (PR_SET_PDEATHSIG kills the nodes; the dir stays).
TEST_CASE("a cluster's nodes die with the test process") {
  const char* child_exe = getenv("RELAYFS_NATS_CLUSTER_CHILD");
  REQUIRE(child_exe != nullptr);
  for (int sig : {SIGTERM, SIGKILL}) {
    CAPTURE(sig);
    int out[2];
    REQUIRE(pipe(out) == 0);
    const pid_t child = fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      dup2(out[1], 1);
      close(out[0]);
      execl(child_exe, child_exe, static_cast<char*>(nullptr));
      _exit(127);
    }
    close(out[1]);
    std::string text;
    char buf[512];
    for (ssize_t n; (n = read(out[0], buf, sizeof buf)) > 0;) {
      text.append(buf, static_cast<size_t>(n));
      if (text.find('\n') != std::string::npos) break;
    }
    close(out[0]);
    std::istringstream line(text);
    std::string dir;
    std::vector<pid_t> pids;
    line >> dir;
    for (pid_t p; line >> p;) pids.push_back(p);
    REQUIRE_MESSAGE(pids.size() == 1, "child said: " << text);
    REQUIRE_FALSE(process_gone(pids[0]));
    kill(child, sig);
    int status = 0;
    REQUIRE(waitpid(child, &status, 0) == child);
    CHECK(WIFSIGNALED(status));
    CHECK(WTERMSIG(status) == sig);
    CHECK(all_gone(pids));
    if (sig == SIGTERM) CHECK_FALSE(std::filesystem::exists(dir));
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
}
