"""`paysim conformance SERVICE`: drive an implementation of a paysim service that is already
running through golden cases over the real broker and Redis, and judge what it did.

The run: write the run issuers the cases need, produce every case's records onto the
service's input topic (one record in a transaction that is then aborted), wait until the
service's consumer group has committed past all of them, then read back its output topics
and the dead-letter topic from where they ended before (read_committed, and
read_uncommitted to find the transaction markers), the `payment_result_<id>` keys, and the
outcomes and run stream entries the notifier keeps. Cases are in conformance_cases.py (and
one module per service's suite); the contract in docs/conformance.md.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import msgspec
import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from paysim.infra.config import Settings
from paysim.infra.errors import ConfigError, PaysimError
from paysim.infra.kafka import client_config, cluster_metadata, error_text, no_answer, quiet_logger
from paysim.infra.secrets import Keys, load_keys
from paysim.infra.waiting import wait_until
from paysim.ops.conformance_authorizer import authorizer_suite
from paysim.ops.conformance_cases import (
    Observed,
    Output,
    Sent,
    Suite,
    SuiteFactory,
    Verdict,
    judge,
    processor_suite,
)
from paysim.ops.conformance_notifier import notifier_suite
from paysim.ops.conformance_webhooks import Receiver, receiving
from paysim.pipeline import registry, store

SUITES: dict[str, SuiteFactory] = {registry.AUTHORIZER.name: authorizer_suite,
                                   registry.PROCESSOR.name: processor_suite,
                                   registry.NOTIFIER.name: notifier_suite}
# The suites that use the candidate's secrets (card and token keys, the webhook secret).
KEYED_SUITES = frozenset({registry.AUTHORIZER.name, registry.NOTIFIER.name})
DLQ = "dlq"  # the dead-letter topic's setting: every service writes there
ISSUER_TTL_S = 3600
# How long the Redis writes and webhooks may come after the candidate's commit: a webhook's
# first attempt may fail and be retried after a backoff (paysim's: 0.5 s, then 1 s, ...).
WEBHOOK_WAIT_S = 10.0


@dataclass(frozen=True)
class ConformanceReport:
    service: str
    run_id: str
    group: str
    input_topic: str
    verdicts: list[Verdict]

    @property
    def passed(self) -> bool:
        return all(verdict.passed for verdict in self.verdicts)


def new_run_id() -> str:
    # Letters around the hex: no run of digits a card-number check could take for a PAN.
    return f"conformance-{uuid.uuid4().hex[:12]}"


def run_conformance(settings: Settings, service: str, timeout: float = 60.0,
                    run_id: str | None = None) -> ConformanceReport:
    """Drive the running ``service`` through its golden cases; ``timeout`` bounds the wait
    for it to consume them. PaysimError (one line) when Kafka or Redis does not answer."""
    if service not in SUITES:
        raise PaysimError(f"no conformance cases for {service!r}; known: "
                          f"{', '.join(SUITES)}")
    keys = candidate_keys(settings, service)
    spec = registry.by_name(service)
    topic = spec.topic(settings)
    wait_s = settings.kafka.timeout
    if cluster_metadata(client_config(settings), wait_s) is None:
        raise no_answer(settings, wait_s)
    client = store.connect_answering(settings)
    try:
        run = run_id or new_run_id()
        with receiving(run) as webhooks:
            suite = SUITES[service](run, keys, webhooks.url)
            for issued, rates in suite.issuers.items():
                store.write_run_issuer(client, issued, rates, ISSUER_TTL_S)
            _ends(settings, topic, wait_s)  # the input topic exists, or one line says so
            starts = {role: _ends(settings, getattr(settings.topics, role), wait_s)
                      for role in (*suite.outputs, DLQ)}
            sent = _produce(settings, topic, suite, wait_s)
            consumed, detail = _wait_consumed(settings, spec.group, topic, sent, timeout)
            observed = _observe(settings, client, suite, starts, consumed, detail, wait_s,
                                webhooks)
    except redis.RedisError as exc:
        raise store.unreachable(settings, exc) from None
    except KafkaException as exc:
        raise PaysimError(f"Kafka at {settings.kafka_bootstrap}: {error_text(exc)}") from None
    finally:
        client.close()
    return ConformanceReport(service, suite.run_id, spec.group, topic,
                             judge(suite, sent, observed, topic, service))


def candidate_keys(settings: Settings, service: str) -> Keys | None:
    """The secrets the candidate uses, for the suites that seal cards (the authorizer's) or
    verify webhook signatures (the notifier's); None for the processor's, which needs none.

    Never made up: a secrets file created here would hold keys no candidate has, and every
    sealed case would then fail without saying why."""
    if service not in KEYED_SUITES:
        return None
    try:
        return load_keys(settings, create=False)
    except ConfigError as exc:
        raise ConfigError(f"conformance {service}: {exc}; run it with the secrets the "
                          "candidate uses (secrets.file, or PAYSIM_SECRETS_*)") from None


def _consumer(settings: Settings, isolation: str = "read_committed",
              group: str | None = None) -> Consumer:
    """A reader that joins no group (assign only); ``group`` names whose offsets it reads."""
    return Consumer(client_config(settings, **{
        "group.id": group or f"paysim-conformance-{uuid.uuid4()}",
        "enable.auto.commit": False,
        "isolation.level": isolation, "enable.partition.eof": True, "logger": quiet_logger}))


def _ends(settings: Settings, topic: str, timeout: float) -> dict[int, int]:
    """Each partition's high watermark now."""
    consumer = _consumer(settings)
    try:
        found = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            raise PaysimError(f"topic {topic} does not exist on Kafka at "
                              f"{settings.kafka_bootstrap}")
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1]
                for p in found.partitions}
    finally:
        consumer.close()


def _produce(settings: Settings, topic: str, suite: Suite,
             timeout: float) -> dict[str, list[Sent]]:
    """Every case's records, in order, in transactions (the aborted ones in their own)."""
    producer = Producer(client_config(settings, **{
        "transactional.id": f"paysim-conformance-{uuid.uuid4()}", "linger.ms": 0,
        "logger": quiet_logger}))
    producer.init_transactions(timeout)
    sent: dict[str, list[Sent]] = {}

    def delivered(record: Sent):
        def on_delivery(error, message) -> None:
            if error is None:
                record.partition, record.offset = message.partition(), message.offset()
        return on_delivery

    for case in suite.cases:
        sent[case.name] = []
        for send in case.sends:
            record = Sent(send)
            sent[case.name].append(record)
            producer.begin_transaction()
            producer.produce(topic, key=send.key, value=send.value,
                             on_delivery=delivered(record))
            producer.flush(timeout)
            if send.aborted:
                producer.abort_transaction(timeout)
            else:
                producer.commit_transaction(timeout)
    missing = [s for records in sent.values() for s in records if s.offset < 0]
    if missing:
        raise PaysimError(f"Kafka at {settings.kafka_bootstrap} did not take "
                          f"{len(missing)} of the conformance records")
    return sent


def _wait_consumed(settings: Settings, group: str, topic: str, sent: dict[str, list[Sent]],
                   timeout: float) -> tuple[bool, str]:
    """Wait until ``group`` has committed past every record sent. Not the aborted ones: a
    consumer has nothing to commit for them until a record follows (one always does)."""
    last: dict[int, int] = {}
    for record in (s for records in sent.values() for s in records if not s.send.aborted):
        last[record.partition] = max(last.get(record.partition, -1), record.offset)
    consumer = _consumer(settings, group=group)
    behind: dict[int, int] = {}
    try:
        def caught_up() -> bool:
            committed = consumer.committed([TopicPartition(topic, p) for p in last],
                                           timeout=settings.kafka.timeout)
            behind.clear()
            for tp in committed:
                if tp.offset <= last[tp.partition]:
                    behind[tp.partition] = tp.offset
            return not behind

        started = time.monotonic()
        done = wait_until(caught_up, timeout, interval=0.25)
    finally:
        consumer.close()
    if done:
        return True, (f"group {group} committed past all {sum(map(len, sent.values()))} "
                      f"records in {time.monotonic() - started:.1f} s")
    return False, (f"group {group} had not committed past the records within {timeout:g} s "
                   f"({len(behind)} of {len(last)} partitions behind)")


def _read(settings: Settings, role: str, starts: dict[int, int], isolation: str,
          timeout: float) -> tuple[list[Output], dict[int, int]]:
    """The records of topics.<role> from ``starts`` to each partition's end, and those
    ends."""
    topic = getattr(settings.topics, role)
    consumer = _consumer(settings, isolation)
    outputs: list[Output] = []
    try:
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1]
                for p in starts}
        pending = {p for p in starts if ends[p] > starts[p]}
        consumer.assign([TopicPartition(topic, p, starts[p]) for p in pending])
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error() is not None:
                if message.error().code() == KafkaError._PARTITION_EOF:
                    pending.discard(message.partition())
                continue
            outputs.append(Output(topic, message.partition(), message.offset(), message.key(),
                                  message.value() or b"", role))
            if message.offset() + 1 >= ends[message.partition()]:
                pending.discard(message.partition())
        if pending:
            raise PaysimError(f"reading {topic} from Kafka at {settings.kafka_bootstrap}: "
                              f"{len(pending)} partitions not read to their end in "
                              f"{timeout:g} s")
    finally:
        consumer.close()
    return outputs, ends


def _observe(settings: Settings, client: redis.Redis, suite: Suite,
             starts: dict[str, dict[int, int]], consumed: bool, detail: str,
             timeout: float, webhooks: Receiver) -> Observed:
    expects = [(pid, e) for case in suite.cases for pid, e in case.expects.items()]
    ids = [pid for pid, _ in expects]
    awaited = [key for pid, e in expects if e is not None
               for key in [e.awaited_key(pid)] if key is not None]
    posted = {pid for pid, e in expects if e is not None and e.awaits_webhook}
    if consumed:
        # The Redis writes may land just after the transaction commits, and a webhook is
        # posted after that.
        wait_until(lambda: all(client.exists(key) for key in awaited)
                   and posted <= webhooks.taken().keys(), timeout=WEBHOOK_WAIT_S,
                   interval=0.1)
    results: dict[str, list[Output]] = {}
    wanted = set(ids)
    data_offsets: dict[tuple[str, int], set[int]] = {}
    all_ends: dict[tuple[str, int], int] = {}
    letters: list[Output] = []
    for role in starts:
        committed, ends = _read(settings, role, starts[role], "read_committed", timeout)
        everything, _ = _read(settings, role, starts[role], "read_uncommitted", timeout)
        topic = getattr(settings.topics, role)
        for partition, end in ends.items():
            all_ends[(topic, partition)] = end
            data_offsets[(topic, partition)] = {o.offset for o in everything
                                                if o.partition == partition}
        if role == DLQ:
            letters = committed
            continue
        for output in committed:
            pid = _payment_id(output.value)
            if pid in wanted:
                results.setdefault(pid, []).append(output)
    values = store.mget(client, [store.result_key(pid) for pid in ids]) if ids else []
    stored = {pid: None if v is None else v.decode(errors="replace")
              for pid, v in zip(ids, values, strict=True)}
    posts = {pid: [(post.signature, post.body) for post in found]
             for pid, found in webhooks.taken().items()}
    return Observed(consumed, detail, results, letters, stored, data_offsets, all_ends,
                    _outcomes(client, ids), _done(client, suite, wanted), posts)


def _outcomes(client: redis.Redis, ids: list[str]) -> dict[str, tuple[dict[str, bytes], int]]:
    """Each payment's outcome hash (field -> value) and its TTL, where it has one."""
    pipe = client.pipeline(transaction=False)
    for pid in ids:
        pipe.hgetall(store.outcome_key(pid))
        pipe.ttl(store.outcome_key(pid))
    replies = pipe.execute() if ids else []
    found = {}
    for pid, fields, ttl in zip(ids, replies[::2], replies[1::2], strict=True):
        if fields:
            found[pid] = ({k.decode(): v for k, v in fields.items()}, int(ttl))
    return found


def _done(client: redis.Redis, suite: Suite, wanted: set[str]) -> dict[str, list[bytes]]:
    """The run streams' entries of the suite's payments (each payment's DoneEntry, raw), by
    payment id."""
    found: dict[str, list[bytes]] = {}
    for run in (suite.run_id, *suite.issuers):
        for _, fields in client.xrange(store.run_stream_key(run)):
            for raw in store.done_entry_payloads(fields):
                pid = _payment_id(raw)
                if pid in wanted:
                    found.setdefault(pid, []).append(raw)
    return found


class _PaymentId(msgspec.Struct):
    payment_id: str | None = None


_ids = msgspec.json.Decoder(_PaymentId)


def _payment_id(value: bytes) -> str | None:
    try:
        return _ids.decode(value).payment_id
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
