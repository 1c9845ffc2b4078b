"""A run stream's entries read back: one payment's (field o, as an external notifier and a
cluster's writes give it) or a batch's (field b, paysim's notifier on a single Redis)."""

from __future__ import annotations

import pytest

from paysim.domain.messages import encode
from paysim.pipeline import store
from paysim.pipeline.store import DoneEntry

FIRST = DoneEntry("p-1", "approved", "00", 1999, "USD", 1, {"requested": 10, "notified": 30})
SECOND = DoneEntry("p-2", "declined", "51", 500, "EUR", 2, {"requested": 11, "notified": 31})


def test_an_entry_of_one_payment_reads_as_one() -> None:
    assert store.read_done_entries({b"o": encode(FIRST)}) == [FIRST]


def test_an_entry_of_a_batch_reads_as_its_payments_in_order() -> None:
    assert store.read_done_entries({b"b": encode([FIRST, SECOND])}) == [FIRST, SECOND]


@pytest.mark.parametrize("fields", [
    {b"x": b"{}"}, {b"o": b"not json"}, {b"b": b"{}"}, {b"b": b'[{"payment_id": 1}]'},
    {b"o": encode([FIRST])},
], ids=["no known field", "o not json", "b not an array", "b of bad entries", "o an array"])
def test_an_entry_paysim_did_not_write_is_refused(fields: dict[bytes, bytes]) -> None:
    with pytest.raises(ValueError, match="not a paysim run stream entry"):
        store.read_done_entries(fields)


class Streams:
    """What read_stream asks of Redis: one XREAD."""

    def __init__(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        self.entries = entries

    def xread(self, streams: dict[str, str], count: int, block: int) -> list[object]:
        [(key, _)] = streams.items()
        return [(key.encode(), self.entries[:count])]


def test_read_stream_gives_every_payment_of_every_entry_and_skips_foreign_ones() -> None:
    client = Streams([(b"1-0", {b"b": encode([FIRST, SECOND])}), (b"2-0", {b"x": b"?"}),
                      (b"3-0", {b"o": encode(FIRST)})])
    entries, last_id = store.read_stream(client, "paysim:run:r:done", "0",  # type: ignore[arg-type]
                                         store.read_done_entries, 10, 0)
    assert entries == [FIRST, SECOND, FIRST]
    assert last_id == b"3-0"


def test_an_entrys_payloads_are_each_payments_own_encoding() -> None:
    assert store.done_entry_payloads({b"o": encode(FIRST)}) == [encode(FIRST)]
    payloads = store.done_entry_payloads({b"b": encode([FIRST, SECOND])})
    assert [store.read_done_entry({b"o": raw}) for raw in payloads] == [FIRST, SECOND]
    assert store.done_entry_payloads({b"b": b"{not an array"}) == []
