"""paysim's own service with one rule of its contract broken on purpose, for the conformance
tests: ``python broken_service.py SERVICE BREAKAGE`` runs `paysim service SERVICE` so."""

from __future__ import annotations

import sys
import uuid

from paysim.cli import main
from paysim.domain import cards
from paysim.pipeline import notifier


def _skip_cvv() -> None:
    """An authorizer that takes any CVV (no N7)."""
    cards.valid_cvv = lambda cvv, network: True


def _random_event_id() -> None:
    """A notifier that gives each notification a new event id (clients cannot deduplicate
    a redelivered outcome)."""
    notifier.event_id = lambda payment_id: f"evt_{uuid.uuid4().hex}"


BREAKAGES = {"skip-cvv": _skip_cvv, "random-event-id": _random_event_id}

if __name__ == "__main__":
    service, breakage = sys.argv[1:3]
    BREAKAGES[breakage]()
    main(["service", service])
