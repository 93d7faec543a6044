#!/usr/bin/env bash
# Regenerate bpf/vmlinux.h from the running kernel's BTF. The committed header is
# what the build uses: CO-RE relocates field offsets at load time, so it need not
# match the target kernel exactly.
set -euo pipefail
btf=${1:-/sys/kernel/btf/vmlinux}
out=$(dirname "$0")/../bpf/vmlinux.h
command -v bpftool >/dev/null || { echo "bpftool is missing: apt-get install bpftool" >&2; exit 1; }
[ -r "$btf" ] || { echo "no BTF at $btf: the kernel needs CONFIG_DEBUG_INFO_BTF=y" >&2; exit 1; }
bpftool btf dump file "$btf" format c > "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out from $btf"
