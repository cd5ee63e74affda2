#!/usr/bin/env bash
# Replication benchmark: `xstore sync` against `restic copy` on the same data, each between two
# encrypted repositories with different keys (so every blob is opened, verified and sealed
# again), into a local directory and into a 1-node Garage bucket on these cores. Prints, per
# tool and destination and run: the first copy (seconds, MB/s of source data), then the
# incremental copy after an unchanged re-backup of the source, then after a re-backup with 1 %
# of the files changed (seconds, and the blob bytes the destination stored: xstore's report,
# restic's `stats --mode raw-data` before and after; and for xstore the blobs and raw bytes it
# read from the source).
#
#   bench/sync.sh                          # the Debian system tree of bench/evolving.sh
#   DATA=/some/tree bench/sync.sh
#   RUNS=3 DESTS="local garage ssh" TOOLS="xstore restic" bench/sync.sh
#
# DESTS=ssh reads the source over SSH on loopback into a local destination: xstore through an
# sshd key forced to `xstore serve --read-only`, restic through the same sshd's sftp.
# DESTS=bucket puts the source's packs in the Garage bucket and copies into a local destination
# from the bucket alone (xstore `--from s3://…`, restic `--from-repo s3:…`).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v restic >/dev/null || need+=(restic)
command -v curl >/dev/null || need+=(curl)
if [ -z "${DATA:-}" ]; then
  DATA="$HOME/.cache/xstore/bench/evolving-bookworm/round-6"
  [ -d "$DATA" ] || DATA=$(bench/system-tree.sh)
fi
. bench/data.sh
GARAGE=${GARAGE:-$HOME/.cache/xstore/tools/bin/garage}
RUNS=${RUNS:-2}
DESTS=${DESTS:-local garage}
TOOLS=${TOOLS:-xstore restic}
compression_line=""
work="${WORK:-$(mktemp -d -p "$cache")}"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
. bench/garage.sh
bytes=$(du -sb "$DATA" | cut -f1)
files=$(find "$DATA" -type f | wc -l)
echo "data: $DATA  $((bytes / 1000000)) MB in $files files; $(nproc) cores; $(restic version | head -1)" >&2
export XSTORE_KEY_DIR="$work/keys" RESTIC_PASSWORD=bench RESTIC_FROM_PASSWORD=bench
key_id="" secret_key="" endpoint=""
case " $DESTS " in *" garage "* | *" bucket "*) start_cluster 1 ;; esac

# start_sshd: an sshd on 127.0.0.1 with two client keys: xstore's forced to `xstore serve
# --read-only "$work/served"` (a symlink to the source of the current run), restic's free for
# sftp. Sets ssh_port; the ssh configurations are "$work/sshd/xstore.conf" and ".../restic.conf".
start_sshd() {
  local d="$work/sshd" sshd k
  sshd=$(command -v sshd || echo /usr/sbin/sshd)
  mkdir -p "$d" /run/sshd
  for k in host xstore restic; do ssh-keygen -q -t ed25519 -N "" -f "$d/$k"; done
  ssh_port=$(free_port)
  printf '%s\n' "Port $ssh_port" "ListenAddress 127.0.0.1" "HostKey $d/host" \
    "AuthorizedKeysFile $d/authorized_keys" "StrictModes no" "UsePAM no" \
    "PasswordAuthentication no" "PermitRootLogin prohibit-password" "PidFile none" \
    "Subsystem sftp internal-sftp" > "$d/sshd_config"
  printf 'command="XSTORE_KEY_DIR=%s %s serve --read-only %s",restrict %s\n%s\n' \
    "$XSTORE_KEY_DIR" "$XSTORE" "$work/served" "$(cat "$d/xstore.pub")" "$(cat "$d/restic.pub")" \
    > "$d/authorized_keys"
  "$sshd" -D -e -f "$d/sshd_config" 2> "$d/log" &
  pids+=($!)
  printf '[127.0.0.1]:%s %s\n' "$ssh_port" "$(cat "$d/host.pub")" > "$d/known_hosts"
  for k in xstore restic; do
    printf '%s\n' "Host *" "  Port $ssh_port" "  IdentityFile $d/$k" "  IdentitiesOnly yes" \
      "  UserKnownHostsFile $d/known_hosts" "  StrictHostKeyChecking yes" "  LogLevel ERROR" > "$d/$k.conf"
  done
  local tries=0
  until ssh -F "$d/restic.conf" -o BatchMode=yes root@127.0.0.1 true 2>/dev/null; do
    tries=$((tries + 1)); [ "$tries" -lt 50 ] || { cat "$d/log" >&2; return 1; }
    sleep 0.2
  done
}

case " $DESTS " in *" ssh "*) start_sshd ;; esac

# A copy of the data whose files change between backups (1 % of them per change).
tree="$work/tree"
cp -a "$DATA" "$tree"
change_one_percent() {
  find "$tree" -type f -size +0 -writable | awk -v seed="$1" 'NR % 100 == seed % 100' |
    while read -r f; do printf 'changed %s\n' "$1" >> "$f"; done
}

seconds() { /usr/bin/time -f "%e" -o "$work/t" "$@" > "$work/log" 2>&1 || { cat "$work/log" >&2; return 1; }; cat "$work/t"; }
mbps() { awk -v b="$bytes" -v s="$1" 'BEGIN { printf "%.0f", b / 1e6 / (s > 0 ? s : 0.001) }'; }
# field NAME: a number from the JSON report in $work/log.
field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$work/log" "$1"; }
restic_raw() { restic -r "$1" stats --json --mode raw-data 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["total_size"])'; }

row() { printf '%-7s %-7s run %s  %-20s %7s s %6s MB/s  stored %11s B  read %s\n' "$@"; }

xstore_sync() { # dest-repo step run dest
  local t from=("$src")
  [ "$4" = ssh ] && from=("ssh://root@127.0.0.1" --ssh-config "$work/sshd/xstore.conf")
  [ "$4" = bucket ] && from=("s3://bench/xs-$3" --from-endpoint "$endpoint")
  t=$(seconds "$XSTORE" -r "$1" --json sync --from "${from[@]}")
  row xstore "$4" "$3" "$2" "$t" "$( [ "$2" = "first copy" ] && mbps "$t" || echo -)" \
    "$(field stored_bytes)" "$(field blobs_read) blobs, $(field bytes_read) B"
}

bench_xstore() { # dest run
  local dest=$1 run=$2 dst="$work/x-dst-$run"
  src="$work/x-src-$run"
  rm -rf "$src" "$dst"
  export AWS_ACCESS_KEY_ID=$key_id AWS_SECRET_ACCESS_KEY=$secret_key
  if [ "$dest" = bucket ]; then
    "$XSTORE" -r "$src" -q init --store "s3://bench/xs-$run" --endpoint "$endpoint" >/dev/null
  else
    "$XSTORE" -r "$src" -q init >/dev/null
  fi
  "$XSTORE" -r "$src" -q backup --host h "$tree"
  ln -sfn "$src" "$work/served"
  case "$dest" in
    local | ssh | bucket) "$XSTORE" -r "$dst" -q init >/dev/null ;;
    garage) "$XSTORE" -r "$dst" -q init --store "s3://bench/x-$run" --endpoint "$endpoint" >/dev/null ;;
  esac
  xstore_sync "$dst" "first copy" "$run" "$dest"
  "$XSTORE" -r "$src" -q backup --host h "$tree"
  xstore_sync "$dst" "unchanged re-backup" "$run" "$dest"
  change_one_percent "$run"
  "$XSTORE" -r "$src" -q backup --host h "$tree"
  xstore_sync "$dst" "1 % changed" "$run" "$dest"
  "$XSTORE" -r "$dst" -q check >/dev/null
}

restic_copy() { # dest-repo step run dest
  local t before from=(--from-repo "$src")
  [ "$4" = ssh ] && from=(--from-repo "sftp:root@127.0.0.1:$src" -o "sftp.command=ssh -F $work/sshd/restic.conf root@127.0.0.1 -s sftp")
  before=$(restic_raw "$1")
  t=$(seconds restic -r "$1" copy "${from[@]}")
  row restic "$4" "$3" "$2" "$t" "$( [ "$2" = "first copy" ] && mbps "$t" || echo -)" \
    "$(( $(restic_raw "$1") - before ))" "-"
}

bench_restic() { # dest run
  local dest=$1 run=$2 dst
  export AWS_ACCESS_KEY_ID=$key_id AWS_SECRET_ACCESS_KEY=$secret_key
  if [ "$dest" = bucket ]; then
    src="s3:$endpoint/bench/rs-$run"
  else
    src="$work/r-src-$run"
    rm -rf "$src"
  fi
  restic -q init -r "$src" >/dev/null
  restic -q -r "$src" backup --host h "$tree" >/dev/null
  case "$dest" in
    local | ssh | bucket) dst="$work/r-dst-$run"; rm -rf "$dst" ;;
    garage) dst="s3:$endpoint/bench/r-$run" ;;
  esac
  # Its own key, the source's chunker parameters (what makes copied data deduplicate).
  restic -q -r "$dst" init --from-repo "$src" --copy-chunker-params >/dev/null
  restic_copy "$dst" "first copy" "$run" "$dest"
  restic -q -r "$src" backup --host h "$tree" >/dev/null
  restic_copy "$dst" "unchanged re-backup" "$run" "$dest"
  change_one_percent "$run"
  restic -q -r "$src" backup --host h "$tree" >/dev/null
  restic_copy "$dst" "1 % changed" "$run" "$dest"
}

for run in $(seq 1 "$RUNS"); do
  for dest in $DESTS; do
    for tool in $TOOLS; do
      "bench_$tool" "$dest" "$run"
    done
  done
done
