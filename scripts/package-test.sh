#!/usr/bin/env bash
# Builds the Debian packages twice (they must be byte-identical), installs both on this
# machine with dpkg, checks their files, units and binaries, then purges them and checks that
# nothing of theirs is left. Refuses to run where an xstore package is installed already.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
for p in xstore xstore-agent; do
  if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "installed"; then
    echo "package $p is installed on this machine: not touching it"; exit 1
  fi
done
out="$CARGO_TARGET_DIR/debian"
rm -rf "$out"
scripts/package.sh
first=$(sha256sum "$out"/*.deb)
rm -rf "$out"
scripts/package.sh >/dev/null
second=$(sha256sum "$out"/*.deb)
if [ "$first" != "$second" ]; then
  echo "the packages differ between two builds of one commit:"; echo "$first"; echo "$second"; exit 1
fi
echo "reproducible: two builds are byte-identical"

server=$(ls "$out"/xstore_*.deb); agent=$(ls "$out"/xstore-agent_*.deb)
cleanup() { dpkg --purge xstore xstore-agent >/dev/null 2>&1 || true; }
trap cleanup EXIT
DEBIAN_FRONTEND=noninteractive dpkg -i "$server" "$agent" >/dev/null

fail() { echo "package test: $*"; exit 1; }
for f in /usr/bin/xstore /usr/bin/xstore-agent /etc/xstore/hosts.toml /etc/default/xstore \
         /usr/share/man/man1/xstore.1.gz /usr/share/man/man1/xstore-pull.1.gz \
         /usr/share/man/man1/xstore-agent.1.gz /usr/share/bash-completion/completions/xstore \
         /lib/systemd/system/xstore-pull.timer /lib/systemd/system/xstore-gc.service; do
  [ -e "$f" ] || fail "$f is missing"
done
dpkg-query -W -f='${Conffiles}\n' xstore | grep -q /etc/xstore/hosts.toml || fail "hosts.toml is not a conffile"
cmp -s examples/hosts.toml /etc/xstore/hosts.toml || fail "/etc/xstore/hosts.toml is not examples/hosts.toml"
/usr/bin/xstore --version | grep -q "^xstore " || fail "xstore --version"
/usr/bin/xstore-agent --version | grep -q "^xstore-agent " || fail "xstore-agent --version"
/usr/bin/xstore-agent setup --help | grep -q -- "--undo" || fail "xstore-agent setup --help"
# The agent package is the small binary: no RocksDB (no libstdc++ dependency) inside.
if dpkg-deb -f "$agent" Depends | grep -q libstdc; then fail "xstore-agent depends on libstdc++"; fi
zcat /usr/share/man/man1/xstore-import.1.gz | grep -q rsnapshot || fail "the import manual page"
# The units the package installs are the ones `xstore schedule --systemd` prints.
grep -q "^ExecStart=/usr/bin/xstore -q --lock-wait 3h pull --all --jobs 4$" /lib/systemd/system/xstore-pull.service \
  || fail "xstore-pull.service: $(cat /lib/systemd/system/xstore-pull.service)"
grep -q "^EnvironmentFile=/etc/default/xstore$" /lib/systemd/system/xstore-pull.service || fail "EnvironmentFile"
# The cron file for hosts without systemd: the same jobs, installed commented out.
dpkg-query -W -f='${Conffiles}\n' xstore | grep -q /etc/cron.d/xstore || fail "/etc/cron.d/xstore is not a conffile"
grep -q "^#0 \*/4 \* \* \* *root set -a && \. /etc/default/xstore && set +a && exec /usr/bin/xstore -q --lock-wait 3h pull --all --jobs 4$" /etc/cron.d/xstore \
  || fail "/etc/cron.d/xstore: $(cat /etc/cron.d/xstore)"
if grep -qE "^[0-9*]" /etc/cron.d/xstore; then fail "/etc/cron.d/xstore has an active job"; fi
# The NFS export's service: shipped disabled, reloads the inventory on SIGHUP.
grep -q '^ExecReload=/bin/kill -HUP \$MAINPID$' /lib/systemd/system/xstore-nfs.service || fail "xstore-nfs.service"
if systemctl is-enabled xstore-nfs.service >/dev/null 2>&1; then fail "xstore-nfs.service is enabled"; fi
# The web front's service: shipped disabled, serving HTTPS from /etc/default/xstore's settings.
grep -q '^ExecStart=/usr/bin/xstore serve-web --listen ${XSTORE_WEB_LISTEN} ' /lib/systemd/system/xstore-web.service || fail "xstore-web.service"
if systemctl is-enabled xstore-web.service >/dev/null 2>&1; then fail "xstore-web.service is enabled"; fi
SYSTEMD_LOG_LEVEL=warning systemd-analyze verify /lib/systemd/system/xstore-*.service \
  /lib/systemd/system/xstore-*.timer || fail "systemd-analyze verify rejected a unit"
systemd-analyze calendar "*-*-* 00/4:00:00" >/dev/null || fail "the pull timer's calendar"
installed=$(dpkg-query -W -f='${Installed-Size}' xstore-agent)
echo "installed: xstore $(dpkg-query -W -f='${Installed-Size}' xstore) KiB, xstore-agent $installed KiB"

dpkg --remove xstore xstore-agent >/dev/null
[ ! -e /usr/bin/xstore ] && [ ! -e /usr/bin/xstore-agent ] || fail "binaries left after remove"
[ -e /etc/xstore/hosts.toml ] || fail "remove deleted a conffile (only purge may)"
dpkg --purge xstore >/dev/null
dpkg --purge xstore-agent >/dev/null 2>&1 || true
for f in /etc/xstore/hosts.toml /etc/default/xstore /etc/cron.d/xstore /lib/systemd/system/xstore-pull.timer \
         /usr/share/man/man1/xstore.1.gz; do
  [ ! -e "$f" ] || fail "$f left after purge"
done
trap - EXIT
echo "package test passed: installed, checked, removed and purged"
