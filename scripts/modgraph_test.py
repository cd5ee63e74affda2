#!/usr/bin/env python3
"""Tests of scripts/modgraph.py on small made-up crates: a cycle hidden in `Repository`
method calls, an import against the documented layers, an item defined in the crate root, an
import through the root and code after a string ending in `r` are each found; a clean crate
passes."""
import contextlib
import io
import os
import shutil
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import modgraph  # noqa: E402


def crate(files, layers=None):
    """A temporary workspace root with one crate `c` made of `files` (path -> source)."""
    root = tempfile.mkdtemp()
    CREATED.append(root)
    for path, text in files.items():
        full = os.path.join(root, "c", "src", path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as f:
            f.write(text)
    arch = "# map\n\n### `c` (`c/src`)\n\n"
    if layers:
        arch += "Layers, bottom first: " + layers + "\n"
    arch += "\n## end\n"
    with open(os.path.join(root, "ARCHITECTURE.md"), "w") as f:
        f.write(arch)
    return root


def run(root):
    modgraph.ROOT = root
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        failed = modgraph.check_crate("c", False)
    return failed, out.getvalue()


CREATED = []

LIB = "mod repo;\nmod index;\nmod commands;\npub use repo::Repository;\n"


class ModgraphTest(unittest.TestCase):
    def tearDown(self):
        while CREATED:
            shutil.rmtree(CREATED.pop())

    def test_a_cycle_through_repository_methods_is_found(self):
        root = crate({
            "lib.rs": LIB,
            "repo.rs": "pub struct Repository;\nimpl Repository {\n    pub fn missing(&self) { self.damaged(); }\n}\n",
            "index.rs": "",
            "commands.rs": "use crate::repo::Repository;\nimpl Repository {\n    pub fn damaged(&self) {}\n}\n",
        })
        failed, out = run(root)
        self.assertEqual(failed, 1)
        self.assertIn("cycle in c: commands -> repo -> commands", out)

    def test_an_import_against_the_layers_is_found(self):
        root = crate({
            "lib.rs": LIB,
            "repo.rs": "pub struct Repository;\n",
            "index.rs": "use crate::repo::Repository;\n",
            "commands.rs": "use crate::repo::Repository;\n",
        }, "`index` < `repo` < `commands`")
        failed, out = run(root)
        self.assertEqual(failed, 1)
        self.assertIn("`index` uses `repo`, upward against the layers", out)

    def test_root_items_and_imports_through_the_root_are_found(self):
        root = crate({
            "lib.rs": LIB + "pub fn helper() {}\n",
            "repo.rs": "pub struct Repository;\n",
            "index.rs": "fn f() { crate::helper(); }\n",
            "commands.rs": "",
        }, "`index` < `repo` < `commands`")
        failed, out = run(root)
        self.assertEqual(failed, 1)
        self.assertIn("the crate root defines `pub fn helper() {}`", out)
        self.assertIn("`crate::helper` goes through the crate root", out)

    def test_code_after_a_string_ending_in_r_is_still_read(self):
        # A pattern for raw strings once took the `r"` that ends "...server" for one and
        # skipped the code after it, hiding this upward call.
        root = crate({
            "lib.rs": LIB,
            "repo.rs": "pub struct Repository;\npub fn now() {}\n",
            "index.rs": 'fn f() { let a = "another server"; crate::repo::now(); let b = "x"; }\n',
            "commands.rs": "",
        }, "`index` < `repo` < `commands`")
        failed, out = run(root)
        self.assertEqual(failed, 1)
        self.assertIn("`index` uses `repo`, upward against the layers", out)

    def test_a_crate_that_keeps_its_layers_passes(self):
        root = crate({
            "lib.rs": LIB,
            "repo.rs": "use crate::index::Index;\npub struct Repository { index: Index }\nimpl Repository {\n    pub fn missing(&self) {}\n}\n",
            "index.rs": "pub struct Index;\n",
            "commands.rs": "use crate::repo::Repository;\nfn f(repo: &Repository) { repo.missing(); }\n",
        }, "`index` < `repo` < `commands`")
        failed, out = run(root)
        self.assertEqual((failed, out), (0, ""))


if __name__ == "__main__":
    unittest.main()
