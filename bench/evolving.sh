#!/usr/bin/env bash
# Evolving system-tree benchmark (issue "restore ≥ 3× restic and a repository no larger than
# restic's"): one host's root over the seven rounds of bench/evolving-series.sh (package
# installs and purges, config and user edits, growing and rotated logs), backed up round by
# round into one repository per tool, all tools in the same run on the same cores. Prints:
#   - per round: the tree's size, each tool's backup seconds and repository size (du -sb);
#     for xstore the stored bytes per blob kind (data, tree, chunk list, snapshot record);
#   - first backup: REPEAT runs per tool into a fresh repository (median and each run);
#   - mean incremental backup (rounds 1…6);
#   - restore of the newest snapshot onto a fresh ext4 filesystem: REPEAT runs per tool,
#     alternating tools (median, each run, user and sys CPU), and `cp -a` of the same tree
#     from the page cache onto the same kind of filesystem (the filesystem's own cost);
#   - compaction of xstore's repository (compact --min-age 0s, gc --grace 0s): size after, time,
#     CPU seconds per GB recompressed, its peak RSS;
#   - peak RSS of any backup or restore.
# Ratios are against restic measured in this run.
#
#   bench/evolving.sh                         # TOOLS="xstore restic" REPEAT=3
#   TOOLS="xstore restic borg" bench/evolving.sh
#   TOOLS="xstore xstore-plain restic" bench/evolving.sh   # encrypted (the default) vs
#                                             # --no-encryption vs restic
#   XSTORE=/old/xstore bench/evolving.sh      # another build (A/B)
set -euo pipefail
cd "$(dirname "$0")/.."
tools=(${TOOLS:-xstore restic})
repeat=${REPEAT:-3}
need=(rsync)
for t in "${tools[@]}"; do
  case $t in
    restic) command -v restic >/dev/null || need+=(restic) ;;
    borg) command -v borg >/dev/null || need+=(borgbackup) ;;
    xstore|xstore-plain) ;;
    *) echo "unknown tool $t (xstore, xstore-plain, restic, borg)" >&2; exit 2 ;;
  esac
done
DATA=unused . bench/data.sh
series=$(bench/evolving-series.sh)
rounds=$(ls -d "$series"/round-* | wc -l)
work="${WORK:-$(mktemp -d -p "$cache")}"
target="$work/target"
image="$work/target.img"
mkdir -p "$target"
trap 'mountpoint -q "$target" && umount "$target"; rm -rf "$work"' EXIT
src="$work/host"
export RESTIC_PASSWORD=bench BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
# xstore's repositories are encrypted by default: their key files stay in the work directory.
export XSTORE_KEY_DIR="$work/keys"
echo "series: $series ($rounds rounds); tools: ${tools[*]}; $(nproc) cores; restic $(restic version 2>/dev/null | cut -d' ' -f2)$(command -v borg >/dev/null && echo "; $(borg --version)")" >&2

init() { # init TOOL REPO
  case $1 in
    xstore) "$XSTORE" -q --repo "$2" init && "$XSTORE" -q --repo "$2" tiers --set "hourly=$((rounds + 2))" >/dev/null ;;
    xstore-plain) "$XSTORE" -q --repo "$2" init --no-encryption && "$XSTORE" -q --repo "$2" tiers --set "hourly=$((rounds + 2))" >/dev/null ;;
    restic) restic -q -r "$2" init >/dev/null ;;
    borg) borg init -e none "$2" ;;
  esac
}
# backup_cmd TOOL REPO ROUND / restore_cmd TOOL REPO DEST: set cmd to the command line.
backup_cmd() {
  case $1 in
    xstore|xstore-plain) cmd=("$XSTORE" -q --repo "$2" backup --host web1 "$src") ;;
    restic) cmd=(restic -q -r "$2" backup "$src") ;;
    borg) cmd=(borg create "$2::round-$3" "$src") ;;
  esac
}
restore_cmd() {
  case $1 in
    # --trusted-specials: a whole system tree, devices and set-id bits included, as an
    # operator restores a host (the others restore them by default).
    xstore|xstore-plain) cmd=("$XSTORE" -q --repo "$2" restore --trusted-specials web1@latest "$3") ;;
    restic) cmd=(restic -q -r "$2" restore latest --target "$3") ;;
    borg) mkdir -p "$3"; cmd=(bash -c 'cd "$1" && borg extract "$2"' _ "$3" "$2::round-$((rounds - 1))") ;;
    # The floor: the source tree (in the page cache after its backups) copied to where the
    # tools restore it.
    cp-a) mkdir -p "$3$(dirname "$src")"; cmd=(cp -a "$src" "$3$src") ;;
  esac
}
# timed CMD…: runs it under /usr/bin/time; sets t_wall t_user t_sys t_rss (KiB).
# Every run starts with no dirty pages: on ext4 (data=ordered) an fsync commits the journal
# and so writes back what the previous tool left dirty, which would charge its writes to
# whichever tool syncs next (measured: xstore's first backup 0.51 s after a sync, 1.1-1.2 s
# right after restic's and borg's).
timed() {
  sync
  /usr/bin/time -f '%e %U %S %M' -o "$work/time" "$@" >/dev/null
  read -r t_wall t_user t_sys t_rss < "$work/time"
  [ "$t_rss" -gt "${peak[$tool]:-0}" ] && peak[$tool]=$t_rss
  return 0
}
median() { printf '%s\n' "$@" | sort -n | sed -n "$((($# + 1) / 2))p"; }
mb() { python3 -c "print(f'{$1 / 1048576:.1f}')"; }
declare -A peak first incr size

sync_round() { rsync -a --delete --exclude=/proc/ "$series/round-$1/" "$src/"; }
# Every backup reads a source that is in the page cache: borg drops the files it read from the
# cache (posix_fadvise DONTNEED), which made the next tool's backup read from disk (measured:
# xstore's first backup 0.55 s warm, 1.0 s right after a borg create).
warm_src() { find "$src" -type f -print0 | xargs -0 -r cat > /dev/null; }

echo "== first backup of round-0, $repeat runs per tool into a fresh repository"
sync_round 0
for run in $(seq 1 "$repeat"); do
  for tool in "${tools[@]}"; do
    r="$work/first-$tool"; rm -rf "$r"; init "$tool" "$r"; warm_src
    backup_cmd "$tool" "$r" 0; timed "${cmd[@]}"
    first[$tool]="${first[$tool]:-} $t_wall"
  done
done
for tool in "${tools[@]}"; do
  printf '%-8s first backup %6s s   (runs:%s)\n' "$tool" "$(median ${first[$tool]})" "${first[$tool]}"
  rm -rf "$work/first-$tool"
done

echo "== the series, round by round (backup seconds, repository MiB)"
for tool in "${tools[@]}"; do init "$tool" "$work/repo-$tool"; done
printf '%-6s %9s %8s' round "tree MiB" entries
for tool in "${tools[@]}"; do printf ' %9s %10s' "$tool s" "$tool MiB"; done
[[ " ${tools[*]} " == *" xstore "* ]] && printf '   xstore data/tree/snapshot MiB'
echo
for r in $(seq 0 $((rounds - 1))); do
  sync_round "$r"
  printf '%-6s %9s %8s' "$r" "$(mb "$(du -sb "$src" | cut -f1)")" "$(find "$src" | wc -l)"
  for tool in "${tools[@]}"; do
    warm_src; backup_cmd "$tool" "$work/repo-$tool" "$r"; timed "${cmd[@]}"
    [ "$r" -gt 0 ] && incr[$tool]="${incr[$tool]:-} $t_wall"
    size[$tool]=$(du -sb "$work/repo-$tool" | cut -f1)
    printf ' %9s %10s' "$t_wall" "$(mb "${size[$tool]}")"
  done
  if [[ " ${tools[*]} " == *" xstore "* ]]; then
    "$XSTORE" --repo "$work/repo-xstore" --json stats | python3 -c '
import json, sys
k = {x["kind"]: x["stored_bytes"] for x in json.load(sys.stdin).get("by_kind", [])}
if not k: print("   (this build has no per-kind stats)", end=""); sys.exit()
mib = lambda n: "%.1f" % (k.get(n, 0) / 1048576)
extra = " +%s chunk lists" % mib("chunklist") if k.get("chunklist") else ""
print("   " + "/".join(mib(n) for n in ("data", "tree", "snapshot")) + extra, end="")'
  fi
  echo
done
for tool in "${tools[@]}"; do
  printf '%-8s mean incremental %6s s   (runs:%s)\n' "$tool" \
    "$(python3 -c "import sys; v=[float(x) for x in sys.argv[1:]]; print(f'{sum(v)/len(v):.2f}')" ${incr[$tool]})" "${incr[$tool]}"
done

# Compaction of what the series stored (xstore compact: every pack, whatever its age, then a
# gc that deletes the old packs at once): the repository a server keeps once its daily compact
# job has caught up. Restores below read the compacted repository.
declare -A compacted
for tool in "${tools[@]}"; do
  case $tool in xstore|xstore-plain) ;; *) continue ;; esac
  r="$work/repo-$tool"
  kept_peak=${peak[$tool]:-0}
  timed bash -c '"$1" --repo "$2" --json compact --min-age 0s --max-bytes 1TiB > "$3"' _ "$XSTORE" "$r" "$work/compact.json"
  c_wall=$t_wall c_cpu=$(python3 -c "print(f'{$t_user + $t_sys:.1f}')") c_rss=$t_rss
  peak[$tool]=$kept_peak
  "$XSTORE" -q --repo "$r" gc --grace 0s
  compacted[$tool]=$(du -sb "$r" | cut -f1)
  python3 - "$work/compact.json" "$tool" "${size[$tool]}" "${compacted[$tool]}" "$c_wall" "$c_cpu" "$c_rss" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
tool, before, after, wall, cpu = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
rss = int(sys.argv[7]) // 1024
gb = r["raw_bytes"] / 1e9
print(f"{tool:<8} compact level {r['level']}: {r['packs_compacted']} packs, {r['raw_bytes'] / 1048576:.1f} MiB raw "
      f"recompressed in {wall:.1f} s ({cpu:.1f} s CPU, {cpu / max(gb, 1e-9):.0f} CPU s per GB raw); repository "
      f"{before / 1048576:.1f} -> {after / 1048576:.1f} MiB ({after / before:.3f}x); "
      f"1 TB of raw data: {cpu / max(gb, 1e-9) * 1000 / 3600:.1f} CPU hours; peak RSS {rss} MiB")
PY
done

# Each restore goes to a fresh ext4 filesystem (a loop device over a file): restoring where
# the previous run's tree was just deleted makes ext4's inode allocator skip the recently
# deleted inodes one by one (measured: 12-15 s of sys time instead of 1-1.5 s for this tree),
# which would measure the bench, not the tool. An empty disk is also what a real restore sees.
fresh_target() {
  mountpoint -q "$target" && umount "$target"
  rm -f "$image"
  truncate -s "$(( $(du -sb "$src" | cut -f1) * 2 + (512 << 20) ))" "$image"
  mkfs.ext4 -q -F "$image"
  mount -o loop "$image" "$target"
  sync; sleep 1
}
# Round 0 is a warm-up, not counted: the first restore of each tool onto a new loop
# filesystem measured 1.4-5x its later runs for every tool (page cache of the image's host
# filesystem filling up), which would favour whichever tool goes later.
echo "== restore of the newest snapshot onto a fresh ext4 filesystem, $repeat runs per tool after a warm-up, alternating"
declare -A rest rest_cpu
for run in $(seq 0 "$repeat"); do
  for tool in "${tools[@]}" cp-a; do
    fresh_target
    d="$target/restore"
    restore_cmd "$tool" "$work/repo-$tool" "$d"; timed "${cmd[@]}"
    if [ "$run" = 0 ]; then
      # Every tool's restore is compared with the source (content and metadata,
      # bench/same-tree.py) before its numbers count.
      bench/same-tree.py "$src" "$d$src" \
        || { echo "$tool restored something other than round $((rounds - 1))" >&2; exit 1; }
      continue
    fi
    rest[$tool]="${rest[$tool]:-} $t_wall"
    rest_cpu[$tool]="${rest_cpu[$tool]:-} ${t_user}u/${t_sys}s"
    [ "$run" = 1 ] && echo "  $tool restored $(mb "$(du -sb "$d" | cut -f1)") MiB ($(find "$d" | wc -l) entries)" >&2
  done
done
umount "$target"
for tool in "${tools[@]}" cp-a; do
  printf '%-8s restore %6s s   (runs:%s; cpu:%s)\n' "$tool" "$(median ${rest[$tool]})" "${rest[$tool]}" "${rest_cpu[$tool]}"
done

echo "== summary"
printf '%-8s %10s %12s %10s %14s %14s %10s\n' tool "first s" "mean incr s" "restore s" "repo MiB" "compacted MiB" "peak RSS MiB"
for tool in "${tools[@]}"; do
  printf '%-8s %10s %12s %10s %14s %14s %10s\n' "$tool" "$(median ${first[$tool]})" \
    "$(python3 -c "import sys; v=[float(x) for x in sys.argv[1:]]; print(f'{sum(v)/len(v):.2f}')" ${incr[$tool]})" \
    "$(median ${rest[$tool]})" "$(mb "${size[$tool]}")" \
    "$( [ -n "${compacted[$tool]:-}" ] && mb "${compacted[$tool]}" || echo -)" "$((peak[$tool] / 1024))"
done
if [[ " ${tools[*]} " == *" xstore "* && " ${tools[*]} " == *" restic "* ]]; then
  python3 -c "
f = $(median ${first[restic]}) / $(median ${first[xstore]})
r = $(median ${rest[restic]}) / $(median ${rest[xstore]})
s = ${size[xstore]} / ${size[restic]}
c = ${compacted[xstore]:-0} / ${size[restic]}
print(f'xstore vs restic: first backup {f:.2f}x faster, restore {r:.2f}x faster, repository {s:.3f}x the size ({c:.3f}x compacted)')"
fi
for tool in "${tools[@]}"; do
  python3 -c "print(f'$tool restore vs cp -a from the page cache: {$(median ${rest[$tool]}) / $(median ${rest[cp-a]}):.2f}x the time')"
done
if [[ " ${tools[*]} " == *" xstore "* && " ${tools[*]} " == *" xstore-plain "* ]]; then
  python3 -c "
f = $(median ${first[xstore]}) / $(median ${first[xstore-plain]})
i = sum(float(x) for x in '${incr[xstore]}'.split()) / sum(float(x) for x in '${incr[xstore-plain]}'.split())
r = $(median ${rest[xstore]}) / $(median ${rest[xstore-plain]})
s = ${size[xstore]} / ${size[xstore-plain]}
print(f'encrypted vs unencrypted xstore: first backup {f:.3f}x the time, incremental {i:.3f}x, restore {r:.3f}x, repository {s:.3f}x the size')"
fi
