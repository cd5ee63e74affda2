#!/usr/bin/env bash
# Prints the path of a Debian 12 system tree for the benchmarks, made once with debootstrap
# (minbase plus a fixed package list from deb.debian.org, about 660 MB and 15k entries: the
# binaries, libraries and small config files of a real host) under ~/.cache/xstore/bench.
set -euo pipefail
dir="$HOME/.cache/xstore/bench/debian-bookworm-root"
packages=python3,perl,openssh-server,git,curl,vim-tiny,less,locales,man-db,iproute2,procps,rsync,gcc
if [ ! -e "$dir/.complete" ]; then
  command -v debootstrap >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
  rm -rf "$dir.tmp"
  echo "debootstrap bookworm into $dir (about a minute) ..." >&2
  debootstrap --variant=minbase --include="$packages" bookworm "$dir.tmp" http://deb.debian.org/debian >/dev/null
  rm -rf "$dir"; mv "$dir.tmp" "$dir"; touch "$dir/.complete"
fi
echo "$dir"
