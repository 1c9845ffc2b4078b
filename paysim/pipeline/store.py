"""Everything paysim keeps in Redis: outcomes, the card ledger, run streams, heartbeats."""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import msgspec
import redis
from msgspec import UNSET, UnsetType
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException

from paysim.domain.decisions import IssuerRates
from paysim.domain.messages import STAGES, Codec, Merchant, PaymentOutcome, SchemaError, encode
from paysim.infra.config import REDIS_CLUSTER_SCHEMES, Settings
from paysim.infra.errors import PaysimError

WEBHOOK_STREAM = "paysim:webhooks"
WEBHOOK_GROUP = "paysim-webhooks"


# What every store function takes: one Redis, or a Redis Cluster through redis-py's cluster
# client (the same commands; keys hash-tagged so each script and batch stays in one slot).
Client = redis.Redis | RedisCluster


def is_cluster(client: Client) -> bool:
    return isinstance(client, RedisCluster)


def connect(settings: Settings, timeout: float = 10.0) -> redis.Redis:
    """A client of the configured Redis; ``timeout`` bounds every command (connecting: 5 s
    at most), so no wait on a Redis that does not answer is endless. A redis+cluster:// URL
    gives a RedisCluster client, which asks the named node for the cluster's slots at once
    (a PaysimError when it does not answer)."""
    url = settings.redis_url
    options: dict[str, Any] = {"socket_timeout": timeout,
                               "socket_connect_timeout": min(timeout, 5.0)}
    if not url.startswith(REDIS_CLUSTER_SCHEMES):
        return redis.Redis.from_url(url, health_check_interval=30, **options)
    try:
        return _cluster_client(url, options)  # type: ignore[return-value]
    except (RedisClusterException, redis.RedisError, ValueError) as exc:
        raise unreachable(settings, exc) from None


def _cluster_client(url: str, options: dict[str, Any]) -> RedisCluster:
    """A cluster client from ``redis+cluster://[user:pass@]host:port[,host:port...]``: every
    node named is a startup node, so a new client starts while any one node is down."""
    scheme, _, rest = url.partition("://")
    split = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    netloc, tail = rest[:split], rest[split:]
    credentials, at, hosts = netloc.rpartition("@")
    first, *others = hosts.split(",")
    nodes = []
    for other in others:
        host, _, port = other.strip().rpartition(":")
        nodes.append(ClusterNode(host, int(port)))  # ValueError: not a port
    return RedisCluster.from_url(f"{scheme.replace('+cluster', '', 1)}://{credentials}{at}"
                                 f"{first}{tail}", startup_nodes=nodes, **options)


@contextlib.contextmanager
def movable_keys(client: Client) -> Iterator[None]:
    """Around XREAD and XREADGROUP on a cluster: redis-py finds where such a command's keys
    are by asking the client's *default node* (COMMAND GETKEYS), and a default node that died
    stays the default: every later XREAD failed with "connection refused" from it, after its
    replica had taken over, until the run timed out. A connection error here picks another
    default node, so the caller's next try goes through."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError):
        if is_cluster(client):
            client.replace_default_node()  # type: ignore[union-attr]
        raise


def mget(client: Client, keys: list[str]) -> list[bytes | None]:
    """GET of many keys in one round: MGET on a single Redis; on a cluster, whose MGET takes
    one slot's keys only, one MGET per slot (not atomic, which no caller needs)."""
    if is_cluster(client):
        return client.mget_nonatomic(keys)  # type: ignore[union-attr]
    return client.mget(keys)


HEALTH_PROBE_KEY = "paysim:healthz"


def probe_write(client: redis.Redis) -> None:
    """One small write that expires: raises when Redis refuses writes (OOM at maxmemory, a
    read-only replica, a failed snapshot with stop-writes-on-bgsave-error), which PING hides."""
    client.set(HEALTH_PROBE_KEY, "1", px=5000)


def unreachable(settings: Settings, exc: Exception) -> PaysimError:
    """The one line for a Redis that does not answer, naming where it was looked for."""
    return PaysimError(f"Redis at {settings.redis_url} does not answer: {exc}")


def connect_answering(settings: Settings) -> redis.Redis:
    """A client whose Redis answered a PING: a command fails here, naming the URL, rather
    than with a bare connection error halfway through its work."""
    client = connect(settings)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        raise unreachable(settings, exc) from None
    return client


def result_key(payment_id: str) -> str:
    """The seed's contract: GET payment_result_<id> -> approved | declined."""
    return f"payment_result_{payment_id}"


def outcome_key(payment_id: str) -> str:
    return f"paysim:payment:{payment_id}"


def run_stream_key(run_id: str) -> str:
    """One entry per payment of the run once its client was notified."""
    return f"paysim:run:{run_id}:done"


def run_operations_key(run_id: str) -> str:
    """One entry per operation of the run once the ledger answered it."""
    return f"paysim:run:{run_id}:ops"


def run_issuer_key(run_id: str) -> str:
    """A run's issuer behaviour (JSON), set by `paysim send` from its scenario."""
    return f"paysim:run:{run_id}:issuer"


def write_run_issuer(client: redis.Redis, run_id: str, rates: IssuerRates, ttl: int) -> None:
    """The issuer behaviour the processor applies to this run's payments only."""
    client.set(run_issuer_key(run_id), encode_run_issuer(rates), ex=ttl)


def encode_run_issuer(rates: IssuerRates) -> bytes:
    return json.dumps({"decline_rate": rates.decline_rate, "fault_rate": rates.fault_rate,
                       "outages": [list(window) for window in rates.outages],
                       "added_latency_ms": rates.added_latency_ms,
                       "hold_ttl_s": rates.hold_ttl_s,
                       "settlement_window_s": rates.settlement_window_s}).encode()


def decode_run_issuer(raw: bytes) -> IssuerRates:
    """A run's issuer behaviour as write_run_issuer stored it; ValueError, TypeError or
    AttributeError when it is not."""
    data = json.loads(raw)
    return IssuerRates(
        decline_rate=float(data.get("decline_rate", 0.0)),
        fault_rate=float(data.get("fault_rate", 0.0)),
        outages=tuple((int(start), int(end)) for start, end in data.get("outages", [])),
        added_latency_ms=float(data.get("added_latency_ms", 0.0)),
        hold_ttl_s=_seconds_or_none(data.get("hold_ttl_s")),
        settlement_window_s=_seconds_or_none(data.get("settlement_window_s")),
    )


def _seconds_or_none(value: object) -> float | None:
    if value is None:
        return None
    seconds = float(value)  # type: ignore[arg-type]  # TypeError/ValueError: not a number
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{value!r} is not a duration")
    return seconds


def heartbeat_key(service: str, instance: int) -> str:
    return f"paysim:svc:{service}:{instance}"


# The set of heartbeat keys: readers look them up here rather than SCAN a keyspace that holds
# every outcome (at 100,000s of keys one SCAN pass cost Redis more than the payments did).
HEARTBEAT_INDEX = "paysim:svc-index"


HEARTBEAT_EVERY_S = 1.0
HEARTBEAT_TTL_S = 5
HEARTBEAT_FRESH_S = 3.0  # older than this, the service is taken for gone


def write_heartbeat(client: redis.Redis, service: str, instance: int, *, processed: int,
                    dead_letters: int, aborted_batches: int, started_at: float,
                    lag: int, metrics_url: str = "") -> None:
    """What `paysim ps` and run-all's panel show; expires unless renewed every second.
    ``metrics_url``: where the process serves its Prometheus metrics ("" when it does not)."""
    key = heartbeat_key(service, instance)
    pipe = client.pipeline(transaction=False)
    pipe.hset(key, mapping={
        "service": service, "instance": instance, "pid": os.getpid(), "processed": processed,
        "dead_letters": dead_letters, "aborted_batches": aborted_batches,
        "started_at": started_at, "seen_at": time.time(), "lag": lag,
        "metrics_url": metrics_url,
    })
    pipe.expire(key, HEARTBEAT_TTL_S)
    pipe.sadd(HEARTBEAT_INDEX, key)
    pipe.execute()


class Heartbeat(msgspec.Struct, frozen=True, kw_only=True):
    """What a running service last reported (`paysim ps`, run-all's panel and watchdog)."""

    service: str
    instance: int
    pid: int
    processed: int
    dead_letters: int
    aborted_batches: int
    started_at: float
    seen_at: float
    lag: int
    metrics_url: str = ""  # "" when the process serves no metrics

    @property
    def name(self) -> str:
        """The instance's name, as run-all and `ps` show it: "processor-0"."""
        return f"{self.service}-{self.instance}"


def read_heartbeats(client: redis.Redis,
                    fresh_s: float = HEARTBEAT_FRESH_S) -> dict[str, Heartbeat]:
    """The services that reported within ``fresh_s``, by instance name; expired heartbeats
    leave the index on the way."""
    keys = sorted(client.smembers(HEARTBEAT_INDEX))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    beats, expired = {}, []
    now = time.time()
    for key, raw in zip(keys, pipe.execute(), strict=True):
        if not raw:
            expired.append(key)
            continue
        try:
            # Hash fields are text: strict=False reads "12" as the int the struct declares.
            beat = msgspec.convert({k.decode(): v.decode() for k, v in raw.items()}, Heartbeat,
                                   strict=False)
        except (msgspec.ValidationError, UnicodeDecodeError):
            continue  # not written by a paysim service
        if now - beat.seen_at < fresh_s:
            beats[beat.name] = beat
    if expired:
        client.srem(HEARTBEAT_INDEX, *expired)
    return beats


def running_services(client: redis.Redis) -> set[str]:
    """The services with at least one instance that reported lately ("processor", ...), and
    those a run-all left to an outside implementation (paysim cannot see those run: their
    consumer group's lag is what `ps` shows of them)."""
    return {beat.service for beat in read_heartbeats(client).values()} | external_services(
        client)


# The services a running `run-all --external` left to outside implementations, as JSON;
# renewed by its supervisor, so it expires when the supervisor is gone.
EXTERNAL_KEY = "paysim:external"


def mark_external(client: redis.Redis, names: tuple[str, ...], ttl_s: int) -> None:
    if names:
        client.set(EXTERNAL_KEY, json.dumps(list(names)), ex=ttl_s)
    else:
        client.delete(EXTERNAL_KEY)


def external_services(client: redis.Redis) -> set[str]:
    raw = client.get(EXTERNAL_KEY)
    try:
        names = json.loads(raw) if raw else []
    except ValueError:
        return set()
    return {name for name in names if isinstance(name, str)} if isinstance(names, list) else set()


def clear_heartbeat(client: redis.Redis, service: str, instance: int) -> None:
    """A clean stop says so at once instead of letting the heartbeat expire."""
    with contextlib.suppress(redis.RedisError):  # else it expires on its own
        key = heartbeat_key(service, instance)
        # Not chained: a cluster's pipeline commands return None, not the pipeline.
        pipe = client.pipeline(transaction=False)
        pipe.delete(key)
        pipe.srem(HEARTBEAT_INDEX, key)
        pipe.execute()


# The runs under way: one hash field per run (its RunProgress), rewritten every second by the
# sending process; a reader drops fields not renewed for LIVE_RUN_FRESH_S (a killed `send`).
LIVE_RUNS_KEY = "paysim:live-runs"
LIVE_RUN_FRESH_S = 5.0


PASSING, FAILING, PENDING = "passing", "failing", "pending"


class LiveVerdict(msgspec.Struct, frozen=True):
    """A threshold judged on the run so far: ``passing``, ``failing`` (so far: a total such
    as ``sent`` may still reach its bound), or ``pending`` (its metric not measured yet)."""

    expression: str  # as the run states it ("p99_ms < 250 @ 10s" with a window)
    state: str
    actual: float | None  # over the run so far
    bound: float
    failed_windows: int = 0


class GeneratorProgress(msgspec.Struct, frozen=True):
    """One generator of a distributed run, as its last beat said."""

    share: int
    host: str
    pid: int
    sent: int
    completed: int
    dropped: int
    alive: bool


class RunProgress(msgspec.Struct, frozen=True, kw_only=True):
    """A run under way as `paysim send` last published it (the dashboard's progress panel)."""

    run_id: str
    pid: int
    scenario: str | None
    started_at: float  # seconds since the epoch
    seen_at: float
    elapsed_s: float
    scheduled: int
    sent: int
    completed: int
    dropped: int
    target_rate: float | None
    current_rate: float
    rolling_p99_ms: float | None  # end to end over the last 5 s
    reasons: dict[str, int]  # "approved/00", "declined/51": completed payments so far
    thresholds: list[str]  # the run's threshold expressions
    finished: bool = False
    rolling_p50_ms: float | None = None
    verdicts: list[LiveVerdict] = msgspec.field(default_factory=list)  # one per threshold
    generators: list[GeneratorProgress] = msgspec.field(default_factory=list)  # distributed


def write_run_progress(client: redis.Redis, progress: RunProgress) -> None:
    client.hset(LIVE_RUNS_KEY, progress.run_id, msgspec.json.encode(progress))


def clear_run_progress(client: redis.Redis, run_id: str) -> None:
    with contextlib.suppress(redis.RedisError):  # else readers drop it once it is stale
        client.hdel(LIVE_RUNS_KEY, run_id)


def read_run_progress(client: redis.Redis,
                      fresh_s: float = LIVE_RUN_FRESH_S) -> list[RunProgress]:
    """The runs that published lately, the latest started first; stale or foreign fields
    leave the hash on the way."""
    runs, stale = [], []
    now = time.time()
    for field_name, raw in client.hgetall(LIVE_RUNS_KEY).items():
        try:
            progress = msgspec.json.decode(raw, type=RunProgress)
        except msgspec.DecodeError:
            stale.append(field_name)
            continue
        if now - progress.seen_at < fresh_s:
            runs.append(progress)
        else:
            stale.append(field_name)
    if stale:
        client.hdel(LIVE_RUNS_KEY, *stale)
    return sorted(runs, key=lambda run: run.started_at, reverse=True)


def idempotency_key(key: str) -> str:
    return f"paysim:idem:{key}"


def write_decision(pipe: redis.client.Pipeline, payment_id: str, status: str, ttl: int) -> None:
    """The seed's contract, written by whichever service decided: GET payment_result_<id>."""
    # execute_command, not pipe.set(): redis-py's argument checks on set() were 7% of the
    # processor's time, for a command whose arguments are fixed here.
    pipe.execute_command("SET", result_key(payment_id), status, "EX", ttl)


# Sets each KEYS[i] to ARGV[i + 1], expiring after ARGV[1] seconds.
_SET_ALL_LUA = """
local ttl = ARGV[1]
for i, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[i + 1], 'EX', ttl)
end
return #KEYS
"""


def write_decisions(pipe: redis.client.Pipeline, decisions: list[tuple[str, str]],
                    ttl: int, cluster: bool) -> None:
    """Each (payment id, status) as write_decision writes it. On a single Redis as one script
    call: a batch's hundreds of SETs cost the client more in redis-py's packing and reply
    parsing (5 µs a payment) than the script's one command (under 1 µs). EVAL, not EVALSHA:
    nothing to load first, and Redis caches the compiled script. A cluster keeps the keys in
    many slots, so there each is its own SET."""
    if cluster:
        for payment_id, status in decisions:
            write_decision(pipe, payment_id, status, ttl)
    elif decisions:
        pipe.execute_command("EVAL", _SET_ALL_LUA, len(decisions),
                             *(result_key(payment_id) for payment_id, _ in decisions),
                             ttl, *(status for _, status in decisions))


def write_outcome(pipe: redis.client.Pipeline, outcome: PaymentOutcome, ttl: int,
                  **extra: Any) -> None:
    """The whole outcome, once, as the notifier confirms it: the status as a field of its own
    (the audit reads just that) and the rest as one encoded document. One field, not twenty:
    packing and storing a twenty-field hash per payment was the pipeline's largest Redis cost."""
    key = outcome_key(outcome.payment_id)
    fields: list[Any] = ["status", outcome.status, "doc", encode(outcome)]
    for name, value in extra.items():
        fields += (name, value)
    pipe.execute_command("HSET", key, *fields)
    pipe.execute_command("EXPIRE", key, ttl)


# As the notifier decoded it: the same checks (the topics' patterns are Codec's, not msgspec's).
_outcome_codec = Codec(PaymentOutcome)


class DoneEntry(msgspec.Struct, frozen=True):
    """One notified payment on its run's stream, as `paysim send` reads it back. Named
    fields, not an array: the card-data audit knows ``stages`` holds timestamps, which
    otherwise pass for card numbers."""

    payment_id: str
    status: str
    reason_code: str
    amount: int
    currency: str
    seq: int
    stages: dict[str, int]


_done_decoder = msgspec.json.Decoder(DoneEntry)


# A run stream entry's one field: "o", one notified payment's encoded DoneEntry (what an
# entry written one by one holds: an external notifier's, and paysim's on a Redis Cluster), or
# "b", a notifier batch's payments of the run as an encoded array of DoneEntry.
DONE_FIELD = "o"
DONE_BATCH_FIELD = "b"


def _done(outcome: PaymentOutcome) -> DoneEntry:
    return DoneEntry(outcome.payment_id, outcome.status, outcome.reason_code, outcome.amount,
                     outcome.currency, outcome.seq, outcome.stages)


def done_entry(outcome: PaymentOutcome) -> bytes:
    """The notified payment's entry on its run's stream, encoded."""
    return encode(_done(outcome))


def add_done_entry(pipe: redis.client.Pipeline, outcome: PaymentOutcome) -> None:
    """XADD the notified payment to its run's stream (paysim send reads it back)."""
    pipe.execute_command("XADD", run_stream_key(outcome.run_id), "*", DONE_FIELD,
                         done_entry(outcome))


# What write_outcome writes for each payment of a batch, and per run one stream entry with the
# batch's payments of the run and the stream's EXPIRE, in one script call. KEYS: each payment's
# outcome hash, then each run stream; ARGV: the TTL, the count n of payments, then each
# payment's status, doc, webhook_status and trace id ("": none), then each stream's entry.
NOTIFIED_LUA = """
local ttl, n = ARGV[1], tonumber(ARGV[2])
for i = 1, n do
  local hash, at = KEYS[i], 3 + (i - 1) * 4
  if ARGV[at + 3] == '' then
    redis.call('HSET', hash, 'status', ARGV[at], 'doc', ARGV[at + 1], 'notification', 'sent',
               'webhook_status', ARGV[at + 2])
  else
    redis.call('HSET', hash, 'status', ARGV[at], 'doc', ARGV[at + 1], 'notification', 'sent',
               'webhook_status', ARGV[at + 2], 'trace_id', ARGV[at + 3])
  end
  redis.call('EXPIRE', hash, ttl)
end
for s = n + 1, #KEYS do
  redis.call('XADD', KEYS[s], '*', 'b', ARGV[2 + 3 * n + s])  -- after the payments' 4n
  redis.call('EXPIRE', KEYS[s], ttl)
end
return n
"""


class NotifiedBatch:
    """A batch's notified payments, written by one NOTIFIED_LUA call: each payment's outcome
    hash with its expiry as write_outcome writes it, and per run one stream entry holding the
    batch's payments of that run (field DONE_BATCH_FIELD), the stream's expiry renewed with
    it. Three commands a payment through redis-py cost the notifier more (packing every
    argument, parsing every reply) than Redis spent on them; an entry a payment cost Redis
    and `send`'s read-back about 3 µs a payment more than one a batch (docs/performance.md).
    A single Redis only: on a cluster a batch's keys lie in many slots, and those commands go
    one by one."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.args: list[str | bytes] = []
        self.done: dict[str, list[DoneEntry]] = {}  # by run id, in the batch's order

    def add(self, outcome: PaymentOutcome, webhook_status: str, trace_id: str | None) -> None:
        self.keys.append(outcome_key(outcome.payment_id))
        self.args += (outcome.status, encode(outcome), webhook_status, trace_id or "")
        self.done.setdefault(outcome.run_id, []).append(_done(outcome))

    def write(self, pipe: redis.client.Pipeline, ttl: int) -> None:
        """Queue the script call on ``pipe`` (nothing for an empty batch)."""
        if self.keys:
            streams = [run_stream_key(run_id) for run_id in self.done]
            # EVAL, not EVALSHA: a pipeline cannot load a script that Redis forgot, and
            # hashing the script's text once a batch costs Redis nothing to speak of.
            pipe.execute_command("EVAL", NOTIFIED_LUA, len(self.keys) + len(streams),
                                 *self.keys, *streams, ttl, len(self.keys), *self.args,
                                 *map(encode, self.done.values()))


_done_batch_decoder = msgspec.json.Decoder(list[DoneEntry])


def read_done_entry(fields: dict[bytes, bytes]) -> DoneEntry:
    """A run stream entry of one payment (field DONE_FIELD), typed. Raises ValueError for an
    entry paysim did not write."""
    try:
        return _done_decoder.decode(fields[DONE_FIELD.encode()])
    except (KeyError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"not a paysim run stream entry: {exc}") from None


def read_done_entries(fields: dict[bytes, bytes]) -> list[DoneEntry]:
    """The payments of a run stream entry, of one or of a batch, typed. Raises ValueError
    for an entry paysim did not write."""
    batch = fields.get(DONE_BATCH_FIELD.encode())
    if batch is None:
        return [read_done_entry(fields)]
    try:
        return _done_batch_decoder.decode(batch)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"not a paysim run stream entry: {exc}") from None


_raw_batch_decoder = msgspec.json.Decoder(list[msgspec.Raw])


def done_entry_payloads(fields: dict[bytes, bytes]) -> list[bytes]:
    """A run stream entry's payments undecoded, each as one payment's field DONE_FIELD holds
    it: that field's value, or each of DONE_BATCH_FIELD's array (none when it is not an
    array). For a check that judges each payment's entry on its own (the conformance suite)."""
    batch = fields.get(DONE_BATCH_FIELD.encode())
    if batch is None:
        return [fields.get(DONE_FIELD.encode(), b"")]
    try:
        return [bytes(raw) for raw in _raw_batch_decoder.decode(batch)]
    except msgspec.DecodeError:
        return []


class OperationDone(msgspec.Struct, frozen=True):
    """One answered operation on its run's stream, as `paysim send` reads it back."""

    op_id: str
    kind: str
    payment_id: str
    reason_code: str
    amount: int  # what it moved (0 when refused)
    requested_at: int  # Unix µs, as the operation carried it
    answered_at: int


_operation_done_decoder = msgspec.json.Decoder(OperationDone)


def add_operation_done(pipe: redis.client.Pipeline, run_id: str, entry: OperationDone) -> None:
    pipe.execute_command("XADD", run_operations_key(run_id), "*", DONE_FIELD, encode(entry))


def read_operation_done(fields: dict[bytes, bytes]) -> OperationDone:
    """An operations stream entry, typed. Raises ValueError for one paysim did not write."""
    try:
        return _operation_done_decoder.decode(fields[DONE_FIELD.encode()])
    except (KeyError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"not a paysim operations stream entry: {exc}") from None


def read_operations_done(fields: dict[bytes, bytes]) -> list[OperationDone]:
    """read_operation_done for read_stream: an operations stream entry holds one."""
    return [read_operation_done(fields)]


E = TypeVar("E")


def read_stream(client: redis.Redis, key: str, last_id: bytes | str,
                decode: Callable[[dict[bytes, bytes]], list[E]], count: int, block_ms: int,
                ) -> tuple[list[E], bytes | str]:
    """What a run stream's entries after ``last_id`` hold (waiting up to ``block_ms`` for
    the first entry), of at most ``count`` entries, decoded, and the id to read on from.
    Entries ``decode`` refuses (ValueError: not written by paysim) are skipped."""
    entries: list[E] = []
    with movable_keys(client):
        reply = client.xread({key: last_id}, count=count, block=block_ms)
    for _, batch in reply or []:
        for entry_id, fields in batch:
            last_id = entry_id
            try:
                entries += decode(fields)
            except ValueError:
                continue
    return entries, last_id


class WebhookState(msgspec.Struct, frozen=True):
    """Where a payment's webhook stands: pending or none (set by the notifier), delivered or
    failed (set by the dispatcher, with its attempts and the last answer or error)."""

    status: str
    attempts: int = 0
    http_status: int | None = None
    error: str | None = None


class StoredOutcome(msgspec.Struct, frozen=True):
    """A payment's outcome as kept in Redis, with what was told about it since."""

    outcome: PaymentOutcome
    notification: str | None = None  # "sent" once the notifier confirmed the outcome
    webhook: WebhookState | None = None
    trace_id: str | None = None  # its trace, when it was traced and sampled (OpenTelemetry)


def read_outcome(client: redis.Redis, payment_id: str) -> StoredOutcome | None:
    """The stored outcome; None when there is none or it cannot be read."""
    raw = client.hgetall(outcome_key(payment_id))
    if not raw:
        return None
    stored = {k.decode(): v.decode() for k, v in raw.items()}
    doc = raw.get(b"doc")
    if doc is None:
        return None  # only a late webhook update, on an outcome that expired
    try:
        outcome = _outcome_codec.decode(doc)
    except SchemaError:
        return None
    webhook = None
    if stored.get("webhook_status"):
        # An empty field (the dispatcher writes "" and 0 for none) reads as None.
        webhook = WebhookState(
            status=stored["webhook_status"],
            attempts=int(stored.get("webhook_attempts") or 0),
            http_status=int(stored.get("webhook_http_status") or 0) or None,
            error=stored.get("webhook_error") or None,
        )
    # The hash's own status field is the outcome's, written beside it for the audit.
    outcome = msgspec.structs.replace(outcome, status=stored.get("status", outcome.status))
    return StoredOutcome(outcome, stored.get("notification") or None, webhook,
                         stored.get("trace_id") or None)


class OutcomeView(msgspec.Struct, frozen=True, kw_only=True):
    """A stored outcome as API clients get it (GET /payments/<id>, `paysim status --json`):
    the merchant as an object, the known stage times in pipeline order, empty fields as
    null, and the webhook block once a webhook state was recorded."""

    payment_id: str
    run_id: str
    seq: int
    status: str
    reason_code: str
    reason_text: str
    amount: int
    currency: str
    merchant: Merchant
    stages: dict[str, int]
    notification: str | None
    masked_pan: str | None
    token: str | None
    network: str | None
    callback_url: str | None
    webhook: WebhookState | UnsetType = UNSET
    # The payment's OpenTelemetry trace id (32 hex digits), when it was traced and sampled.
    trace_id: str | UnsetType = UNSET


def outcome_view(stored: StoredOutcome) -> OutcomeView:
    outcome = stored.outcome
    return OutcomeView(
        payment_id=outcome.payment_id, run_id=outcome.run_id, seq=outcome.seq,
        status=outcome.status, reason_code=outcome.reason_code,
        reason_text=outcome.reason_text, amount=outcome.amount, currency=outcome.currency,
        merchant=outcome.merchant,
        stages={stage: outcome.stages[stage] for stage in STAGES if stage in outcome.stages},
        notification=stored.notification, masked_pan=outcome.masked_pan or None,
        token=outcome.token or None, network=outcome.network or None,
        callback_url=outcome.callback_url or None,
        webhook=UNSET if stored.webhook is None else stored.webhook,
        trace_id=UNSET if stored.trace_id is None else stored.trace_id,
    )
