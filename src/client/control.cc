// relay_control: the requester's side of outside control (relayctl flush/reset/close). The
// producer's side is in relay.cc's event loop.
#include <libgen.h>
#include <sys/stat.h>

#include <cerrno>
#include <string>

#include "client/common.h"
#include "proto/protocol.h"

namespace proto = relayfs::proto;

namespace {

// relay_control's work. Returns 0 or -errno, as relay_control(3) lists them.
int request(const char* path, int op) {
  proto::ControlOp cop;
  if (!path || !relayfs::client::control_op(op, &cop)) return -EINVAL;
  struct stat st;
  if (::stat(path, &st) != 0) return -errno;
  if (!S_ISREG(st.st_mode)) return -EINVAL;
  std::string dir(path);
  relayfs::core::UniqueFd sock;
  if (int rc = relayfs::client::connect_daemon(::dirname(dir.data()), &sock); rc) return rc;
  const proto::ControlRequest req{st.st_ino, cop};
  if (int rc = proto::send_message(sock.get(), proto::encode(req, 1)); rc)
    return proto::send_failure(sock.get(), rc);
  proto::Received m;
  // The socket's receive timeout (connect_daemon) bounds a producer that never answers.
  const int rc = proto::recv_message(sock.get(), &m);
  if (rc == -EAGAIN) return -ETIMEDOUT;
  if (rc <= 0) return rc == 0 ? -EIO : rc;
  if (static_cast<proto::Type>(m.header.type) != proto::Type::kControlReply)
    return relayfs::client::refusal(m);
  proto::Status s;
  if (proto::decode(m.payload.data(), m.payload.size(), &s) != 0) return -EIO;
  return s.status;
}

}  // namespace

extern "C" RELAY_API int relay_control(const char* path, int op) {
  if (int rc = relayfs::client::guarded([&] { return request(path, op); })) {
    errno = -rc;
    return -1;
  }
  return 0;
}
