#!/usr/bin/env bash
# Install everything, then run ramster (arguments go to `ramster`; default: the engine benchmark).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
if (($# == 0)); then set -- bench engine; fi
exec .venv/bin/ramster "$@"
