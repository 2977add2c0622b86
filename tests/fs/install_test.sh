#!/usr/bin/env bash
# After `meson install`: mount(8) finds relayfs by its type, an fstab line works, and a program
# builds against the installed library with pkg-config and writes to the mount.
# Skips (77) when relayfs is not installed where mount.fuse3's shell looks.
set -u
fail=0
check() { if "$@"; then echo "ok - $*"; else echo "FAIL - $*"; fail=1; fi; }

installed=""
for d in /usr/local/bin /usr/bin /usr/sbin /sbin /bin; do
  [ -x "$d/relayfs" ] && installed="$d/relayfs" && break
done
if [ -z "$installed" ] || [ ! -e /dev/fuse ]; then
  echo "SKIP: relayfs is not installed (run meson install) or /dev/fuse is missing"
  exit 77
fi

dir=$(mktemp -d /tmp/relayfs-install-XXXXXX)
tab=$(mktemp /tmp/relayfs-fstab-XXXXXX)
work=$(mktemp -d /tmp/relayfs-prog-XXXXXX)
cleanup() {
  umount -l "$dir" 2>/dev/null
  fusermount3 -u -z "$dir" 2>/dev/null
  rm -rf "$dir" "$tab" "$work"
}
trap cleanup EXIT

mounted() { grep -q " $dir fuse.relayfs " /proc/mounts; }

# mount -t fuse.relayfs: mount.fuse3 runs "sh -c 'relayfs none DIR -o ...'" with PATH dropped.
check mount -t fuse.relayfs none "$dir"
check mounted
check umount "$dir"
check test ! -n "$(grep " $dir " /proc/mounts)"

# An fstab line, as the README gives it.
echo "none $dir fuse.relayfs nofail,allow_other 0 0" > "$tab"
check mount -T "$tab" "$dir"
check mounted
check grep -q " $dir fuse.relayfs .*allow_other" /proc/mounts

# A program built with pkg-config against the installed library, writing to the mount.
export PKG_CONFIG_PATH=/usr/local/lib/x86_64-linux-gnu/pkgconfig:/usr/local/lib/pkgconfig:${PKG_CONFIG_PATH:-}
cat > "$work/p.c" <<'C'
#include <relayfs/relay.h>
#include <stdio.h>
#include <string.h>
int main(int argc, char **argv) {
  struct rchan *c = relay_open("hello", argv[1], 4096, 4, NULL, NULL);
  if (!c) { perror("relay_open"); return 1; }
  const char msg[] = "hello from pkg-config\n";
  if (relay_write(c, msg, strlen(msg)) != 0) return 1;
  return relay_close(c) == 0 ? 0 : 1;
}
C
check sh -c "cc -o '$work/p' '$work/p.c' \$(pkg-config --cflags --libs relayfs)"
check env LD_LIBRARY_PATH=/usr/local/lib/x86_64-linux-gnu:/usr/local/lib "$work/p" "$dir"
check sh -c "cat '$dir'/hello* | grep -q 'hello from pkg-config'"
check umount "$dir"

# A man page for every command and the overview, where man(1) finds them.
if command -v man >/dev/null; then
  for page in relayfs.8 relayctl.1 relayfs-demo.1 relayfs-mmap-reader.1 relay.7 relay_open.3; do
    check sh -c "man -w ${page##*.} ${page%.*} >/dev/null"
  done
fi

# The installed examples build with their Makefile (pkg-config) and run against a mount.
examples=""
for d in /usr/local/share/doc/relayfs/examples /usr/share/doc/relayfs/examples; do
  [ -d "$d" ] && examples=$d && break
done
check test -n "$examples"
if [ -n "$examples" ]; then
  cp -r "$examples" "$work/examples"
  check make -s -C "$work/examples"
  for prog in percpu_producer reserve_commit poll_consumer flight_recorder demo mmap_reader; do
    check test -x "$work/examples/$prog"
  done
  check mount -t fuse.relayfs none "$dir" -o blocking
  export LD_LIBRARY_PATH=/usr/local/lib/x86_64-linux-gnu:/usr/local/lib
  check sh -c "'$work/examples/reserve_commit' '$dir' ex 100 & sleep 0.2; cat '$dir/ex0' | grep -c '^event' | grep -qx 100; r=\$?; wait; exit \$r"
  check umount "$dir"

  # The systemd mount unit example: the mount it describes works (Where moved to our dir).
  unit="$examples/relayfs.mount.example"
  check test -f "$unit"
  what=$(sed -n 's/^What=//p' "$unit"); type=$(sed -n 's/^Type=//p' "$unit")
  options=$(sed -n 's/^Options=//p' "$unit"); where=$(sed -n 's/^Where=//p' "$unit")
  check test "$where" = /mnt/relay
  if command -v systemd-escape >/dev/null; then
    check test "$(systemd-escape -p --suffix=mount "$where")" = mnt-relay.mount
  fi
  check mount -t "$type" "$what" "$dir" -o "$options"
  check grep -q " $dir fuse.relayfs .*allow_other" /proc/mounts
  check umount "$dir"
fi

echo "$([ $fail -eq 0 ] && echo PASS || echo FAIL)"
exit $fail
