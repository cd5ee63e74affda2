#!/usr/bin/env bash
# Mounts README's NFS example with the Linux kernel's own NFS client: Debian 12's kernel boots
# in qemu (software emulation, ~10 s) with a busybox initramfs, and mounts `serve-nfs` on the
# host over a tap device with the fstab line's options, three ways (a snapshot directory,
# the account's whole tree, a host's `latest`). Checks the files' bytes, that squashed root
# is refused a 0600 file of uid 1000 which uid 1000 reads, and that writes fail with EROFS.
# The tests use libnfs (no kernel module needed); this is the check for the kernel's client.
# Needs root (tap device, port 2049). Usage: scripts/nfs-kernel-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/build-env.sh
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
cargo build --release --locked -p xstore-cli >&2
XSTORE="$CARGO_TARGET_DIR/release/xstore"
kcache="$HOME/.cache/xstore/tools/kernel"
mkdir -p "$kcache"
kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-6/{print $2; exit}')
if ! ls "$kcache"/"$kpkg"_*.deb >/dev/null 2>&1; then
  (cd "$kcache" && apt-get download "$kpkg" 2>/dev/null)
fi
work=$(mktemp -d)
chmod 755 "$work"   # the backed-up path's directories: searchable by others, as usual
tap="xnfs$$"
trap 'pkill -f "serve-nfs --listen 10.9.0.1:2049" 2>/dev/null; ip link del "$tap" 2>/dev/null; rm -rf "$work"' EXIT
dpkg-deb -x "$kcache"/"$kpkg"_*.deb "$work/k"
kver=$(ls "$work/k/lib/modules")
depmod -b "$work/k" "$kver"
mkdir -p "$work/initrd"/{bin,mods,proc,sys,dev,backup,etc}
cp /bin/busybox "$work/initrd/bin/"
python3 - "$work/k/lib/modules/$kver" "$work/initrd" <<'PY'
import shutil, sys
mods, initrd = sys.argv[1], sys.argv[2]
dep = {}
for line in open(mods + "/modules.dep"):
    m, _, d = line.partition(":")
    dep[m] = d.split()
order = []
def visit(m):
    if m in order:
        return
    for d in dep[m]:
        visit(d)
    order.append(m)
for m in ("kernel/drivers/virtio/virtio_pci.ko", "kernel/drivers/net/virtio_net.ko", "kernel/fs/nfs/nfsv3.ko"):
    visit(m)
with open(initrd + "/modorder", "w") as f:
    for m in order:
        shutil.copy(mods + "/" + m, initrd + "/mods/")
        f.write(m.rsplit("/", 1)[1] + "\n")
PY
# mount(2) with the text options mount.nfs hands the kernel (it adds addr=).
cat > "$work/nfsmount.c" <<'C'
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
int main(int argc, char **argv) {
    if (argc != 4) return 2;
    if (mount(argv[1], argv[2], "nfs", MS_RDONLY, argv[3]) != 0) {
        fprintf(stderr, "mount %s: %s\n", argv[1], strerror(errno));
        return 32;
    }
    return 0;
}
C
gcc -static -O2 -o "$work/initrd/nfsmount" "$work/nfsmount.c"
printf 'root:x:0:0::/:/bin/sh\nu1000:x:1000:1000::/:/bin/sh\n' > "$work/initrd/etc/passwd"
printf 'root:x:0:\nu1000:x:1000:\n' > "$work/initrd/etc/group"
printf 'root::1::::::\nu1000::1::::::\n' > "$work/initrd/etc/shadow"
data="$work/data"
mkdir -p "$data/sub"
echo "hello from web1" > "$data/hello.txt"
head -c 1500000 /dev/urandom > "$data/file.bin"
echo "uid 1000 only" > "$data/sub/x"
chown 1000:1000 "$data/sub/x"; chmod 600 "$data/sub/x"
rel="${data#/}"
cat > "$work/initrd/init" <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
while read m; do insmod /mods/\$m || echo "insmod \$m failed"; done < /modorder
ip link set lo up; ip link set eth0 up; ip addr add 10.9.0.2/24 dev eth0
sleep 1
opts="vers=3,proto=tcp,port=2049,mountport=2049,nolock,soft,addr=10.9.0.1"
for src in /daily.0/web1.example.net / /hosts/web1.example.net/latest; do
  echo "== mount \$src"
  /nfsmount "10.9.0.1:\$src" /backup "\$opts"; echo "mount rc=\$?"
  case \$src in /) p=/backup/daily.0/web1.example.net/$rel ;; *) p=/backup/$rel ;; esac
  md5sum \$p/hello.txt \$p/file.bin | sed 's|  .*/|  |'
  cat \$p/sub/x >/dev/null 2>&1; echo "squashed root reads sub/x rc=\$?"
  su -s /bin/sh u1000 -c "cat \$p/sub/x"; echo "uid 1000 reads sub/x rc=\$?"
  touch \$p/new 2>&1 | sed 's|.*: ||'
  umount /backup; echo "umount rc=\$?"
done
poweroff -f
EOF
chmod +x "$work/initrd/init"
(cd "$work/initrd" && find . | cpio -o -H newc --quiet | gzip -1 > "$work/initrd.gz")

"$XSTORE" -q --repo "$work/repo" init
"$XSTORE" -q --repo "$work/repo" backup --host web1.example.net --tier daily "$data"
cat > "$work/hosts.toml" <<EOF
[[account]]
name = "acme"
allocation = "1 GiB"
nfs_port = 2049
[[account.host]]
name = "web1.example.net"
address = "10.9.0.2"
EOF
ip tuntap add dev "$tap" mode tap
ip addr add 10.9.0.1/24 dev "$tap"
ip link set "$tap" up
"$XSTORE" --repo "$work/repo" serve-nfs --listen 10.9.0.1:2049 --inventory "$work/hosts.toml" > "$work/nfs.log" 2>&1 &
sleep 2
timeout 300 qemu-system-x86_64 -accel tcg -m 512 -smp 1 -kernel "$work/k/boot/vmlinuz-$kver" \
  -initrd "$work/initrd.gz" -append "console=ttyS0 panic=-1 quiet" -nographic -no-reboot \
  -netdev "tap,id=n0,ifname=$tap,script=no,downscript=no" -device virtio-net-pci,netdev=n0 \
  > "$work/vm.log" 2>&1 || true
got=$(tr -d '\r' < "$work/vm.log" | sed -n 's/^.*\(== mount\)/\1/; /^== mount/,$p' | grep -v '^\s*$' | grep -v 'reboot: Power down')
want=$(for src in /daily.0/web1.example.net / /hosts/web1.example.net/latest; do
  echo "== mount $src"; echo "mount rc=0"
  (cd "$data" && md5sum hello.txt file.bin)
  echo "squashed root reads sub/x rc=1"; echo "uid 1000 only"; echo "uid 1000 reads sub/x rc=0"
  echo "Read-only file system"; echo "umount rc=0"
done)
echo "Linux $kver, NFSv3 over TCP, options vers=3,proto=tcp,port=2049,mountport=2049,nolock,soft"
if [ "$got" = "$want" ]; then
  echo "PASS: three mounts, bytes equal, squashed root refused, uid 1000 served, writes EROFS"
else
  diff <(echo "$want") <(echo "$got") || true
  cp "$work/vm.log" "${TMPDIR:-/tmp}/nfs-kernel-check.vm.log"
  echo "FAIL (guest console: ${TMPDIR:-/tmp}/nfs-kernel-check.vm.log)"; exit 1
fi
