#!/usr/bin/env bash
# Prints the directory of an evolving Debian 12 series for the benchmarks: round-0 … round-6,
# each a full copy of one host's root at one point in its life, made once (about 10 minutes)
# under ~/.cache/xstore/bench/evolving-bookworm.
#
# round-0 is a debootstrap minbase with two users and their logs; each later round installs
# and purges packages with apt in a chroot (a policy-rc.d keeps daemons down), edits config
# files and users' files, appends to logs and rotates them the way logrotate does (rename,
# compress the older one). The package list and the mirror are fixed and the edits and log
# lines come from a seeded generator, so reruns compare; package versions follow Debian's
# point releases.
set -euo pipefail
base="$HOME/.cache/xstore/bench/evolving-bookworm"
rounds=7
if [ -e "$base/.complete" ]; then echo "$base"; exit 0; fi
command -v debootstrap >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
rm -rf "$base"
mkdir -p "$base"
root="$base/host"
cleanup() { umount "$root/proc" 2>/dev/null || true; }
trap cleanup EXIT
echo "debootstrap bookworm minbase into $root ..." >&2
debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >/dev/null
cp /etc/resolv.conf "$root/etc/resolv.conf"
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
mount -t proc proc "$root/proc"

in_root() { chroot "$root" env DEBIAN_FRONTEND=noninteractive LC_ALL=C PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
apt_round() { # apt_round "install pkgs…" "purge pkgs…"
  in_root apt-get update -qq >/dev/null
  if [ -n "$1" ]; then in_root apt-get install -y -qq --no-install-recommends $1 >/dev/null; fi
  if [ -n "$2" ]; then in_root apt-get purge -y -qq --auto-remove $2 >/dev/null; fi
  in_root apt-get clean
}

# edit ROUND: deterministic log growth, rotation, config and home edits (seeded by ROUND).
edit() {
  python3 - "$root" "$1" <<'EOF'
import gzip, os, random, shutil, sys
root, rnd = sys.argv[1], int(sys.argv[2])
rng = random.Random(rnd)
log = os.path.join(root, "var/log")
hosts = ["10.0.%d.%d" % (rng.randrange(4), rng.randrange(250)) for _ in range(40)]
paths = ["/", "/index.php", "/wp-login.php", "/static/app.js", "/api/v1/items", "/feed"]
def syslog_lines(n, day):
    for i in range(n):
        t = "Dec %2d %02d:%02d:%02d" % (day, i * 24 // n, rng.randrange(60), rng.randrange(60))
        kind = rng.randrange(4)
        if kind == 0:
            yield f"{t} web1 CRON[{rng.randrange(1000, 30000)}]: (root) CMD (command -v debian-sa1 > /dev/null && debian-sa1 1 1)\n"
        elif kind == 1:
            yield f"{t} web1 sshd[{rng.randrange(1000, 30000)}]: Accepted publickey for alice from {rng.choice(hosts)} port {rng.randrange(30000, 60000)} ssh2\n"
        elif kind == 2:
            yield f"{t} web1 kernel: [{rng.randrange(10**6)}.{rng.randrange(10**6):06d}] eth0: link up, 1000Mbps, full-duplex\n"
        else:
            yield f"{t} web1 systemd[1]: Started session {rng.randrange(10**5)} of user bob.\n"
def access_lines(n, day):
    for i in range(n):
        yield (f'{rng.choice(hosts)} - - [{day:02d}/Dec/2026:{i * 24 // n:02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d} +0000] '
               f'"GET {rng.choice(paths)}?id={rng.randrange(10**6)} HTTP/1.1" {rng.choice([200, 200, 200, 304, 404])} {rng.randrange(100, 90000)} '
               f'"-" "Mozilla/5.0 (X11; Linux x86_64) rv:{rng.randrange(100, 130)}.0"\n')
def rotate(name):
    p = os.path.join(log, name)
    for k in range(5, 1, -1):
        old = f"{p}.{k - 1}.gz"
        if os.path.exists(old): os.replace(old, f"{p}.{k}.gz")
    if os.path.exists(p + ".1"):
        with open(p + ".1", "rb") as f, gzip.GzipFile(p + ".2.gz", "wb", mtime=0) as g: shutil.copyfileobj(f, g)
        os.remove(p + ".1")
    if os.path.exists(p): os.replace(p, p + ".1")
os.makedirs(os.path.join(log, "web"), exist_ok=True)
if rnd % 2 == 0:                      # logrotate runs every other round
    for name in ("syslog", "auth.log", "web/access.log"): rotate(name)
for name, gen, n in (("syslog", syslog_lines, 30000), ("auth.log", syslog_lines, 6000), ("web/access.log", access_lines, 40000)):
    with open(os.path.join(log, name), "a") as f: f.writelines(gen(n, rnd + 1))
# Users' files: a notes file that grows, a project whose files are edited in small places,
# one new binary-ish upload per round.
for user in ("alice", "bob"):
    home = os.path.join(root, "home", user)
    proj = os.path.join(home, "project")
    os.makedirs(proj, exist_ok=True)
    with open(os.path.join(home, "notes.txt"), "a") as f:
        f.writelines(f"round {rnd}: note {i} {rng.random()}\n" for i in range(200))
    for i in range(60):
        p = os.path.join(proj, f"module{i:02d}.py")
        if not os.path.exists(p):
            with open(p, "w") as f:
                f.writelines(f"def f{j}(x):\n    return x * {rng.randrange(1000)} + {j}\n\n" for j in range(400))
        elif rng.random() < 0.2:
            lines = open(p).readlines()
            k = rng.randrange(len(lines))
            lines[k] = f"    return x * {rng.randrange(1000)}  # changed in round {rnd}\n"
            open(p, "w").writelines(lines)
    with open(os.path.join(home, f"upload-{rnd}.bin"), "wb") as f:
        f.write(rng.randbytes(2 * 1024 * 1024))
# Config edits.
with open(os.path.join(root, "etc/hosts"), "a") as f:
    f.write(f"10.1.{rnd}.1 backend{rnd}\n")
motd = os.path.join(root, "etc/motd")
with open(motd, "w") as f: f.write(f"web1: maintenance window round {rnd}\n")
EOF
}

snap() { # snap N: keep this round as a full copy
  cp -a "$root" "$base/round-$1.tmp"
  umount "$base/round-$1.tmp/proc" 2>/dev/null || true
  rm -rf "$base/round-$1.tmp/proc"/* 2>/dev/null || true
  mv "$base/round-$1.tmp" "$base/round-$1"
  echo "round $1: $(du -sm --exclude=proc "$base/round-$1" | cut -f1) MB, $(find "$base/round-$1" -path "$base/round-$1/proc" -prune -o -print | wc -l) entries" >&2
}

in_root useradd -m -s /bin/bash alice
in_root useradd -m -s /bin/bash bob
edit 0
umount "$root/proc"; snap 0; mount -t proc proc "$root/proc"
installs=("python3 less vim-tiny procps iproute2"
  "openssh-server curl git rsync"
  "gcc make libc6-dev"
  "man-db locales logrotate"
  "nginx-light perl"
  "g++ libssl-dev")
purges=("" "" "" "curl git" "" "man-db")
for r in $(seq 1 $((rounds - 1))); do
  echo "round $r: apt install ${installs[$((r - 1))]}; purge ${purges[$((r - 1))]:-nothing} ..." >&2
  apt_round "${installs[$((r - 1))]}" "${purges[$((r - 1))]}"
  [ "$r" = 4 ] && { echo "en_US.UTF-8 UTF-8" >> "$root/etc/locale.gen"; in_root locale-gen >/dev/null; }
  [ "$r" = 2 ] && sed -i 's/^#\?PermitRootLogin.*/PermitRootLogin prohibit-password/' "$root/etc/ssh/sshd_config"
  in_root useradd -m -s /bin/bash "user$r"
  edit "$r"
  umount "$root/proc"; snap "$r"; mount -t proc proc "$root/proc"
done
umount "$root/proc"
rm -rf "$root"
touch "$base/.complete"
echo "$base"
