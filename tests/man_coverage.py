#!/usr/bin/env python3
"""Every public function has a man page: for each function declared RELAY_API in the header,
man/<name>.3 exists, is installed to man3/<name>.3 (the build's install plan), and it, or the
page its ".so" line names, lists the function in its NAME section (so whatis and apropos find
it too).

usage: man_coverage.py HEADER MANDIR BUILDDIR
"""
import json
import os
import re
import sys


def functions(header):
    text = open(header, encoding="utf-8").read()
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)  # comments may mention RELAY_API
    text = re.sub(r"//[^\n]*", " ", text)
    text = re.sub(r"^\s*#.*$", " ", text, flags=re.M)  # the macro's own definition
    names = re.findall(r"\bRELAY_API\b[^;{(]*?\b(\w+)\s*\(", text)
    if not names:
        sys.exit(f"FAIL: no RELAY_API function found in {header}: the parser is broken")
    return names


def resolve(mandir, page, depth=0):
    """The page that man shows for `page`, following ".so manN/x.N" lines."""
    path = os.path.join(mandir, page)
    if not os.path.isfile(path):
        return None, f"{page} does not exist in {mandir}"
    lines = open(path, encoding="utf-8").read().splitlines()
    so = [l for l in lines if l.startswith(".so ")]
    if so:
        if depth > 4:
            return None, f"{page}: .so loop"
        return resolve(mandir, os.path.basename(so[0].split()[1]), depth + 1)
    return path, None


def name_section(path):
    text = open(path, encoding="utf-8").read()
    m = re.search(r"^\.SH NAME\n(.*?)^\.SH ", text, flags=re.S | re.M)
    if not m:
        return ""
    # "a, b \- what": the names are before the dash; groff's "\_" and "\-" do not occur there.
    return m.group(1).split("\\-")[0]


def main():
    header, mandir, builddir = sys.argv[1:4]
    installed_json = os.path.join(builddir, "meson-info", "intro-installed.json")
    installed = set(json.load(open(installed_json, encoding="utf-8")).values())
    installed_man3 = {os.path.basename(p) for p in installed
                      if os.path.basename(os.path.dirname(p)) == "man3"}
    fail = 0
    for fn in functions(header):
        page = fn + ".3"
        problems = []
        target, err = resolve(mandir, page)
        if err:
            problems.append(err)
        elif fn not in re.split(r"[\s,]+", name_section(target)):
            problems.append(f"the NAME section of {os.path.basename(target)} does not list {fn}")
        if page not in installed_man3:
            problems.append(f"{page} is not installed to man3 (man/meson.build install_man)")
        if problems:
            fail = 1
            print(f"FAIL {fn}: " + "; ".join(problems))
        else:
            shown = os.path.basename(target)
            print(f"ok - {fn}: {page}" + ("" if shown == page else f" -> {shown}"))
    sys.exit(fail)


main()
