# Installs what building needs (a C/C++ toolchain for RocksDB's bindings, sccache), only when
# missing, and sets the shared build environment (.ci/env.sh). Sourced by scripts/demo.sh and
# by scripts/setup.sh, which adds what the tests need.
_xs_need=()
command -v clang >/dev/null 2>&1 || _xs_need+=(clang)
[ -e /usr/lib/llvm-14/lib/libclang.so ] || ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1 || _xs_need+=(libclang-dev)
command -v sccache >/dev/null 2>&1 || _xs_need+=(sccache)
if [ ${#_xs_need[@]} -gt 0 ]; then
  echo "installing: ${_xs_need[*]}" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${_xs_need[@]}" >/dev/null
fi
unset _xs_need
. "$(dirname "${BASH_SOURCE[0]}")/../.ci/env.sh"
