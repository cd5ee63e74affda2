#!/usr/bin/env python3
"""same-tree.py ORIGINAL RESTORED: exit 0 when RESTORED reproduces ORIGINAL: the same names,
kinds, content (BLAKE2 of every file), modes, owners, mtimes (ns; not a symlink's, which not
every tool restores), symlink targets and device numbers. Prints the first differences."""
import hashlib, os, stat, sys

def describe(root):
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            d = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
            if stat.S_ISLNK(st.st_mode):
                d += (os.readlink(p),)
            else:
                d += (st.st_mtime_ns,)
            if stat.S_ISREG(st.st_mode):
                h = hashlib.blake2b()
                with open(p, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
                d += (st.st_size, h.hexdigest())
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                d += (st.st_rdev,)
            out[os.path.relpath(p, root)] = d
    return out

a, b = describe(sys.argv[1]), describe(sys.argv[2])
bad = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
for k in bad[:10]:
    print(f"{k}: {a.get(k)} != {b.get(k)}", file=sys.stderr)
sys.exit(1 if bad else 0)
