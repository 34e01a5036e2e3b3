#!/usr/bin/env bash
# Install what the tests need (scripts/bootstrap.sh --test: the test, bench and lzo extras,
# the NBD clients, QEMU and the guest's kernel and tools), then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --test
exec .venv/bin/python -m pytest "$@"
