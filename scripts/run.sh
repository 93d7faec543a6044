#!/usr/bin/env bash
# The run command: install what is missing, build, then start tcptracer-exporter
# with the given arguments (default: the exporter daemon on :19427). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec node dist/src/cli.js "$@"
