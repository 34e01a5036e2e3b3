#!/usr/bin/env bash
# Install everything (the test-only Debian packages too: see bootstrap.sh --test), then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --test
exec .venv/bin/python -m pytest "$@"
