#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests need
# (the JS @ucanto peers in fixtures/js), checks formatting and lints, then runs
# every test of the workspace with one shared build.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v node >/dev/null || { echo "node (>= 18) is required: apt-get install nodejs npm" >&2; exit 1; }
(cd fixtures/js && npm ci --no-audit --no-fund --loglevel=error)

cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace
