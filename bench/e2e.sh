#!/usr/bin/env bash
# End-to-end benchmark: back up a real tree with xstore, restic and borg side by side and print
# first-backup MB/s, unchanged re-backup seconds, restore MB/s, repository size and peak RSS,
# with ratios against restic. Data: Debian's linux-source-6.1 unpacked (about 1.3 GB, 78k files).
#
#   bench/e2e.sh                 # all three tools
#   TOOLS="xstore" bench/e2e.sh  # a subset
#   CHUNK_SWEEP=1 bench/e2e.sh   # xstore only, average chunk sizes 64 KiB, 256 KiB, 1 MiB
#   DATA=/some/dir bench/e2e.sh  # another tree
#   XSTORE=/old/xstore TOOLS=xstore bench/e2e.sh   # another build of xstore (A/B)
#
# Peers: restic (zstd "auto", its default), borg without encryption and zstd level 3.
# The page cache is warmed once before the runs, so every tool reads from memory; restores go
# to a fresh tmpfs per tool where mounting one is allowed (see bench_tool).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v restic >/dev/null || need+=(restic)
command -v borg >/dev/null || need+=(borgbackup)
. bench/data.sh
work="${WORK:-$(mktemp -d -p "$cache")}"
trap 'umount "$work"/restore-* 2>/dev/null || true; rm -rf "$work"' EXIT
bytes=$(du -sb "$DATA" | cut -f1)
files=$(find "$DATA" -type f | wc -l)
find "$DATA" -type f -print0 | xargs -0 cat > /dev/null   # warm the page cache
echo "data: $DATA  $((bytes / 1000000)) MB in $files files; $(nproc) cores" >&2

# run NAME CMD... → prints "seconds peak_rss_kib"
run() {
  local out="$work/time.$1"; shift
  /usr/bin/time -f "%e %M" -o "$out" "$@" > "$work/log" 2>&1 || { cat "$work/log" >&2; return 1; }
  cat "$out"
}

declare -A first rebackup restore size rss
bench_tool() {
  local tool=$1 repo="$work/repo-$1" target="$work/restore-$1" a b c
  rm -rf "$repo" "$target"; mkdir -p "$target"
  # Restore into a fresh tmpfs per tool: on a disk filesystem the cost of creating 78k inodes
  # depends on what was deleted in the last minutes (ext4 skips recently freed inodes), which
  # swung restore times 5x between runs. RESTORE_ON_DISK=1 restores to the work directory.
  local mounted=""
  if [ -z "${RESTORE_ON_DISK:-}" ] && mount -t tmpfs -o size=8g tmpfs "$target" 2>/dev/null; then mounted=1; fi
  case $tool in
    xstore*)
      # "xstore" uses the repository defaults; "xstore-N" an average chunk of N KiB.
      local avg=${tool#xstore}; avg=${avg#-}
      "$XSTORE" -q --repo "$repo" init ${avg:+--chunk-avg-kib "$avg"}
      a=$(run x1 "$XSTORE" -q --repo "$repo" backup --host bench "$DATA")
      b=$(run x2 "$XSTORE" -q --repo "$repo" backup --host bench "$DATA")
      c=$(run x3 "$XSTORE" -q --repo "$repo" restore bench@latest "$target") ;;
    restic)
      export RESTIC_PASSWORD=bench
      restic -q init --repo "$repo" >/dev/null
      a=$(run r1 restic -q --repo "$repo" backup "$DATA")
      b=$(run r2 restic -q --repo "$repo" backup "$DATA")
      c=$(run r3 restic -q --repo "$repo" restore latest --target "$target") ;;
    borg)
      export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
      borg init -e none "$repo"
      a=$(run b1 borg create --compression zstd,3 "$repo::one" "$DATA")
      b=$(run b2 borg create --compression zstd,3 "$repo::two" "$DATA")
      c=$(cd "$target" && run b3 borg extract "$repo::two") ;;
  esac
  first[$tool]=${a% *}; rebackup[$tool]=${b% *}; restore[$tool]=${c% *}
  rss[$tool]=$(printf '%s\n' "${a#* }" "${b#* }" "${c#* }" | sort -n | tail -1)
  size[$tool]=$(du -sb "$repo" | cut -f1)
  # Every tool must have restored the tree exactly (content); a fast wrong answer is no result.
  diff -rq --no-dereference "$DATA" "$target$DATA" >/dev/null || { echo "$tool: restore differs" >&2; exit 1; }
  if [ -n "$mounted" ]; then umount "$target"; fi
  # Restore trees stay until the end: ext4 allocates inodes slowly right after mass deletes
  # ("recently_deleted"), which would slow whichever tool runs next.
}

if [ -n "${CHUNK_SWEEP:-}" ]; then TOOLS="xstore-64 xstore-256 xstore-1024"; fi
TOOLS=${TOOLS:-"xstore restic borg"}
for t in $TOOLS; do echo "running $t ..." >&2; bench_tool "$t"; done

mbps() { awk -v b="$bytes" -v s="$1" 'BEGIN { printf "%.0f", b / 1e6 / (s > 0 ? s : 0.001) }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "-" }'; }
printf '\n%-12s %14s %16s %13s %12s %13s\n' tool "first MB/s" "unchanged s" "restore MB/s" "repo MB" "peak RSS MB"
for t in $TOOLS; do
  printf '%-12s %14s %16s %13s %12s %13s\n' "$t" "$(mbps "${first[$t]}")" "${rebackup[$t]}" \
    "$(mbps "${restore[$t]}")" "$((size[$t] / 1000000))" "$((rss[$t] / 1024))"
done
if [[ " $TOOLS " == *" restic "* ]]; then
  printf '\nratios against restic (higher is better for speeds, lower for time/size/RSS)\n'
  for t in $TOOLS; do
    [ "$t" = restic ] && continue
    printf '%-12s first %sx  unchanged %sx  restore %sx  size %sx  rss %sx\n' "$t" \
      "$(ratio "${first[restic]}" "${first[$t]}")" "$(ratio "${rebackup[$t]}" "${rebackup[restic]}")" \
      "$(ratio "${restore[restic]}" "${restore[$t]}")" "$(ratio "${size[$t]}" "${size[restic]}")" \
      "$(ratio "${rss[$t]}" "${rss[restic]}")"
  done
fi
exit 0
