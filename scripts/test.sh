#!/usr/bin/env bash
# Set up paysim on a fresh Debian/Ubuntu machine, then run ruff and the whole test suite with
# pytest. The tests start their own Kafka broker and redis-server on free ports (and headless
# Chromium for the dashboard).
SETUP_FOR_TESTS=1  # chromium and chromium-driver too, for the dashboard's browser test
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ROOT"
"$VENV/bin/ruff" check .
"$VENV/bin/python" -m pytest "$@"
