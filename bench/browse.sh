#!/usr/bin/env bash
# Browsing benchmark: a repository with 100 snapshots of a small tree plus one 1 GiB file.
# Prints the time until a FUSE mount is up and to the first `ls` of its root and of a host
# directory; sequential read of the 1 GiB file through the mount vs `xstore cat` vs the
# original file (page cache dropped before each, when root); random 4 KiB reads per second
# through the mount, cold and warm.
#
#   bench/browse.sh               # SNAPSHOTS=100, FILE_MIB=1024
#   SNAPSHOTS=20 FILE_MIB=256 bench/browse.sh   # quicker (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
DATA=none
. bench/data.sh
snapshots=${SNAPSHOTS:-100}
file_mib=${FILE_MIB:-1024}
work="$(mktemp -d -p "$cache")"
mnt="$work/mnt"
mount_pid=""
cleanup() {
  [ -n "$mount_pid" ] && kill "$mount_pid" 2>/dev/null && wait "$mount_pid" 2>/dev/null
  fusermount3 -u -z "$mnt" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
export XSTORE_REPO="$work/repo"
src="$work/src"
mkdir -p "$src/etc" "$mnt"
python3 - "$src/big.bin" "$file_mib" <<'EOF'
import random, sys
random.seed(7)
with open(sys.argv[1], "wb") as f:
    for _ in range(int(sys.argv[2]) // 64):
        f.write(random.randbytes(64 << 20))
EOF
for i in $(seq 1 200); do echo "setting $i = value" > "$src/etc/conf$i"; done
"$XSTORE" init -q
# One tier that keeps them all: the root lists hourly.0 … hourly.N-1 and hosts.
"$XSTORE" -q tiers --set "hourly=$snapshots" > /dev/null
for i in $(seq 1 "$snapshots"); do
  echo "run $i" > "$src/etc/changing"
  "$XSTORE" backup -q --host web1 "$src"
done
echo "repository: $snapshots snapshots of web1 ($file_mib MiB file + 201 small files); $(nproc) cores" >&2
drop() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
now() { date +%s.%N; }
ms() { python3 -c "print(f'{($2 - $1) * 1000:.1f}')" "$@"; }

drop
t0=$(now)
"$XSTORE" -q mount "$mnt" & mount_pid=$!
until grep -q " $mnt " /proc/self/mountinfo; do sleep 0.005; done
t1=$(now)
ls -la "$mnt" > /dev/null
t2=$(now)
ls -la "$mnt/hosts/web1" > /dev/null
t3=$(now)
entries=$(ls "$mnt/hosts/web1" | wc -l)
rel="${src#/}/big.bin"
printf '%-44s %10s ms\n' "mount up (open repository, load catalog)" "$(ms "$t0" "$t1")"
printf '%-44s %10s ms   (target < 100 ms)\n' "first ls -la of the root ($(ls "$mnt" | wc -l) entries)" "$(ms "$t1" "$t2")"
printf '%-44s %10s ms   (target < 100 ms)\n' "first ls -la of hosts/web1 ($entries entries)" "$(ms "$t2" "$t3")"

rate() { python3 -c "print(f'{$1 / 1048576 / ($3 - $2):.0f}')" "$@"; }
size=$(stat -c %s "$src/big.bin")
drop; a=$(now); cat "$src/big.bin" > /dev/null; b=$(now)
orig=$(rate "$size" "$a" "$b")
drop; a=$(now); "$XSTORE" cat web1@latest "/$rel" > /dev/null; b=$(now)
cat_rate=$(rate "$size" "$a" "$b")
drop; a=$(now); dd if="$mnt/hosts/web1/latest/$rel" of=/dev/null bs=1M status=none; b=$(now)
mount_rate=$(rate "$size" "$a" "$b")
printf '%-44s %10s MiB/s\n' "sequential read, original file" "$orig"
printf '%-44s %10s MiB/s\n' "sequential read, xstore cat" "$cat_rate"
printf '%-44s %10s MiB/s   %s× cat (target >= 0.5)\n' "sequential read, through the mount" "$mount_rate" \
  "$(python3 -c "print(f'{$mount_rate / $cat_rate:.2f}')")"

random_reads() {
  python3 - "$1" <<'EOF'
import os, random, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
rng = random.Random(11)
n, t0 = 0, time.monotonic()
while time.monotonic() - t0 < 5:
    os.pread(fd, 4096, rng.randrange(0, size - 4096) & ~4095)
    n += 1
print(f"{n / (time.monotonic() - t0):.0f}")
EOF
}
drop
printf '%-44s %10s reads/s\n' "random 4 KiB reads, mount (cold, 5 s)" "$(random_reads "$mnt/hosts/web1/latest/$rel")"
printf '%-44s %10s reads/s\n' "random 4 KiB reads, mount (again, warm)" "$(random_reads "$mnt/hosts/web1/latest/$rel")"
drop
printf '%-44s %10s reads/s\n' "random 4 KiB reads, original (cold, 5 s)" "$(random_reads "$src/big.bin")"
