#!/usr/bin/env bash
# Check (or with --fix, apply) .clang-format on our C and C++ sources.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v clang-format >/dev/null || { echo "clang-format is missing: apt-get install clang-format (scripts/setup.sh does)" >&2; exit 1; }
mapfile -t files < <(git ls-files -co --exclude-standard -- 'bpf/*.c' 'bpf/*.h' 'addon/src/*.cpp' 'addon/src/*.hpp' 'test/helpers/*.c' | grep -v '^bpf/vmlinux.h$')
[ ${#files[@]} -gt 0 ] || exit 0
if [ "${1:-}" = "--fix" ]; then
  clang-format -i "${files[@]}"
else
  clang-format --dry-run --Werror "${files[@]}"
fi
