// relayfs [SOURCE] MOUNTPOINT [-o OPTIONS] [-f] [-d]
//
// Mounts a relayfs tree. SOURCE is accepted and ignored (mount(8) and mount.fuse3 pass one), and
// shown as the fsname in /proc/mounts. Runs in the background unless -f is given; SIGTERM,
// SIGINT or fusermount3 -u unmount it cleanly, and it ends once its mount is gone (umount -l).
#include <fuse_lowlevel.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <string>
#include <vector>

#include "fs/fault.h"
#include "fs/mountinfo.h"
#include "fs/daemon.h"

using relayfs::fs::Daemon;

namespace {

// True if path is already where a relayfs is mounted. mount(8) stacks a FUSE mount on another
// without a word, and the new one would hide the old one's channels from their readers.
bool relayfs_mounted_at(const char* path) {
  char real[PATH_MAX];
  if (!::realpath(path, real)) return false;  // fuse_session_mount says what is wrong with it
  return !relayfs::fs::mounted_dev(real, relayfs::proto::kFsType).empty();
}

Daemon* fs_of(fuse_req_t req) {
  return static_cast<Daemon*>(fuse_req_userdata(req));
}

// No exception may cross into libfuse: a handler that throws replies with an errno instead.
template <typename F>
void guarded(fuse_req_t req, F&& f) {
  try {
    f();
  } catch (const std::bad_alloc&) {
    fuse_reply_err(req, ENOMEM);
  } catch (...) {
    fuse_reply_err(req, EIO);
  }
}

const fuse_lowlevel_ops kOps = [] {
  fuse_lowlevel_ops o{};
  o.init = [](void* fs, fuse_conn_info* conn) {
    static_cast<Daemon*>(fs)->ops.init(conn);
  };
  o.lookup = [](fuse_req_t r, fuse_ino_t p, const char* n) {
    guarded(r, [&] { fs_of(r)->ops.lookup(r, p, n); });
  };
  o.forget = [](fuse_req_t r, fuse_ino_t i, uint64_t n) {
    try {
      fs_of(r)->ops.forget(i, n);
    } catch (...) {
    }
    fuse_reply_none(r);
  };
  o.forget_multi = [](fuse_req_t r, size_t count, fuse_forget_data* f) {
    try {
      for (size_t i = 0; i < count; ++i) fs_of(r)->ops.forget(f[i].ino, f[i].nlookup);
    } catch (...) {
    }
    fuse_reply_none(r);
  };
  o.getattr = [](fuse_req_t r, fuse_ino_t i, fuse_file_info* fi) {
    guarded(r, [&] { fs_of(r)->ops.getattr(r, i, fi != nullptr); });
  };
  o.setattr = [](fuse_req_t r, fuse_ino_t i, struct stat* a, int s, fuse_file_info*) {
    guarded(r, [&] { fs_of(r)->ops.setattr(r, i, a, s); });
  };
  o.mkdir = [](fuse_req_t r, fuse_ino_t p, const char* n, mode_t m) {
    guarded(r, [&] { fs_of(r)->ops.mkdir(r, p, n, m); });
  };
  o.rmdir = [](fuse_req_t r, fuse_ino_t p, const char* n) {
    guarded(r, [&] { fs_of(r)->ops.rmdir(r, p, n); });
  };
  o.opendir = [](fuse_req_t r, fuse_ino_t i, fuse_file_info* f) {
    guarded(r, [&] { fs_of(r)->ops.opendir(r, i, f); });
  };
  o.readdir = [](fuse_req_t r, fuse_ino_t, size_t s, off_t off, fuse_file_info* f) {
    guarded(r, [&] { fs_of(r)->ops.readdir(r, s, off, f); });
  };
  o.releasedir = [](fuse_req_t r, fuse_ino_t, fuse_file_info* f) {
    guarded(r, [&] { fs_of(r)->ops.releasedir(r, f); });
  };
  o.open = [](fuse_req_t r, fuse_ino_t i, fuse_file_info* f) {
    guarded(r, [&] { fs_of(r)->files.open(r, i, f); });
  };
  o.read = [](fuse_req_t r, fuse_ino_t, size_t s, off_t off, fuse_file_info* f) {
    guarded(r, [&] { fs_of(r)->files.read(r, s, off, f); });
  };
  o.release = [](fuse_req_t r, fuse_ino_t, fuse_file_info* f) {
    guarded(r, [&] { fs_of(r)->files.release(r, f); });
  };
  o.poll = [](fuse_req_t r, fuse_ino_t, fuse_file_info* f, fuse_pollhandle* ph) {
    guarded(r, [&] { fs_of(r)->files.poll(r, f, ph); });
  };
  o.ioctl = [](fuse_req_t r, fuse_ino_t, unsigned int cmd, void*, fuse_file_info* f,
               unsigned flags, const void*, size_t,
               size_t) { guarded(r, [&] { fs_of(r)->files.ioctl(r, cmd, f, flags); }); };
  o.getxattr = [](fuse_req_t r, fuse_ino_t i, const char* n, size_t s) {
    guarded(r, [&] { fs_of(r)->ops.getxattr(r, i, n, s); });
  };
  o.listxattr = [](fuse_req_t r, fuse_ino_t i, size_t s) {
    guarded(r, [&] { fs_of(r)->ops.listxattr(r, i, s); });
  };
  o.statfs = [](fuse_req_t r, fuse_ino_t) { guarded(r, [&] { fs_of(r)->ops.statfs(r); }); };
  // Users cannot create, write, rename or remove relay files, nor make other kinds of file.
  o.create = [](fuse_req_t r, fuse_ino_t, const char*, mode_t, fuse_file_info*) {
    fuse_reply_err(r, EPERM);
  };
  o.mknod = [](fuse_req_t r, fuse_ino_t, const char*, mode_t, dev_t) { fuse_reply_err(r, EPERM); };
  o.symlink = [](fuse_req_t r, const char*, fuse_ino_t, const char*) { fuse_reply_err(r, EPERM); };
  o.link = [](fuse_req_t r, fuse_ino_t, fuse_ino_t, const char*) { fuse_reply_err(r, EPERM); };
  o.unlink = [](fuse_req_t r, fuse_ino_t, const char*) { fuse_reply_err(r, EPERM); };
  o.rename = [](fuse_req_t r, fuse_ino_t, const char*, fuse_ino_t, const char*, unsigned) {
    fuse_reply_err(r, EPERM);
  };
  o.write = [](fuse_req_t r, fuse_ino_t, const char*, size_t, off_t, fuse_file_info*) {
    fuse_reply_err(r, EBADF);
  };
  o.setxattr = [](fuse_req_t r, fuse_ino_t, const char*, const char*, size_t, int) {
    fuse_reply_err(r, EPERM);
  };
  o.removexattr = [](fuse_req_t r, fuse_ino_t, const char*) { fuse_reply_err(r, EPERM); };
  o.fallocate = [](fuse_req_t r, fuse_ino_t, int, off_t, off_t, fuse_file_info*) {
    fuse_reply_err(r, EPERM);
  };
  return o;
}();

enum class DaemonOption { kNone, kTaken, kBad };

// An option of the daemon's own, which libfuse never sees (relayfs(8)): a per-user limit
// ("Limits"), the kernel's read-ahead, the orphan timeout. kTaken with *o set, kNone for any
// other option, kBad (said on stderr) for one of ours whose value is not one.
DaemonOption parse_daemon_option(const std::string& item, relayfs::fs::Options* o) {
  using relayfs::fs::Limits;
  enum Kind { kSize, kCount, kBytes, kSeconds, kMillis };  // the last three: no 'unlimited'
  struct Known {
    const char* name;
    Kind kind;
    uint64_t Limits::*limit = nullptr;     // a limit, or
    uint32_t relayfs::fs::Options::*value = nullptr;  // an option of the daemon's
    uint64_t max = 0;                      // for value: its largest
  };
  static constexpr Known kKnown[] = {
      {"user_memory", kSize, &Limits::user_memory},
      {"users_memory", kSize, &Limits::users_memory},
      {"user_channels", kCount, &Limits::user_channels},
      {"user_connections", kCount, &Limits::user_connections},
      // The kernel's read-ahead window for splicing readers (relay(7), "Splice and sendfile").
      {"readahead", kBytes, nullptr, &relayfs::fs::Options::readahead, 16u << 20},
      {"orphan_timeout", kSeconds, nullptr, &relayfs::fs::Options::orphan_timeout, 1u << 30},
      // The doorbell's backstop (relay(7), "Wake-ups"; src/fs/recheck.cc).
      {"recheck_ms", kMillis, nullptr, &relayfs::fs::Options::recheck_ms, 60'000},
  };
  const size_t eq = item.find('=');
  const std::string name = item.substr(0, eq);
  for (const Known& k : kKnown) {
    if (name != k.name) continue;
    uint64_t v = 0;
    const bool size = k.kind == kSize || k.kind == kBytes;
    if (eq != std::string::npos && relayfs::fs::parse_limit(item.substr(eq + 1), size, &v) &&
        (k.limit || (v != Limits::kUnlimited && v <= k.max))) {
      if (k.limit)
        o->limits.*k.limit = v;
      else
        o->*k.value = static_cast<uint32_t>(v);
      return DaemonOption::kTaken;
    }
    const char* what = "";
    switch (k.kind) {
      case kSize:
        what = "not a size: a number of bytes with an optional K, M, G or T suffix, or "
               "'unlimited'";
        break;
      case kCount:
        what = "not a count: a whole number, or 'unlimited'";
        break;
      case kBytes:
        what = "not a size: a number of bytes with an optional K or M suffix, at most 16M";
        break;
      case kSeconds:
        what = "not a number of seconds (0: never)";
        break;
      case kMillis:
        what = "not a number of milliseconds, at most 60000 (0: never)";
        break;
    }
    std::fprintf(stderr, "relayfs: -o %s: %s\n", item.c_str(),
                 eq == std::string::npos ? "needs a value" : what);
    return DaemonOption::kBad;
  }
  return DaemonOption::kNone;
}

struct Conf {
  int blocking = 0;
};

const fuse_opt kOpts[] = {
    {"blocking", offsetof(Conf, blocking), 1},
    FUSE_OPT_END,
};

void usage(const char* prog) {
  std::printf(
      "usage: %s [SOURCE] MOUNTPOINT [-o OPTIONS] [-f] [-d]\n"
      "\n"
      "Mounts a relayfs tree of relay channels at MOUNTPOINT.\n"
      "\n"
      "  SOURCE           ignored (shown as the file system name in /proc/mounts)\n"
      "  -f               stay in the foreground\n"
      "  -d               debug: foreground, and print every FUSE request\n"
      "  -o blocking      an empty read waits for data (Ctrl-C interrupts it) instead of\n"
      "                   returning 0 at once; O_NONBLOCK readers still get EAGAIN\n"
      "  -o allow_other   let other users than the mounter see the tree\n"
      "  -o user_memory=SIZE       channel memory one user may hold (default: 1/8 of RAM)\n"
      "  -o users_memory=SIZE      the same, all users together (default: 1/4 of RAM)\n"
      "  -o user_channels=N        channels one user may hold (default: 256)\n"
      "  -o user_connections=N     control connections one user may hold (default: 256)\n"
      "                   SIZE: bytes with an optional K, M, G or T; or 'unlimited'. Root and\n"
      "                   the mounter have no limits; the others get EDQUOT beyond them\n"
      "  -o orphan_timeout=S       free what a closed or exited producer's channel still\n"
      "                   holds once nobody has read it for S seconds (counted in\n"
      "                   lost_expired_bytes; default 0: never)\n"
      "  -o recheck_ms=MS          while a reader waits, look at its buffer again every MS\n"
      "                   milliseconds, in case the producer's wake-up was lost (default\n"
      "                   250; 0: never)\n"
      "  -o readahead=SIZE         the kernel's read-ahead for splice/sendfile readers\n"
      "                   (default 0: a page at a time, which bounds what a splicing\n"
      "                   reader that stops early leaves counted in lost_readahead_bytes)\n"
      "  -o ro            read-only: no new channels (EROFS)\n"
      "  -o OPTION        any other libfuse mount option\n"
      "\n"
      "See relayfs(8).\n",
      prog);
}

}  // namespace

int main(int argc, char** argv) {
  // mount(8) runs "relayfs SOURCE MOUNTPOINT -o OPTS"; libfuse takes one positional argument.
  std::vector<std::string> positional, rest;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      usage(argv[0]);
      return 0;
    }
    if (a == "-V" || a == "--version") {
      std::printf("relayfs 0.1.0 (libfuse %s)\n", fuse_pkgversion());
      return 0;
    }
    if (a == "-o" && i + 1 < argc) {
      rest.push_back(a);
      rest.push_back(argv[++i]);
    } else if (!a.empty() && a[0] == '-') {
      rest.push_back(a);
    } else {
      positional.push_back(a);
    }
  }
  if (positional.empty() || positional.size() > 2) {
    usage(argv[0]);
    return 2;
  }
  relayfs::fs::Options opts;
  if (positional.size() == 2) opts.fsname = positional[0];
  // The kernel keeps other users out of the mount unless allow_other; the control socket must
  // do the same, so the daemon needs to know (libfuse keeps the option for the kernel). The
  // limits are the daemon's alone: taken out, since libfuse refuses options it does not know.
  std::vector<std::string> passed;
  for (size_t i = 0; i < rest.size(); ++i) {
    std::string o = rest[i];
    if (o == "-o" && i + 1 < rest.size())
      o = rest[++i];
    else if (o.rfind("-o", 0) == 0 && o.size() > 2)
      o = o.substr(2);
    else {
      passed.push_back(o);
      continue;
    }
    std::string kept;
    for (size_t at = 0; at <= o.size();) {
      const size_t comma = std::min(o.find(',', at), o.size());
      const std::string item = o.substr(at, comma - at);
      at = comma + 1;
      if (item == "allow_other") opts.allow_other = true;
      // The kernel refuses mkdir on a read-only mount; channels are the daemon's to refuse.
      if (item == "ro") opts.read_only = true;
      if (item == "rw") opts.read_only = false;
      switch (parse_daemon_option(item, &opts)) {
        case DaemonOption::kNone:
          kept += (kept.empty() ? "" : ",") + item;
          break;
        case DaemonOption::kTaken:
          break;
        case DaemonOption::kBad:
          return 2;
      }
    }
    if (!kept.empty()) passed.insert(passed.end(), {"-o", kept});
  }
  rest = std::move(passed);
  // A mount point that is missing or not a directory is a failure to mount (status 1), not a
  // usage error: say so before libfuse's own check, which exits as if it were one.
  struct stat mp;
  const int mp_err = ::stat(positional.back().c_str(), &mp) != 0 ? errno
                     : !S_ISDIR(mp.st_mode)                       ? ENOTDIR
                                                                  : 0;
  if (mp_err) {
    std::fprintf(stderr, "relayfs: %s: %s\n", positional.back().c_str(), std::strerror(mp_err));
    return 1;
  }
  // As many descriptors as this daemon may have: a reserve of them is kept for root and the
  // mounter (FdBudget, quota.h).
  relayfs::fs::raise_nofile_limit();
  if (!relayfs::fs::load_faults(std::getenv("RELAYFS_TEST_FAULTS"))) {
    std::fprintf(stderr, "relayfs: RELAYFS_TEST_FAULTS: unknown fault in '%s'\n",
                 std::getenv("RELAYFS_TEST_FAULTS"));
    return 2;
  }
  std::vector<std::string> fargs = {argv[0], positional.back()};
  fargs.insert(fargs.end(), rest.begin(), rest.end());
  // Permissions are the kernel's to enforce, with the owners and modes producers give.
  fargs.insert(fargs.end(), {"-o", std::string("subtype=") + relayfs::proto::kSubtype +
                                       ",default_permissions,fsname=" + opts.fsname});
  std::vector<char*> fargv;
  for (auto& s : fargs) fargv.push_back(s.data());

  fuse_args args = FUSE_ARGS_INIT(static_cast<int>(fargv.size()), fargv.data());
  Conf conf;
  if (fuse_opt_parse(&args, &conf, kOpts, nullptr) != 0) return 2;
  opts.blocking = conf.blocking;
  fuse_cmdline_opts cmd{};
  if (fuse_parse_cmdline(&args, &cmd) != 0) return 2;
  if (!cmd.mountpoint) {
    usage(argv[0]);
    return 2;
  }
  if (relayfs_mounted_at(cmd.mountpoint)) {
    std::fprintf(stderr, "relayfs: %s: a relayfs is already mounted there (unmount it first)\n",
                 cmd.mountpoint);
    fuse_opt_free_args(&args);
    free(cmd.mountpoint);
    return 1;
  }

  int rc = 1;
  {
    Daemon fs(opts);
    fuse_session* se = fuse_session_new(&args, &kOps, sizeof kOps, &fs);
    if (!se) {
      fuse_opt_free_args(&args);
      free(cmd.mountpoint);
      return 1;
    }
    if (fuse_set_signal_handlers(se) == 0) {
      if (fuse_session_mount(se, cmd.mountpoint) == 0) {
        // Which mount is this daemon's, noted before anyone could stack another on it: the
        // session ends when it is gone (src/fs/unmounted.cc).
        char real[PATH_MAX];
        const std::string dev =
            ::realpath(cmd.mountpoint, real)
                ? relayfs::fs::mounted_dev(real, relayfs::proto::kFsType)
                : std::string();
        // mount(8) waits for the parent to exit: it does once the mount is up.
        fuse_daemonize(cmd.foreground);
        if (int err = fs.start(se, dev); err != 0) {
          std::fprintf(stderr, "relayfs: cannot start: %s\n", std::strerror(-err));
        } else {
          fuse_loop_config* cfg = fuse_loop_cfg_create();
          fuse_loop_cfg_set_clone_fd(cfg, cmd.clone_fd);
          fuse_loop_cfg_set_max_threads(cfg, cmd.max_threads ? cmd.max_threads : 16);
          rc = fuse_session_loop_mt(se, cfg);
          fuse_loop_cfg_destroy(cfg);
          // libfuse reports the signal that ended the loop; being asked to stop is success.
          if (rc == SIGTERM || rc == SIGINT || rc == SIGHUP) rc = 0;
        }
        fs.stop();
        // A mount already gone is not unmounted again: libfuse would unmount the mount point
        // lazily, and with it whatever is mounted there now, such as the next relayfs. Closing
        // /dev/fuse (fuse_session_destroy) ends the detached one's connection.
        if (!fs.mount_gone()) fuse_session_unmount(se);
      }
      fuse_remove_signal_handlers(se);
    }
    fuse_session_destroy(se);
  }
  fuse_opt_free_args(&args);
  free(cmd.mountpoint);
  return rc ? 1 : 0;
}
