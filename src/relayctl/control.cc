// relayctl flush | reset | close PATH...: outside control of channels whose producer allows it
// (relay_control(3)). The daemon hands each request to the producer, which carries it out or
// refuses it; this only names the channel and reports the answer.
#include <getopt.h>
#include <relayfs/relay.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "relayctl/relayctl.h"

namespace relayctl {
namespace {

struct Op {
  const char* name;
  int code;
  const char* what;
};

constexpr Op kOps[] = {
    {"flush", RELAY_CTL_FLUSH,
     "Forces a sub-buffer switch on every buffer of each channel (relay_flush), so readers\n"
     "that wait for whole sub-buffers get what was written so far."},
    {"reset", RELAY_CTL_RESET,
     "Discards unread data of each channel and begins again (relay_reset). The producer must\n"
     "allow it through its control callback: a reset needs no thread to be writing."},
    {"close", RELAY_CTL_CLOSE,
     "Closes every buffer of each channel: later writes fail with EPIPE, and readers reach end\n"
     "of file once they have read what was written. The files go when the producer exits or\n"
     "calls relay_close."},
};

// A file of the channel PATH names: PATH itself if it is a file (a buffer or the merged view),
// else the first buffer of channel DIR/BASE. Empty if there is none.
std::string channel_file(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode)) return path;
  std::string dir, name;
  if (!split_path(path, &dir, &name)) return {};
  const auto files = channel_buffers(dir, name);
  return files.empty() ? std::string() : dir + "/" + files.front();
}

// Reports that the daemon or the producer refused op (err: -errno); returns kExitError.
int explain(const std::string& path, const Op& op, int err) {
  switch (err) {
    case -EPERM:
      return sys_error(path, std::string("cannot ") + op.name +
                                 " (the producer did not allow outside control with "
                                 "RELAY_CONTROL, or the channel is not yours)",
                       err);
    case -EBUSY:
      if (op.code == RELAY_CTL_RESET)
        return sys_error(path, "cannot reset (the producer's control callback must allow it)",
                         err);
      break;
    case -ENOENT:
      return sys_error(path, "no such channel, or its producer is gone", err);
    default:
      break;
  }
  return sys_error(path, std::string("cannot ") + op.name, err);
}

// The subcommand op. Returns an exit status.
int run(const Op& op, int argc, char** argv) {
  static const option kLong[] = {{"help", no_argument, nullptr, 'h'}, {nullptr, 0, nullptr, 0}};
  start_options();
  int c;
  while ((c = getopt_long(argc, argv, ":h", kLong, nullptr)) != -1) {
    if (c != 'h') return option_error(op.name, c, argv);
    std::printf("Usage: relayctl %s PATH...\n%s\nPATH is a channel (DIR/BASE) or one of its "
                "files. Only the owner of the channel's\nfiles, or root, may ask. See "
                "relayctl(1), relay_control(3).\n",
                op.name, op.what);
    return kExitOk;
  }
  if (optind == argc) return usage_error(op.name, "missing PATH");
  int status = kExitOk;
  for (int i = optind; i < argc; ++i) {
    const std::string path = argv[i];
    const std::string file = channel_file(path);
    if (file.empty()) {
      status = sys_error(path, "no such channel", -ENOENT);
      continue;
    }
    if (relay_control(file.c_str(), op.code) != 0) status = explain(path, op, -errno);
  }
  return status;
}

}  // namespace

int cmd_flush(int argc, char** argv) { return run(kOps[0], argc, argv); }
int cmd_reset(int argc, char** argv) { return run(kOps[1], argc, argv); }
int cmd_close(int argc, char** argv) { return run(kOps[2], argc, argv); }

}  // namespace relayctl
