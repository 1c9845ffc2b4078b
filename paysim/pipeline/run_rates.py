"""Each run's own behaviour (issuer rates, hold TTL, settlement window), as `paysim send` set
it from its scenario, cached per process: the processor, the ledger service and the
settlement closer each read it for the runs they see."""

from __future__ import annotations

import logging

import redis

from paysim.domain.decisions import IssuerRates
from paysim.pipeline import store

RUNS_KEPT = 1000


class RunRates:
    """Reads a run's setting once and keeps the latest ``RUNS_KEPT`` runs'."""

    def __init__(self, client: redis.Redis, default: IssuerRates) -> None:
        self.client = client
        self.default = default
        self._known: dict[str, IssuerRates] = {}

    def of(self, run_ids: set[str]) -> dict[str, IssuerRates]:
        """Each run's behaviour: set by its sender, else the services' settings."""
        unknown = [run for run in run_ids if run not in self._known]
        if unknown:
            for run, raw in zip(unknown, store.mget(
                    self.client, [store.run_issuer_key(run) for run in unknown]), strict=True):
                self._known[run] = self._parse(run, raw)
            while len(self._known) > RUNS_KEPT:  # oldest first
                self._known.pop(next(iter(self._known)))
        return {run: self._known[run] for run in run_ids}

    def _parse(self, run: str, raw: bytes | None) -> IssuerRates:
        if not raw:
            return self.default
        try:
            return store.decode_run_issuer(raw)
        except (ValueError, TypeError, AttributeError):
            logging.getLogger(__name__).warning(
                "run %s has an unreadable issuer setting; using the defaults", run)
            return self.default
