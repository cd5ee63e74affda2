#!/usr/bin/env bash
# The restores an operator reaches for, and verification (issue "find, dump, in-place restore,
# rolling verify"). On one tree (default: the Linux source), prints:
#   - find over SNAPSHOTS snapshots of it (one file changed per snapshot), and trees read;
#   - restore into an empty directory vs into an unchanged copy (--overwrite always: every file
#     read and hashed; if-changed: size and mtime only) vs `rsync -a` of the same tree onto an
#     unchanged copy;
#   - dump as tar to /dev/null;
#   - verify (pack hashes) vs `check --read-data` (every blob decompressed), MB/s;
#   - with OLD=/path/to/xstore (a build without the read-back of sealed packs): the first
#     backup with and without it.
# Each line is the median of REPEAT runs, with every run shown.
#
#   bench/restores.sh                        # SNAPSHOTS=100 REPEAT=3
#   DATA=/some/tree SNAPSHOTS=20 bench/restores.sh
set -euo pipefail
cd "$(dirname "$0")/.."
need=(rsync)
. bench/data.sh
snapshots=${SNAPSHOTS:-100}
repeat=${REPEAT:-3}
work="$(mktemp -d -p "$cache")"
trap 'rm -rf "$work"' EXIT
export XSTORE_REPO="$work/repo"
src="$work/src"
cp -a "$DATA" "$src"
bytes=$(du -sb "$src" | cut -f1)
files=$(find "$src" -type f | wc -l)
echo "data: $DATA  $((bytes / 1000000)) MB in $files files; $snapshots snapshots; $(nproc) cores" >&2
now() { date +%s.%N; }
# run NAME CMD…: REPEAT timed runs, median and each run. $before, when set, runs untimed
# before each one.
before=""
run() {
  local name=$1
  shift
  local times=()
  for _ in $(seq 1 "$repeat"); do
    local t0 t1
    [ -n "$before" ] && eval "$before"
    t0=$(now)
    "$@" > /dev/null
    t1=$(now)
    times+=("$(python3 -c "print(f'{$t1 - $t0:.3f}')")")
  done
  local median
  median=$(printf '%s\n' "${times[@]}" | sort -n | sed -n "$(((repeat + 1) / 2))p")
  printf '%-52s %8s s   (runs: %s)\n' "$name" "$median" "${times[*]}"
  last_median=$median
}
ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }

"$XSTORE" init -q
"$XSTORE" -q tiers --set "hourly=$((snapshots + 1))" > /dev/null
if [ -n "${OLD:-}" ]; then
  for b in "$XSTORE" "$OLD"; do
    r="$work/ab-repo"
    run "first backup, $( [ "$b" = "$XSTORE" ] && echo 'with read-back' || echo 'without (OLD)')" \
      bash -c "rm -rf '$r'; '$b' -q --repo '$r' init; '$b' -q --repo '$r' backup --host h '$src'"
    [ "$b" = "$XSTORE" ] && with=$last_median || without=$last_median
  done
  echo "read-back cost: $(ratio "$with" "$without")x the first backup's time"
  rm -rf "$work/ab-repo"
fi
"$XSTORE" backup -q --host web1 "$src"
changing=$(find "$src" -type f -name '*.c' -print -quit)
for i in $(seq 2 "$snapshots"); do
  echo "/* run $i */" >> "$changing"
  "$XSTORE" backup -q --host web1 "$src"
done
run "find '*.c' over $snapshots snapshots" "$XSTORE" find '*.c' --host web1
trees=$("$XSTORE" --json find '*.c' --host web1 | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["trees_read"], len(d["paths"]))')
echo "  trees read, paths found: $trees"
run "find Makefile (names) over $snapshots snapshots" "$XSTORE" find Makefile --host web1

fresh="$work/fresh"
before="rm -rf '$fresh'; sync"
run "restore into an empty directory" "$XSTORE" -q restore web1@latest "$fresh"
before=""
full=$last_median
run "restore onto an unchanged copy (--overwrite always)" "$XSTORE" -q restore web1@latest "$fresh"
always=$last_median
run "restore onto an unchanged copy (--overwrite if-changed)" "$XSTORE" -q restore web1@latest "$fresh" --overwrite if-changed
ifchanged=$last_median
copy="$work/rsync-copy"
rsync -a "$src/" "$copy/"
run "rsync -a onto an unchanged copy" rsync -a "$src/" "$copy/"
rs=$last_median
echo "in place vs full restore: always $(ratio "$always" "$full")x, if-changed $(ratio "$ifchanged" "$full")x (target <= 0.25); vs rsync: always $(ratio "$always" "$rs")x, if-changed $(ratio "$ifchanged" "$rs")x (target <= 1)"
run "dump as tar to /dev/null" bash -c "'$XSTORE' dump web1@latest '${src}' > /dev/null"

stored=$("$XSTORE" --json stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["stored_bytes"])')
run "verify (every pack hashed)" "$XSTORE" -q verify
v=$last_median
run "check --read-data (every blob decompressed)" "$XSTORE" -q check --read-data
c=$last_median
python3 -c "print(f'verify {$stored / 1e6 / $v:.0f} MB/s, check --read-data {$stored / 1e6 / $c:.0f} MB/s of {$stored / 1e6:.0f} MB stored ({$c / $v:.2f}x)')"
