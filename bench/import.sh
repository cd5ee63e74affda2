#!/usr/bin/env bash
# Import benchmark: a history made by Debian's rsnapshot (ROUNDS hourly runs with link_dest
# over DATA, a few hundred files changed between runs, daily rotations), then
# `xstore import rsnapshot`: import time, and the repository's size against `du -sh` of the
# rsnapshot root (which counts hard-linked files once).
#   ROUNDS=6 bench/import.sh            DATA=/some/tree bench/import.sh
set -euo pipefail
cd "$(dirname "$0")/.."
need=(rsnapshot rsync)
command -v rsnapshot >/dev/null 2>&1 && need=()
. bench/data.sh
rounds="${ROUNDS:-6}"
work=$(mktemp -d "${TMPDIR:-/tmp}/xstore-import-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
src="$work/client/data"
mkdir -p "$work/client" "$work/snapshots"
cp -a "$DATA" "$src"
cat > "$work/fake-ssh" <<'SH'
#!/bin/sh
while [ $# -gt 0 ]; do case "$1" in -l|-p|-o|-i) shift 2;; -*) shift;; *) break;; esac; done
shift; exec sh -c "$*"
SH
chmod 755 "$work/fake-ssh"
printf 'config_version\t1.2\nsnapshot_root\t%s/snapshots/\ncmd_rsync\t/usr/bin/rsync\ncmd_ssh\t%s/fake-ssh\nretain\thourly\t3\nretain\tdaily\t7\nlockfile\t%s/rsnapshot.pid\nlink_dest\t1\nbackup\troot@host1.example.net:%s/\thost1.example.net/\n' \
  "$work" "$work" "$work" "$src" > "$work/rsnapshot.conf"
files=$(find "$src" -type f | sort)
clock=1780000000
for r in $(seq 1 "$rounds"); do
  # A few hundred files change: appended to, as logs and edited sources do.
  echo "$files" | awk -v r="$r" 'NR % 300 == r % 300' | while read -r f; do echo "round $r" >> "$f"; done
  if [ "$r" -gt 3 ]; then rsnapshot -c "$work/rsnapshot.conf" daily; fi
  start=$(date +%s.%N)
  rsnapshot -c "$work/rsnapshot.conf" hourly
  printf 'rsnapshot hourly run %d: %.1f s\n' "$r" "$(echo "$(date +%s.%N) - $start" | bc)"
  touch -d "@$clock" "$work/snapshots/hourly.0"; clock=$((clock + 14400))
done
points=$(ls -d "$work"/snapshots/*.*/host1.example.net | wc -l)
"$XSTORE" --repo "$work/repo" init >/dev/null
/usr/bin/time -f '%e %M' -o "$work/time" "$XSTORE" --repo "$work/repo" -q import rsnapshot --config "$work/rsnapshot.conf"
read -r secs rss < "$work/time"
rs=$(du -sb "$work/snapshots" | cut -f1)
xs=$(du -sb "$work/repo" | cut -f1)
logical=$(du -sb --apparent-size "$src" | cut -f1)
printf '\n%-44s %s\n' "backup points imported" "$points (of $(du -sh "$DATA" | cut -f1) each)"
printf '%-44s %.1f s (%.0f MB/s of backup points, peak RSS %d MB)\n' "xstore import rsnapshot" "$secs" \
  "$(echo "$logical * $points / 1000000 / $secs" | bc -l)" "$((rss / 1024))"
printf '%-44s %.1f MiB\n' "rsnapshot root (du, hard links once)" "$(echo "$rs / 1048576" | bc -l)"
printf '%-44s %.1f MiB (%.2f x rsnapshot)\n' "xstore repository" "$(echo "$xs / 1048576" | bc -l)" "$(echo "$xs / $rs" | bc -l)"
