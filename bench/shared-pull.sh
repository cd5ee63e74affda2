#!/usr/bin/env bash
# The first night of an account whose hosts hold the same tree: HOSTS hosts of one account
# (default 3), each serving the same files through the same sshd on 127.0.0.1, pulled into a
# new repository with `pull --all --jobs 1` and with `--jobs HOSTS`, alternating, REPEAT times
# (default 3). Prints per run the wall seconds, the bytes on the wire (all hosts) and the bytes
# the repository holds, with the median of each and the ratio of `--jobs HOSTS` to `--jobs 1`.
#
#   bench/shared-pull.sh                  # Debian's linux-source-6.1 (1.3 GB, 78k files)
#   DATA=/some/dir HOSTS=4 bench/shared-pull.sh
#   XSTORE=/old/xstore bench/shared-pull.sh   # another build (A/B)
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
. bench/data.sh
work="$(mktemp -d -p "$cache")"
trap 'pkill -f "sshd -D -e -f $work/" 2>/dev/null; rm -rf "$work"' EXIT
hosts="${HOSTS:-3}"
src="$work/tree"
cp -a "$DATA" "$src"
bytes=$(du -sb "$src" | cut -f1)
find "$src" -type f -print0 | xargs -0 cat > /dev/null
echo "data: $DATA  $((bytes / 1000000)) MB; $hosts hosts of one account; $(nproc) cores" >&2
AGENT="${AGENT:-$(dirname "$XSTORE")/xstore-agent}"
[ -x "$AGENT" ] || cargo build --release --locked -p xstore-agent >&2

s="$work/sshd"
mkdir -p "$s" /run/sshd
for k in host xstore; do ssh-keygen -q -t ed25519 -N "" -f "$s/$k"; done
echo "$src" > "$work/backup.conf"
"$AGENT" --print-authorized-keys --server-key "$s/xstore.pub" --from 127.0.0.1 \
  --config "$work/backup.conf" > "$s/authorized_keys"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
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
MaxStartups 64
CFG
/usr/sbin/sshd -D -e -f "$s/sshd_config" > /dev/null 2> "$s/log" &
for _ in $(seq 100); do bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null && break; sleep 0.1; done
echo "[127.0.0.1]:$port $(cat "$s/host.pub")" > "$s/known_hosts"
cat > "$s/ssh_config" <<CFG
Host *
  UserKnownHostsFile $s/known_hosts
  StrictHostKeyChecking yes
  IdentitiesOnly yes
  LogLevel ERROR
CFG
{
  printf '[defaults]\nport = %s\nidentity = "%s"\nssh_config = "%s"\n' "$port" "$s/xstore" "$s/ssh_config"
  printf '[[account]]\nname = "bench"\nallocation = "100 GiB"\n'
  for i in $(seq "$hosts"); do printf '[[account.host]]\nname = "web%s"\naddress = "127.0.0.1"\n' "$i"; done
} > "$work/hosts.toml"

# pull_all JOBS → "seconds wire_bytes repository_bytes"
pull_all() {
  local repo="$work/repo-$1-$RANDOM"
  "$XSTORE" -r "$repo" init -q
  sync; sleep 1
  /usr/bin/time -f "%e" -o "$work/t" "$XSTORE" -r "$repo" --json pull --all --jobs "$1" \
    --inventory "$work/hosts.toml" > "$work/x.json"
  local wire stored
  wire=$(python3 -c 'import json,sys; r=json.loads(open(sys.argv[1]).read().splitlines()[-1]); assert all(h["outcome"]=="ok" for h in r["hosts"]), r; print(sum(h["wire_bytes"] for h in r["hosts"]))' "$work/x.json")
  stored=$(du -sb "$repo/packs" | cut -f1)
  rm -rf "$repo"
  echo "$(cat "$work/t") $wire $stored"
}

one=(); all=()
for _ in $(seq "${REPEAT:-3}"); do
  r=$(pull_all 1); one+=("$r"); echo "--jobs 1: $r" >&2
  r=$(pull_all "$hosts"); all+=("$r"); echo "--jobs $hosts: $r" >&2
done
python3 - "$hosts" "${one[@]}" -- "${all[@]}" <<'PY'
import statistics, sys
hosts = sys.argv[1]
rest = sys.argv[2:]
cut = rest.index("--")
runs = lambda xs: [tuple(float(v) for v in x.split()) for x in xs]
one, alln = runs(rest[:cut]), runs(rest[cut + 1:])
med = lambda rs, i: statistics.median(r[i] for r in rs)
print(f"{'':12} {'wall s':>8} {'wire MB':>9} {'stored MB':>10}")
for name, rs in (("--jobs 1", one), (f"--jobs {hosts}", alln)):
    print(f"{name:12} {med(rs, 0):8.2f} {med(rs, 1) / 1e6:9.1f} {med(rs, 2) / 1e6:10.1f}")
print(f"{'ratio':12} {med(alln, 0) / med(one, 0):8.2f} {med(alln, 1) / med(one, 1):9.2f} {med(alln, 2) / med(one, 2):10.2f}")
PY
