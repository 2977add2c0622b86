// A nats.c connection and its JetStream context for tests, owned RAII-style, and the check that
// turns a nats.c status into an exception. Tests only: these throw, which no library of relayfs
// may do (house style 5).
#pragma once

#include <nats/nats.h>

#include <chrono>
#include <stdexcept>
#include <string>

namespace relayfs::test {

// A nats.c call failed: what, its status text and nats.c's last error, and the JetStream error
// code when the server gave one (0 otherwise).
struct NatsError : std::runtime_error {
  NatsError(const std::string& what, natsStatus status, jsErrCode code = static_cast<jsErrCode>(0));
  natsStatus status;
  jsErrCode code;
};

// Throws NatsError unless s is NATS_OK.
void nats_check(natsStatus s, const std::string& what, jsErrCode code = static_cast<jsErrCode>(0));

// One connection to any of the servers in urls ("nats://h:p,nats://h:p"), reconnecting forever
// (100 ms apart) to whichever is up, with a JetStream context whose API requests wait `wait`
// and, when given, js_options' other fields (PublishAsync's handlers and window). Throws
// NatsError when no server answers within the connect timeout (2 s).
class NatsConnection {
 public:
  explicit NatsConnection(const std::string& urls,
                          std::chrono::milliseconds wait = std::chrono::seconds(5),
                          const jsOptions* js_options = nullptr);
  ~NatsConnection();
  NatsConnection(const NatsConnection&) = delete;
  NatsConnection& operator=(const NatsConnection&) = delete;

  natsConnection* nc() const { return nc_; }
  jsCtx* js() const { return js_; }

 private:
  natsConnection* nc_ = nullptr;
  jsCtx* js_ = nullptr;
};

// Creates stream `name` taking `subject` (wildcards allowed), of `replicas` replicas, with a
// 2-minute duplicate window (the ship contract's) on file storage (memory with `memory`).
// Throws NatsError (its code says why, e.g. 10023 insufficient resources while a cluster forms).
void add_stream(jsCtx* js, const std::string& name, const std::string& subject, int replicas,
                bool memory = false);

}  // namespace relayfs::test
