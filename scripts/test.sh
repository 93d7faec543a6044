#!/usr/bin/env bash
# The test command: install what is missing, build, then lint, type-check and run
# every test. Privileged tests need root; under CI=true they run or fail.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
exec npm test
