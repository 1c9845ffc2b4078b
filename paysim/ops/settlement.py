"""`paysim settlement` and `paysim settle`: the closed settlement batches, what is not yet
settled, and closing the open windows at once."""

from __future__ import annotations

from dataclasses import dataclass

from paysim.domain import settlement
from paysim.domain.settlement import Batch
from paysim.infra.config import Settings
from paysim.infra.kafka import no_answer
from paysim.pipeline import settlement_store, store
from paysim.pipeline.settlement_store import Closed, Settler, settlements_producer


@dataclass(frozen=True)
class SettlementView:
    batches: list[Batch]
    # Per (merchant, currency): the movements not yet in a batch, summed as a batch would be.
    unsettled: dict[tuple[str, str], dict[str, int]]


def settlement_view(settings: Settings, run_id: str | None) -> SettlementView:
    client = store.connect_answering(settings)
    try:
        batches = settlement_store.read_batches(client, run_id)
        moves = []
        runs = [run_id] if run_id is not None else sorted(
            {run for run, _ in settlement_store.open_windows(client, None)})
        for run in runs:
            moves += settlement_store.unsettled(client, run)
        return SettlementView(batches, settlement.total(moves))
    finally:
        client.close()


def settle_now(settings: Settings, run_id: str | None) -> list[Closed]:
    """Close every open window of the run (of every run) now, the current ones too."""
    client = store.connect_answering(settings)
    producer = settlements_producer(settings)
    try:
        closed = Settler(settings, client, producer).close(None, run_id)
        if producer.flush(settings.kafka.timeout):
            raise no_answer(settings, settings.kafka.timeout)
        return closed
    finally:
        client.close()
