#!/usr/bin/env bash
# Object-store benchmark: xstore and restic side by side on the same local Garage cluster
# (1 node, then 3 nodes with replication 3, all on 127.0.0.1 and these cores), plus xstore on
# local disk for reference. Prints per tool and cluster: first backup MB/s, unchanged
# re-backup seconds, restore MB/s, and the S3 requests of each step (PUT, GET, other, from
# Garage's own request counters) per GB of data. Every restore goes to a fresh ext4 image
# (a target on a busy file system measures its allocator); the first is an untimed warm-up
# compared with the source by bench/same-tree.py, then REPEAT (2) timed restores, each a row.
#
#   bench/s3.sh                        # the Linux tree (bench/data.sh), NODES="1 3"
#   DATA=$(bench/system-tree.sh) bench/s3.sh
#   NODES=1 TOOLS=xstore bench/s3.sh   # a subset
#   XSTORE=/old/xstore bench/s3.sh     # another build
#   XSTORE_B=/old/xstore TOOLS="xstore xstore-b xstore xstore-b" bench/s3.sh
#                                      # A/B of two builds on the same clusters, interleaved
#   REPEAT=4 bench/s3.sh               # more timed restores per tool
#   CLIENTS=1 bench/s3.sh              # also object_store vs opendal on the 1-node cluster
#                                      # (bench/s3-clients), printed as it runs
#   GARAGE_COMPRESSION=none bench/s3.sh
#                                      # Garage's compression_level (default: Garage's own, 1);
#                                      # both clients send compressed data
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v restic >/dev/null || need+=(restic)
command -v curl >/dev/null || need+=(curl)
. bench/data.sh
GARAGE=${GARAGE:-$HOME/.cache/xstore/tools/bin/garage}
GARAGE_COMPRESSION=${GARAGE_COMPRESSION:-}
case "$GARAGE_COMPRESSION" in
  "") compression_line="" ;;
  *[!0-9-]*) compression_line="compression_level = \"$GARAGE_COMPRESSION\"" ;;
  *) compression_line="compression_level = $GARAGE_COMPRESSION" ;;
esac
work="${WORK:-$(mktemp -d -p "$cache")}"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
  mountpoint -q "$work/target" && umount "$work/target"; rm -rf "$work"
}
trap cleanup EXIT
bytes=$(du -sb "$DATA" | cut -f1)
files=$(find "$DATA" -type f | wc -l)
find "$DATA" -type f -print0 | xargs -0 cat > /dev/null   # warm the page cache
echo "data: $DATA  $((bytes / 1000000)) MB in $files files; $(nproc) cores; $("$GARAGE" --version | head -1), compression_level ${GARAGE_COMPRESSION:-default}" >&2

. bench/garage.sh

# Each restore goes to a fresh ext4 filesystem on a loop device: restoring where the previous
# restore was just deleted measures ext4's inode allocator (bench/evolving.sh says more), and
# the first restore onto a new loop filesystem is slower for every tool, so each tool's first
# restore is an untimed warm-up, compared with the source (content and metadata) by
# bench/same-tree.py before any number counts.
mnt="$work/target"; image="$work/target.img"; mkdir -p "$mnt"
fresh_target() {
  mountpoint -q "$mnt" && umount "$mnt"
  rm -f "$image"
  truncate -s "$((bytes * 2 + (512 << 20)))" "$image"
  mkfs.ext4 -q -F "$image"
  mount -o loop "$image" "$mnt"
  sync; sleep 1
}

run() {
  local out="$work/time"
  /usr/bin/time -f "%e" -o "$out" "$@" > "$work/log" 2>&1 || { cat "$work/log" >&2; return 1; }
  cat "$out"
}

per_gb() { awk -v r="$1" -v b="$bytes" 'BEGIN { printf "%.0f", r / (b / 1e9) }'; }
mbps() { awk -v b="$bytes" -v s="$1" 'BEGIN { printf "%.0f", b / 1e6 / (s > 0 ? s : 0.001) }'; }
delta() { awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " "); printf "%d %d %d", y[1]-x[1], y[2]-x[2], y[3]-x[3] }'; }

rows=()
step() { # tool cluster step seconds "put get other"
  local r=($5)
  rows+=("$(printf '%-8s %-8s %-10s %8s s %7s MB/s %9s %9s %9s' "$1" "$2" "$3" "$4" "$(mbps "$4")" \
    "$(per_gb "${r[0]}")" "$(per_gb "${r[1]}")" "$(per_gb "${r[2]}")")")
}

runs=0
bench_tool() { # tool cluster
  local tool=$1 cl=$2 t0 t1 s bin=$XSTORE
  export AWS_ACCESS_KEY_ID=$key_id AWS_SECRET_ACCESS_KEY=$secret_key
  runs=$((runs + 1))   # each run its own prefix: a tool may be listed twice
  case $tool in
    xstore|xstore-b)
      [ "$tool" = xstore-b ] && bin=${XSTORE_B:?XSTORE_B names the other build}
      local repo="$work/repo-$tool-$cl-$runs"
      "$bin" -q --repo "$repo" init --store "s3://bench/$tool-$runs" --endpoint "$endpoint"
      t0=$(requests); s=$(run "$bin" -q --repo "$repo" backup --host bench "$DATA"); t1=$(requests)
      step "$tool" "$cl" first "$s" "$(delta "$t0" "$t1")"
      t0=$t1; s=$(run "$bin" -q --repo "$repo" backup --host bench "$DATA"); t1=$(requests)
      step "$tool" "$cl" unchanged "$s" "$(delta "$t0" "$t1")"
      restores "$tool" "$cl" "$bin" -q --repo "$repo" restore bench@latest "$mnt/r" ;;
    restic)
      export RESTIC_PASSWORD=bench
      local repo="s3:$endpoint/bench/$tool-$runs"
      restic -q init --repo "$repo" > /dev/null
      t0=$(requests); s=$(run restic -q --repo "$repo" backup "$DATA"); t1=$(requests)
      step "$tool" "$cl" first "$s" "$(delta "$t0" "$t1")"
      t0=$t1; s=$(run restic -q --repo "$repo" backup "$DATA"); t1=$(requests)
      step "$tool" "$cl" unchanged "$s" "$(delta "$t0" "$t1")"
      restores "$tool" "$cl" restic -q --repo "$repo" restore latest --target "$mnt/r" ;;
  esac
}

# restores TOOL CLUSTER COMMAND…: a verified warm-up, then REPEAT timed restores (each row
# printed; requests counted per run).
restores() {
  local tool=$1 cl=$2 i s t0 t1; shift 2
  for ((i = 0; i <= ${REPEAT:-2}; i++)); do
    fresh_target
    t0=$(requests); s=$(run "$@"); t1=$(requests)
    if [ "$i" = 0 ]; then
      bench/same-tree.py "$DATA" "$mnt/r$DATA" || { echo "$tool on $cl: the restore differs" >&2; exit 1; }
      continue
    fi
    step "$tool" "$cl" "restore$i" "$s" "$(delta "$t0" "$t1")"
  done
}

TOOLS=${TOOLS:-"xstore restic"}
for n in ${NODES:-1 3}; do
  echo "starting a $n-node Garage cluster ..." >&2
  start_cluster "$n"
  for t in $TOOLS; do echo "running $t on $n node(s) ..." >&2; bench_tool "$t" "${n}node"; done
  if [ "${CLIENTS:-0}" = 1 ] && [ "$n" = 1 ]; then   # the two client crates, same cluster
    cargo build --release --locked -p xstore-bench-s3-clients >&2
    EP=$endpoint BUCKET=bench AWS_ACCESS_KEY_ID=$key_id AWS_SECRET_ACCESS_KEY=$secret_key \
      "$CARGO_TARGET_DIR/release/s3-clients" | tee "$work/clients" >&2
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=()
done
# Reference: xstore on local disk.
local_repo="$work/repo-local"
"$XSTORE" -q --repo "$local_repo" init
s=$(run "$XSTORE" -q --repo "$local_repo" backup --host bench "$DATA"); step xstore local first "$s" "0 0 0"
s=$(run "$XSTORE" -q --repo "$local_repo" backup --host bench "$DATA"); step xstore local unchanged "$s" "0 0 0"
admin=""; restores xstore local "$XSTORE" -q --repo "$local_repo" restore bench@latest "$mnt/r"

printf '\n%-8s %-8s %-10s %10s %12s %9s %9s %9s\n' tool store step time speed "PUT/GB" "GET/GB" "other/GB"
printf '%s\n' "${rows[@]}"
exit 0
