#!/usr/bin/env python3
"""Fails when a function of production code is longer than 150 lines (ARCHITECTURE.md,
invariant 17): a long function is a set of phases that want names.

Production code is every `.rs` file under a workspace member's `src/`, except the benches
(`bench/`), the test crate (`tests/`) and a file's `#[cfg(test)]` module. A function runs from
its `fn` line to the closing brace at the same indentation (rustfmt's layout).

Usage: scripts/fnlength.py [--limit N]
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FN = re.compile(r"^(\s*)(?:pub(?:\([^)]*\))?\s+)?(?:const\s+)?(?:async\s+)?(?:unsafe\s+)?fn\s+(\w+)")


def members():
    with open(os.path.join(ROOT, "Cargo.toml")) as f:
        text = f.read()
    m = re.search(r"members\s*=\s*\[(.*?)\]", text, re.S)
    return re.findall(r'"([^"]+)"', m.group(1)) if m else []


def long_functions(path, limit):
    with open(path) as f:
        lines = f.read().split("\n")
    for i, line in enumerate(lines):
        if line.startswith("#[cfg(test)]"):
            lines = lines[:i]
            break
    out = []
    for i, line in enumerate(lines):
        m = FN.match(line)
        if not m or line.rstrip().endswith(";"):
            continue
        end = next((j for j in range(i, len(lines)) if lines[j] == m.group(1) + "}"), i)
        if end - i + 1 > limit:
            out.append((end - i + 1, m.group(2)))
    return out


def main(args):
    limit = int(args[args.index("--limit") + 1]) if "--limit" in args else 150
    found = []
    for member in members():
        if member.split("/")[0] in ("bench", "tests"):
            continue
        for dirpath, _, names in os.walk(os.path.join(ROOT, member, "src")):
            for name in sorted(names):
                if name.endswith(".rs"):
                    path = os.path.join(dirpath, name)
                    for n, fn in long_functions(path, limit):
                        found.append(f"fnlength: {os.path.relpath(path, ROOT)}: fn {fn} is {n} lines (at most {limit})")
    for line in sorted(found):
        print(line)
    if not found:
        print(f"fnlength: no function of production code is over {limit} lines")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
