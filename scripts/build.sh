#!/usr/bin/env bash
# Build the product, each part only when it is out of date: the BPF object (.output/), the addon
# (addon/build/) and the TypeScript (dist/). `npm run build` runs this; test helpers are not part of
# it (`npm run build:helpers`, which the test command runs). A build with nothing to do takes about a
# second, so the run command can call it on every start.
#
#   scripts/build.sh            build what is out of date
#   scripts/build.sh --force    rebuild everything
set -euo pipefail
cd "$(dirname "$0")/.."

force=false
case "${1:-}" in
  --force) force=true ;;
  '') ;;
  *) printf 'build: unknown argument %s (--force rebuilds everything)\n' "$1" >&2; exit 2 ;;
esac

say() { printf '  %-8s %s\n' "$1" "$2" >&2; }

# newer_than OUTPUT PATH...: true when OUTPUT is missing or any file under the PATHs is newer than it
newer_than() {
  local out=$1
  shift
  [ -e "$out" ] || return 0
  [ -n "$(find "$@" -newer "$out" -type f -print -quit 2>/dev/null)" ]
}

# The BPF object: make knows its inputs
make -s -C bpf

# node-gyp builds against the running Node's headers: those installed beside it when there are
# (a distribution's nodejs, a release tarball, the node image), else node-gyp's own download
if [ -z "${npm_config_nodedir:-}" ]; then
  node_prefix=$(dirname "$(dirname "$(node -p process.execPath)")")
  if [ -f "$node_prefix/include/node/node_api.h" ]; then export npm_config_nodedir=$node_prefix; fi
fi

# The addon: configured once per Node ABI (node-gyp builds against the running Node's headers), then
# built incrementally by make; a new Node, or binding.gyp changed, configures it again
addon_stamp=addon/build/.configured-for
want_abi="$(node -p 'process.versions.modules + " " + process.execPath + " " + process.version')"
if $force || [ ! -f addon/build/Makefile ] || [ ! -f "$addon_stamp" ] ||
  [ "$(cat "$addon_stamp")" != "$want_abi" ] || [ addon/binding.gyp -nt "$addon_stamp" ]; then
  say GYP "configure (Node $(node --version))"
  node-gyp configure --directory=addon --silent >/dev/null
  printf '%s\n' "$want_abi" >"$addon_stamp"
fi
if newer_than addon/build/Release/tcptracer.node addon/src bpf/tcptracer.h "$addon_stamp"; then
  say CXX addon/build/Release/tcptracer.node
  node-gyp build --directory=addon --silent >/dev/null
  touch addon/build/Release/tcptracer.node
fi

# The TypeScript: tsc when a source or a compiler setting is newer than the last emit
ts_stamp=dist/.built
if $force || newer_than "$ts_stamp" src tsconfig.json tsconfig.build.json package-lock.json; then
  say TSC dist/
  tsc -p tsconfig.build.json
  touch "$ts_stamp"
fi
