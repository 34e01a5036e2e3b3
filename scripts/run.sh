#!/usr/bin/env bash
# Install what a node needs (scripts/bootstrap.sh, no test or bench packages), then run
# ramster: the arguments go to `ramster` (default: `ramster node`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
if (($# == 0)); then set -- node; fi
exec .venv/bin/ramster "$@"
