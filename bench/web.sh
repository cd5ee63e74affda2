#!/usr/bin/env bash
# Web front benchmark: `xstore serve-web` on a Unix socket (as behind a reverse proxy), driven
# by curl. Prints the time of the first page of a 100,000-entry directory (cold: the view
# loads the tree; warm: cached), the speed of downloading a 1 GiB file against `xstore cat`
# to /dev/null (page cache dropped before each, when root; every run printed), and the
# server's peak memory while 100 downloads of that file run at once.
#
#   bench/web.sh                  # ENTRIES=100000, FILE_MIB=1024, RUNS=3, DOWNLOADS=100
#   ENTRIES=20000 FILE_MIB=256 bench/web.sh     # quicker
set -euo pipefail
cd "$(dirname "$0")/.."
need=(curl)
DATA=none
. bench/data.sh
entries=${ENTRIES:-100000}
file_mib=${FILE_MIB:-1024}
runs=${RUNS:-3}
downloads=${DOWNLOADS:-100}
work="$(mktemp -d -p "$cache")"
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
export XSTORE_REPO="$work/repo"
src="$work/src"
mkdir -p "$src/big" "$src/files"
python3 - "$src" "$file_mib" "$entries" <<'EOF'
import os, random, sys
random.seed(7)
with open(os.path.join(sys.argv[1], "files", "big.bin"), "wb") as f:
    for _ in range(int(sys.argv[2]) // 64):
        f.write(random.randbytes(64 << 20))
for i in range(int(sys.argv[3])):
    open(os.path.join(sys.argv[1], "big", f"entry-{i:07d}.txt"), "w").close()
EOF
"$XSTORE" init -q --no-encryption
"$XSTORE" backup -q --host web1 "$src"
printf '[[account]]\nname = "acme"\nallocation = "10 GiB"\nno_root_squash = true\n\n[[account.host]]\nname = "web1"\naddress = "127.0.0.1"\n' > "$work/hosts.toml"
echo "correct horse battery" > "$work/pw"
"$XSTORE" -q web-user add alice --account acme --password-file "$work/pw" \
  --users "$work/users.toml" --inventory "$work/hosts.toml"
"$XSTORE" serve-web --unix "$work/web.sock" --inventory "$work/hosts.toml" \
  --users "$work/users.toml" --audit-log "$work/audit.log" --history "$work/history.jsonl" \
  --max-downloads 1000 > "$work/serve.log" 2>&1 & server_pid=$!
until [ -S "$work/web.sock" ]; do sleep 0.05; done
# The source sits under /root (0700): the account reads as its hosts' root would, unsquashed.
echo "repository: one snapshot of web1 ($entries-entry directory, $file_mib MiB file); $(nproc) cores" >&2

web() { curl -s --unix-socket "$work/web.sock" "$@"; }
token=$(web -D - -o /dev/null http://localhost/login | sed -n 's/^set-cookie: __Host-xstore-login=\([0-9a-f]*\).*/\1/ip')
cookie=$(web -D - -o /dev/null -H "Cookie: __Host-xstore-login=$token" \
  --data-urlencode user=alice --data-urlencode "password=correct horse battery" \
  --data-urlencode "csrf=$token" http://localhost/login \
  | sed -n 's/^set-cookie: \(__Host-xstore=[0-9a-f]*\).*/\1/ip')
[ -n "$cookie" ] || { echo "login failed" >&2; exit 1; }
rel="${src#/}"
page_url="http://localhost/browse/web1/hourly.0/$rel/big/"
file_url="http://localhost/download/web1/hourly.0/$rel/files/big.bin"

drop() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
now() { date +%s.%N; }
ms() { python3 -c "print(f'{($2 - $1) * 1000:.0f}')" "$@"; }
rate() { python3 -c "print(f'{$1 / 1048576 / ($3 - $2):.0f}')" "$@"; }

for kind in cold warm warm; do
  a=$(now); code=$(web -o "$work/page.html" -w '%{http_code}' -H "Cookie: $cookie" "$page_url"); b=$(now)
  [ "$code" = 200 ] || { echo "page: HTTP $code" >&2; exit 1; }
  printf '%-52s %8s ms   (target < 1000 ms)\n' "page 1 of a $entries-entry directory, $kind" "$(ms "$a" "$b")"
done
grep -o 'class="entry"' "$work/page.html" | wc -l | xargs printf '%-52s %8s\n' "entries on that page"

size=$(stat -c %s "$src/files/big.bin")
cats=(); gets=()
for i in $(seq 1 "$runs"); do
  drop; a=$(now); "$XSTORE" cat web1@latest "/$rel/files/big.bin" > /dev/null; b=$(now)
  cats+=("$(rate "$size" "$a" "$b")")
  drop; a=$(now); web -o /dev/null -H "Cookie: $cookie" "$file_url"; b=$(now)
  gets+=("$(rate "$size" "$a" "$b")")
done
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
printf '%-52s %8s MiB/s   runs: %s\n' "xstore cat > /dev/null" "$(median "${cats[@]}")" "${cats[*]}"
printf '%-52s %8s MiB/s   runs: %s\n' "download over the web front" "$(median "${gets[@]}")" "${gets[*]}"
printf '%-52s %8s ×       (target >= 0.5)\n' "download / cat (medians)" \
  "$(python3 -c "print(f'{$(median "${gets[@]}") / $(median "${cats[@]}"):.2f}')")"

rss() { awk '/^VmRSS:/ {print $2}' "/proc/$server_pid/status"; }
hwm() { awk '/^VmHWM:/ {print $2}' "/proc/$server_pid/status"; }
before=$(rss)
pids=()
for i in $(seq 1 "$downloads"); do
  web -o /dev/null --limit-rate 20M -H "Cookie: $cookie" "$file_url" & pids+=($!)
done
peak=0
for i in $(seq 1 40); do
  r=$(rss); [ "$r" -gt "$peak" ] && peak=$r
  sleep 0.25
done
kill "${pids[@]}" 2>/dev/null || true
wait "${pids[@]}" 2>/dev/null || true
printf '%-52s %8s MiB\n' "server RSS before" "$((before / 1024))"
printf '%-52s %8s MiB   (VmHWM so far %s MiB)\n' "server RSS peak, $downloads downloads at 20 MB/s each, 10 s" \
  "$((peak / 1024))" "$(( $(hwm) / 1024 ))"
