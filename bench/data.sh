# Sourced by the benchmark scripts (after `cd` to the project root). Installs the Debian
# packages in `need` (the caller's peers) plus what every benchmark needs, builds the CLI unless
# XSTORE names a binary, and sets XSTORE (the binary), cache (~/.cache/xstore/bench) and DATA (default: Debian's
# linux-source-6.1 unpacked there once).
. scripts/setup.sh
[ -x /usr/bin/time ] || need+=(time)
if [ -z "${DATA:-}" ] && ! ls /usr/src/linux-source-6.1.tar.* >/dev/null 2>&1; then need+=(linux-source-6.1); fi
if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; fi
# XSTORE=/path/to/xstore measures another build (A/B against an older binary).
if [ -z "${XSTORE:-}" ]; then
  cargo build --release --locked -p xstore-cli >&2
  XSTORE="$CARGO_TARGET_DIR/release/xstore"
fi
cache="$HOME/.cache/xstore/bench"
mkdir -p "$cache"
if [ -z "${DATA:-}" ]; then
  DATA="$cache/linux-source-6.1"
  if [ ! -d "$DATA" ]; then
    echo "unpacking linux-source-6.1 ..." >&2
    tar -C "$cache" -xf /usr/src/linux-source-6.1.tar.*
  fi
fi
