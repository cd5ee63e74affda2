# Shared build environment for .ci/run and the README's commands (sourced, not executed).
# RocksDB's C++ is the expensive part of every build: compile it at most once per machine by
# keeping sccache's cache and the cargo target directory outside the clone.
if command -v sccache >/dev/null 2>&1; then
  export RUSTC_WRAPPER="${RUSTC_WRAPPER:-sccache}"
  export SCCACHE_DIR="${SCCACHE_DIR:-$HOME/.cache/sccache}"
  export SCCACHE_CACHE_SIZE="${SCCACHE_CACHE_SIZE:-20G}"
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/xstore/target}"
export CARGO_INCREMENTAL=0
