#!/usr/bin/env python3
"""Module-graph check: fails if the modules of a crate depend on each other in a cycle, or
against the layer order ARCHITECTURE.md documents.

For every crate of the workspace (a folder with Cargo.toml and src/), each source file is a
module (`src/a/b.rs` or `src/a/b/mod.rs` is `a::b`). An edge A -> B is
- a reference from a file of A to `crate::B::…` (through `use`, grouped `use crate::{…}`,
  `super::…`, or a path in code), or
- a call of a method of `Repository` that B defines (`impl Repository` in B), which needs no
  `use` at all: `repo.m(…)`, `self.repo.m(…)`, `Repository::m(…)`, or `self.m(…)` inside an
  `impl Repository` block of A.
Edges are compared among siblings: `repo::lock -> index` counts as `repo -> index` at the top
level and is ignored inside `repo/`; a child naming its parent or the parent's own items is
the normal shape of a Rust module and is not an edge. A cycle among the siblings of any folder
is an error.

ARCHITECTURE.md documents each crate's top-level layers under its heading
"### `NAME` (`DIR/src`)", in a line `Layers, bottom first: `a`, `b` < `c` < …` (modules of
one group stand side by side). For a crate with such a line, every top-level module must be
listed, and every edge must run from a higher group to a lower one; and its root `lib.rs`
may only declare modules and re-export: an item defined there, or a `crate::Name` that
reaches an item through the root's re-exports, is an error (import the module that defines it).

With `--print`, each crate's modules are listed by layer (a module only uses modules of lower
layers).

Usage: scripts/modgraph.py [--print] [CRATE_DIR…]   (default: every workspace member)
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(path):
    with open(path) as f:
        return f.read()


def workspace_members():
    text = read(os.path.join(ROOT, "Cargo.toml"))
    m = re.search(r"members\s*=\s*\[(.*?)\]", text, re.S)
    return [s for s in re.findall(r'"([^"]+)"', m.group(1))] if m else []


def strip_comments_and_strings(src):
    """`src` without comments, and with every string, byte string, raw string and character
    literal replaced by an empty one, so that nothing inside them reads as code (a scanner:
    a pattern for raw strings took the `r"` at the end of `"…server"` for one)."""
    out, i, n = [], 0, len(src)

    def word_before(k):
        return k > 0 and (src[k - 1].isalnum() or src[k - 1] == "_")

    while i < n:
        if src.startswith("//", i):
            j = src.find("\n", i)
            i = n if j < 0 else j
            continue
        if src.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if src.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif src.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            out.append(" ")
            continue
        raw = re.match(r'b?r(#*)"', src[i:i + 260]) if not word_before(i) else None
        if raw:
            end = src.find('"' + raw.group(1), i + raw.end())
            i = n if end < 0 else end + 1 + len(raw.group(1))
            out.append('""')
            continue
        if src[i] == '"' or (src.startswith('b"', i) and not word_before(i)):
            i += 1 if src[i] == '"' else 2
            while i < n and src[i] != '"':
                i += 2 if src[i] == "\\" else 1
            i += 1
            out.append('""')
            continue
        if src[i] == "'" or (src.startswith("b'", i) and not word_before(i)):
            start = i + (1 if src[i] == "'" else 2)
            lit = re.match(r"(\\(?:u\{[0-9a-fA-F]+\}|x[0-9a-fA-F]{2}|.)|[^\\'])'", src[start:start + 16])
            if lit:
                i = start + lit.end()
                out.append("' '")
                continue
        out.append(src[i])
        i += 1
    return "".join(out)


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


def block_spans(src, header):
    """(start, end) of each block opened by a line matching `header` (brace-matched)."""
    spans = []
    for m in re.finditer(header, src, re.M):
        depth, i = 0, src.index("{", m.start())
        start = i
        while i < len(src):
            if src[i] == "{":
                depth += 1
            elif src[i] == "}":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        spans.append((start, i))
    return spans


REPO_IMPL = r"^impl Repository \{"


def repository_methods(sources):
    """Method name -> the module whose `impl Repository` block defines it."""
    out = {}
    for mod, src in sources.items():
        for a, b in block_spans(src, REPO_IMPL):
            for f in re.finditer(r"^    (?:pub(?:\([^)]*\))?\s+)?fn\s+(\w+)", src[a:b], re.M):
                out[f.group(1)] = mod
    return out


def method_call_targets(src, methods):
    """Modules whose `Repository` methods `src` calls (see the module documentation)."""
    text = re.sub(r"\s*\n\s*\.", ".", src)  # method chains split over lines
    spans = block_spans(text, REPO_IMPL)
    out = set()
    call = r"(?<![\w.])(self\.repo|repo|self|Repository::)\.?(\w+)\s*(?:::<[^>]*>)?\("
    for m in re.finditer(call, text):
        recv, name = m.group(1), m.group(2)
        if name not in methods:
            continue
        if recv == "self" and not any(a <= m.start() < b for a, b in spans):
            continue
        out.add(methods[name])
    return out


ROOT_ITEM = re.compile(
    r"^(?:pub(?:\([^)]*\))?\s+)?(?:fn|struct|enum|const|static|trait|type|impl|union)\b", re.M
)


def root_problems(crate_dir, files, sources, modules):
    """Items defined in the crate root, and references that reach an item through it."""
    out = []
    lib = sources.get(())
    if lib is not None:
        body = re.sub(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{.*", "", lib, flags=re.S)
        for m in ROOT_ITEM.finditer(body):
            line = body[m.start():body.index("\n", m.start())].strip()
            out.append(f"modgraph: {crate_dir}: the crate root defines `{line}`: define it in a module, re-export it from the root")
    for mod, src in sources.items():
        if mod == ():
            continue
        # `crate::` paths only: `super::` inside a file's inline test module names the file.
        crate_only = re.sub(r"\bsuper\s*::", "self::", src)
        for ref in references(mod, crate_only, modules):
            if ref and (ref[0],) not in modules and ref[:len(mod)] != mod and ref[0] not in ("self", "*"):
                out.append(f"modgraph: {os.path.relpath(files[mod], ROOT)}: `crate::{'::'.join(ref)}` goes through the crate root: import the module that defines it")
    return sorted(set(out))


def documented_layers(crate_dir):
    """The layer groups ARCHITECTURE.md gives for `crate_dir`, bottom first (None: none given)."""
    text = read(os.path.join(ROOT, "ARCHITECTURE.md"))
    m = re.search(r"^### `[^`]+` \(`" + re.escape(crate_dir) + r"/src`\)\n(.*?)(?=^#)", text, re.S | re.M)
    if not m:
        return None
    line = re.search(r"^Layers, bottom first: (.*)$", m.group(1), re.M)
    if not line:
        return None
    return [re.findall(r"`(\w+)`", g) for g in line.group(1).split("<")]


def layer_problems(crate_dir, top_edges, modules):
    groups = documented_layers(crate_dir)
    if groups is None:
        return []
    level = {n: i for i, g in enumerate(groups) for n in g}
    out = []
    for (name,) in sorted(m for m in modules if len(m) == 1):
        if name not in level:
            out.append(f"modgraph: {crate_dir}: module `{name}` is missing from the layers in ARCHITECTURE.md")
    for name in level:
        if (name,) not in modules:
            out.append(f"modgraph: {crate_dir}: ARCHITECTURE.md lists `{name}`, which is not a module")
    for a in sorted(top_edges):
        for b in sorted(top_edges[a]):
            if a in level and b in level and level[a] <= level[b]:
                how = "sideways" if level[a] == level[b] else "upward"
                out.append(f"modgraph: {crate_dir}: `{a}` uses `{b}`, {how} against the layers in ARCHITECTURE.md")
    return out


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
            if dirpath == src_dir and name == "main.rs" and "lib.rs" in names:
                continue  # the binary beside a library is a crate of its own, using the library
            if name.endswith(".rs"):
                path = os.path.join(dirpath, name)
                files[module_of(src_dir, path)] = path
    modules = set(files)
    sources = {m: strip_comments_and_strings(read(p)) for m, p in files.items()}
    exports = {m: reexports(m, s, modules) for m, s in sources.items()}
    # edges[parent] = {child_a: {child_b}}: among the children of `parent`.
    methods = repository_methods(sources)
    edges = {}
    for mod, path in files.items():
        targets = [resolve(ref, modules, exports) for ref in references(mod, sources[mod], modules)]
        targets += sorted(method_call_targets(sources[mod], methods))
        for target in targets:
            # The deepest common ancestor decides which siblings the edge joins.
            common = 0
            while common < min(len(mod), len(target)) and mod[common] == target[common]:
                common += 1
            if common >= len(mod) or common >= len(target):
                continue  # a module and its own ancestor or descendant
            parent = mod[:common]
            edges.setdefault(parent, {}).setdefault(mod[common], set()).add(target[common])
    failed = 0
    documented = documented_layers(crate_dir) is not None
    root = root_problems(crate_dir, files, sources, modules) if documented else []
    for line in root + layer_problems(crate_dir, edges.get((), {}), modules):
        print(line)
        failed = 1
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
        print(f"modgraph: {len(crates)} crates: no cycles, the documented layers hold")
    return failed


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
