#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: unit, integration, crash, CLI and doc tests,
# all from one release build (so RocksDB is compiled once per machine).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
# The real-sshd pull tests run the small client binary as their forced command; test builds
# do not produce other packages' binaries, so it is built first (no RocksDB in it).
cargo build --release --locked -p xstore-agent
cargo nextest run --release --workspace --all-targets --locked --no-fail-fast "$@"
cargo test --release --workspace --doc --locked
