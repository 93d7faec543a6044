#!/usr/bin/env bash
# The run command: install what is missing, build, then start tcptracer-exporter
# with the given arguments (default: the live `trace` view). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
[ $# -gt 0 ] || set -- trace
exec node dist/src/cli.js "$@"
