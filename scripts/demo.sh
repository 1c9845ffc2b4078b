#!/usr/bin/env bash
# Set up paysim on a fresh Debian/Ubuntu machine and bring the local stack up.
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
"$PAYSIM" stack up
"$PAYSIM" stack status
say "paysim is installed in $VENV: run '$PAYSIM --help', or 'source .venv/bin/activate' first"
