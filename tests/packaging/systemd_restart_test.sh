#!/usr/bin/env bash
# relayfs@.service under a running systemd: it mounts, a SIGKILLed daemon is restarted and
# mounts again (over the dead mount it left), and stopping the unit unmounts.
# Usage: systemd_restart_test.sh UNIT DAEMON. The unit is installed for the test only, in
# /run/systemd/system, with ExecStart pointing at DAEMON, for a fresh directory in /tmp.
# Skips (77) unless systemd is PID 1 and the test runs as root, with /dev/fuse.
set -u
unit=$1 daemon=$2
if [ ! -d /run/systemd/system ] || ! command -v systemctl >/dev/null; then
  echo "SKIP: systemd is not available (not PID 1: no /run/systemd/system)"
  exit 77
fi
[ "$(id -u)" -eq 0 ] || { echo "SKIP: needs root (installs a unit)"; exit 77; }
[ -e /dev/fuse ] || { echo "SKIP: /dev/fuse is missing"; exit 77; }

fail=0
check() { if "$@"; then echo "ok - $*"; else echo "FAIL - $*"; fail=1; fi; }
dir=$(mktemp -d /tmp/relayfs-unit-XXXXXX)
name="relayfs@$(systemd-escape -p "$dir").service"
runit=/run/systemd/system/relayfs@.service
[ -e "$runit" ] && { echo "SKIP: $runit exists already (another run?)"; rmdir "$dir"; exit 77; }
cleanup() {
  systemctl stop "$name" 2>/dev/null
  systemctl reset-failed "$name" 2>/dev/null
  rm -f "$runit"
  systemctl daemon-reload
  fusermount3 -u -z "$dir" 2>/dev/null
  rmdir "$dir"
}
trap cleanup EXIT
sed "s|^ExecStart=[^ ]*/relayfs |ExecStart=$daemon |" "$unit" > "$runit"
systemctl daemon-reload

mounted() { findmnt -rn -t fuse.relayfs -M "$dir" >/dev/null; }
# Waits up to 10 s for "$@" to succeed.
within() { for _ in $(seq 100); do "$@" && return 0; sleep 0.1; done; "$@"; }
main_pid() { systemctl show -p MainPID --value "$name"; }
# Mounted, with a daemon that answers (a dead mount would fail stat with ENOTCONN).
live() { mounted && stat "$dir" >/dev/null 2>&1; }

check systemctl start "$name"
check within live
old=$(main_pid)
check test "$old" -gt 0
check kill -KILL "$old"
restarted() { p=$(main_pid); [ "$p" -gt 0 ] && [ "$p" != "$old" ] && live; }
check within restarted
check test "$(systemctl show -p NRestarts --value "$name")" -ge 1
# The new daemon serves: a directory made there is listed.
check mkdir "$dir/after-restart"
check test -d "$dir/after-restart"
check systemctl stop "$name"
check within eval '! mounted'
echo "$([ $fail -eq 0 ] && echo PASS || echo FAIL)"
exit $fail
