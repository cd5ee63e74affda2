#!/usr/bin/env bash
# Builds xstore, backs up a directory into a fresh local repository, backs it up again
# (incremental), restores it and compares the restore with the original.
# Usage: scripts/demo.sh [DIRECTORY]   (default: a generated sample tree plus /etc)
set -euo pipefail
cd "$(dirname "$0")/.."
# Only what building needs: the demo starts no test servers.
. scripts/build-env.sh
cargo build --release --locked -p xstore-cli
XSTORE="$CARGO_TARGET_DIR/release/xstore"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ $# -ge 1 ]; then
  src=$(realpath "$1")
else
  src="$work/sample"
  mkdir -p "$src/docs" "$src/bin"
  cp -a /etc/. "$src/docs/" 2>/dev/null || true
  head -c 20000000 /dev/urandom > "$src/bin/random.bin"
  cp "$src/bin/random.bin" "$src/bin/copy-of-random.bin"
fi
export XSTORE_REPO="$work/repo"
echo "== init";             "$XSTORE" init
echo "== backup $src";      "$XSTORE" backup --host demo "$src"
echo "== backup again";     "$XSTORE" backup --host demo "$src"
echo "== snapshots";        "$XSTORE" snapshots
echo "== restore";          "$XSTORE" restore demo@latest "$work/restored"
echo "== compare";          diff -r --no-dereference "$src" "$work/restored$src" && echo "restored tree is identical"
echo "== check";            "$XSTORE" check --read-data
echo "== stats";            "$XSTORE" stats
