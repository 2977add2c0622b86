// What relayctl ship and fetch share of NATS (relayctl(1), NATS CONNECTIONS): the connection
// options, connecting with one clear line when it fails, and owners for nats.c's objects.
// Everything here returns 0 or -1 with a message: nats.c reports natsStatus, not errno.
#pragma once

#include <getopt.h>
#include <nats/nats.h>

#include <memory>
#include <string>

namespace relayctl {

// The connection options, for a subcommand's help text, its getopt_long table (codes past any
// character, so no short option collides) and its option loop (nats_conn_option).
#define RELAYCTL_NATS_HELP                                                                \
  "      --creds FILE      a NATS credentials file (user JWT and seed)\n"                  \
  "      --tls-ca FILE     trusted CA certificates; turns TLS on\n"                        \
  "      --tls-cert FILE   client certificate chain, with --tls-key FILE its private key\n" \
  "  URL is nats://[USER:PASSWORD@]HOST[:PORT] (tls:// for TLS); several, comma-separated,\n" \
  "  name the servers of one cluster.\n"
inline constexpr int kOptCreds = 0x1000, kOptTlsCa = 0x1001, kOptTlsCert = 0x1002,
                     kOptTlsKey = 0x1003;
#define RELAYCTL_NATS_OPTIONS                                 \
  {"creds", required_argument, nullptr, relayctl::kOptCreds}, \
      {"tls-ca", required_argument, nullptr, relayctl::kOptTlsCa}, \
      {"tls-cert", required_argument, nullptr, relayctl::kOptTlsCert}, \
      {"tls-key", required_argument, nullptr, relayctl::kOptTlsKey}

struct NatsConnOptions {
  std::string creds, tls_ca, tls_cert, tls_key;
  bool quiet = false;  // no notes on disconnections and reconnections
};
// If getopt_long's c is one of the connection options, stores arg and returns true.
bool nats_conn_option(int c, const char* arg, NatsConnOptions* o);

// Checks a comma-separated URL list before nats.c sees it: scheme nats:// or tls:// (or none),
// a host, a numeric port if any. Returns "" or what is wrong with it.
std::string check_nats_urls(const std::string& urls);

// "what: status text (nats.c's last error)", one line.
std::string nats_error(const std::string& what, natsStatus s);

struct NatsMsgDeleter {
  void operator()(natsMsg* m) const noexcept { natsMsg_Destroy(m); }
};
using NatsMsgPtr = std::unique_ptr<natsMsg, NatsMsgDeleter>;
struct StreamInfoDeleter {
  void operator()(jsStreamInfo* si) const noexcept { jsStreamInfo_Destroy(si); }
};
using StreamInfoPtr = std::unique_ptr<jsStreamInfo, StreamInfoDeleter>;

// One connection and its JetStream context. Reconnects by itself, forever, to any server of the
// list; the first connection must succeed.
class NatsConn {
 public:
  NatsConn() = default;
  NatsConn(const NatsConn&) = delete;
  NatsConn& operator=(const NatsConn&) = delete;
  ~NatsConn();

  // Connects to urls with o, and makes the JetStream context with jo (nullptr: defaults).
  // Returns 0, or -1 with *error one line saying why (unreachable, refused credentials, ...).
  int connect(const std::string& urls, const NatsConnOptions& o, jsOptions* jo,
              std::string* error);
  natsConnection* conn() const noexcept { return nc_; }
  jsCtx* js() const noexcept { return js_; }

 private:
  natsOptions* opts_ = nullptr;
  natsConnection* nc_ = nullptr;
  jsCtx* js_ = nullptr;
};

}  // namespace relayctl
