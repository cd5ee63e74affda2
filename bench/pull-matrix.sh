#!/usr/bin/env bash
# Every pull case: LINK loopback, veth (deployed shape, unshaped), 1gbit and 100mbit, on the
# Linux source tree and on a Debian system tree (bench/system-tree.sh); bench/pull.sh's table
# for each, then one summary line per case.
#   bench/pull-matrix.sh                 LINKS="veth 100mbit" TREES=system bench/pull-matrix.sh
set -euo pipefail
cd "$(dirname "$0")/.."
links="${LINKS:-loopback veth 1gbit 100mbit}"
trees="${TREES:-linux system}"
summary=()
for tree in $trees; do
  case "$tree" in
    linux) data="" ;;
    system) data="$(bench/system-tree.sh)" ;;
    *) data="$tree" ;;
  esac
  for link in $links; do
    out=$(DATA="$data" LINK="$link" REPEAT="${REPEAT:-3}" bench/pull.sh 2>/dev/null)
    echo "$out"; echo
    first=$(echo "$out" | awk '/^first pull MB\/s/ {print $(NF-2), $(NF-1), $NF}')
    unchanged=$(echo "$out" | awk '/^unchanged re-pull s/ {print $(NF-2), $(NF-1), $NF}')
    changed=$(echo "$out" | awk '/^1% changed pull s/ {print $(NF-2), $(NF-1), $NF}')
    summary+=("$(printf '%-8s %-9s first MB/s %-22s unchanged s %-20s 1%% changed s %s' "$tree" "$link" "$first" "$unchanged" "$changed")")
  done
done
echo "summary (xstore, rsync, ratio; first: speed ratio, others: time ratio xstore/rsync)"
printf '%s\n' "${summary[@]}"
