// relayctl fetch: reads a JetStream stream that relayctl ship fills (the message contract in
// relayctl(1)) back into files, one per host, channel and CPU: OUTDIR/HOST/CHANNEL<CPU> holds
// that buffer's sub-buffers in order, byte for byte what read(2) of the relay file gave.
//
// A durable pull consumer (AckExplicit) carries where fetch stands from one run to the next;
// the outputs' state files carry what each file holds (fetch_output.h), so a message is
// written once, also across a SIGKILL: written, synced, state saved, and only then
// acknowledged. A run that finds messages delivered to an earlier one and never acknowledged
// (a run killed) starts the consumer again from its acknowledgement floor, so that they come
// back in stream order ahead of newer ones (JetStream would send them only after their
// acknowledgement wait, behind newer ones, out of the window); what the files hold of them is
// skipped.
//
// Every header is hostile input (anyone who may publish on the stream): a message that breaks
// the contract is skipped, counted, acknowledged and warned about; names are checked
// (fetch_output.h), and directories and files opened below OUTDIR one name at a time, never
// through a symbolic link (record_disk.h).
#include <getopt.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "relayctl/fetch_output.h"
#include "relayctl/nats_conn.h"
#include "relayctl/record_disk.h"
#include "relayctl/relayctl.h"

namespace relayctl {
namespace {

using Clock = std::chrono::steady_clock;
using fetch::Labels;
using fetch::Output;
using fetch::Totals;

constexpr const char* kHelp =
    "Usage: relayctl fetch [OPTIONS] URL[,URL...] OUTDIR\n"
    "Reads a JetStream stream that relayctl ship fills back into files, one per host, channel\n"
    "and CPU: OUTDIR/HOST/CHANNEL<CPU> (channel app/log, CPU 0 of host1: OUTDIR/host1/app/log0)\n"
    "holds that buffer's sub-buffers in order, byte for byte what read(2) of the relay file\n"
    "gave. A durable consumer keeps the place: the next run goes on where this one stopped.\n"
    "Each file's NAME.state says what it holds, so that nothing is written twice, even after\n"
    "a kill. Without --follow, stops once the stream has nothing more for it.\n"
    "URL: [nats://|tls://][USER[:PASSWORD]@]HOST[:PORT], several separated by commas.\n"
    "\n"
    "      --stream NAME    the stream (default RELAYFS)\n"
    "      --subject FILTER only the stream's messages on these subjects (wildcards allowed;\n"
    "                       default: all of them)\n"
    "      --durable NAME   the durable consumer that keeps the place (default relayctl-fetch;\n"
    "                       one fetch at a time per name)\n"
    "      --follow         keep going, waiting for new messages, until SIGINT or SIGTERM\n"
    "      --window N       how far out of order a buffer's messages may come (the ship\n"
    "                       contract's WINDOW, default 32)\n";
constexpr const char* kHelpEnd =
    "  -q, --quiet          no progress on a terminal and no summary line\n"
    "  -h, --help           this help\n";

constexpr int kBatch = 256;                  // messages asked for at a time
constexpr int kFetchWaitMs = 1000;           // a fetch's wait: --follow's idle second
constexpr uint64_t kMaxWaiting = 256 << 20;  // bytes in reorder buffers before all are written
constexpr int kProgressMs = 500;
constexpr int kMaxWarnings = 10;  // invalid messages told one by one; the rest counted
constexpr int64_t kAckWaitNs = 30'000'000'000;

volatile std::sig_atomic_t g_stop = 0;
void on_signal(int) {
  g_stop = 1;
}

struct Args {
  nats::ConnectOptions conn;
  std::string stream = "RELAYFS", subject, durable = "relayctl-fetch", outdir;
  size_t window = 32;
  bool follow = false, quiet = false, help = false;
};

// A stream or consumer name as JetStream takes it: no space, '.', '*', '>', '/' or '\'.
bool js_name(const std::string& name) {
  if (name.empty() || name.size() > 255) return false;
  for (char c : name)
    if (c <= ' ' || c == 0x7f || std::strchr(".*>/\\", c)) return false;
  return true;
}

int parse(int argc, char** argv, Args* a) {
  enum : int { kStream = 0x100, kSubject, kDurable, kFollow, kWindow };
  const std::vector<option> longopts = nats::long_options({
      {"stream", required_argument, nullptr, kStream},
      {"subject", required_argument, nullptr, kSubject},
      {"durable", required_argument, nullptr, kDurable},
      {"follow", no_argument, nullptr, kFollow},
      {"window", required_argument, nullptr, kWindow},
      {"quiet", no_argument, nullptr, 'q'},
      {"help", no_argument, nullptr, 'h'},
  });
  start_options();
  int c;
  long long n;
  while ((c = getopt_long(argc, argv, ":qh", longopts.data(), nullptr)) != -1) {
    if (nats::take_option(c, optarg, &a->conn)) continue;
    switch (c) {
      case kStream:
        a->stream = optarg;
        break;
      case kSubject:
        a->subject = optarg;
        break;
      case kDurable:
        a->durable = optarg;
        break;
      case kFollow:
        a->follow = true;
        break;
      case kWindow:
        if (!parse_int(optarg, 1, 65536, &n))
          return usage_error("fetch", "--window takes a number from 1 to 65536");
        a->window = static_cast<size_t>(n);
        break;
      case 'q':
        a->quiet = true;
        break;
      case 'h':
        a->help = true;
        return kExitOk;
      default:
        return option_error("fetch", c, argv);
    }
  }
  if (argc - optind != 2)
    return usage_error("fetch", argc - optind < 2 ? "missing URL or OUTDIR" : "too many arguments");
  if (!js_name(a->stream))
    return usage_error("fetch", "--stream '" + a->stream + "': not a stream name");
  if (!js_name(a->durable))
    return usage_error("fetch", "--durable '" + a->durable + "': not a consumer name");
  a->conn.urls = argv[optind];
  a->outdir = argv[optind + 1];
  return kExitOk;
}

class Fetcher {
 public:
  explicit Fetcher(Args args) : a_(std::move(args)) {}

  // Connects, finds the stream, makes or resumes the consumer, opens OUTDIR. Returns an exit
  // status, failures reported; nothing is made in OUTDIR unless all the rest worked.
  int setup() {
    if (int rc = nats::connect(a_.conn, "relayctl fetch", &conn_); rc != kExitOk) return rc;
    where_ = nats::redact(a_.conn.urls);
    if (int rc = setup_consumer(); rc != kExitOk) return rc;
    OutputDir::Refusal why;
    if (int rc = dir_.open(a_.outdir, &why); rc) {
      if (why.controlled.empty()) return sys_error(why.path, why.what, rc);
      note(why.path + ": " + why.controlled +
           ": another user controls it; choose another OUTDIR (relayctl(1), fetch)");
      return kExitError;
    }
    const mode_t mask = ::umask(0);
    ::umask(mask);
    mode_ = 0644 & ~mask;
    max_open_ = open_limit();
    return kExitOk;
  }

  // Fetches until caught up (or, with --follow, until a signal). Returns an exit status.
  int run() {
    live_ = !a_.quiet && ::isatty(2);
    auto shown = Clock::now();
    bool retrying = false;
    while (!g_stop && !failed_) {
      natsMsgList list{};
      jsErrCode jerr = static_cast<jsErrCode>(0);
      const natsStatus s = natsSubscription_Fetch(&list, sub_.get(), kBatch, kFetchWaitMs, &jerr);
      if (s == NATS_OK) {
        retrying = false;
        for (int i = 0; i < list.Count; ++i) {
          nats::MsgPtr m(list.Msgs[i]);
          list.Msgs[i] = nullptr;
          take(std::move(m));
        }
      }
      const int got = s == NATS_OK ? list.Count : 0;
      natsMsgList_Destroy(&list);
      if (s != NATS_OK && s != NATS_TIMEOUT) {
        if (jerr == JSConsumerNotFoundErr || s == NATS_CONNECTION_CLOSED ||
            s == NATS_INVALID_SUBSCRIPTION) {
          tell(where_ + ": consumer " + a_.durable + ": " + nats::describe(s, jerr));
          failed_ = true;
          break;
        }
        if (!retrying) tell(where_ + ": fetch: " + nats::describe(s, jerr) + "; retrying");
        retrying = true;
        ::usleep(200 * 1000);
      }
      // Idle for a second with --follow: what waits for a missing sub-buffer is written.
      const bool idle = a_.follow && s == NATS_TIMEOUT;
      if (!drain(idle) || !commit()) break;
      if (live_ && Clock::now() - shown >= std::chrono::milliseconds(kProgressMs)) {
        shown = Clock::now();
        std::fprintf(stderr, "\r\033[Krelayctl fetch: %s", progress().c_str());
      }
      // Without --follow: done once a fetch came back short and nothing more is pending.
      if (!a_.follow && got < kBatch && caught_up()) break;
    }
    // The end of the run: everything that waits is written.
    if (!failed_ && drain(true)) commit();
    natsConnection_FlushTimeout(conn_.nc.get(), 5000);  // the acknowledgements, sent
    return finish();
  }

 private:
  // The consumer: made if missing; made anew from its acknowledgement floor if an earlier run
  // left messages delivered and unacknowledged; then a pull subscription bound to it.
  int setup_consumer() {
    jsCtx* js = conn_.js.get();
    const char* stream = a_.stream.c_str();
    jsErrCode jerr = static_cast<jsErrCode>(0);
    jsStreamInfo* si = nullptr;
    natsStatus s = js_GetStreamInfo(&si, js, stream, nullptr, &jerr);
    nats::StreamInfoPtr stream_info(si);
    if (s != NATS_OK) {
      if (jerr == JSStreamNotFoundErr)
        note(where_ + ": stream " + a_.stream + " not found (relayctl ship makes it; --stream)");
      else
        note(where_ + ": stream " + a_.stream + ": " + nats::describe(s, jerr));
      return kExitError;
    }
    jsConsumerInfo* ci = nullptr;
    s = js_GetConsumerInfo(&ci, js, stream, a_.durable.c_str(), nullptr, &jerr);
    nats::ConsumerInfoPtr info(ci);
    uint64_t start = 0;
    bool create = true;
    const std::string consumer = "consumer " + a_.durable + " of stream " + a_.stream;
    if (s == NATS_OK) {
      const jsConsumerConfig* c = info->Config;
      const std::string filter = c && c->FilterSubject ? c->FilterSubject : "";
      if (filter != a_.subject) {
        note(where_ + ": " + consumer + " takes " +
             (filter.empty() ? "all subjects" : "subjects '" + filter + "'") + ", not " +
             (a_.subject.empty() ? "all" : "'" + a_.subject + "'") +
             ": give the same --subject, or another --durable");
        return kExitError;
      }
      if (!c || (c->DeliverSubject && *c->DeliverSubject) || c->AckPolicy != js_AckExplicit) {
        note(where_ + ": " + consumer +
             " is not a pull consumer with explicit "
             "acknowledgements (not one relayctl fetch made): give another --durable");
        return kExitError;
      }
      create = info->NumAckPending > 0;
      if (create) {
        // Delivered to a run that did not acknowledge them: from the floor on, in order.
        start = info->AckFloor.Stream + 1;
        s = js_DeleteConsumer(js, stream, a_.durable.c_str(), nullptr, &jerr);
        if (s != NATS_OK) {
          note(where_ + ": " + consumer + ": delete to restart it: " + nats::describe(s, jerr));
          return kExitError;
        }
      }
    } else if (jerr != JSConsumerNotFoundErr) {
      note(where_ + ": " + consumer + ": " + nats::describe(s, jerr));
      return kExitError;
    }
    if (create) {
      jsConsumerConfig cc;
      jsConsumerConfig_Init(&cc);
      cc.Durable = a_.durable.c_str();
      cc.AckPolicy = js_AckExplicit;
      cc.AckWait = kAckWaitNs;
      cc.FilterSubject = a_.subject.empty() ? nullptr : a_.subject.c_str();
      cc.DeliverPolicy = start > 1 ? js_DeliverByStartSequence : js_DeliverAll;
      cc.OptStartSeq = start > 1 ? start : 0;
      // Reorder buffers hold messages unacknowledged: no limit that would stall them.
      cc.MaxAckPending = -1;
      jsConsumerInfo* made = nullptr;
      s = js_AddConsumer(&made, js, stream, &cc, nullptr, &jerr);
      nats::ConsumerInfoPtr made_info(made);
      if (s != NATS_OK) {
        note(where_ + ": create " + consumer + ": " + nats::describe(s, jerr));
        return kExitError;
      }
    }
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = stream;
    so.Consumer = a_.durable.c_str();
    natsSubscription* sub = nullptr;
    s = js_PullSubscribe(&sub, js, nullptr, nullptr, nullptr, &so, &jerr);
    if (s != NATS_OK) {
      note(where_ + ": " + consumer + ": subscribe: " + nats::describe(s, jerr));
      return kExitError;
    }
    sub_.reset(sub);
    return kExitOk;
  }

  // How many outputs may be open at once (two descriptors each): raises the soft limit on
  // descriptors to the hard one first.
  static size_t open_limit() {
    rlimit rl{};
    if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return 64;
    if (rl.rlim_cur < rl.rlim_max) {
      rl.rlim_cur = rl.rlim_max;
      ::setrlimit(RLIMIT_NOFILE, &rl);
      ::getrlimit(RLIMIT_NOFILE, &rl);
    }
    const rlim_t usable = rl.rlim_cur > 128 ? (rl.rlim_cur - 64) / 2 : 32;
    return static_cast<size_t>(std::min<rlim_t>(usable, 8192));
  }

  // "relayctl: " + what on stderr, over the progress line if there is one.
  void tell(const std::string& what) const {
    std::fprintf(stderr, "%srelayctl: %s\n", live_ ? "\r\033[K" : "", what.c_str());
  }

  // An invalid message: told, up to kMaxWarnings of them; the rest only counted.
  void warn(const std::string& what) {
    if (++warnings_ <= kMaxWarnings)
      tell(what);
    else if (warnings_ == kMaxWarnings + 1)
      tell("more invalid messages: counted only");
  }

  // One message: checked, then into its output's reorder buffer.
  void take(nats::MsgPtr m) {
    Labels l;
    std::string why = fetch::read_labels(m.get(), &l);
    Output* out = nullptr;
    std::optional<fetch::Pos> pos;
    if (why.empty()) {
      out = output(l);
      if (!out) {  // refused: left in the stream, unacknowledged, for a run after the fix
        ++t_.refused;
        return;
      }
      pos = out->position(l.generation, l.subbuf);
      if (!pos)
        why =
            out->path() + ": more than " + std::to_string(fetch::kMaxGenerations) + " generations";
    }
    if (!why.empty()) {
      ++t_.invalid;
      warn("invalid message on " + fetch::printable(natsMsg_GetSubject(m.get())) + ": " + why +
           ": skipped");
      ack_.push_back(std::move(m));
      return;
    }
    out->take(*pos, std::move(m), &ack_, &t_);
  }

  // The output for l: open already, or opened now (an open one evicted if too many are).
  // nullptr if it is refused (told once).
  Output* output(const Labels& l) {
    const std::string key = l.host + '\n' + l.channel + '\n' + std::to_string(l.cpu);
    if (auto it = outputs_.find(key); it != outputs_.end()) {
      it->second.used = ++clock_;
      return it->second.out.get();
    }
    if (refused_.count(key)) return nullptr;
    if (outputs_.size() >= max_open_) evict();
    auto out = std::make_unique<Output>();
    std::string why;
    if (out->open(dir_, a_.outdir, l, mode_, a_.window, &why) != 0) {
      refused_.insert(key);
      failed_later_ = true;
      tell(why + ": its messages are left in the stream");
      return nullptr;
    }
    Output* p = out.get();
    outputs_[key] = {std::move(out), ++clock_};
    return p;
  }

  // Closes the least recently used half of the open outputs, their waiting messages written
  // first (only with thousands of buffers at once: then a gap is not waited for).
  void evict() {
    std::vector<std::pair<uint64_t, std::string>> by_use;
    for (auto& [key, o] : outputs_) by_use.emplace_back(o.used, key);
    std::sort(by_use.begin(), by_use.end());
    by_use.resize(by_use.size() / 2 + 1);
    for (auto& [used, key] : by_use) {
      std::string why;
      if (outputs_[key].out->drain(true, &ack_, &t_, &why) != 0) {
        fail(why);
        return;
      }
    }
    if (!commit()) return;
    for (auto& [used, key] : by_use) {
      if (outputs_[key].out->wrote()) wrote_.insert(key);
      outputs_.erase(key);
    }
  }

  // Writes what the order allows in every output (everything, with all or when too much
  // waits). False after a failure (reported).
  bool drain(bool all) {
    uint64_t waiting = 0;
    for (auto& [key, o] : outputs_) waiting += o.out->waiting_bytes();
    all = all || waiting > kMaxWaiting;
    for (auto& [key, o] : outputs_) {
      std::string why;
      if (o.out->drain(all, &ack_, &t_, &why) != 0) {
        fail(why);
        return false;
      }
    }
    return true;
  }

  // Saves every output written to (file synced, then state), then acknowledges what they
  // hold. On a failure nothing is acknowledged: the messages come again to a later run,
  // which skips what the files hold. False after a failure (reported).
  bool commit() {
    for (auto& [key, o] : outputs_) {
      std::string why;
      if (o.out->save(&why) != 0) {
        fail(why);
        return false;
      }
    }
    for (nats::MsgPtr& m : ack_) natsMsg_Ack(m.get(), nullptr);
    ack_.clear();
    return true;
  }

  void fail(const std::string& why) {
    tell(why);
    failed_ = true;
    ack_.clear();  // destroyed, not acknowledged
  }

  // Whether the consumer has nothing more to deliver (false when that cannot be told now).
  bool caught_up() {
    // js_GetConsumerInfo, not natsSubscription_GetConsumerInfo: nats.c 3.4.1 does not keep the
    // consumer's name in a subscription bound to it, and answers NATS_INVALID_SUBSCRIPTION.
    jsConsumerInfo* ci = nullptr;
    jsErrCode jerr = static_cast<jsErrCode>(0);
    if (js_GetConsumerInfo(&ci, conn_.js.get(), a_.stream.c_str(), a_.durable.c_str(), nullptr,
                           &jerr) != NATS_OK)
      return false;
    nats::ConsumerInfoPtr info(ci);
    return info->NumPending == 0;
  }

  // The files written to in this run: those closed meanwhile, and those open.
  size_t files() const {
    size_t n = wrote_.size();
    for (const auto& [key, o] : outputs_) n += o.out->wrote() && !wrote_.count(key);
    return n;
  }

  std::string progress() const {
    const double s = std::chrono::duration<double>(Clock::now() - t0_).count();
    const auto b = static_cast<double>(t_.bytes);
    char line[256];
    std::snprintf(line, sizeof line,
                  "%s, %llu messages into %llu files, %llu duplicates and %llu invalid skipped",
                  amount_and_rate(b, s).c_str(), static_cast<unsigned long long>(t_.messages),
                  static_cast<unsigned long long>(files()),
                  static_cast<unsigned long long>(t_.duplicates),
                  static_cast<unsigned long long>(t_.invalid));
    return line;
  }

  int finish() {
    const bool failed = failed_ || failed_later_;
    if (t_.late > 0)
      tell(std::to_string(t_.late) +
           " messages came after their place in their file was "
           "written (a gap written past at the end of a run or after an idle second): "
           "appended at the end of the file, out of order");
    if (t_.refused > 0)
      tell(std::to_string(t_.refused) +
           " messages not written (refused files, above): left "
           "in the stream, unacknowledged, for a later run");
    if (!a_.quiet)
      std::fprintf(stderr, "%srelayctl fetch: %s: %s; %s\n", live_ ? "\r\033[K" : "",
                   a_.stream.c_str(), progress().c_str(),
                   failed   ? "failed"
                   : g_stop ? "stopped"
                            : "caught up");
    return failed ? kExitError : kExitOk;
  }

  struct Open {
    std::unique_ptr<Output> out;
    uint64_t used = 0;  // clock_ at the last message
  };

  Args a_;
  nats::Connection conn_;
  nats::SubscriptionPtr sub_;
  std::string where_;  // the URLs, for messages
  OutputDir dir_;
  mode_t mode_ = 0644;
  size_t max_open_ = 64;
  std::map<std::string, Open> outputs_;
  std::set<std::string> refused_;
  std::set<std::string> wrote_;  // outputs written to, then closed (evict)
  uint64_t clock_ = 0;
  std::vector<nats::MsgPtr> ack_;  // written (or skipped), acknowledged at the next commit
  Totals t_;
  int warnings_ = 0;
  bool live_ = false;
  bool failed_ = false;        // the run stops
  bool failed_later_ = false;  // an output was refused: the run goes on, and exits 1
  Clock::time_point t0_ = Clock::now();
};

}  // namespace

int cmd_fetch(int argc, char** argv) {
  Args args;
  if (int rc = parse(argc, argv, &args); rc != kExitOk || args.help) {
    if (args.help) {
      std::fputs(kHelp, stdout);
      std::fputs(nats::kOptionsHelp, stdout);
      std::fputs(kHelpEnd, stdout);
    }
    return rc;
  }
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  Fetcher f(std::move(args));
  if (int rc = f.setup(); rc != kExitOk) return rc;
  return f.run();
}

}  // namespace relayctl
