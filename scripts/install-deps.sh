#!/usr/bin/env bash
# Installs the Debian packages rdag needs to build, test and benchmark; idempotent, quiet when all is present.
set -euo pipefail

pkgs=(
  build-essential cmake ninja-build pkg-config python3
  libibverbs-dev librdmacm-dev ibverbs-providers ibverbs-utils rdmacm-utils perftest
  libfabric-dev libfabric-bin
  libcmocka-dev
  clang
  cppcheck clang-tidy-14 valgrind   # scripts/run-checks, the valgrind stage of run-tests
  openmpi-bin   # the bootstrap test launches real ranks with mpirun
  # ../shared/rdma-vm (Soft-RoCE VM) needs these on the host
  qemu-system-x86 kmod xz-utils iproute2
)

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ]; then
  echo "install-deps: missing packages: ${missing[*]} (run as root to install them)" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
