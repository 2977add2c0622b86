#include "proto/wire.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/xattr.h>

#include <cerrno>
#include <cstddef>
#include <cstring>

#include "proto/names.h"

namespace relayfs::proto {

int send_message(int sock, const std::vector<char>& msg, const int* fds, size_t nfds) {
  if (nfds > kMaxFds) return -EINVAL;
  iovec iov{const_cast<char*>(msg.data()), msg.size()};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  std::vector<char> cbuf;
  if (nfds) {
    cbuf.assign(CMSG_SPACE(sizeof(int) * nfds), 0);
    mh.msg_control = cbuf.data();
    mh.msg_controllen = cbuf.size();
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    std::memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
  }
  for (;;) {
    const ssize_t n = ::sendmsg(sock, &mh, MSG_NOSIGNAL);
    if (n >= 0) return static_cast<size_t>(n) == msg.size() ? 0 : -EMSGSIZE;
    if (errno != EINTR) return -errno;
  }
}

int recv_message(int sock, Received* out, size_t max_fds) {
  std::vector<char> buf(sizeof(Header) + kMaxPayload + 1);
  iovec iov{buf.data(), buf.size()};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  std::vector<char> cbuf(max_fds ? CMSG_SPACE(sizeof(int) * max_fds) : 0);
  mh.msg_control = cbuf.empty() ? nullptr : cbuf.data();
  mh.msg_controllen = cbuf.size();
  ssize_t n;
  do n = ::recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  if (n < 0) return -errno;
  if (n == 0) return 0;
  // Take ownership of every descriptor first, so none leaks whatever is wrong with the message.
  out->fds.clear();
  for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      out->fds.emplace_back(fd);
    }
  }
  // The kernel truncates the descriptors (MSG_CTRUNC) when the buffer had no room for them, or
  // when it could not install one because this process is at its descriptor limit: the buffer
  // then still had room. Only the first is the peer's fault. The second is reported as -EMFILE
  // with the message itself in *out, so the receiver can say which one it could not take.
  const bool no_room = (mh.msg_flags & MSG_CTRUNC) != 0;
  if (no_room && out->fds.size() >= max_fds) return -EPROTO;
  if (mh.msg_flags & MSG_TRUNC) return -EPROTO;
  if (static_cast<size_t>(n) < sizeof(Header)) return -EPROTO;
  std::memcpy(&out->header, buf.data(), sizeof(Header));
  if (int rc = check_header(out->header); rc) return rc;
  if (out->header.length != static_cast<size_t>(n) - sizeof(Header)) return -EPROTO;
  out->payload.assign(buf.data() + sizeof(Header), buf.data() + n);
  return no_room ? -EMFILE : 1;
}

int send_failure(int sock, int err) {
  pollfd p{sock, POLLIN, 0};
  if ((err != -EPIPE && err != -ECONNRESET) || ::poll(&p, 1, 0) != 1 || !(p.revents & POLLIN))
    return err;
  Received m;  // there is something, so this does not wait
  Status st;
  if (recv_message(sock, &m) == 1 && static_cast<Type>(m.header.type) == Type::kError &&
      decode(m.payload.data(), m.payload.size(), &st) == 0 && st.status < 0)
    return st.status;
  return err;
}

int connect_control(const char* dir, int timeout_s, core::UniqueFd* out) {
  char name[108];
  const ssize_t n = ::getxattr(dir, kControlXattr, name, sizeof name - 1);
  if (n < 0) return errno == ENOENT ? -ENOENT : -ENOTSUP;  // not a relayfs directory
  return connect_named(std::string(name, static_cast<size_t>(n)), timeout_s, out);
}

int connect_named(const std::string& name, int timeout_s, core::UniqueFd* out) {
  if (name.size() < 2 || name.size() > 107 || name[0] != '@') return -ENOTSUP;
  core::UniqueFd s(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!s) return -errno;
  // Without the timeouts a hung daemon would hold the caller for good: no connection then. The
  // send timeout bounds connect(2) too, which waits while the daemon's backlog is full.
  timeval tv{static_cast<time_t>(timeout_s), 0};
  if (::setsockopt(s.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 ||
      ::setsockopt(s.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0)
    return -errno;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path + 1, name.data() + 1, name.size() - 1);  // abstract: leading NUL
  const auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size());
  if (::connect(s.get(), reinterpret_cast<sockaddr*>(&addr), len) != 0) return -errno;
  *out = std::move(s);
  return 0;
}

}  // namespace relayfs::proto
