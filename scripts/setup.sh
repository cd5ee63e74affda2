# Installs what building and testing need, only when missing (building: scripts/build-env.sh;
# here the test servers and peer tools). Sourced by the test, package and bench scripts.
. "$(dirname "${BASH_SOURCE[0]}")/build-env.sh"
_xs_need=()
# Pull tests start a real sshd on 127.0.0.1; the pull benchmark compares with rsync.
[ -x /usr/sbin/sshd ] || _xs_need+=(openssh-server)
command -v ssh-keygen >/dev/null 2>&1 || _xs_need+=(openssh-client)
command -v rsync >/dev/null 2>&1 || _xs_need+=(rsync)
# The import tests make a real history with Debian's rsnapshot.
command -v rsnapshot >/dev/null 2>&1 || _xs_need+=(rsnapshot)
# Mount tests mount for real (fusermount3 from fuse3; the kernel's /dev/fuse).
command -v fusermount3 >/dev/null 2>&1 || _xs_need+=(fuse3)
# NFS tests use a userspace NFS client (no kernel module): nfs-ls, nfs-cat, nfs-cp.
command -v nfs-ls >/dev/null 2>&1 || _xs_need+=(libnfs-utils)
# Web front tests drive Debian's headless chromium through its WebDriver (chromedriver).
command -v chromium >/dev/null 2>&1 || _xs_need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || _xs_need+=(chromium-driver)
# ... and mount its WebDAV with davfs2 (through /dev/fuse).
command -v mount.davfs >/dev/null 2>&1 || _xs_need+=(davfs2)
if [ ${#_xs_need[@]} -gt 0 ]; then
  echo "installing: ${_xs_need[*]}" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${_xs_need[@]}" >/dev/null
fi
unset _xs_need
# Object-store tests run a real Garage cluster on 127.0.0.1 (tests/src/garage.rs). Built from
# crates.io once per machine into the tools cache (about 10 minutes on 2 cores), with its own
# target directory so that the project's builds never rebuild it.
_xs_tools="$HOME/.cache/xstore/tools"
if ! [ -x "$_xs_tools/bin/garage" ]; then
  echo "installing garage 2.5.0 into $_xs_tools" >&2
  CARGO_TARGET_DIR="$HOME/.cache/xstore/garage-build" \
    cargo install --locked --quiet garage --version 2.5.0 --root "$_xs_tools"
fi
# The lease tests need a store with AWS S3's conditional writes, which Garage ignores:
# moto's standalone server from PyPI, in a virtualenv of its own (tests/src/moto.rs).
if ! [ -x "$_xs_tools/moto/bin/moto_server" ]; then
  echo "installing moto[server] 5.1.18 into $_xs_tools/moto" >&2
  python3 -m venv "$_xs_tools/moto"
  "$_xs_tools/moto/bin/pip" install --quiet --disable-pip-version-check 'moto[server]==5.1.18'
fi
unset _xs_tools
# Encrypted repositories made by the tests keep their key files here, not in /etc/xstore/keys.
if [ -z "${XSTORE_KEY_DIR:-}" ]; then
  export XSTORE_KEY_DIR="${TMPDIR:-/tmp}/xstore-test-keys"
  mkdir -p -m 700 "$XSTORE_KEY_DIR"
fi
