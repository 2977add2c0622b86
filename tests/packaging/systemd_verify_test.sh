#!/usr/bin/env bash
# systemd-analyze verify finds nothing to say about relayfs@.service (as an instance for
# /mnt/relay, with ExecStart pointing at the daemon just built, which is sure to exist), nor
# about the other units given (relayfs-prometheus.service and .timer), verified together.
# Usage: systemd_verify_test.sh UNIT DAEMON [OTHER_UNIT...]. Skips (77) without systemd-analyze.
set -u
unit=$1 daemon=$2
shift 2
command -v systemd-analyze >/dev/null || { echo "SKIP: systemd-analyze is not installed"; exit 77; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
sed "s|^ExecStart=[^ ]*/relayfs |ExecStart=$daemon |" "$unit" > "$dir/relayfs@mnt-relay.service"
grep -q "^ExecStart=$daemon " "$dir/relayfs@mnt-relay.service" || { echo "FAIL: no ExecStart=.../relayfs in $unit"; exit 1; }
fail=0
verify() {
  local out rc
  out=$(cd "$dir" && systemd-analyze verify --man=no "$@" 2>&1)
  rc=$?
  # verify exits 0 after a mere warning (an unknown key, a bad value): any output is a failure.
  if [ $rc -ne 0 ] || [ -n "$out" ]; then
    echo "FAIL: systemd-analyze verify $* (status $rc):"
    echo "$out"
    fail=1
  else
    echo "ok - systemd-analyze verify $*"
  fi
}
verify ./relayfs@mnt-relay.service
others=()
for u in "$@"; do
  cp "$u" "$dir/" && others+=("./$(basename "$u")")
done
[ ${#others[@]} -eq 0 ] || verify "${others[@]}"
exit $fail
