#!/usr/bin/env bash
# Pull benchmark: xstore pull through `xstore agent` vs rsync -a (what rsnapshot runs), both
# over the same loopback sshd, on the same tree. Prints first-pull MB/s, unchanged re-pull
# seconds and bytes on the wire, and a pull after changing 1 % of the files, with ratios.
#
#   bench/pull.sh                # Debian's linux-source-6.1 (1.3 GB, 78k files)
#   DATA=/some/dir bench/pull.sh # another tree
#   REPEAT=5 bench/pull.sh       # first pulls per tool (median; default 3)
#   INIT_ARGS="--compression-level 1" bench/pull.sh   # repository options (the agent
#                                # compresses chunks at the repository's level)
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
sshd_pid=""
trap '[ -n "$sshd_pid" ] && kill $sshd_pid 2>/dev/null; rm -rf "$work"' EXIT
src="$work/client/tree"
mkdir -p "$work/client" "$work/sshd"
cp -a "$DATA" "$src"
bytes=$(du -sb "$src" | cut -f1)
files=$(find "$src" -type f | wc -l)
find "$src" -type f -print0 | xargs -0 cat > /dev/null
echo "data: $DATA  $((bytes / 1000000)) MB in $files files; $(nproc) cores" >&2

# sshd on loopback: the xstore key is forced to the agent, the rsync key runs rsync.
s="$work/sshd"
for k in host xstore rsync; do ssh-keygen -q -t ed25519 -N "" -f "$s/$k"; done
echo "$src" > "$work/client/backup.conf"
"$XSTORE" agent --print-authorized-keys --server-key "$s/xstore.pub" --from 127.0.0.1 \
  --config "$work/client/backup.conf" > "$s/authorized_keys"
echo "from=\"127.0.0.1\",no-pty,no-port-forwarding $(cat "$s/rsync.pub")" >> "$s/authorized_keys"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p /run/sshd
cat > "$s/sshd_config" <<CFG
Port $port
ListenAddress 127.0.0.1
HostKey $s/host
AuthorizedKeysFile $s/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication no
PermitRootLogin prohibit-password
PidFile none
CFG
/usr/sbin/sshd -D -e -f "$s/sshd_config" 2> "$s/log" &
sshd_pid=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
echo "[127.0.0.1]:$port $(cat "$s/host.pub")" > "$s/known_hosts"
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
address = "127.0.0.1"
INV

# xpull → "seconds wire_bytes" (--json prints status events, then the summary line)
xpull() {
  /usr/bin/time -f "%e %U %S" -o "$work/t" "$XSTORE" -r "$repo" --json pull client \
    ${PULL_ARGS:-} \
    --inventory "$work/hosts.toml" > "$work/x.json"
  echo "server cpu (wall user sys): $(cat "$work/t")" >&2
  echo "$(cut -d" " -f1 "$work/t") $(python3 -c 'import json,sys; r=json.loads(open(sys.argv[1]).read().splitlines()[-1])["hosts"][0]; assert r["outcome"]=="ok", r; print(r["wire_bytes"])' "$work/x.json")"
}
# rpull → "seconds wire_bytes"
rpull() {
  /usr/bin/time -f "%e" -o "$work/t" rsync -a --delete --numeric-ids --stats \
    -e "ssh -F $s/ssh_config -i $s/rsync -p $port" "root@127.0.0.1:$src/" "$staging/" > "$work/r.txt"
  local sent recv
  sent=$(grep -E '^Total bytes sent' "$work/r.txt" | tr -dc '0-9')
  recv=$(grep -E '^Total bytes received' "$work/r.txt" | tr -dc '0-9')
  echo "$(cat "$work/t") $((sent + recv))"
}

# First pulls, alternating tools, REPEAT times (default 3) into a new repository and a new
# staging directory each; the median time counts (single runs swing ±50 % on shared machines).
# Earlier runs' directories are deleted only at the end: creating 78k files right after
# deleting 78k others is up to 4x slower on ext4, which made rsync's repeats look slow.
xs=(); rs=()
for i in $(seq "${REPEAT:-3}"); do
  repo="$work/repo-$i"; staging="$work/rsnapshot-$i/hourly.0"
  mkdir -p "$staging"; "$XSTORE" -r "$repo" init -q ${INIT_ARGS:-}
  sync; sleep 2
  read -r t xw1 <<<"$(xpull)"; xs+=("$t")
  sync; sleep 2
  read -r t rw1 <<<"$(rpull)"; rs+=("$t")
done
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
x1=$(median "${xs[@]}"); r1=$(median "${rs[@]}")
echo "first pulls (s): xstore ${xs[*]}; rsync ${rs[*]}" >&2
read -r x2 xw2 <<<"$(xpull)"; read -r r2 rw2 <<<"$(rpull)"
# Change 1 % of the files (every 100th, sorted): overwrite their first 64 bytes.
mapfile -t changed < <(find "$src" -type f -size +64c | sort | awk 'NR % 100 == 0')
for f in "${changed[@]}"; do printf '%064d' "$RANDOM" | dd of="$f" bs=64 count=1 conv=notrunc status=none; done
changed_raw=$(cat "${changed[@]}" | wc -c)
changed_zstd=$(for f in "${changed[@]}"; do zstd -3 -q -c "$f"; done | wc -c)
read -r x3 xw3 <<<"$(xpull)"; read -r r3 rw3 <<<"$(rpull)"

python3 - "$bytes" "$x1" "$xw1" "$r1" "$rw1" "$x2" "$xw2" "$r2" "$rw2" "$x3" "$xw3" "$r3" "$rw3" \
  "${#changed[@]}" "$changed_raw" "$changed_zstd" <<'PY'
import sys
a = sys.argv[1:]
b = int(a[0]); x1, xw1, r1, rw1, x2, xw2, r2, rw2, x3, xw3, r3, rw3 = [float(v) for v in a[1:13]]
n, craw, cz = int(a[13]), int(a[14]), int(a[15])
mb = lambda v: f"{v / 1e6:.2f} MB"
print(f"{'':26} {'xstore pull':>14} {'rsync -a':>14} {'ratio':>8}")
print(f"{'first pull MB/s (median)':26} {b / x1 / 1e6:>14.1f} {b / r1 / 1e6:>14.1f} {r1 / x1:>7.2f}x")
print(f"{'first pull wire':26} {mb(xw1):>14} {mb(rw1):>14} {xw1 / rw1:>7.2f}x")
print(f"{'unchanged re-pull s':26} {x2:>14.2f} {r2:>14.2f} {x2 / r2:>7.2f}x")
print(f"{'unchanged re-pull wire':26} {mb(xw2):>14} {mb(rw2):>14} {xw2 / rw2:>7.2f}x")
print(f"{'1% changed pull s':26} {x3:>14.2f} {r3:>14.2f} {x3 / r3:>7.2f}x")
print(f"{'1% changed pull wire':26} {mb(xw3):>14} {mb(rw3):>14} {xw3 / rw3:>7.2f}x")
print(f"changed: {n} files, {mb(craw)} raw, {mb(cz)} zstd -3; xstore wire / changed zstd = {xw3 / cz:.2f} (target <= 2)")
PY
