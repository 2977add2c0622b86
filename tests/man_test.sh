#!/usr/bin/env bash
# Every man page renders without a single warning from man(1) and groff. A one-line alias page
# (".so man3/relay_open.3") is rendered as installed, from a tree of manN links to man/, so a
# missing target is a warning too.
# Every command page (section 1) has the standard sections.
# No example records into a predictable name under /tmp or /var/tmp.
set -u
command -v man >/dev/null || { echo "SKIP: man is not installed"; exit 77; }
mandir=$(cd "$(dirname "$0")/../man" && pwd)
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
for s in 1 3 5 7 8; do ln -s "$mandir" "$tree/man$s"; done
fail=0
for page in "$mandir"/*.[0-9]; do
  name=$(basename "$page")
  out=$(cd "$tree" && LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -l "man${name##*.}/$name" 2>&1 >/dev/null)
  if [ -n "$out" ]; then echo "FAIL $page:"; echo "$out"; fail=1; else echo "ok - $page"; fi
done
for page in "$mandir"/*.1; do
  for section in NAME SYNOPSIS DESCRIPTION OPTIONS "EXIT STATUS" EXAMPLES "SEE ALSO"; do
    if ! grep -qx "\.SH \"\?$section\"\?" "$page"; then echo "FAIL $page: no $section section"; fail=1; fi
  done
done
# No example records into a predictable name in a directory everyone may write: another user
# could make it first (relayctl(1), record; issue 13). Pages and the README alike.
if grep -nE 'relayctl record .*[[:space:]]/(var/)?tmp/' "$mandir"/*.[0-9] "$mandir/../README.md"; then
  echo "FAIL: an example records into a predictable name in /tmp or /var/tmp"
  fail=1
fi
exit $fail
