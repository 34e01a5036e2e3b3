#!/usr/bin/env bash
# Install everything, then run ramster (arguments go to `ramster`; default: `ramster node`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
if (($# == 0)); then set -- node; fi
exec .venv/bin/ramster "$@"
