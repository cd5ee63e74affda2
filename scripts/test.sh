#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: unit, integration, crash, CLI and doc tests,
# all from one release build (so RocksDB is compiled once per machine).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
cargo nextest run --release --workspace --all-targets --locked --no-fail-fast "$@"
cargo test --release --workspace --doc --locked
