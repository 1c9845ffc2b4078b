#!/usr/bin/env bash
# Set up paysim on a fresh Debian/Ubuntu machine and run the demo: the local stack, the three
# services and the HTTP API in the background, then 1000 fake payments through them.
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
"$PAYSIM" stack up
"$PAYSIM" run-all --detach
"$PAYSIM" send --count 1000
cat <<TEXT

paysim is installed in $VENV ('source .venv/bin/activate' puts it on your PATH).
  $PAYSIM ps                 the running services
  $PAYSIM status <id>        one payment's outcome and timeline
  $PAYSIM send --count 5000  more payments
  $PAYSIM stop               stop the services;  $PAYSIM stack down  stops Kafka and Redis
TEXT
