#!/usr/bin/env bash
# Pull benchmark: xstore pull through `xstore-agent` vs rsync -a (what rsnapshot runs), both
# through the same sshd, on the same tree. Prints first-pull MB/s, unchanged re-pull seconds
# and bytes on the wire, a pull after changing 1 % of the files, and the server's CPU seconds
# per pull, with ratios.
#
# LINK picks the shape (default loopback):
#   loopback  everything on both cores, over 127.0.0.1 (the old, unshaped mode)
#   veth      deployed shape, unshaped: the client (sshd + agent, or rsync's remote side) in
#             one network namespace pinned to core 0, the server (ssh + xstore, or rsync) in
#             another pinned to core 1, over a veth pair
#   1gbit     veth, each direction shaped to 1 Gbit/s with tc tbf (same rack)
#   100mbit   veth, shaped to 100 Mbit/s (another site)
# Rate only: tbf shapes the rate; delay would need netem, whose kernel module these machines
# lack, so round trips cost what the veth costs. bench/pull-matrix.sh runs every case.
#
#   bench/pull.sh                # Debian's linux-source-6.1 (1.3 GB, 78k files)
#   LINK=100mbit bench/pull.sh
#   DATA=/some/dir bench/pull.sh # another tree
#   REPEAT=5 bench/pull.sh       # first pulls per tool (median; default 3)
#   INIT_ARGS="--compression-level 1" bench/pull.sh   # repository options (the agent
#                                # compresses chunks at the repository's level)
#   RSYNC_CIPHERS=aes128-gcm@openssh.com bench/pull.sh # rsync's ssh cipher (default: ssh's
#                                # own order, as rsnapshot runs it; xstore asks ssh for
#                                # AES-GCM first, `xstore_fleet::pull::PREFER_AES_GCM`)
#
# First pulls write onto fresh loop filesystems (below); the later pulls into the last of
# them.
#
# Wire bytes are each protocol's own count, both directions, without SSH's framing: xstore's
# snapshot stats (wire_bytes), rsync's --stats "Total bytes sent/received". The tree is copied
# into the work directory first (the 1 % change must not touch the cached source), and the
# page cache is warm for both tools.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v rsync >/dev/null || need+=(rsync)
command -v zstd >/dev/null || need+=(zstd)
. bench/data.sh
work="$(mktemp -d -p "$cache")"
cleanup_ns() { :; }
# sshd runs under `ip netns exec` and `taskset`: it is found by its config file to stop it.
unmount_all() { for m in "$work"/fs-*; do mountpoint -q "$m" 2>/dev/null && umount "$m"; done; return 0; }
trap 'pkill -f "sshd -D -e -f $work/" 2>/dev/null; cleanup_ns; unmount_all; rm -rf "$work"' EXIT
src="$work/client/tree"
mkdir -p "$work/client" "$work/sshd"
cp -a "$DATA" "$src"
bytes=$(du -sb "$src" | cut -f1)
files=$(find "$src" -type f | wc -l)
find "$src" -type f -print0 | xargs -0 cat > /dev/null
echo "data: $DATA  $((bytes / 1000000)) MB in $files files; $(nproc) cores" >&2

link="${LINK:-loopback}"
# The client runs the small agent, as deployed (README, "Set up a client").
AGENT="${AGENT:-$(dirname "$XSTORE")/xstore-agent}"
[ -x "$AGENT" ] || cargo build --release --locked -p xstore-agent >&2
# on_client CMD… / on_server CMD…: where each side runs.
case "$link" in
  loopback)
    client_addr=127.0.0.1; server_addr=127.0.0.1
    on_client() { "$@"; }; on_server() { "$@"; } ;;
  veth|1gbit|100mbit)
    command -v taskset >/dev/null || { echo "taskset is missing (util-linux)"; exit 1; }
    ns_c="xs-client-$$"; ns_s="xs-server-$$"
    ip netns add "$ns_c"; ip netns add "$ns_s"
    cleanup_ns() { ip netns del "$ns_c" 2>/dev/null || true; ip netns del "$ns_s" 2>/dev/null || true; }
    ip link add "xc$$" type veth peer name "xs$$"
    ip link set "xc$$" netns "$ns_c"; ip link set "xs$$" netns "$ns_s"
    client_addr=10.213.0.1; server_addr=10.213.0.2
    ip -n "$ns_c" addr add "$client_addr/24" dev "xc$$"; ip -n "$ns_s" addr add "$server_addr/24" dev "xs$$"
    for n in "$ns_c:xc$$" "$ns_s:xs$$"; do
      ip -n "${n%%:*}" link set lo up; ip -n "${n%%:*}" link set "${n#*:}" up
      case "$link" in
        1gbit) tc -n "${n%%:*}" qdisc add dev "${n#*:}" root tbf rate 1gbit burst 1mb latency 50ms ;;
        100mbit) tc -n "${n%%:*}" qdisc add dev "${n#*:}" root tbf rate 100mbit burst 128kb latency 50ms ;;
      esac
    done
    on_client() { ip netns exec "$ns_c" taskset -c 0 "$@"; }
    on_server() { ip netns exec "$ns_s" taskset -c 1 "$@"; } ;;
  *) echo "LINK=$link: expected loopback, veth, 1gbit or 100mbit"; exit 1 ;;
esac
case "$link" in
  1gbit|100mbit) echo "link: $link each way (tc tbf: rate shaped; no added delay, netem is absent); client on core 0, server on core 1" >&2 ;;
  veth) echo "link: veth, unshaped; client on core 0, server on core 1" >&2 ;;
  *) echo "link: loopback, both sides on both cores" >&2 ;;
esac

# sshd on the client: the xstore key is forced to the agent, the rsync key runs rsync.
s="$work/sshd"
for k in host xstore rsync; do ssh-keygen -q -t ed25519 -N "" -f "$s/$k"; done
echo "$src" > "$work/client/backup.conf"
"$AGENT" --print-authorized-keys --server-key "$s/xstore.pub" --from "$server_addr" \
  --config "$work/client/backup.conf" > "$s/authorized_keys"
echo "from=\"$server_addr\",no-pty,no-port-forwarding $(cat "$s/rsync.pub")" >> "$s/authorized_keys"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p /run/sshd
cat > "$s/sshd_config" <<CFG
Port $port
ListenAddress $client_addr
HostKey $s/host
AuthorizedKeysFile $s/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication no
PermitRootLogin prohibit-password
PidFile none
CFG
on_client /usr/sbin/sshd -D -e -f "$s/sshd_config" > /dev/null 2> "$s/log" &
for _ in $(seq 100); do on_server bash -c "exec 3<>/dev/tcp/$client_addr/$port" 2>/dev/null && break; sleep 0.1; done
echo "[$client_addr]:$port $(cat "$s/host.pub")" > "$s/known_hosts"
cat > "$s/ssh_config" <<CFG
Host *
  UserKnownHostsFile $s/known_hosts
  StrictHostKeyChecking yes
  IdentitiesOnly yes
  LogLevel ERROR
CFG

cat > "$work/hosts.toml" <<INV
[defaults]
port = $port
identity = "$s/xstore"
ssh_config = "$s/ssh_config"
[[account]]
name = "bench"
allocation = "100 GiB"
[[account.host]]
name = "client"
address = "$client_addr"
[[account]]
name = "other"
allocation = "100 GiB"
[[account.host]]
name = "other-client"
address = "$client_addr"
INV

# xpull → "seconds wire_bytes server_cpu_seconds" (--json prints status events, then the
# summary line). Server CPU: xstore and its ssh (user + sys, children included).
# The peak RSS of any pull's server process (KiB) is kept in $work/xrss (rsync's in rrss).
peak_rss() { # peak_rss FILE KIB
  [ "$2" -gt "$(cat "$1" 2>/dev/null || echo 0)" ] && echo "$2" > "$1"; return 0
}
xpull() {
  on_server /usr/bin/time -f "%e %U %S %M" -o "$work/t" "$XSTORE" -r "$repo" --json pull "${XHOST:-client}" \
    ${PULL_ARGS:-} \
    --inventory "$work/hosts.toml" > "$work/x.json"
  echo "xstore server (wall user sys rss): $(cat "$work/t")" >&2
  read -r wall user sys rss < "$work/t"
  peak_rss "$work/xrss" "$rss"
  echo "$wall $(python3 -c 'import json,sys; r=json.loads(open(sys.argv[1]).read().splitlines()[-1])["hosts"][0]; assert r["outcome"]=="ok", r; print(r["wire_bytes"])' "$work/x.json") $(echo "$user + $sys" | bc)"
}
# rpull → "seconds wire_bytes server_cpu_seconds" (rsync and its ssh)
rpull() {
  on_server /usr/bin/time -f "%e %U %S %M" -o "$work/t" rsync -a --delete --numeric-ids --stats \
    -e "ssh -F $s/ssh_config -i $s/rsync -p $port${RSYNC_CIPHERS:+ -c $RSYNC_CIPHERS}" "root@$client_addr:$src/" "$staging/" > "$work/r.txt"
  echo "rsync server (wall user sys rss): $(cat "$work/t")" >&2
  local sent recv wall user sys rss
  read -r wall user sys rss < "$work/t"
  peak_rss "$work/rrss" "$rss"
  sent=$(grep -E '^Total bytes sent' "$work/r.txt" | tr -dc '0-9')
  recv=$(grep -E '^Total bytes received' "$work/r.txt" | tr -dc '0-9')
  echo "$wall $((sent + recv)) $(echo "$user + $sys" | bc)"
}

# First pulls, alternating tools, REPEAT times (default 3) into a new repository and a new
# staging directory each; the median time counts (single runs swing ±50 % on shared machines).
# Each first pull writes into a fresh ext4 filesystem (a loop device over a file), one per
# tool, as bench/evolving.sh restores: on a filesystem where earlier runs' trees were just
# deleted, ext4's inode allocator skips the recently freed inodes one by one (`perf`:
# recently_deleted, find_inode_bit), which made rsync's 13 000 file creations 2-4x slower from
# one run to the next: that measured the bench, not the tools. Run 0 is a warm-up, not counted
# (the first writes onto a new loop filesystem are slower for whichever tool goes first).
fresh_fs() { # fresh_fs NAME → a new, empty ext4 mounted at $work/fs-NAME
  local m="$work/fs-$1" image="$work/fs-$1.img"
  mountpoint -q "$m" 2>/dev/null && umount "$m"
  rm -f "$image"; mkdir -p "$m"
  truncate -s "$(( bytes * 2 + (512 << 20) ))" "$image"
  mkfs.ext4 -q -F "$image"
  mount -o loop "$image" "$m"
}
xs=(); rs=()
for i in $(seq 0 "${REPEAT:-3}"); do
  fresh_fs xstore; fresh_fs rsync
  repo="$work/fs-xstore/repo"; staging="$work/fs-rsync/rsnapshot/hourly.0"
  mkdir -p "$staging"; "$XSTORE" -r "$repo" init -q ${INIT_ARGS:-}
  sync; sleep 2
  read -r t xw1 xc1 <<<"$(xpull)"; [ "$i" = 0 ] || xs+=("$t")
  sync; sleep 2
  read -r t rw1 rc1 <<<"$(rpull)"; [ "$i" = 0 ] || rs+=("$t")
done
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
x1=$(median "${xs[@]}"); r1=$(median "${rs[@]}")
echo "first pulls (s): xstore ${xs[*]}; rsync ${rs[*]}" >&2
# Unchanged re-pulls, alternating, REPEAT times: the median counts (a fixed cost of a few
# hundred ms swings with the machine's load).
xu=(); ru=()
for i in $(seq "${REPEAT:-3}"); do
  read -r t xw2 xc2 <<<"$(xpull)"; xu+=("$t")
  read -r t rw2 rc2 <<<"$(rpull)"; ru+=("$t")
done
x2=$(median "${xu[@]}"); r2=$(median "${ru[@]}")
echo "unchanged re-pulls (s): xstore ${xu[*]}; rsync ${ru[*]}" >&2
# Change 1 % of the files (every 100th, sorted): overwrite their first 64 bytes.
mapfile -t changed < <(find "$src" -type f -size +64c | sort | awk 'NR % 100 == 0')
for f in "${changed[@]}"; do printf '%064d' "$RANDOM" | dd of="$f" bs=64 count=1 conv=notrunc status=none; done
changed_raw=$(cat "${changed[@]}" | wc -c)
changed_zstd=$(for f in "${changed[@]}"; do zstd -3 -q -c "$f"; done | wc -c)
read -r x3 xw3 xc3 <<<"$(xpull)"; read -r r3 rw3 rc3 <<<"$(rpull)"
# The same tree as the first pull of a host of another account, into the repository that
# holds it: the server asks for every byte (no existence oracle across accounts,
# ARCHITECTURE.md "Trust boundary") and stores none of them twice.
read -r x4 xw4 xc4 <<<"$(XHOST=other-client xpull)"
# For scale: the peak RSS of restic backing up the same tree locally (both cores), when
# restic is installed (issue: a pull's memory per host at most a restic backup's).
restic_rss=0
if command -v restic >/dev/null; then
  RESTIC_PASSWORD=bench restic -q -r "$work/restic" init >/dev/null
  RESTIC_PASSWORD=bench /usr/bin/time -f "%M" -o "$work/t" restic -q -r "$work/restic" backup "$src" >/dev/null
  restic_rss=$(cat "$work/t")
fi

python3 - "$bytes" "$x1" "$xw1" "$r1" "$rw1" "$x2" "$xw2" "$r2" "$rw2" "$x3" "$xw3" "$r3" "$rw3" \
  "${#changed[@]}" "$changed_raw" "$changed_zstd" "$xc1" "$rc1" "$xc2" "$rc2" "$xc3" "$rc3" "$link" "$DATA" \
  "$x4" "$xw4" "$xc4" "$(cat "$work/xrss")" "$(cat "$work/rrss")" "$restic_rss" <<'PY'
import sys
a = sys.argv[1:]
b = int(a[0]); x1, xw1, r1, rw1, x2, xw2, r2, rw2, x3, xw3, r3, rw3 = [float(v) for v in a[1:13]]
n, craw, cz = int(a[13]), int(a[14]), int(a[15])
xc1, rc1, xc2, rc2, xc3, rc3 = [float(v) for v in a[16:22]]
link, data = a[22], a[23]
x4, xw4, xc4 = [float(v) for v in a[24:27]]
xrss, rrss, crss = [int(v) / 1024 for v in a[27:30]]
mb = lambda v: f"{v / 1e6:.2f} MB"
print(f"link {link}, tree {data} ({b / 1e6:.0f} MB)")
print(f"{'':26} {'xstore pull':>14} {'rsync -a':>14} {'ratio':>8}")
print(f"{'first pull MB/s (median)':26} {b / x1 / 1e6:>14.1f} {b / r1 / 1e6:>14.1f} {r1 / x1:>7.2f}x")
print(f"{'first pull wire':26} {mb(xw1):>14} {mb(rw1):>14} {xw1 / rw1:>7.2f}x")
print(f"{'unchanged re-pull s':26} {x2:>14.2f} {r2:>14.2f} {x2 / r2:>7.2f}x")
print(f"{'unchanged re-pull wire':26} {mb(xw2):>14} {mb(rw2):>14} {xw2 / rw2:>7.2f}x")
print(f"{'1% changed pull s':26} {x3:>14.2f} {r3:>14.2f} {x3 / r3:>7.2f}x")
print(f"{'1% changed pull wire':26} {mb(xw3):>14} {mb(rw3):>14} {xw3 / rw3:>7.2f}x")
print(f"{'server CPU s: first':26} {xc1:>14.2f} {rc1:>14.2f} {xc1 / max(rc1, 0.01):>7.2f}x")
print(f"{'server CPU s: unchanged':26} {xc2:>14.2f} {rc2:>14.2f} {xc2 / max(rc2, 0.01):>7.2f}x")
print(f"{'server CPU s: 1% changed':26} {xc3:>14.2f} {rc3:>14.2f} {xc3 / max(rc3, 0.01):>7.2f}x")
print(f"first pull of another account's host holding the same tree: {x4:.2f} s, wire {mb(xw4)} ({xw4 / xw1:.2f}x the first pull's), server CPU {xc4:.2f} s")
print(f"server peak RSS of any pull: xstore {xrss:.0f} MiB, rsync {rrss:.0f} MiB"
      + (f"; restic backup of the same tree: {crss:.0f} MiB (xstore / restic {xrss / crss:.2f}x)" if crss else ""))
print(f"changed: {n} files, {mb(craw)} raw, {mb(cz)} zstd -3; xstore wire / changed zstd = {xw3 / cz:.2f} (target <= 2)")
PY
