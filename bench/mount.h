// The FUSE daemons a benchmark starts: each on a fresh temp dir, in the foreground, always
// unmounted and killed, on every exit (cleanup(), and on_signal() for SIGINT/SIGTERM).
#pragma once

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "proc.h"

namespace relayfs::bench {

// The daemons this run started, and their mount points: unmounted and killed on every exit.
struct Mount {
  std::string dir;
  pid_t pid = -1;
};
inline std::vector<Mount> g_mounts;

inline void cleanup() {
  for (auto& m : g_mounts) {
    if (m.pid > 0) {
      system(("fusermount3 -u -z " + m.dir + " 2>/dev/null").c_str());
      kill(m.pid, SIGTERM);
      for (int i = 0; i < 200; ++i) {
        if (waitpid(m.pid, nullptr, WNOHANG) == m.pid) {
          m.pid = -1;
          break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      if (m.pid > 0) {
        kill(m.pid, SIGKILL);
        waitpid(m.pid, nullptr, 0);
        m.pid = -1;
      }
    }
    rmdir(m.dir.c_str());
  }
  g_mounts.clear();
}

inline void on_signal(int) {
  cleanup();
  _exit(1);
}

// Starts argv (a FUSE daemon in the foreground) on a fresh temp dir, or on `at` (an existing
// directory: a remount), and returns at once; "@DIR" in argv is the mount point.
inline Mount spawn_daemon(std::vector<std::string> argv, const std::string& at = {}) {
  char tmpl[] = "/tmp/relayfs-e2e-XXXXXX";
  Mount m;
  m.dir = at.empty() ? mkdtemp(tmpl) : at;
  for (auto& a : argv)
    if (a == "@DIR") a = m.dir;
  m.pid = fork();
  if (m.pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    std::vector<char*> av;
    for (auto& a : argv) av.push_back(a.data());
    av.push_back(nullptr);
    execv(av[0], av.data());
    _exit(127);
  }
  g_mounts.push_back(m);
  return m;
}

// Starts argv as spawn_daemon does and waits for the mount.
inline Mount start_daemon(std::vector<std::string> argv, const std::string& type,
                          const std::string& at = {}) {
  const Mount m = spawn_daemon(argv, at);
  for (int i = 0; i < 500 && !mounted(m.dir, type); ++i) {
    if (waitpid(m.pid, nullptr, WNOHANG) == m.pid) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (!mounted(m.dir, type)) {
    fprintf(stderr, "%s did not mount on %s\n", argv[0].c_str(), m.dir.c_str());
    cleanup();
    exit(1);
  }
  return m;
}

// A daemon crash: SIGKILL, then its dead mount taken away lazily (as an administrator or a
// unit's ExecStartPre would); the mount point stays, for the next daemon.
inline void crash_daemon(pid_t pid) {
  for (auto& m : g_mounts) {
    if (m.pid != pid || pid <= 0) continue;
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    m.pid = -1;
    system(("fusermount3 -u -z " + m.dir + " 2>/dev/null").c_str());
  }
}

}  // namespace relayfs::bench
