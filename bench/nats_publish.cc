// The engine's ceiling for the ship benchmark (issue 16): a minimal nats.c async publisher.
// It publishes TOTAL_BYTES to JetStream in messages of MSG_SIZE bytes made of whole records of
// RECORD_SIZE (as a sub-buffer is, padding removed: MSG_SIZE rounded down to a multiple of
// RECORD_SIZE; the bytes themselves do not matter), with js_PublishMsgAsync and at most
// --window messages unacknowledged, and prints one line:
//   nats_publish: BYTES bytes in SECONDS s: MB/s        (MB = 10^6 bytes)
// timed from the first publish to the last acknowledgement (js_PublishAsyncComplete).
//
// Usage: nats_publish URL[,URL...] STREAM SUBJECT RECORD_SIZE MSG_SIZE TOTAL_BYTES
//                     [--replicas N] [--window N] [--msg-id] [--create-only]
// STREAM is used as it is when it exists, else created with subjects "<SUBJECT's first
// token>.>" (as relayctl ship creates its stream), --replicas (default 1), file storage and a
// 2-minute duplicate window. --window is jsOptions.PublishAsync.MaxPending (default 256).
// --msg-id gives each message a Nats-Msg-Id (JetStream then checks each against its duplicate
// window, as it does for ship's messages). --create-only makes the stream and publishes nothing:
// ship_bench.py makes ship's stream with it before the clock starts, since this program's own
// timing leaves the stream's creation out too (an R3 stream's RAFT group takes a second or so to
// form). Exit 0 when every message was acknowledged, 1 on any
// failure, 2 on a usage error.
#include <nats/nats.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

std::atomic<uint64_t> g_acked{0}, g_failed{0};
char g_first_error[256];
std::atomic<bool> g_have_error{false};

void on_ack(jsCtx*, natsMsg* msg, jsPubAck*, jsPubAckErr* pae, void*) {
  if (pae == nullptr) {
    g_acked.fetch_add(1, std::memory_order_relaxed);
  } else {
    g_failed.fetch_add(1, std::memory_order_relaxed);
    if (!g_have_error.exchange(true))
      std::snprintf(g_first_error, sizeof g_first_error, "%s",
                    pae->ErrText != nullptr ? pae->ErrText : natsStatus_GetText(pae->Err));
  }
  natsMsg_Destroy(msg);
}

[[noreturn]] void usage() {
  std::fprintf(stderr,
               "usage: nats_publish URL STREAM SUBJECT RECORD_SIZE MSG_SIZE TOTAL_BYTES "
               "[--replicas N] [--window N] [--msg-id] [--create-only]\n");
  std::exit(2);
}

uint64_t number(const char* s) {
  char* end = nullptr;
  errno = 0;
  const unsigned long long v = std::strtoull(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0' || v == 0) usage();
  return v;
}

int fail(const char* what, natsStatus s, jsErrCode code = static_cast<jsErrCode>(0)) {
  std::fprintf(stderr, "nats_publish: %s: %s", what, natsStatus_GetText(s));
  if (code != 0) std::fprintf(stderr, " (JetStream error %d)", static_cast<int>(code));
  std::fprintf(stderr, "\n");
  return 1;
}

// The stream as it is, or a new one taking SUBJECT's first token and everything below it.
natsStatus ensure_stream(jsCtx* js, const char* stream, const std::string& subject,
                         int64_t replicas, jsErrCode* code) {
  jsStreamInfo* si = nullptr;
  natsStatus s = js_GetStreamInfo(&si, js, stream, nullptr, code);
  jsStreamInfo_Destroy(si);
  if (s != NATS_NOT_FOUND) return s;
  const std::string filter = subject.substr(0, subject.find('.')) + ".>";
  const char* subjects[] = {filter.c_str()};
  jsStreamConfig cfg;
  jsStreamConfig_Init(&cfg);
  cfg.Name = stream;
  cfg.Subjects = subjects;
  cfg.SubjectsLen = 1;
  cfg.Replicas = replicas;
  cfg.Duplicates = 120LL * 1000 * 1000 * 1000;  // 2 minutes, in ns
  return js_AddStream(nullptr, js, &cfg, nullptr, code);
}

int run(int argc, char** argv) {
  if (argc < 7) usage();
  const char* url = argv[1];
  const char* stream = argv[2];
  const std::string subject = argv[3];
  const uint64_t record = number(argv[4]);
  const uint64_t msg_size = number(argv[5]);
  const uint64_t total = number(argv[6]);
  int64_t replicas = 1, window = 256;
  bool msg_id = false, create_only = false;
  for (int i = 7; i < argc; ++i) {
    if (std::strcmp(argv[i], "--replicas") == 0 && i + 1 < argc) {
      replicas = static_cast<int64_t>(number(argv[++i]));
    } else if (std::strcmp(argv[i], "--window") == 0 && i + 1 < argc) {
      window = static_cast<int64_t>(number(argv[++i]));
    } else if (std::strcmp(argv[i], "--msg-id") == 0) {
      msg_id = true;
    } else if (std::strcmp(argv[i], "--create-only") == 0) {
      create_only = true;
    } else {
      usage();
    }
  }
  if (record > msg_size || msg_size > (64u << 20)) usage();
  const uint64_t per_msg = msg_size / record * record;
  const uint64_t count = (total + per_msg - 1) / per_msg;
  const std::vector<char> payload(per_msg, 'r');

  natsConnection* nc = nullptr;
  natsStatus s = natsConnection_ConnectTo(&nc, url);
  if (s != NATS_OK) return fail("connect", s);
  jsOptions jo;
  jsOptions_Init(&jo);
  jo.PublishAsync.MaxPending = window;
  jo.PublishAsync.AckHandler = on_ack;
  // A full window waits for an acknowledgement this long before js_PublishMsgAsync fails
  // (nats.c's default, 200 ms, is less than an R3 stream may take under load).
  jo.PublishAsync.StallWait = 30000;
  jsCtx* js = nullptr;
  s = natsConnection_JetStream(&js, nc, &jo);
  int rc = 0;
  jsErrCode code = static_cast<jsErrCode>(0);
  if (s == NATS_OK) s = ensure_stream(js, stream, subject, replicas, &code);
  if (s != NATS_OK) rc = fail("stream", s, code);
  const uint64_t to_send = create_only ? 0 : count;

  const auto start = Clock::now();
  for (uint64_t i = 0; rc == 0 && i < to_send; ++i) {
    natsMsg* m = nullptr;
    s = natsMsg_Create(&m, subject.c_str(), nullptr, payload.data(), static_cast<int>(per_msg));
    jsPubOptions po;
    jsPubOptions_Init(&po);
    char id[64];
    if (msg_id) {
      std::snprintf(id, sizeof id, "nats_publish/%llu", static_cast<unsigned long long>(i));
      po.MsgId = id;
    }
    if (s == NATS_OK) s = js_PublishMsgAsync(js, &m, &po);
    natsMsg_Destroy(m);  // nothing once nats.c owns it
    if (s != NATS_OK) rc = fail("publish", s);
  }
  if (rc == 0) {
    jsPubOptions wait;
    jsPubOptions_Init(&wait);
    wait.MaxWait = 600000;
    s = js_PublishAsyncComplete(js, &wait);
    if (s != NATS_OK) rc = fail("waiting for the acknowledgements", s);
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  if (rc == 0 && g_failed.load() != 0) {
    std::fprintf(stderr, "nats_publish: %llu messages not stored: %s\n",
                 static_cast<unsigned long long>(g_failed.load()), g_first_error);
    rc = 1;
  }
  if (rc == 0 && !create_only) {
    const uint64_t bytes = g_acked.load() * per_msg;
    std::printf("nats_publish: %llu bytes in %.3f s: %.1f MB/s\n",
                static_cast<unsigned long long>(bytes), seconds, bytes / seconds / 1e6);
  }
  jsCtx_Destroy(js);
  natsConnection_Destroy(nc);
  nats_CloseAndWait(5000);
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  return run(argc, argv);
}
