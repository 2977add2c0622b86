#!/usr/bin/env python3
"""relayctl ship's throughput (issue 16), against baselines measured in the same run.

  bench/ship_bench.py --build BUILD [--rounds N] [--mib N] [--replicas 1,3] [--records 64,4096]
                      [--subbufs N] [--window N]

For each replica count (a nats-server of its own for 1, a 3-node cluster on loopback for 3) and
each record size, every round measures, one after the other on the same machine:
  ceiling   bench/nats_publish: the same bytes, in messages of one sub-buffer (256 KiB of whole
            records), each with a Nats-Msg-Id as ship's have, js_PublishMsgAsync, window 256:
            what the engine takes on this machine;
  ship      bench/record_writer (RELAY_BLOCKING: nothing lost) fills a global channel while
            relayctl ship carries it to the stream; timed from the producer's start to ship's
            exit, after the last acknowledgement. The stream is made first (nats_publish
            --create-only), since the ceiling's timing leaves the stream's creation out too;
  dropping  the same with a producer that never waits, paced at the speed ship just reached:
            what ship delivered per second, and the share of records the producer lost
            (counted in lost_full) at that speed;
  cat       `cat FILE > file` of the same channel, blocking producer, to a file in /tmp.
It prints the medians and ship/ceiling. MB = 10^6 bytes. Every server, mount and process it
starts is stopped at the end, also on failure."""
import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

SUBBUF = 256 * 1024
N_SUBBUFS = 64  # --subbufs
WINDOW = 64     # --window: ship's messages in flight per buffer


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Cluster:
    """nats-server nodes on loopback, each with its own store; killed by pid at the end."""

    def __init__(self, nodes, top):
        self.procs = []
        self.dir = tempfile.mkdtemp(prefix="ship-bench-nats-", dir=top)
        ports = [(free_port(), free_port(), free_port()) for _ in range(nodes)]
        for i, (client, route, http) in enumerate(ports):
            conf = [f"server_name: n{i}", f"listen: 127.0.0.1:{client}",
                    f"http: 127.0.0.1:{http}", "max_payload: 8MB",
                    f'jetstream {{ store_dir: "{self.dir}/n{i}" }}']
            if nodes > 1:
                routes = ",".join(f"nats://127.0.0.1:{p[1]}" for j, p in enumerate(ports) if j != i)
                conf.append(f"cluster {{ name: bench, listen: 127.0.0.1:{route}, "
                            f"routes: [{routes}] }}")
            path = f"{self.dir}/n{i}.conf"
            with open(path, "w") as f:
                f.write("\n".join(conf) + "\n")
            log = open(f"{self.dir}/n{i}.log", "w")
            self.procs.append(subprocess.Popen(["nats-server", "-c", path], stdout=log,
                                               stderr=subprocess.STDOUT))
        self.urls = ",".join(f"nats://127.0.0.1:{p[0]}" for p in ports)
        self.http = [p[2] for p in ports]
        self.client = ports[0][0]
        deadline = time.time() + 60
        while not self.ready():
            if time.time() > deadline:
                raise RuntimeError("nats-server did not become ready: see " + self.dir)
            time.sleep(0.2)

    def ready(self):
        for port in self.http:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/jsz", timeout=2) as r:
                    info = json.load(r)
            except OSError:
                return False
            if len(self.http) > 1 and not info.get("meta_cluster", {}).get("leader"):
                return False
        return True

    def delete_stream(self, name):
        """$JS.API.STREAM.DELETE over the plain NATS protocol: the next run starts empty."""
        with socket.create_connection(("127.0.0.1", self.client), timeout=10) as s:
            s.recv(4096)  # INFO
            s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB _INBOX.bench 1\r\n'
                      + f"PUB $JS.API.STREAM.DELETE.{name} _INBOX.bench 0\r\n\r\nPING\r\n"
                      .encode())
            got = b""
            while b"MSG _INBOX.bench" not in got:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk

    def stop(self):
        for p in self.procs:
            p.kill()
            p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Mount:
    def __init__(self, daemon, top):
        self.dir = tempfile.mkdtemp(prefix="ship-bench-mnt-", dir=top)
        # -o blocking: cat waits for data instead of taking an empty read for end of file.
        self.proc = subprocess.Popen([daemon, "none", self.dir, "-f", "-o", "blocking"],
                                     stdout=subprocess.DEVNULL)
        deadline = time.time() + 10
        while f" {self.dir} " not in open("/proc/mounts").read():
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError("relayfs did not mount")
            time.sleep(0.01)

    def stop(self):
        subprocess.run(["fusermount3", "-u", "-z", self.dir], stderr=subprocess.DEVNULL)
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.rmdir(self.dir)


def wait_file(path, timeout=10):
    deadline = time.time() + timeout
    while not os.path.exists(path):
        if time.time() > deadline:
            raise RuntimeError(path + " did not appear")
        time.sleep(0.001)


def writer(build, mount, base, rec, total, blocking, rate=0):
    cmd = [f"{build}/bench/record_writer", mount, base, str(rec), str(total), str(SUBBUF),
           str(N_SUBBUFS)] + (["--blocking"] if blocking else []) + \
        (["--rate", f"{rate:.1f}"] if rate else [])
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)


def writer_result(proc):
    out, _ = proc.communicate(timeout=900)
    if proc.returncode != 0:
        raise RuntimeError("record_writer failed")
    words = out.split()
    return int(words[1]), int(words[3])  # records, dropped


def ship(build, cluster, mount, base, stream, replicas, rec, total, blocking, rate=0):
    # The stream exists before the clock starts, as the ceiling's does before its own.
    subprocess.run([f"{build}/bench/nats_publish", cluster.urls, stream, stream.lower() + ".x",
                    str(rec), str(SUBBUF), str(total), "--replicas", str(replicas),
                    "--create-only"], check=True, timeout=120)
    t0 = time.time()
    w = writer(build, mount, base, rec, total, blocking, rate)
    wait_file(f"{mount}/{base}0")
    s = subprocess.run([f"{build}/src/relayctl/relayctl", "ship", "-q", "--window", str(WINDOW), "--stream", stream,
                        "--subject", stream.lower(), "--replicas", str(replicas),
                        f"{mount}/{base}", cluster.urls], capture_output=True, text=True,
                       timeout=900)
    seconds = time.time() - t0
    records, dropped = writer_result(w)
    if s.returncode != 0:
        raise RuntimeError("relayctl ship failed: " + s.stderr)
    return (records - dropped) * rec / seconds / 1e6, dropped / records


def ceiling(build, cluster, stream, replicas, rec, total):
    out = subprocess.run([f"{build}/bench/nats_publish", cluster.urls, stream,
                          stream.lower() + ".x", str(rec), str(SUBBUF), str(total),
                          "--replicas", str(replicas), "--msg-id"],
                         capture_output=True, text=True, timeout=900, check=True).stdout
    return float(out.split()[-2])  # "...: X MB/s"


def cat(build, mount, base, rec, total, top):
    t0 = time.time()
    w = writer(build, mount, base, rec, total, True)
    wait_file(f"{mount}/{base}0")
    out = os.path.join(top, f"ship-bench-cat-{os.getpid()}")
    with open(out, "wb") as f:
        subprocess.run(["cat", f"{mount}/{base}0"], stdout=f, check=True, timeout=900)
    seconds = time.time() - t0
    writer_result(w)
    size = os.path.getsize(out)
    os.unlink(out)
    return size / seconds / 1e6


def main():
    global N_SUBBUFS, WINDOW
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mib", type=int, default=256, help="bytes per run, in MiB")
    ap.add_argument("--replicas", default="1,3")
    ap.add_argument("--records", default="64,4096")
    ap.add_argument("--tmp", default="/tmp")
    ap.add_argument("--subbufs", type=int, default=N_SUBBUFS,
                    help="sub-buffers of 256 KiB in the shipped channel's buffer")
    ap.add_argument("--window", type=int, default=WINDOW, help="relayctl ship --window")
    a = ap.parse_args()
    N_SUBBUFS, WINDOW = a.subbufs, a.window
    if shutil.which("nats-server") is None:
        print("ship_bench: skipped: nats-server is not installed (scripts/deps installs it)")
        return 0
    total = a.mib << 20
    print(f"ship_bench: {a.mib} MiB per run, sub-buffers {SUBBUF // 1024} KiB x {N_SUBBUFS}, "
          f"{a.rounds} rounds; MB/s (10^6 bytes), medians")
    rows = []
    mount = Mount(f"{a.build}/src/fs/relayfs", a.tmp)
    try:
        for replicas in [int(r) for r in a.replicas.split(",")]:
            cluster = Cluster(1 if replicas == 1 else 3, a.tmp)
            try:
                for rec in [int(r) for r in a.records.split(",")]:
                    got = {"ceiling": [], "ship": [], "drop": [], "loss": [], "cat": []}
                    for r in range(a.rounds):
                        tag = f"R{replicas}S{rec}N{r}"
                        got["ceiling"].append(ceiling(a.build, cluster, "C" + tag, replicas, rec,
                                                      total))
                        cluster.delete_stream("C" + tag)
                        got["ship"].append(ship(a.build, cluster, mount.dir, "s" + tag.lower(),
                                                "S" + tag, replicas, rec, total, True)[0])
                        cluster.delete_stream("S" + tag)
                        # A producer that never waits, writing at the speed ship just reached.
                        rate, loss = ship(a.build, cluster, mount.dir, "d" + tag.lower(),
                                          "D" + tag, replicas, rec, total, False,
                                          got["ship"][-1])
                        got["drop"].append(rate)
                        got["loss"].append(loss)
                        cluster.delete_stream("D" + tag)
                        got["cat"].append(cat(a.build, mount.dir, "c" + tag.lower(), rec, total,
                                              a.tmp))
                    m = {k: statistics.median(v) for k, v in got.items()}
                    rows.append((replicas, rec, m))
                    print(f"  R{replicas} {rec:>4} B records: ceiling {m['ceiling']:.0f}, ship "
                          f"{m['ship']:.0f} ({m['ship'] / m['ceiling']:.0%} of the ceiling), "
                          f"cat {m['cat']:.0f}; dropping producer: ship {m['drop']:.0f}, "
                          f"{m['loss']:.1%} of records lost", flush=True)
            finally:
                cluster.stop()
    finally:
        mount.stop()
    print()
    print("| replicas | record | nats_publish (ceiling) | relayctl ship | ship / ceiling "
          "| cat FILE > file | dropping producer: ship | its loss |")
    print("|---|---|---|---|---|---|---|---|")
    for replicas, rec, m in rows:
        print(f"| {replicas} | {rec} B | {m['ceiling']:.0f} MB/s | {m['ship']:.0f} MB/s | "
              f"{m['ship'] / m['ceiling']:.2f} | {m['cat']:.0f} MB/s | {m['drop']:.0f} MB/s | "
              f"{m['loss']:.1%} |")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    sys.exit(main())
