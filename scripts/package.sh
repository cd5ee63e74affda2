#!/usr/bin/env bash
# Builds the Debian packages `xstore` (server) and `xstore-agent` (client) into
# $CARGO_TARGET_DIR/debian/: release binaries without test hooks, manual pages, completions
# and systemd units generated from the command line, then cargo-deb (installed into the cache
# when missing). Reproducible: file times come from the last commit (SOURCE_DATE_EPOCH).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
tools="$HOME/.cache/xstore/tools"
if ! [ -x "$tools/bin/cargo-deb" ]; then
  echo "installing cargo-deb into $tools" >&2
  cargo install --locked --quiet cargo-deb --root "$tools"
fi
export PATH="$tools/bin:$PATH"
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"

cargo build --release --locked -p xstore-cli -p xstore-agent
rel="$CARGO_TARGET_DIR/release"
assets="$rel/deb-assets"
rm -rf "$assets"
mkdir -p "$assets/xstore/completions" "$assets/xstore-agent/man" "$assets/xstore-agent/completions"
"$rel/xstore" -q generate man --out-dir "$assets/xstore/man"
mv "$assets/xstore/man/xstore-agent.1" "$assets/xstore-agent/man/"
"$rel/xstore" -q schedule --systemd --xstore /usr/bin/xstore --env-file /etc/default/xstore \
  --output-dir "$assets/xstore/systemd"
# The cron file for hosts without systemd: the same jobs, each commented out (installed
# disabled, as the timers are).
mkdir -p "$assets/xstore/cron.d"
{
  echo "# Installed with every job commented out. On a host without systemd, remove the '#'"
  echo "# before each job line; with systemd, enable the xstore-*.timer units instead (not both)."
  "$rel/xstore" -q schedule --cron --xstore /usr/bin/xstore --env-file /etc/default/xstore \
    | sed -E 's/^([0-9*])/#\1/'
} > "$assets/xstore/cron.d/xstore"
"$rel/xstore" generate completions bash > "$assets/xstore/completions/xstore.bash"
"$rel/xstore" generate completions zsh > "$assets/xstore/completions/_xstore"
"$rel/xstore" generate completions fish > "$assets/xstore/completions/xstore.fish"
"$rel/xstore" generate completions bash --agent > "$assets/xstore-agent/completions/xstore-agent.bash"
# Debian's manual pages are gzipped (-n: no name or time inside, for reproducibility).
gzip -9n "$assets"/xstore/man/*.1 "$assets"/xstore-agent/man/*.1
# Generated files get the commit's time, so that the packages are byte-identical per commit.
find "$assets" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

out="$CARGO_TARGET_DIR/debian"
mkdir -p "$out"
for p in xstore-cli xstore-agent; do
  cargo deb --no-build --locked --strip -p "$p" --output "$out" >/dev/null
done
for deb in "$out"/xstore_*.deb "$out"/xstore-agent_*.deb; do
  installed=$(dpkg-deb -f "$deb" Installed-Size)
  printf '%-60s %8.1f MiB  installed %6.1f MiB\n' "$(basename "$deb")" \
    "$(echo "$(stat -c %s "$deb") / 1048576" | bc -l)" "$(echo "$installed / 1024" | bc -l)"
done
