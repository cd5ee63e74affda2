#!/usr/bin/env python3
"""Module-graph check: fails if the modules of a crate import each other in a cycle.

For every crate of the workspace (a folder with Cargo.toml and src/), each source file is a
module (`src/a/b.rs` or `src/a/b/mod.rs` is `a::b`). An edge A -> B is a reference from a file of
A to `crate::B::…` (through `use`, grouped `use crate::{…}`, `super::…`, or a path in code).
Edges are compared among siblings: `repo::lock -> index` counts as `repo -> index` at the top
level and is ignored inside `repo/`; a child naming its parent or the parent's own items is
the normal shape of a Rust module and is not an edge. A cycle among the siblings of any folder
is an error. With `--print`, each crate's modules are listed by layer (a module only uses
modules of lower layers).

Usage: scripts/modgraph.py [--print] [CRATE_DIR…]   (default: every workspace member)
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def workspace_members():
    text = open(os.path.join(ROOT, "Cargo.toml")).read()
    m = re.search(r"members\s*=\s*\[(.*?)\]", text, re.S)
    return [s for s in re.findall(r'"([^"]+)"', m.group(1))] if m else []


def strip_comments_and_strings(src):
    src = re.sub(r"/\*.*?\*/", " ", src, flags=re.S)
    src = re.sub(r"//[^\n]*", " ", src)
    src = re.sub(r'r#*"(?:.|\n)*?"#*', '""', src)
    src = re.sub(r'"(?:\\.|[^"\\])*"', '""', src)
    return src


def module_of(src_dir, path):
    rel = os.path.relpath(path, src_dir)[:-3].split(os.sep)
    if rel[-1] == "mod":
        rel = rel[:-1]
    if rel in (["lib"], ["main"]):
        return ()
    return tuple(rel)


def expand_use(tree):
    """Expands `a::{b, c::{d, e}}` into paths."""
    tree = tree.strip()
    m = re.match(r"^(.*?)::\s*\{(.*)\}$", tree, re.S)
    if not m:
        return [tree]
    prefix, inner = m.group(1), m.group(2)
    parts, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    out = []
    for p in parts:
        p = p.strip()
        if p:
            out.extend(prefix + "::" + q for q in expand_use(p))
    return out


def references(mod, src, modules=frozenset()):
    """Absolute module paths (tuples of names) that `src` refers to."""
    paths = []
    for m in re.finditer(r"\buse\s+([^;]+);", src):
        paths.extend(expand_use(m.group(1)))
    body = re.sub(r"\buse\s+[^;]+;", " ", src)
    paths.extend(re.findall(r"\b(?:crate|super)(?:\s*::\s*\w+)+", body))
    out = []
    for p in paths:
        p = re.sub(r"\s+as\s+\w+$", "", p)
        names = [n.strip() for n in p.split("::") if n.strip()]
        if not names:
            continue
        if names[0] == "crate":
            out.append(tuple(names[1:]))
        elif names[0] in ("super", "self"):
            base = list(mod)
            while names and names[0] in ("super", "self"):
                if names[0] == "super":
                    base = base[:-1]
                names = names[1:]
            out.append(tuple(base + names))
        elif mod + (names[0],) in modules:
            out.append(mod + tuple(names))  # a child module, named relatively
    return out


def reexports(mod, src, modules):
    """Names that module `mod` re-exports (`pub use …`), mapped to the paths they name."""
    out = {}
    for m in re.finditer(r"\bpub(?:\([^)]*\))?\s+use\s+([^;]+);", src):
        for p in expand_use(m.group(1)):
            alias = re.search(r"\s+as\s+(\w+)$", p)
            p = re.sub(r"\s+as\s+\w+$", "", p)
            for ref in references(mod, "use " + p + ";", modules):
                name = alias.group(1) if alias else (ref[-1] if ref else None)
                if name and name not in ("self", "*"):
                    out[name] = ref if ref[-1] != "self" else ref[:-1]
    return out


def resolve(target, modules, exports):
    """The module `target` lands in: its longest module prefix, through re-exports."""
    for _ in range(8):
        n = len(target)
        while n > 0 and target[:n] not in modules:
            n -= 1
        mod = target[:n]
        rest = target[n:]
        via = exports.get(mod, {}).get(rest[0]) if rest else None
        if via is None or via[:1] == mod[:1] and len(via) <= len(mod):
            return mod
        target = via + rest[1:]
    return mod


def find_cycle(nodes, edges):
    color, stack = {}, []

    def visit(n):
        color[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if color.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in color:
                c = visit(m)
                if c:
                    return c
        stack.pop()
        color[n] = 2
        return None

    for n in sorted(nodes):
        if n not in color:
            c = visit(n)
            if c:
                return c
    return None


def cyclic_components(nodes, edges):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, on, stack, out = {}, {}, set(), [], []

    def visit(n):
        index[n] = low[n] = len(index)
        stack.append(n)
        on.add(n)
        for m in edges.get(n, ()):
            if m not in index:
                visit(m)
                low[n] = min(low[n], low[m])
            elif m in on:
                low[n] = min(low[n], index[m])
        if low[n] == index[n]:
            comp = []
            while True:
                m = stack.pop()
                on.discard(m)
                comp.append(m)
                if m == n:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for n in sorted(nodes):
        if n not in index:
            visit(n)
    return out


def layers(nodes, edges):
    level = {}

    def depth(n):
        if n not in level:
            level[n] = 0
            level[n] = 1 + max((depth(m) for m in edges.get(n, ())), default=-1)
        return level[n]

    for n in nodes:
        depth(n)
    out = {}
    for n, l in level.items():
        out.setdefault(l, []).append(n)
    return [sorted(out[l]) for l in sorted(out)]


def check_crate(crate_dir, show):
    src_dir = os.path.join(ROOT, crate_dir, "src")
    if not os.path.isdir(src_dir):
        return 0
    files = {}
    for dirpath, _, names in os.walk(src_dir):
        if "bin" in os.path.relpath(dirpath, src_dir).split(os.sep):
            continue
        for name in names:
            if name.endswith(".rs"):
                path = os.path.join(dirpath, name)
                files[module_of(src_dir, path)] = path
    modules = set(files)
    sources = {m: strip_comments_and_strings(open(p).read()) for m, p in files.items()}
    exports = {m: reexports(m, s, modules) for m, s in sources.items()}
    # edges[parent] = {child_a: {child_b}}: among the children of `parent`.
    edges = {}
    for mod, path in files.items():
        for ref in references(mod, sources[mod], modules):
            target = resolve(ref, modules, exports)
            # The deepest common ancestor decides which siblings the edge joins.
            common = 0
            while common < min(len(mod), len(target)) and mod[common] == target[common]:
                common += 1
            if common >= len(mod) or common >= len(target):
                continue  # a module and its own ancestor or descendant
            parent = mod[:common]
            edges.setdefault(parent, {}).setdefault(mod[common], set()).add(target[common])
    failed = 0
    for parent in sorted(edges):
        sib = edges[parent]
        nodes = set(sib) | {m for s in sib.values() for m in s}
        where = crate_dir + ("/src/" + "/".join(parent) if parent else "")
        comps = cyclic_components(nodes, sib)
        for comp in comps:
            sub = {n: sib.get(n, set()) & set(comp) for n in comp}
            cycle = find_cycle(comp, sub)
            print(f"modgraph: cycle in {where}: {' -> '.join(cycle)} (component: {' '.join(comp)})")
            failed = 1
        if comps:
            pass
        elif show:
            print(f"{where}:")
            for i, layer in enumerate(layers(nodes, sib)):
                print(f"  {i}: {' '.join(layer)}")
    return failed


def main(args):
    show = "--print" in args
    crates = [a for a in args if not a.startswith("--")] or workspace_members()
    failed = 0
    for c in crates:
        failed |= check_crate(c, show)
    if not failed:
        print(f"modgraph: no cycles in {len(crates)} crates")
    return failed


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
