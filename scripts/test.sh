#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests need
# (Node.js if missing, the JS @ucanto peers in fixtures/js, Chromium and
# playwright-core for the dashboard's browser test, moto for the
# DynamoDB backend), checks formatting and lints, then runs every test of the
# workspace with one shared build.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
fi
(cd fixtures/js && npm ci --no-audit --no-fund --loglevel=error)
# The dashboard's browser test drives Debian's chromium with playwright-core.
if ! command -v chromium >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)

# The DynamoDB store backend (feature etracker-server/dynamodb) is tested
# against moto's DynamoDB emulator on a free loopback port, served from one
# thread (scripts/moto_server.py says why, and what it changes for speed).
MOTO_VERSION=5.2.1
if [ "$(python3 -c 'import moto, flask, flask_cors; print(moto.__version__)' 2>/dev/null)" != "$MOTO_VERSION" ]; then
    python3 -m pip install --quiet "moto[server]==$MOTO_VERSION"
fi
MOTO_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 scripts/moto_server.py "$MOTO_PORT" >/dev/null 2>&1 &
MOTO_PID=$!
trap 'kill "$MOTO_PID" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' "$MOTO_PORT" 2>/dev/null && break
    kill -0 "$MOTO_PID" 2>/dev/null || { echo "moto failed to start" >&2; exit 1; }
    sleep 0.2
done
export ETRACKER_TEST_DYNAMODB="http://127.0.0.1:$MOTO_PORT"

cargo fmt --all --check
cargo clippy --workspace --all-targets --features etracker-server/dynamodb,etracker-e2e/dynamodb --quiet -- -D warnings
cargo test --workspace --features etracker-server/dynamodb,etracker-e2e/dynamodb
