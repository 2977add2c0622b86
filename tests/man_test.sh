#!/usr/bin/env bash
# Every man page renders without a single warning from man(1) and groff, and every command page
# (section 1) has the standard sections.
set -u
command -v man >/dev/null || { echo "SKIP: man is not installed"; exit 77; }
fail=0
for page in "$(dirname "$0")"/../man/*.[0-9]; do
  out=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -l "$page" 2>&1 >/dev/null)
  if [ -n "$out" ]; then echo "FAIL $page:"; echo "$out"; fail=1; else echo "ok - $page"; fi
done
for page in "$(dirname "$0")"/../man/*.1; do
  for section in NAME SYNOPSIS DESCRIPTION OPTIONS "EXIT STATUS" EXAMPLES "SEE ALSO"; do
    if ! grep -qx "\.SH \"\?$section\"\?" "$page"; then echo "FAIL $page: no $section section"; fail=1; fi
  done
done
exit $fail
