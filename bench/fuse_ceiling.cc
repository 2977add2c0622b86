// fuse_ceiling: the zero-work FUSE file e2e_bench measures relayfs against.
//
// A libfuse3 low-level file system with one regular file, "zero", of SIZE bytes. Every read is
// answered at once from one static 1 MiB buffer, with the same open reply and attributes a relay
// file gets (direct_io, nonseekable, st_blksize 1 MiB so cat reads in 1 MiB requests, libfuse's
// largest) and the same worker configuration as the relayfs daemon (fuse_session_loop_mt, up to
// 16 threads). Reading it is the most any FUSE file can deliver on this machine.
//
// Usage: fuse_ceiling MOUNTPOINT SIZE_BYTES   (stays in the foreground; SIGTERM unmounts)
#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>
#include <sys/prctl.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <vector>

namespace {

constexpr size_t kMaxRead = 1 << 20;
constexpr fuse_ino_t kFile = 2;
constexpr const char* kName = "zero";
alignas(4096) char g_buf[kMaxRead];  // filled before mounting: every page is resident
uint64_t g_size = 0;

void fill(fuse_ino_t ino, struct stat* st) {
  std::memset(st, 0, sizeof *st);
  st->st_ino = ino;
  st->st_uid = getuid();
  st->st_gid = getgid();
  st->st_blksize = kMaxRead;  // cat reads max(128 KiB, st_blksize)
  if (ino == FUSE_ROOT_ID) {
    st->st_mode = S_IFDIR | 0755;
    st->st_nlink = 2;
  } else {
    st->st_mode = S_IFREG | 0444;
    st->st_nlink = 1;
    st->st_size = static_cast<off_t>(g_size);
    st->st_blocks = static_cast<blkcnt_t>((g_size + 511) / 512);
  }
}

void op_lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  if (parent != FUSE_ROOT_ID || std::strcmp(name, kName) != 0) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  fuse_entry_param e{};
  e.ino = kFile;
  fill(kFile, &e.attr);
  fuse_reply_entry(req, &e);
}

void op_getattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
  if (ino != FUSE_ROOT_ID && ino != kFile) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  struct stat st;
  fill(ino, &st);
  fuse_reply_attr(req, &st, 0);
}

void op_open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  if (ino != kFile) {
    fuse_reply_err(req, EISDIR);
    return;
  }
  // What relayfs answers for a relay file. fh counts the bytes this open file has served, so
  // the file ends after SIZE bytes whatever offsets a nonseekable file gets.
  fi->direct_io = 1;
  fi->nonseekable = 1;
  fi->fh = reinterpret_cast<uint64_t>(new uint64_t(0));
  fuse_reply_open(req, fi);
}

void op_read(fuse_req_t req, fuse_ino_t, size_t size, off_t, fuse_file_info* fi) {
  auto* served = reinterpret_cast<uint64_t*>(fi->fh);
  const size_t n = static_cast<size_t>(std::min<uint64_t>({size, kMaxRead, g_size - *served}));
  *served += n;
  fuse_reply_buf(req, g_buf, n);
}

void op_release(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  delete reinterpret_cast<uint64_t*>(fi->fh);
  fuse_reply_err(req, 0);
}

void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
  if (ino != FUSE_ROOT_ID) {
    fuse_reply_err(req, ENOTDIR);
    return;
  }
  std::vector<char> out(size);
  size_t used = 0;
  const char* names[] = {".", "..", kName};
  const fuse_ino_t inos[] = {FUSE_ROOT_ID, FUSE_ROOT_ID, kFile};
  for (off_t i = off; i < 3; ++i) {
    struct stat st;
    fill(inos[i], &st);
    const size_t len =
        fuse_add_direntry(req, out.data() + used, size - used, names[i], &st, i + 1);
    if (len > size - used) break;
    used += len;
  }
  fuse_reply_buf(req, out.data(), used);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s MOUNTPOINT SIZE_BYTES\n", argv[0]);
    return 2;
  }
  // The benchmark that starts us sets PR_SET_PDEATHSIG too; this covers a manual start from a
  // shell that goes away.
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  g_size = std::strtoull(argv[2], nullptr, 10);
  std::memset(g_buf, 'x', sizeof g_buf);

  fuse_lowlevel_ops ops{};
  ops.lookup = op_lookup;
  ops.getattr = op_getattr;
  ops.open = op_open;
  ops.read = op_read;
  ops.release = op_release;
  ops.readdir = op_readdir;

  std::string prog = argv[0];
  std::string o = "-o";
  std::string opts = "subtype=ceiling,fsname=ceiling";
  char* fargv[] = {prog.data(), o.data(), opts.data()};
  fuse_args args = FUSE_ARGS_INIT(3, fargv);
  fuse_session* se = fuse_session_new(&args, &ops, sizeof ops, nullptr);
  if (!se) return 1;
  int rc = 1;
  if (fuse_set_signal_handlers(se) == 0) {
    if (fuse_session_mount(se, argv[1]) == 0) {
      fuse_loop_config* cfg = fuse_loop_cfg_create();
      fuse_loop_cfg_set_clone_fd(cfg, 0);
      fuse_loop_cfg_set_max_threads(cfg, 16);  // as relayfs
      rc = fuse_session_loop_mt(se, cfg);
      fuse_loop_cfg_destroy(cfg);
      if (rc == SIGTERM || rc == SIGINT || rc == SIGHUP) rc = 0;
      fuse_session_unmount(se);
    }
    fuse_remove_signal_handlers(se);
  }
  fuse_session_destroy(se);
  return rc ? 1 : 0;
}
