#!/usr/bin/env bash
# Install what tcptracer-exporter needs on a Debian/Ubuntu machine, then build it (only what is out of
# date). Idempotent: installs only what is missing. Run as root (or with sudo available).
#
#   scripts/setup.sh          what building and running need (the run command, scripts/run.sh)
#   scripts/setup.sh --test   that, and what the tests need (the test command, scripts/test.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'setup: %s\n' "$*" >&2; exit 1; }

with_tests=false
case "${1:-}" in
  --test) with_tests=true ;;
  '') ;;
  *) die "unknown argument $1 (--test adds what the tests need)" ;;
esac

# build and run: clang/llvm (the BPF object), libbpf/libelf/zlib (the addon links them), make/g++/python3
# and pkg-config (node-gyp)
packages=(clang llvm libbpf-dev libelf-dev zlib1g-dev make g++ python3 pkg-config)
optional=()
if $with_tests; then
  # the tests: iproute2 (ip netns), clang-format (format check), prometheus (promtool and a real server),
  # systemd (systemd-analyze), liburing-dev (io_uring test helper), openssl and curl (test certificates
  # and a real TLS client), ethtool (the full-rate test's veth pair), mmdebstrap (the image build test's
  # clean Debian roots) and libcap2-bin (getcap, to check the image's file capabilities), unzip (helm
  # and kubectl out of their npm package); the VM kernel matrix
  # (scripts/vm-matrix.sh): qemu-system-x86, busybox-static and cpio (the guest's initramfs), kmod
  # (depmod for the guest kernel's modules)
  packages+=(iproute2 clang-format prometheus systemd liburing-dev openssl curl ethtool mmdebstrap libcap2-bin unzip
    qemu-system-x86 busybox-static cpio kmod)
  # bpftool regenerates vmlinux.h (scripts/gen-vmlinux.sh); bpftrace is the benchmark's peer
  optional+=(bpftool bpftrace)
fi

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else die "need root to run: $*"; fi
}

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

missing=()
for p in "${packages[@]}"; do installed "$p" || missing+=("$p"); done
opt_missing=()
for p in "${optional[@]}"; do installed "$p" || opt_missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ] || [ ${#opt_missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || die "apt-get not found: install ${missing[*]} by hand"
  say "apt-get install ${missing[*]} ${opt_missing[*]}"
  as_root apt-get update -qq
  if [ ${#missing[@]} -gt 0 ]; then
    # install services (prometheus) without starting them: the tests run their own instances
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
      trap 'as_root rm -f "$policy"' EXIT
      printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
      as_root chmod +x "$policy"
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  for p in "${opt_missing[@]}"; do
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$p" >/dev/null 2>&1 ||
      say "optional package $p is not available here (bpftool: scripts/gen-vmlinux.sh; bpftrace: npm run bench)"
  done
fi

command -v node >/dev/null || die "Node.js 20 or newer is required (https://nodejs.org or your distribution's nodejs package)"
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || die "Node.js 20 or newer is required, found $(node --version)"

# npm dependencies: reinstall when the lockfile changed since the last install
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "npm ci"
  npm ci --no-audit --no-fund --loglevel=error
fi

# the product, each part only when out of date; the test helpers too with --test
npm run -s build
if $with_tests; then npm run -s build:helpers; fi
