// For cluster_test: starts a 1-node cluster, prints "DIR PID" and waits to be killed.
#include <unistd.h>

#include <cstdio>
#include <exception>

#include "nats/cluster.h"

int main() {
  try {
    relayfs::test::NatsCluster cluster(1);
    std::printf("%s %d\n", cluster.dir().c_str(), static_cast<int>(cluster.pid(0)));
    std::fflush(stdout);
    while (true) pause();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
