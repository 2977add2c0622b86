// relayctl's side of NATS (nats.c, <nats/nats.h>), shared by the subcommands that talk to a
// JetStream cluster (ship, fetch): the connection options on the command line, one connection
// with its JetStream context, owners for nats.c's objects, and nats.c's failures as one line.
//
// Use, in a subcommand:
//
//   nats::ConnectOptions conn;
//   const auto longopts = nats::long_options({{"quiet", no_argument, nullptr, 'q'}});
//   while ((c = getopt_long(argc, argv, "qh", longopts.data(), nullptr)) != -1)
//     if (!nats::take_option(c, optarg, &conn)) switch (c) { ... }
//   conn.urls = argv[optind];
//   nats::Connection nc;
//   if (int rc = nats::connect(conn, "relayctl fetch", &nc); rc != kExitOk) return rc;
//   ... nc.js.get() ...
//
// Nothing here exits or throws: failures come back as natsStatus, or as an exit status with the
// message printed (connect), as relayctl.h's rule for reporting steps says.
#pragma once

#include <getopt.h>
#include <nats/nats.h>

#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

namespace relayctl::nats {

// Owners: one deleter for every nats.c object relayctl keeps, so std::unique_ptr owns each.
struct Free {
  void operator()(natsOptions* p) const noexcept { natsOptions_Destroy(p); }
  void operator()(natsConnection* p) const noexcept { natsConnection_Destroy(p); }
  void operator()(jsCtx* p) const noexcept { jsCtx_Destroy(p); }
  void operator()(natsMsg* p) const noexcept { natsMsg_Destroy(p); }
  void operator()(natsSubscription* p) const noexcept { natsSubscription_Destroy(p); }
  void operator()(jsStreamInfo* p) const noexcept { jsStreamInfo_Destroy(p); }
  void operator()(jsConsumerInfo* p) const noexcept { jsConsumerInfo_Destroy(p); }
};
using OptionsPtr = std::unique_ptr<natsOptions, Free>;
using ConnectionPtr = std::unique_ptr<natsConnection, Free>;  // closes it, if still open
using JsPtr = std::unique_ptr<jsCtx, Free>;
using MsgPtr = std::unique_ptr<natsMsg, Free>;
using SubscriptionPtr = std::unique_ptr<natsSubscription, Free>;  // never deletes a consumer
using StreamInfoPtr = std::unique_ptr<jsStreamInfo, Free>;
using ConsumerInfoPtr = std::unique_ptr<jsConsumerInfo, Free>;

// Where and how to connect: the command line's URL[,URL...] and its connection options.
struct ConnectOptions {
  // "URL[,URL...]", each [nats://|tls://][USER[:PASSWORD]@]HOST[:PORT] (port 4222 if none;
  // HOST a name, an IPv4 address or [IPv6]). A tls:// URL or any --tls-* option makes every
  // connection TLS.
  std::string urls;
  std::string creds;     // --creds FILE: a NATS credentials file (user JWT and NKey seed)
  std::string tls_ca;    // --tls-ca FILE: CA certificates to verify the server with (PEM)
  std::string tls_cert;  // --tls-cert FILE, --tls-key FILE: the client's certificate chain
  std::string tls_key;   // and key (PEM), both or neither
};

// The connection options' lines for a subcommand's --help, each ending in '\n'.
extern const char kOptionsHelp[];

// getopt_long's table: the subcommand's own options, then --creds, --tls-ca, --tls-cert and
// --tls-key (each with a required argument), then the terminating zero entry.
std::vector<option> long_options(std::initializer_list<option> own);

// In the getopt_long loop: if c is one of the connection options, stores arg in *out and
// returns true; otherwise returns false (c is the subcommand's).
bool take_option(int c, const char* arg, ConnectOptions* out);

// A connection and its JetStream context. Destroyed in reverse order (js first).
struct Connection {
  ConnectionPtr nc;
  JsPtr js;
};

// What a subcommand may tune of the connection (fetch needs none of it).
struct Tuning {
  // The JetStream context's options, e.g. ship's PublishAsync handlers and window; nullptr for
  // nats.c's defaults. A Wait of 0 becomes 5 s.
  const jsOptions* js = nullptr;
  // Bytes of publishes the client keeps while it reconnects (0: nats.c's 8 MiB).
  int reconnect_buffer = 0;
};

// Checks opts (URLs well formed, --tls-cert with --tls-key, every file readable), connects to
// the first server that answers (in the order given, 2 s each) and gets a JetStream context
// whose requests wait up to 5 s. From then on, a lost connection is retried forever, a second
// apart, to any of the servers, and stderr says "NAME: connection to NATS lost; reconnecting"
// and "NAME: reconnected to URL" (name: the client's name for the server too, e.g.
// "relayctl fetch"; it must outlive the connection). Returns kExitOk, or kExitError after
// printing one line: "relayctl: malformed URL 'URL': WHY", or "relayctl: URLS: WHY", URLS with
// every password shown as "***" and WHY, e.g. "no server answers (connection refused or timed
// out)", "authorization failed (user, password or credentials)", "--creds FILE: No such file
// or directory".
int connect(const ConnectOptions& opts, const char* name, Connection* out,
            const Tuning& tuning = {});

// One line for a failed nats.c call (s != NATS_OK): what it means to a user, then nats.c's
// own text for the calling thread's last error (nats_GetLastError) when it adds to that, and
// the JetStream error code when there is one (non-zero). No newline in it.
std::string describe(natsStatus s, jsErrCode code = static_cast<jsErrCode>(0));

// urls ("URL[,URL...]") with every password replaced by "***", for messages.
std::string redact(const std::string& urls);

}  // namespace relayctl::nats
