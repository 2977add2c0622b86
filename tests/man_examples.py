#!/usr/bin/env python3
"""The C snippets in the EXAMPLES sections of the section-3 man pages compile, warning-free,
against the installed-to-be header; those with a main() are also linked with librelayfs.

usage: man_examples.py MANDIR INCLUDEDIR LIBRELAYFS CC [CC ARGS...]
"""
import glob
import os
import re
import subprocess
import sys
import tempfile

# The groff escapes the pages use inside .EX/.EE, and the C they stand for.
ESCAPES = [("\\e", "\\"), ("\\-", "-"), ("\\(aq", "'"), ("\\(dq", '"'), ("\\&", "")]


def snippets(page):
    text = open(page, encoding="utf-8").read()
    m = re.search(r"^\.SH EXAMPLES\n(.*?)(?=^\.SH |\Z)", text, flags=re.S | re.M)
    if not m:
        return []
    out = []
    for block in re.findall(r"^\.EX\n(.*?)^\.EE\n", m.group(1), flags=re.S | re.M):
        for esc, c in ESCAPES:
            block = block.replace(esc, c)
        out.append(block)
    return out


def main():
    mandir, incdir, lib = sys.argv[1:4]
    cc = sys.argv[4:]
    flags = ["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-I", incdir]
    fail = 0
    count = 0
    with tempfile.TemporaryDirectory() as tmp:
        for page in sorted(glob.glob(os.path.join(mandir, "*.3"))):
            for i, code in enumerate(snippets(page)):
                count += 1
                name = f"{os.path.basename(page)}#{i + 1}"
                src = os.path.join(tmp, f"ex{count}.c")
                open(src, "w", encoding="utf-8").write(code)
                if re.search(r"^main\(|\bint\s+main\(", code, flags=re.M):
                    cmd = cc + flags + [src, lib, "-o", os.path.join(tmp, f"ex{count}")]
                else:
                    cmd = cc + flags + ["-c", src, "-o", os.path.join(tmp, f"ex{count}.o")]
                r = subprocess.run(cmd, capture_output=True, text=True)
                if r.returncode != 0:
                    fail = 1
                    print(f"FAIL {name}: {' '.join(cmd)}\n{r.stdout}{r.stderr}")
                else:
                    print(f"ok - {name}")
    if count == 0:
        print("FAIL: no EXAMPLES snippet found: the extractor is broken")
        fail = 1
    sys.exit(fail)


main()
